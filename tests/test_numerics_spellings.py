"""logsumexp / softmax / log_softmax in scipy's and torch's spellings, scipy as the
reference at test time: axis/dim, keepdims/keepdim, axis=None and tuples, weights b=
(zeros, negatives) with return_sign=, empty input, inf/NaN entries, integer promotion,
complex input refused with a clear error. The default axis is None (all elements), as
scipy's (docs/numerics.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import special as sp

from stability_lab import numerics as N
from stability_lab.errors import UsageError

inf, nan = np.inf, np.nan
RNG = np.random.default_rng(16)
X3 = RNG.standard_normal((3, 4, 5)) * 10


def same(got, want, rtol=1e-14, atol=0.0):
    """Values, shape and dtype as scipy's (NaN == NaN), to a few ulp. log_softmax is
    compared with an absolute tolerance: scipy's log(sum) loses the relative accuracy of
    entries near 0 that ours keeps (log1p split), so the two differ there by ~1e-16."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)


def test_default_axis_is_all_elements_as_scipy():
    a = np.ones((2, 2))
    same(N.logsumexp(a), sp.logsumexp(a))  # log(4), not [log 2, log 2]
    same(N.softmax(X3), sp.softmax(X3))
    same(N.log_softmax(X3), sp.log_softmax(X3), atol=1e-13)
    t = torch.from_numpy(X3)
    assert torch.allclose(N.logsumexp(t), torch.logsumexp(t.reshape(-1), 0), rtol=1e-14)


@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 2), (2, 0), (0, 1, 2), (-1, 1)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_axes_and_keepdims_match_scipy(axis, keepdims):
    same(N.logsumexp(X3, axis=axis, keepdims=keepdims),
         sp.logsumexp(X3, axis=axis, keepdims=keepdims))
    same(N.logsumexp(X3, dim=axis, keepdim=keepdims),
         sp.logsumexp(X3, axis=axis, keepdims=keepdims))
    same(N.softmax(X3, axis), sp.softmax(X3, axis))
    same(N.log_softmax(X3, dim=axis), sp.log_softmax(X3, axis), atol=1e-13)


@pytest.mark.parametrize("dim", [0, 1, -1, (0, 2)])
def test_torch_spelling_on_tensors_matches_torch(dim):
    t = torch.from_numpy(X3).float()
    ref = torch.logsumexp(t.double(), dim, keepdim=True).float()
    assert torch.allclose(N.logsumexp(t, dim=dim, keepdim=True), ref, rtol=3e-7, atol=0)
    if isinstance(dim, int):
        assert torch.allclose(N.softmax(t, dim=dim), torch.softmax(t.double(), dim).float(),
                              rtol=3e-7, atol=1e-30)


def test_two_spellings_at_once():
    assert N.logsumexp(X3, axis=1, dim=1).shape == (3, 5)
    with pytest.raises(UsageError, match="'axis' and 'dim' are two spellings"):
        N.logsumexp(X3, axis=0, dim=1)
    with pytest.raises(UsageError, match="'keepdims' and 'keepdim'"):
        N.logsumexp(X3, keepdims=True, keepdim=False)
    with pytest.raises(UsageError, match="repeated axis"):
        N.logsumexp(X3, axis=(0, -3))
    with pytest.raises(UsageError, match="Pass keepdims=True by keyword"):
        N.logsumexp(X3, 1, True)  # torch's positional keepdim lands on scipy's b


def test_empty_over_all_axes():
    """(scipy 1.17 raises IndexError for these; the sum of no terms is 0, log 0 = -inf)"""
    for shape, axis, want in (((3, 0), None, ()), ((2, 0, 3), (0, 1), (3,))):
        got = N.logsumexp(np.empty(shape), axis=axis)
        assert np.shape(got) == want and np.all(np.asarray(got) == -inf)
        got = N.logsumexp(np.empty(shape), axis=axis, keepdims=True)
        assert np.all(np.asarray(got) == -inf) and np.ndim(got) == len(shape)
    assert N.softmax(np.empty((0, 3)), 1).shape == (0, 3)


@pytest.mark.parametrize("shape,axis", [((0,), None), ((0,), 0), ((0, 3), 0), ((0, 3), 1),
                                        ((3, 0), 1)])
def test_empty(shape, axis):
    a = np.empty(shape)
    for keepdims in (False, True):
        same(N.logsumexp(a, axis=axis, keepdims=keepdims),
             sp.logsumexp(a, axis=axis, keepdims=keepdims))
        got, sgn = N.logsumexp(a, axis=axis, keepdims=keepdims, return_sign=True)
        want, wsgn = sp.logsumexp(a, axis=axis, keepdims=keepdims, return_sign=True)
        same(got, want)
        same(sgn, wsgn)


