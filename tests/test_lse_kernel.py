"""The C float32 log-sum-exp kernel (numerics/_lsekernel.c) against mpmath and against
the NumPy kernel it replaces, on every instruction-set copy this CPU runs.

The contract is the one of tests/test_numerics.py (c = err / (u B) <= 2, <= 2 ulp where
kappa <= 1); here the rows are chosen to hit the kernel's vector lanes and tails
(lengths 1-40 and 1000), ties for the max, terms below float32's normal range, terms past
its e^-700 cut-off and rows it hands back to the NumPy kernel (NaN, +-inf).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _helpers import c_compiler_here

from stability_lab import numerics as N
from stability_lab.numerics import _core
from stability_lab.numerics import accuracy as A

PATHS = ["numpy", *_core.kernel_targets()]


def test_kernel_is_built_where_a_compiler_is():
    """`pip install -e .` builds the kernel; without it float32 log_softmax is slower
    (docs/numerics.md), so a silently failed build must not pass unnoticed."""
    if not c_compiler_here():
        pytest.skip("no C compiler here: the kernel is optional (setup.py)")
    assert _core._lsekernel is not None, (
        "the C kernel is not built: run `pip install -e .` in the repository root")
    targets = _core.kernel_targets()
    assert targets[-1] == "generic"
    if "avx2+fma" in targets:  # the vector copies are the default; generic is not
        assert _core.DEFAULT_KERNEL == targets[0] != "generic"


def test_float32_and_half_inputs_go_through_the_default_kernel(monkeypatch):
    if _core.DEFAULT_KERNEL == "numpy":
        pytest.skip("no vector copy of the C kernel here (or no compiler): "
                    "float32 rows use the NumPy kernel by default")
    calls = []
    real = _core._lsekernel.lse_rows_f32

    def spy(*args):
        calls.append(args[-1])
        return real(*args)

    monkeypatch.setattr(_core._lsekernel, "lse_rows_f32", spy)
    x = np.random.default_rng(0).standard_normal((5, 7))
    N.log_softmax(x.astype(np.float32), -1)
    N.logsumexp(torch.from_numpy(x).to(torch.bfloat16), -1)
    N.cross_entropy(x.astype(np.float16), np.zeros(5, np.int64))
    assert calls == [_core.DEFAULT_KERNEL] * 3
    N.log_softmax(x, -1)  # float64: the NumPy kernel
    with _core.use_kernel("numpy"):
        N.log_softmax(x.astype(np.float32), -1)
    assert len(calls) == 3


@pytest.mark.parametrize("path", PATHS)
def test_float32_contract_on_lane_and_tail_rows(path):
    rows = A.kernel_rows("float32")
    with _core.use_kernel(path):
        res = A.reduction_errors("float32", rows)
    for name, (ulp_wc, c) in res.items():
        assert c <= 2.0, f"{path} {name}: err = {c:.2f} u B"
        assert ulp_wc <= 2.0, f"{path} {name}: {ulp_wc:.2f} ulp where kappa <= 1"


def _matrix(rng, rows, n):
    x = (rng.standard_normal((rows, n)) * rng.choice([0.1, 3.0, 40.0], (rows, 1)))
    return x.astype(np.float32)


@pytest.mark.parametrize("path", PATHS[1:])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 15, 16, 17, 31, 33, 1000])
def test_kernel_agrees_with_float64(path, n):
    """Whole matrices (the kernel loops over rows): within a few float32 ulp of the
    float64 result, which is far more accurate than float32 on these well-scaled rows."""
    rng = np.random.default_rng(n)
    x = _matrix(rng, 64, n)
    ref_lsm = N.log_softmax(x.astype(np.float64), -1)
    ref_lse = N.logsumexp(x.astype(np.float64), -1)
    with _core.use_kernel(path):
        lsm, lse = N.log_softmax(x, -1), N.logsumexp(x, -1)
    assert lsm.dtype == np.float32 and lse.dtype == np.float32
    u = 2.0**-24
    scale = np.abs(x.astype(np.float64) - x.max(1, keepdims=True)) + np.abs(ref_lse)[:, None]
    assert np.all(np.abs(lsm - ref_lsm) <= 4 * u * (np.abs(ref_lsm) + scale) + 1e-45)
    assert np.all(np.abs(lse - ref_lse) <= 4 * u * (np.abs(ref_lse) + np.abs(x).max(1)))


SPECIAL_ROWS = [
    [np.nan, 0.0, 1.0],
    [0.0, np.inf, 1.0],
    [np.inf, np.inf, -np.inf],
    [-np.inf, -np.inf, -np.inf],
    [-np.inf, 0.0, -1.0],  # finite max: the kernel's own row
    [np.inf, -np.inf, np.nan],
]


@pytest.mark.parametrize("path", PATHS[1:])
def test_special_rows_in_a_matrix_match_the_numpy_kernel(path):
    """Rows the kernel hands back are computed by the NumPy kernel and put back in their
    place; ordinary rows around them are untouched by that."""
    rng = np.random.default_rng(0)
    n = 19
    x = _matrix(rng, 40, n)
    where = [3, 4, 17, 18, 30, 39]
    for i, r in zip(where, SPECIAL_ROWS):
        x[i] = -5.0
        x[i, :3] = r
    with _core.use_kernel("numpy"):
        want_lsm, want_lse = N.log_softmax(x, -1), N.logsumexp(x, -1)
        want_ce = N.cross_entropy(x, np.arange(40) % n, reduction="none")
    with _core.use_kernel(path):
        got_lsm, got_lse = N.log_softmax(x, -1), N.logsumexp(x, -1)
        got_ce = N.cross_entropy(x, np.arange(40) % n, reduction="none")
    special = [3, 4, 17, 18, 39]  # row 30 has a finite max
    np.testing.assert_array_equal(got_lsm[special], want_lsm[special])
    np.testing.assert_array_equal(got_lse[special], want_lse[special])
    np.testing.assert_array_equal(got_ce[special], want_ce[special])
    np.testing.assert_allclose(got_lsm, want_lsm, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_lse, want_lse, rtol=1e-6, atol=1e-6)
    assert got_lsm[30, 0] == -np.inf and np.isfinite(got_lsm[30, 1:]).all()


@pytest.mark.parametrize("path", PATHS[1:])
def test_tiny_tail_needs_the_split(path):
    """lse([0, -30, ...]) = log1p(e^-30 + ...) ~ 1e-13: forming 1 + s first in float32
    gives 0; the kernel keeps the other terms apart from the max's 1."""
    x = np.array([[0.0, -30.0, -31.0, -95.0, -699.0, -701.0, -1e30, -3e38]], np.float32)
    ref = A.ref_lse_row(x[0].astype(np.float64))
    with _core.use_kernel(path):
        lse = float(N.logsumexp(x, -1)[0])
        lsm = N.log_softmax(x, -1)[0]
    assert A.ulp_error(lse, ref[0], "float32") <= 1
    assert A.ulp_error(float(lsm[0]), ref[1][0], "float32") <= 1


