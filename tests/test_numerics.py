"""Tests for stability_lab.numerics: ulp accuracy against mpmath, special values, dtypes,
gradients, validation, and the naive twins.

References are mpmath at 60 digits (stability_lab.numerics.accuracy), cached per input.
"""

from __future__ import annotations

import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stability_lab import numerics as N
from stability_lab.numerics import _core, naive
from stability_lab.numerics import accuracy as A

ELEMENTWISE = ["sigmoid", "log_sigmoid", "softplus", "log1mexp"]
ULP_LIMIT = {"float64": 2.0, "float32": 2.0, "float16": 1.0, "bfloat16": 1.0}
FMTS = list(ULP_LIMIT)
HSET = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def grids():
    return {f: np.concatenate([A.special_grid(f), A.random_values(f, 400, seed=1)])
            for f in FMTS}


# --------------------------------------------------------------------------- import cost
def test_import_does_not_import_torch():
    code = ("import sys, stability_lab.numerics, stability_lab.numerics.naive; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --------------------------------------------------------------------------- element-wise ulp
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_ulp_grid(name, fmt, grids):
    worst, at = A.worst_elementwise(name, fmt, grids[fmt])
    assert worst <= ULP_LIMIT[fmt], f"{name} {fmt}: {worst:.3f} ulp at x={at!r}"


@pytest.mark.parametrize("fmt", FMTS)
def test_bce_ulp_grid(fmt, grids):
    worst, at = A.worst_bce(fmt, grids[fmt])
    assert worst <= ULP_LIMIT[fmt], f"bce {fmt}: {worst:.3f} ulp at (x, t)={at!r}"


@pytest.mark.parametrize("width", [64, 32])
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_ulp_hypothesis(name, width):
    fmt = f"float{width}"

    @HSET
    @given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=width),
                    min_size=1, max_size=8))
    def run(xs):
        worst, at = A.worst_elementwise(name, fmt, np.array(xs, np.float64))
        assert worst <= 2.0, f"{name} {fmt}: {worst:.3f} ulp at {at!r}"

    run()


@pytest.mark.parametrize("width", [64, 32])
def test_bce_ulp_hypothesis(width):
    fmt = f"float{width}"

    @HSET
    @given(st.floats(allow_nan=False, allow_infinity=False, width=width),
           st.floats(0, 1, width=width))
    def run(x, t):
        got = A.evaluate(lambda a, b: N.binary_cross_entropy_with_logits(a, b, "none"),
                         np.array([x]), fmt, np.array([t]))
        err = A.ulp_error(float(got[0]), A.ref_bce(x, t), fmt)
        assert err <= 2.0, f"bce({x!r}, {t!r}) {fmt}: {err:.3f} ulp"

    run()


# --------------------------------------------------------------------------- log-sum-exp family
@pytest.mark.parametrize("fmt", FMTS)
def test_lse_family_bound_and_well_conditioned_ulp(fmt):
    rows = [r for r in A.reduction_rows(fmt) if len(r) <= 10]
    res = A.reduction_errors(fmt, rows)
    for name, (ulp_wc, c) in res.items():
        assert c <= 2.0, f"{name} {fmt}: err = {c:.2f} u B"
        assert ulp_wc <= ULP_LIMIT[fmt], f"{name} {fmt}: {ulp_wc:.2f} ulp (kappa <= 1)"


@pytest.mark.parametrize("width", [64, 32])
def test_lse_family_hypothesis(width):
    fmt = f"float{width}"

    @HSET
    @given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=width),
                    min_size=1, max_size=6))
    def run(xs):
        row = np.array(xs, np.float64)
        res = A.reduction_errors(fmt, [row])
        for name, (ulp_wc, c) in res.items():
            assert c <= 2.0, f"{name}: err = {c:.2f} u B for {xs!r}"
            assert ulp_wc <= 2.0, f"{name}: {ulp_wc:.2f} ulp for {xs!r}"
        a = row.astype(fmt)
        assert np.isfinite(N.logsumexp(a, -1))  # never NaN/overflow for finite input
        assert not np.isnan(N.log_softmax(a, -1)).any()
        assert abs(float(np.sum(N.softmax(a, -1), dtype=np.float64)) - 1) < 8 * len(xs) * 2.0**-24

    run()


