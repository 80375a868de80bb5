"""The forward passes of the public functions (private): checked input in, the NumPy
kernels of :mod:`stability_lab.numerics._core` in the compute dtype, the input's kind and
dtype out.

The public functions of :mod:`stability_lab.numerics` call these for plain values, and
the autograd wrappers of :mod:`stability_lab.numerics._torch` call them as the forward
of each ``torch.autograd.Function``: one implementation of every forward, and neither
caller imports the other. Arguments are already validated and normalised (``like`` from
``check_float``, ``axes`` sorted, ``dim`` non-negative).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stability_lab.numerics import _core
from stability_lab.numerics._backend import (
    ACCUMULATE,
    ELEMENTWISE,
    REDUCE,
    SOFTMAX,
    Like,
    from_compute,
    to_compute,
)

#: the element-wise functions and their NumPy kernels
ELEMENTWISE_KERNELS = {
    "sigmoid": _core.sigmoid,
    "softplus": _core.softplus,
    "log_sigmoid": _core.log_sigmoid,
    "log1mexp": _core.log1mexp,
}


def elementwise(kernel, x: Any, like: Like):
    """``kernel`` applied element-wise in the ELEMENTWISE compute dtype."""
    a = to_compute(x, like, ELEMENTWISE)
    return from_compute(kernel(a), like)


def lse(x: Any, like: Like, axes: tuple[int, ...] | None, keepdim: bool):
    """Log-sum-exp over ``axes`` (None: all elements)."""
    a = to_compute(x, like, REDUCE)
    shape = a.shape
    rows, _ = _core.to_rows(a.reshape(shape or (1,)), axes)
    m, big_l = _core.lse_rows(rows)
    out = _core.from_rows_reduced(m + big_l, shape or (1,), axes, keepdim and bool(shape))
    return from_compute(out.reshape(()) if not shape else out, like)


def lse_weighted(x: Any, w: Any, like: Like, axes: tuple[int, ...] | None,
                 keepdim: bool, return_sign: bool):
    """Weighted log-sum-exp log|sum w exp(x)| over ``axes``; with ``return_sign`` the
    pair (log|sum|, sign), else NaN where the sum is negative."""
    a = to_compute(x, like, REDUCE)
    wa = to_compute(w, like, REDUCE)
    shape = a.shape
    rows, _ = _core.to_rows(a.reshape(shape or (1,)), axes)
    wrows, _ = _core.to_rows(wa.reshape(shape or (1,)), axes)
    out, sgn = _core.lse_weighted_rows(rows, wrows)
    if not return_sign:
        out[sgn < 0] = np.nan
    keep = keepdim and bool(shape)
    res = []
    for r in ((out, sgn) if return_sign else (out,)):
        r = _core.from_rows_reduced(r, shape or (1,), axes, keep)
        res.append(from_compute(r.reshape(()) if not shape else r, like))
    return tuple(res) if return_sign else res[0]


def log_softmax(x: Any, like: Like, axes: tuple[int, ...] | None):
    """log softmax over ``axes``, from the same split as :func:`lse`."""
    a = to_compute(x, like, REDUCE)
    shape = a.shape
    rows, mshape = _core.to_rows(a.reshape(shape or (1,)), axes)
    lsm = np.empty_like(rows)
    _core.lse_rows(rows, lsm)
    out = lsm if axes is None else _core.from_rows_full(lsm, mshape, axes)
    return from_compute(out.reshape(shape), like)


def softmax(x: Any, like: Like, axes: tuple[int, ...] | None):
    """softmax over ``axes``, in the SOFTMAX compute dtype."""
    a = to_compute(x, like, SOFTMAX)
    shape = a.shape
    rows, mshape = _core.to_rows(a.reshape(shape or (1,)), axes)
    sm = _core.softmax_rows(rows)
    out = sm if axes is None else _core.from_rows_full(sm, mshape, axes)
    return from_compute(out.reshape(shape), like)


def reduce_losses(loss: np.ndarray, reduction: str) -> np.ndarray:
    """Element-wise losses reduced by ``reduction`` ('none', 'sum' or 'mean') in
    float64; a mean whose sum overflows is taken over values scaled by a power of two."""
    if reduction == "none":
        return loss
    with np.errstate(all="ignore"):
        s = loss.sum(dtype=np.float64)
        if reduction == "sum":
            return np.asarray(s)
        if not np.isfinite(s) and loss.size and np.isfinite(loss).all():
            # the sum overflowed but the mean cannot: average values scaled by 2^-k >= 1/n
            k = int(np.ceil(np.log2(loss.size))) + 1
            return np.asarray(np.ldexp(np.ldexp(loss.astype(np.float64), -k).sum() / loss.size,
                                       k))
        return np.asarray(s / loss.size)


def bce(logits: Any, t_np: np.ndarray, like: Like, reduction: str):
    """Binary cross-entropy of probabilities ``t_np`` (checked) given ``logits``."""
    a = to_compute(logits, like, ELEMENTWISE)
    t = t_np.astype(a.dtype, copy=False)
    loss = _core.bce_elementwise(a, t)
    return from_compute(reduce_losses(loss, reduction), like)


def cross_entropy(logits: Any, t_np: np.ndarray, like: Like, dim: int, reduction: str):
    """Cross-entropy of class indices ``t_np`` (checked) along ``dim`` of ``logits``."""
    a = to_compute(logits, like, REDUCE)
    shape = a.shape or (1,)
    rows, _ = _core.to_rows(a.reshape(shape), dim)
    m, big_l = _core.lse_rows(rows)
    t = t_np.reshape(-1).astype(np.intp, copy=False)
    with np.errstate(all="ignore"):
        xt = rows[np.arange(rows.shape[0]), t] if rows.shape[0] else m
        loss = (m - xt) + big_l  # -log_softmax at the target: two terms >= 0
    loss = loss.reshape(t_np.shape)
    return from_compute(reduce_losses(loss, reduction), like)


def by_rows(kernel, x: Any, like: Like, dim: int | None, keepdim: bool):
    """A row kernel of :mod:`._core` (``rows -> values`` or a tuple of them) applied
    along ``dim`` (None: all elements), accumulated in float64."""
    a = to_compute(x, like, ACCUMULATE)
    shape = a.shape or (1,)
    rows, _ = _core.to_rows(a.reshape(shape), dim)
    res = kernel(rows)
    keep = keepdim and bool(a.shape)
    if isinstance(res, tuple):
        outs = [_core.from_rows_reduced(r, shape, dim, keep) for r in res]
        return tuple(from_compute(o.reshape(()) if not a.shape else o, like) for o in outs)
    out = _core.from_rows_reduced(res, shape, dim, keep)
    return from_compute(out.reshape(()) if not a.shape else out, like)


def mean_var_kernel(ddof: int):
    """The row kernel of :func:`by_rows` for (mean, variance) with ``ddof``."""
    return lambda rows: _core.mean_var_rows(rows, ddof)