@pytest.mark.parametrize("path", PATHS[1:])
def test_ties_counted_once(path):
    """Several entries equal to the max: exactly one is the split-off 1, the others add
    exactly 1 each (lse of k equal values is a + log(k))."""
    for k in (2, 3, 8, 17):
        x = np.full((1, 40), -np.inf, np.float32)
        x[0, np.linspace(0, 39, k).astype(int)] = 2.5
        with _core.use_kernel(path):
            lse = float(N.logsumexp(x, -1)[0])
        want = np.float32(2.5 + np.log(k))
        assert abs(lse - want) <= float(np.spacing(want)), (k, lse, want)


def test_torch_tensors_use_it_and_keep_their_gradient():
    x = torch.randn(50, 33, dtype=torch.float32, requires_grad=True)
    y = N.log_softmax(x, -1)
    assert y.dtype == torch.float32
    (y * torch.arange(33.0)).sum().backward()
    ref = torch.log_softmax(x.detach().double(), -1)
    torch.testing.assert_close(y.detach().double(), ref, rtol=0, atol=4e-6)
    xd = x.detach().double().requires_grad_(True)
    (torch.log_softmax(xd, -1) * torch.arange(33.0)).sum().backward()
    torch.testing.assert_close(x.grad.double(), xd.grad, rtol=1e-5, atol=1e-5)


def test_bad_buffers_are_refused():
    k = _core._lsekernel
    if k is None:  # no compiler here: only the NumPy kernel exists
        assert _core.kernel_targets() == ()
        pytest.skip("the C kernel is not built: no buffers to check")
    x = np.zeros((2, 3), np.float32)
    m, L, sp = np.empty(2, np.float32), np.empty(2, np.float32), np.empty(2, np.uint8)
    with pytest.raises(ValueError, match="'x'"):
        k.lse_rows_f32(x.astype(np.float64), 2, 3, m, L, None, sp)
    with pytest.raises(ValueError, match="'m'"):
        k.lse_rows_f32(x, 2, 3, np.empty(3, np.float32), L, None, sp)
    with pytest.raises(ValueError, match="not available"):
        k.lse_rows_f32(x, 2, 3, m, L, None, sp, "sse9")
    with pytest.raises(ValueError, match="not available"):
        with _core.use_kernel("sse9"):
            pass
    assert k.lse_rows_f32(x, 2, 3, m, L, None, sp) == 0
    np.testing.assert_array_equal(m, 0)
    np.testing.assert_allclose(L, np.log(3), rtol=1e-7)


def test_concurrent_calls_from_threads_agree():
    """The kernel releases the GIL; calls from several threads give the same bits."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(5)
    xs = [_matrix(rng, 300, 257) for _ in range(8)]
    want = [N.log_softmax(x, -1) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: N.log_softmax(x, -1), xs))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