def test_long_rows_path_matches(monkeypatch):
    """Rows longer than BLOCK take the column-blocked path; shrink BLOCK to test it."""
    rng = np.random.default_rng(3)
    x = np.concatenate([[0.0], -30 - rng.random(40)])  # lse = O(1e-13): needs the split
    ref = A.ref_lse_row(x)
    monkeypatch.setattr(_core, "BLOCK", 8)
    got = float(N.logsumexp(x, -1))
    assert A.ulp_error(got, ref[0], "float64") <= 2
    lsm = N.log_softmax(x, -1)
    assert max(A.ulp_error(float(c), y, "float64") for c, y in zip(lsm, ref[1])) <= 2
    assert max(A.ulp_error(float(c), y, "float64") for c, y in zip(N.softmax(x, -1), ref[2])) <= 2
    assert float(N.logsumexp(np.array([1.0] * 20 + [np.inf]), -1)) == np.inf


def test_split_matters_lse_of_tiny_tail():
    # lse([0, -30]) = log1p(e^-30): forming 1 + s and subtracting loses 3 digits.
    got = N.logsumexp(np.array([0.0, -30.0]), -1)
    assert A.ulp_error(float(got), A.ref_lse_row(np.array([0.0, -30.0]))[0], "float64") <= 1
    bad = np.log(np.sum(np.exp(np.array([0.0, -30.0]))))
    assert abs(bad - got) / got > 1e-4


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
@pytest.mark.parametrize("keepdim", [False, True])
def test_dims_and_torch_parity(dim, keepdim):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5)) * 10
    ref = np.apply_along_axis(lambda r: float(A.ref_lse_row(r)[0]), dim, x)
    got = N.logsumexp(x, dim, keepdims=keepdim)
    assert got.shape == (np.expand_dims(ref, dim) if keepdim else ref).shape
    np.testing.assert_allclose(np.squeeze(got, dim) if keepdim else got, ref, rtol=4e-16)
    t = torch.from_numpy(x)
    assert torch.equal(N.logsumexp(t, dim=dim, keepdim=keepdim), torch.from_numpy(np.asarray(got)))
    for fn in (N.log_softmax, N.softmax):
        a = fn(x, dim)
        assert a.shape == x.shape
        assert torch.equal(fn(t, dim), torch.from_numpy(a))
    np.testing.assert_allclose(N.softmax(x, dim).sum(dim), 1, rtol=1e-15)
    targets = rng.integers(0, x.shape[dim], size=np.delete(x.shape, dim % 3))
    ce = N.cross_entropy(x, targets, dim=dim, reduction="none")
    expect = -np.take_along_axis(N.log_softmax(x, dim), np.expand_dims(targets, dim % 3),
                                 dim % 3).squeeze(dim % 3)
    np.testing.assert_array_equal(ce, expect)
    if dim % 3 == 1:  # torch's class dimension is 1
        tt = torch.nn.functional.cross_entropy(torch.from_numpy(x), torch.from_numpy(targets))
        assert abs(float(N.cross_entropy(x, targets, dim=dim)) - float(tt)) < 1e-14