SPECIAL_ROWS = [
    [-inf, -inf], [inf, 1.0], [inf, inf], [-inf, inf], [nan, 1.0], [nan, inf], [1.0, -inf],
    [-inf], [inf], [nan], [1000.0, 1000.0], [-1000.0, -1e4], [0.0, -30.0],
]


@pytest.mark.parametrize("row", SPECIAL_ROWS)
def test_inf_and_nan_entries(row):
    a = np.array(row)
    with np.errstate(all="ignore"):
        same(N.logsumexp(a), sp.logsumexp(a))
        same(N.logsumexp(a, return_sign=True), sp.logsumexp(a, return_sign=True))
        if np.isfinite(a).all():  # lab and scipy differ on +inf slices (docstrings)
            same(N.softmax(a), sp.softmax(a))
            same(N.log_softmax(a), sp.log_softmax(a), atol=1e-13)


WEIGHTS = [
    ([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]),
    ([1.0, 2.0, 3.0], [0.5, 0.0, 2.0]),
    ([inf, 2.0, 3.0], [0.0, 1.0, 1.0]),    # a zero weight drops an inf entry
    ([nan, 2.0], [0.0, 1.0]),               # ... and a NaN one
    ([1.0, 2.0], [1.0, -1.0]),              # negative sum: NaN, or sign -1
    ([2.0, 1.0], [1.0, -1.0]),
    ([1.0, 1.0], [1.0, -1.0]),              # exact cancellation: log 0 = -inf
    ([1000.0, 1000.0], [-2.0, 1.0]),
    ([1.0, 2.0, 3.0], [0.0, 0.0, 0.0]),     # all weights zero
    ([0.0, -inf], [-1.0, 5.0]),
    ([inf, 1.0], [-1.0, 1.0]),
    ([5.0, 5.0, 1.0], [1.0, 2.0, -1e-3]),    # a tie at the max
]


@pytest.mark.parametrize("a,b", WEIGHTS)
def test_weights_and_sign(a, b):
    a, b = np.array(a), np.array(b)
    with np.errstate(all="ignore"):
        same(N.logsumexp(a, b=b), sp.logsumexp(a, b=b))
        got, sgn = N.logsumexp(a, b=b, return_sign=True)
        want, wsgn = sp.logsumexp(a, b=b, return_sign=True)
    same(got, want)
    same(sgn, wsgn)


def test_weights_broadcast_and_reduce_over_axes():
    b = RNG.uniform(-1, 2, size=(4, 1))
    for axis in (None, 0, 1, (1, 2)):
        for keepdims in (False, True):
            with np.errstate(invalid="ignore"):
                same(N.logsumexp(X3, axis=axis, b=b, keepdims=keepdims),
                     sp.logsumexp(X3, axis=axis, b=b, keepdims=keepdims), rtol=1e-13)
            for g, w in zip(N.logsumexp(X3, axis, b, keepdims, True),
                            sp.logsumexp(X3, axis, b, keepdims, True)):
                same(g, w, rtol=1e-13)
    same(N.logsumexp([1.0, 2.0], b=3), sp.logsumexp([1.0, 2.0], b=3))
    # weights broadcast the input too (scipy broadcasts both)
    same(N.logsumexp(np.array([1.0, 2.0]), axis=1, b=np.ones((3, 2))),
         sp.logsumexp(np.array([1.0, 2.0]), axis=1, b=np.ones((3, 2))))
    with pytest.raises(UsageError, match="does not broadcast"):
        N.logsumexp(X3, b=np.ones(3))


def test_weighted_sums_keep_their_digits():
    """log(sum b e^x) where the terms nearly cancel: scipy's split keeps it accurate,
    and so must ours (float64 reference from mpmath)."""
    import mpmath

    mpmath.mp.dps = 50
    a = np.array([0.0, -1e-10, -40.0])
    b = np.array([1.0, -1.0, 3.0])
    terms = [mpmath.mpf(bi) * mpmath.exp(mpmath.mpf(ai)) for ai, bi in zip(a, b)]
    ref = float(mpmath.log(sum(terms)))
    # the condition number of log|sum| in the terms: sum|t_i| / |sum t_i| (~2e10 here)
    cond = float(sum(abs(t) for t in terms) / abs(sum(terms)))
    got = float(N.logsumexp(a, b=b))
    assert abs(got - ref) <= 4 * 2.0**-53 * cond
    assert abs(float(sp.logsumexp(a, b=b)) - ref) <= 4 * 2.0**-53 * cond


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint16, np.bool_])
def test_integer_input_is_promoted_as_scipy(dtype):
    a = np.arange(6).reshape(2, 3).astype(dtype)
    for axis in (None, 0, 1):
        same(N.logsumexp(a, axis=axis), sp.logsumexp(a, axis=axis))  # float64
        if dtype is np.bool_:  # scipy's softmax raises on bool (bool subtract)
            assert N.softmax(a, axis).dtype == np.exp(a).dtype
            continue
        # softmax/log_softmax: np.exp's promotion (int8 -> float16, int16 -> float32)
        # (scipy's own x - max(x) wraps around for unsigned input: compare with the
        # promoted array there)
        ref_in = a.astype(np.exp(a).dtype) if a.dtype.kind == "u" else a
        eps = np.finfo(np.exp(a).dtype).eps
        same(N.softmax(a, axis), sp.softmax(ref_in, axis), rtol=4 * eps)
        same(N.log_softmax(a, axis), sp.log_softmax(ref_in, axis), rtol=4 * eps, atol=4 * eps)
    same(N.logsumexp([1, 2, 3]), sp.logsumexp([1, 2, 3]))
    same(N.logsumexp(a, b=np.ones(3, np.int16)), sp.logsumexp(a, b=np.ones(3, np.int16)))