# --------------------------------------------------------------------------- special values
inf, nan = math.inf, math.nan
LSE_SPECIALS = [
    ([], -inf, [], []),
    ([-inf, -inf], -inf, [nan, nan], [nan, nan]),
    ([inf, -inf], inf, [nan, -inf], [nan, 0.0]),
    ([inf, 0.0], inf, [nan, -inf], [nan, 0.0]),
    ([inf, inf], inf, [nan, nan], [nan, nan]),
    ([nan, 0.0], nan, [nan, nan], [nan, nan]),
    ([-inf, 0.0], 0.0, [-inf, 0.0], [0.0, 1.0]),
    ([1e308, 1e308], 1e308 + math.log(2), [-math.log(2)] * 2, [0.5, 0.5]),
]


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("row,lse,lsm,sm", LSE_SPECIALS)
def test_lse_special_values(row, lse, lsm, sm, kind):
    x = np.array(row, np.float64)
    if kind == "torch":
        x = torch.from_numpy(x)
    eq = {"equal_nan": True}
    np.testing.assert_allclose(np.asarray(N.logsumexp(x, -1), np.float64), lse, rtol=1e-15, **eq)
    np.testing.assert_allclose(np.asarray(N.log_softmax(x, -1), np.float64), lsm, rtol=1e-15, **eq)
    np.testing.assert_allclose(np.asarray(N.softmax(x, -1), np.float64), sm, rtol=1e-15, **eq)


def test_elementwise_special_values():
    x = np.array([-inf, inf, nan, 0.0, -0.0])
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(N.sigmoid(x), [0, 1, nan, 0.5, 0.5])
        np.testing.assert_array_equal(N.softplus(x), [0, inf, nan, math.log(2), math.log(2)])
        np.testing.assert_array_equal(N.log_sigmoid(x), [-inf, 0, nan, -math.log(2),
                                                         -math.log(2)])
        np.testing.assert_array_equal(N.log1mexp(np.array([-inf, 0.0, 1.0, nan, inf])),
                                      [0, -inf, nan, nan, nan])
    bce = N.binary_cross_entropy_with_logits(np.array([inf, inf, -inf, -inf, inf]),
                                             np.array([1.0, 0.5, 0.0, 1.0, 0.0]), "none")
    np.testing.assert_array_equal(bce, [0, inf, 0, inf, inf])
    big = np.finfo(np.float64).max
    assert N.softplus(big) == big and N.log_sigmoid(-big) == -big
    assert N.sigmoid(-big) == 0 and N.log1mexp(-big) == 0
    assert np.isfinite(N.binary_cross_entropy_with_logits(np.array([big, -big]),
                                                          np.array([0.0, 1.0])))


def test_accumulation_special_values():
    assert N.stable_sum(np.array([])) == 0
    assert N.stable_sum(np.array([1.0, inf])) == inf
    assert math.isnan(N.stable_sum(np.array([inf, -inf])))
    assert N.l2_norm(np.array([])) == 0
    assert N.l2_norm(np.array([nan, inf])) == inf
    assert math.isnan(N.l2_norm(np.array([nan, 1.0])))
    m, v = N.mean_and_variance(np.array([]))
    assert math.isnan(m) and math.isnan(v)
    assert math.isnan(N.mean_and_variance(np.array([1.0]), ddof=1)[1])
    assert math.isnan(N.cross_entropy(np.zeros((0, 3)), np.zeros(0, np.int64)))
    assert N.cross_entropy(np.zeros((0, 3)), np.zeros(0, np.int64), reduction="sum") == 0


# --------------------------------------------------------------------------- kinds and dtypes
TORCH_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
NP_DTYPES = [np.float16, np.float32, np.float64]


def _calls():
    return {
        "sigmoid": lambda x: N.sigmoid(x), "log_sigmoid": lambda x: N.log_sigmoid(x),
        "softplus": lambda x: N.softplus(x), "log1mexp": lambda x: N.log1mexp(-abs(x) - 1),
        "logsumexp": lambda x: N.logsumexp(x, -1), "log_softmax": lambda x: N.log_softmax(x, -1),
        "softmax": lambda x: N.softmax(x, -1), "stable_sum": lambda x: N.stable_sum(x, 1),
        "mean_and_variance": lambda x: N.mean_and_variance(x, 0)[1],
        "l2_norm": lambda x: N.l2_norm(x, -1),
    }


@pytest.mark.parametrize("dtype", NP_DTYPES)
@pytest.mark.parametrize("name", list(_calls()))
def test_numpy_kind_and_dtype(name, dtype):
    x = np.linspace(-3, 3, 12).reshape(3, 4).astype(dtype)
    for mod in (N, naive):
        out = _calls()[name](x) if mod is N else _naive_call(name, x)
        assert isinstance(out, (np.ndarray, np.generic)) and out.dtype == dtype, (mod, out)


def _naive_call(name, x):
    f = getattr(naive, name)
    if name == "log1mexp":
        return f(-abs(x) - 1)
    if name == "mean_and_variance":
        return f(x, 0)[1]
    if name == "stable_sum":
        return f(x, 1)
    if name == "l2_norm":
        return f(x, -1)
    return f(x)


@pytest.mark.parametrize("dtype", TORCH_DTYPES)
@pytest.mark.parametrize("name", list(_calls()))
def test_torch_kind_and_dtype(name, dtype):
    x = torch.linspace(-3, 3, 12).reshape(3, 4).to(dtype)
    for out in (_calls()[name](x), _naive_call(name, x)):
        assert isinstance(out, torch.Tensor) and out.dtype == dtype


@pytest.mark.parametrize("dtype", TORCH_DTYPES)
def test_torch_losses_dtype_and_value(dtype):
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((6, 5))).to(dtype)
    t = torch.from_numpy(rng.integers(0, 5, 6))
    p = torch.rand(6, 5, dtype=torch.float64).to(dtype)
    ce = N.cross_entropy(x, t)
    bce = N.binary_cross_entropy_with_logits(x, p)
    assert ce.dtype == dtype and bce.dtype == dtype
    tol = 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-6
    ref_ce = torch.nn.functional.cross_entropy(x.double(), t)
    ref_bce = torch.nn.functional.binary_cross_entropy_with_logits(x.double(), p.double())
    assert abs(float(ce) - float(ref_ce)) <= tol * float(ref_ce)
    assert abs(float(bce) - float(ref_bce)) <= tol * float(ref_bce)


# --------------------------------------------------------------------------- gradients
EXTREME = [1e4, -1e4, 700.0, -700.0, 0.5, -745.0, 40.0, -40.0, 1e-300, 0.0]


def _t(vals, requires_grad=True):
    return torch.tensor(vals, dtype=torch.float64, requires_grad=requires_grad)


@pytest.mark.parametrize("name", ["sigmoid", "log_sigmoid", "softplus"])
def test_gradcheck_elementwise_extremes(name):
    assert torch.autograd.gradcheck(getattr(N, name), (_t(EXTREME),))


def test_gradcheck_log1mexp():
    assert torch.autograd.gradcheck(N.log1mexp, (_t([-1e4, -700.0, -40, -1.0, -0.7, -0.1,
                                                     -1e-3]),))


@pytest.mark.parametrize("fn", [N.logsumexp, N.log_softmax, N.softmax])
def test_gradcheck_lse_family_extremes(fn):
    x = _t([[1e4, -1e4, 0.0], [700.0, -700.0, 3.0], [-745.0, -745.5, -744.0],
            [0.1, 0.2, 0.3]])
    assert torch.autograd.gradcheck(lambda z: fn(z, 1), (x,))
    assert torch.autograd.gradcheck(lambda z: fn(z, 0), (x,))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_losses(reduction):
    x = _t([[1e4, -1e4, 0.0], [700.0, -700.0, 3.0], [0.5, -0.5, 2.0]])
    t = torch.tensor([1, 0, 2])
    assert torch.autograd.gradcheck(lambda z: N.cross_entropy(z, t, reduction=reduction), (x,))
    p = _t([[0.01, 0.99, 0.3], [0.6, 0.02, 0.5], [0.2, 0.9, 0.97]])  # gradcheck moves p
    assert torch.autograd.gradcheck(
        lambda z, q: N.binary_cross_entropy_with_logits(z, q, reduction), (x, p))
    hard = _t([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], requires_grad=False)
    assert torch.autograd.gradcheck(
        lambda z: N.binary_cross_entropy_with_logits(z, hard, reduction), (x,))