def test_dtypes_follow_scipy_promotion():
    for dt in (np.float16, np.float32, np.float64):
        a = X3.astype(dt)
        same(N.logsumexp(a, axis=1), sp.logsumexp(a, axis=1), rtol=np.finfo(dt).eps * 4)
        b = np.ones(5, np.float32)
        same(N.logsumexp(a, axis=-1, b=b), sp.logsumexp(a, axis=-1, b=b),
             rtol=np.finfo(np.result_type(dt, np.float32)).eps * 4)
    assert N.logsumexp(X3.astype(np.float32), b=2.0).dtype == np.float32  # weak scalar


def test_integer_tensors_are_promoted_as_torch():
    t = torch.arange(6).reshape(2, 3)
    got = N.logsumexp(t, dim=1)
    assert got.dtype == torch.logsumexp(t, 1).dtype == torch.float32
    assert torch.allclose(got, torch.logsumexp(t, 1))
    assert N.softmax(t, dim=0).dtype == torch.float32


def test_complex_input_is_refused_clearly():
    with pytest.raises(TypeError, match="real floating-point.*complex"):
        N.logsumexp(np.array([1 + 1j, 2.0]))
    with pytest.raises(TypeError, match="complex"):
        N.softmax(torch.tensor([1 + 1j]))
    with pytest.raises(TypeError, match="'b' must be a real"):
        N.logsumexp(np.array([1.0, 2.0]), b=np.array([1j, 1.0]))


def test_weighted_gradients_match_torch_autograd():
    x = torch.tensor([[0.3, -2.0, 1.5], [4.0, 4.0, -1.0]], dtype=torch.float64,
                     requires_grad=True)
    b = torch.tensor([[1.0, 0.5, 2.0], [3.0, -1.0, 0.25]], dtype=torch.float64,
                     requires_grad=True)
    out, sgn = N.logsumexp(x, dim=1, b=b, return_sign=True)
    (out * torch.tensor([1.0, -2.0], dtype=torch.float64)).sum().backward()
    x2, b2 = x.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    ref = torch.log((b2 * torch.exp(x2)).sum(1).abs())
    (ref * torch.tensor([1.0, -2.0], dtype=torch.float64)).sum().backward()
    assert torch.allclose(out, ref.detach(), rtol=1e-14)
    assert torch.equal(sgn, torch.sign((b2 * torch.exp(x2)).sum(1)).detach())
    assert torch.allclose(x.grad, x2.grad, rtol=1e-12)
    assert torch.allclose(b.grad, b2.grad, rtol=1e-12)


@pytest.mark.parametrize("dim", [None, (0, 2), 1])
def test_tuple_and_none_dims_have_gradients(dim):
    x = torch.from_numpy(X3).requires_grad_()
    g = torch.from_numpy(RNG.standard_normal(X3.shape))
    for ours, ref in ((N.log_softmax, torch.log_softmax), (N.softmax, torch.softmax)):
        xr = x.detach().clone().requires_grad_()
        flat = xr.reshape(-1) if dim is None else xr
        (ours(x, dim=dim) * g).sum().backward()
        if dim is None:
            (ref(flat, 0).reshape(X3.shape) * g).sum().backward()
        elif isinstance(dim, tuple):
            (torch.exp(xr - torch.logsumexp(xr, dim, keepdim=True)) * g).sum().backward() \
                if ours is N.softmax else \
                ((xr - torch.logsumexp(xr, dim, keepdim=True)) * g).sum().backward()
        else:
            (ref(xr, dim) * g).sum().backward()
        assert torch.allclose(x.grad, xr.grad, rtol=1e-10, atol=1e-12)
        x.grad = None
    xr = x.detach().clone().requires_grad_()
    N.logsumexp(x, dim=dim).sum().backward()
    (torch.logsumexp(xr, dim if dim is not None else (0, 1, 2))).sum().backward()
    assert torch.allclose(x.grad, xr.grad, rtol=1e-12)