def test_gradcheck_accumulations():
    x = _t([[1e3 + 1, 1e3 - 2, 1e3 + 0.5], [1.0, -2.0, 3.0]])
    assert torch.autograd.gradcheck(lambda z: N.stable_sum(z, 1), (x,))
    assert torch.autograd.gradcheck(lambda z: N.mean_and_variance(z, 1, ddof=1), (x,))
    assert torch.autograd.gradcheck(lambda z: N.l2_norm(z, 0), (x,))
    z = _t([0.0, 0.0])
    N.l2_norm(z).backward()
    assert torch.equal(z.grad, torch.zeros(2, dtype=torch.float64))


def test_gradients_finite_float32_extremes():
    x = torch.tensor([[1e4, -1e4, 0.0], [88.0, -104.0, 3e38]], requires_grad=True)
    for fn in (N.logsumexp, N.log_softmax, N.softmax, N.sigmoid, N.softplus, N.log_sigmoid):
        x.grad = None
        fn(x).sum().backward()
        assert torch.isfinite(x.grad).all(), fn.__name__
    x.grad = None
    N.cross_entropy(x, torch.tensor([1, 2])).backward()
    assert torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------- accumulations
def test_stable_sum_compensated():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(1000) * 1e16, [1.0, 2.0, 0.5]])
    x = np.concatenate([x, -x[:1000]])
    rng.shuffle(x)
    assert N.stable_sum(x) == 3.5 == math.fsum(x)
    assert naive.stable_sum(x) != 3.5
    y = rng.standard_normal((7, 333)) * 10.0 ** rng.integers(-5, 5, (7, 333))
    np.testing.assert_array_equal(N.stable_sum(y, 1), [math.fsum(r) for r in y])
    f32 = rng.standard_normal(10001).astype(np.float32)
    assert N.stable_sum(f32) == np.float32(math.fsum(f32.astype(np.float64)))


def _exact_var(xs, ddof=0):
    fr = [Fraction(float(v)) for v in xs]
    mean = sum(fr) / len(fr)
    return mean, sum((v - mean) ** 2 for v in fr) / (len(fr) - ddof)


@pytest.mark.parametrize("offset", [0.0, 1e4, 1e9, 1e15, -3e100])
def test_mean_and_variance_no_cancellation(offset):
    rng = np.random.default_rng(1)
    x = offset + rng.standard_normal(200)
    mean, var = N.mean_and_variance(x, ddof=1)
    em, ev = _exact_var(x, 1)
    assert abs(Fraction(float(mean)) - em) <= abs(em) * Fraction(2**-52) + Fraction(2**-1074)
    assert abs(Fraction(float(var)) - ev) <= ev * Fraction(4 * 2**-52)
    if offset >= 1e9:  # the textbook formula is useless here
        _, nv = naive.mean_and_variance(x, ddof=1)
        assert abs(nv - float(ev)) > 0.1 * float(ev)


def test_mean_and_variance_float32_and_dims():
    rng = np.random.default_rng(2)
    x = (1e4 + rng.standard_normal((5, 50))).astype(np.float32)
    mean, var = N.mean_and_variance(x, 1)
    assert mean.dtype == var.dtype == np.float32 and mean.shape == (5,)
    for i in range(5):
        _, ev = _exact_var(x[i])
        assert var[i] == np.float32(float(ev)) or abs(var[i] - float(ev)) <= 2**-23 * float(ev)
    m2, v2 = N.mean_and_variance(x, 1, keepdim=True)
    assert m2.shape == (5, 1) and v2.shape == (5, 1)
    big = np.array([np.finfo(np.float64).max] * 4)
    assert N.mean_and_variance(big)[0] == big[0]


@pytest.mark.parametrize("scale", [1.0, 2.0**1000, 2.0**-1070, 1e-310, 1e300])
def test_l2_norm_no_over_underflow(scale):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(50) * scale
    mp = A._mp()
    exact = mp.sqrt(mp.fsum(mp.mpf(float(v)) ** 2 for v in x))
    got = N.l2_norm(x)
    assert np.isfinite(got) and got > 0
    assert A.ulp_error(float(got), exact, "float64") <= 2
    if scale > 1e200 or scale < 1e-200:
        n = naive.l2_norm(x)
        assert n == 0 or not np.isfinite(n) or abs(n - got) > 1e-3 * got


def test_l2_norm_float32_near_limits():
    f = np.finfo(np.float32)
    x = np.array([f.max / 2, f.max / 2], np.float32)
    assert N.l2_norm(x) == np.float32(float(f.max / 2) * math.sqrt(2))
    tiny = np.array([f.smallest_subnormal] * 4, np.float32)
    assert N.l2_norm(tiny) == 2 * f.smallest_subnormal
    assert naive.l2_norm(x) == np.inf and naive.l2_norm(tiny) == 0


# --------------------------------------------------------------------------- naive twins fail
def test_naive_reproduces_failures():
    x = np.array([1000.0, 1000.0])
    assert naive.logsumexp(x) == inf and N.logsumexp(x, -1) == 1000 + math.log(2)
    assert np.isnan(naive.softmax(x)).all()
    assert naive.log_sigmoid(np.array(-800.0)) == -inf
    assert naive.softplus(np.array(800.0)) == inf
    assert naive.log1mexp(np.array(-1e-17)) == -inf
    assert naive.binary_cross_entropy_with_logits(np.array([40.0]), np.array([0.0])) == inf
    t = torch.tensor([1000.0, 0.0])
    assert torch.isnan(naive.softmax(t)).any() and not torch.isnan(N.softmax(t, -1)).any()


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("bad,exc,frag", [
    (np.arange(3), TypeError, "'x' must be a floating-point array"),
    (np.array([1 + 2j]), TypeError, "complex"),
    (torch.arange(3), TypeError, "'x' must be a floating-point tensor"),
    (np.array([True]), TypeError, "got dtype bool"),
])
def test_bad_dtype(bad, exc, frag):
    # (logsumexp/softmax promote integer input as scipy/torch do:
    # tests/test_numerics_spellings.py)
    for fn in (N.sigmoid, N.stable_sum, N.l2_norm):
        with pytest.raises(exc, match=frag):
            fn(bad)


def test_bad_arguments_messages():
    x = np.zeros((2, 3))
    cases = [
        (lambda: N.logsumexp(x, dim=2), ValueError, "'dim' must be in \\[-2, 1\\]"),
        (lambda: N.logsumexp(x, dim=1.0), ValueError, "'dim' must be an integer"),
        (lambda: N.cross_entropy(x, np.array([0, 3])), ValueError,
         r"class indices in \[0, 3\); got values in \[0, 3\]"),
        (lambda: N.cross_entropy(x, np.array([0, 1, 2])), ValueError, "shape"),
        (lambda: N.cross_entropy(x, np.array([0.0, 1.0])), TypeError, "integer"),
        (lambda: N.cross_entropy(x, np.array([0, 1]), reduction="avg"), ValueError,
         "'reduction' must be 'mean', 'sum' or 'none'; got 'avg'"),
        (lambda: N.binary_cross_entropy_with_logits(x, np.full((2, 3), -0.5)), ValueError,
         r"'targets' must lie in \[0, 1\]; got values in \[-0.5, -0.5\]. Pass probabilities."),
        (lambda: N.binary_cross_entropy_with_logits(x, np.zeros(3)), ValueError,
         "'targets' must have the shape of 'logits'"),
        (lambda: N.binary_cross_entropy_with_logits(x, torch.zeros(2, 3)), TypeError,
         "NumPy array like 'logits'"),
        (lambda: N.mean_and_variance(x, ddof=-1), ValueError, "'ddof'"),
    ]
    for call, exc, frag in cases:
        with pytest.raises(exc, match=frag) as info:
            call()
        assert "\n" not in str(info.value)
        assert str(info.value).split(":")[0] in (
            "logsumexp", "cross_entropy", "binary_cross_entropy_with_logits",
            "mean_and_variance")


def test_all_exported():
    assert set(N.__all__) == set(naive.__all__)
    for name in N.__all__:
        assert callable(getattr(N, name)) and getattr(N, name).__doc__


# ------------------------------------------------------------ fused loss-and-gradient kernel
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_log_loss_and_grad_matches_the_separate_functions(dtype):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((257, 7)) * 10.0 ** rng.integers(-3, 3, (257, 7))).astype(dtype)
    x[0, :4] = [np.inf, -np.inf, 0.0, 800.0]
    t = (rng.random((257, 1)) < 0.5).astype(dtype)
    loss, grad = N.log_loss_and_grad(x, t)
    tb = np.broadcast_to(t, x.shape)
    # the loss is the element-wise BCE, bit for bit
    np.testing.assert_array_equal(loss, N.binary_cross_entropy_with_logits(x, tb, "none"))
    # the gradient against mpmath: with hard labels sigmoid(x) - t is +-sigmoid(-|x|),
    # computed without cancellation, so within 2 ulp even where sigmoid(x) rounds to 1
    import mpmath

    mpmath.mp.dps = 40
    finite = np.isfinite(x)
    xs, ts = x[finite].astype(np.float64), tb[finite].astype(np.float64)
    # sigmoid(x) - 1 = -sigmoid(-x): the reference must not cancel either
    ref = np.array([float(-1 / (1 + mpmath.exp(mpmath.mpf(v))) if w == 1
                          else 1 / (1 + mpmath.exp(-mpmath.mpf(v))))
                    for v, w in zip(xs.tolist(), ts.tolist())])
    got = grad[finite].astype(np.float64)
    tiny = np.finfo(dtype).tiny
    ulp = np.spacing(np.maximum(np.abs(ref), tiny).astype(dtype)).astype(np.float64)
    assert np.max(np.abs(got - ref) / ulp) <= 2.0
    assert np.all(grad[~finite] == np.where(x[~finite] > 0, 1.0, 0.0) - tb[~finite])
    assert loss.dtype == x.dtype and grad.dtype == x.dtype


def test_log_loss_and_grad_torch_16_bit_rounds_once():
    x = torch.linspace(-20, 20, 101, dtype=torch.float32).reshape(-1, 1)
    t = (x > 0.3).to(torch.float32)
    xb = x.to(torch.bfloat16)
    loss16, grad16 = N.log_loss_and_grad(xb, t.to(torch.bfloat16))
    assert loss16.dtype == torch.bfloat16 and grad16.dtype == torch.bfloat16
    x64, t64 = xb.double().numpy(), t.double().numpy()
    ref_loss = np.logaddexp(0, x64) - t64 * x64
    ref_grad = 1 / (1 + np.exp(-x64)) - t64
    for got, ref in ((loss16, ref_loss), (grad16, ref_grad)):
        got = got.double().numpy()
        # bfloat16 has 8 significant bits: 1 ulp = 2^-7 relative to the power of two below
        ulp = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(ref), 1e-30))) - 7)
        assert np.all(np.abs(got - ref) <= ulp)


def test_log_loss_and_grad_rejects_bad_targets():
    with pytest.raises(ValueError, match="'targets' must lie in \\[0, 1\\]"):
        N.log_loss_and_grad(np.zeros(3), np.array([0.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="does not broadcast"):
        N.log_loss_and_grad(np.zeros((3, 2)), np.zeros(4))


def test_log_loss_and_grad_hard_and_fractional_paths_agree():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((300, 5)) * 10.0 ** rng.integers(-2, 3, (300, 5))
    x[0, :3] = [np.inf, -np.inf, -0.0]
    t = (rng.random((300, 1)) < 0.5).astype(np.float64)
    hard = _core.bce_and_grad(x, t)
    # nudge one target off {0, 1} and back: forces the general (masked) path
    t_frac = t.copy()
    t_frac[-1, 0] = 0.5
    loss_g, grad_g = _core.bce_and_grad(x, t_frac)
    np.testing.assert_array_equal(hard[0][:-1], loss_g[:-1])  # loss: identical bits
    np.testing.assert_allclose(hard[1][:-1], grad_g[:-1], rtol=4e-16, atol=0)
