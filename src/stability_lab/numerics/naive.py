"""Textbook implementations of the :mod:`stability_lab.numerics` functions.

**Reproducers of failure, never for use.** Each function is the formula as printed in
a textbook, evaluated directly in the input's dtype (NumPy arrays or torch tensors, same
kind and dtype out), so that the harness can show what goes wrong:

============================  ==============================================  =========================
function                      formula                                         fails at (float64)
============================  ==============================================  =========================
logsumexp                     log(sum(exp(x)))                                x > 709.8: inf; all x < -745: -inf
softmax                       exp(x) / sum(exp(x))                            x > 709.8: NaN
log_softmax                   log(softmax(x))                                 p_i < 5e-324: -inf
sigmoid                       1 / (1 + exp(-x))                               (overflow warning only)
log_sigmoid                   log(sigmoid(x))                                 x < -745: -inf; x > 37: 0
softplus                      log(1 + exp(x))                                 x > 709.8: inf; x < -37: 0
log1mexp                      log(1 - exp(x))                                 -1e-16 < x < 0: -inf
binary_cross_entropy...       -(t log sigmoid(x) + (1 - t) log(1 - sigmoid))  |x| > 37: inf / NaN
cross_entropy                 -log(softmax(x)[t])                             as softmax
stable_sum                    recursive summation s += x_i (Higham sec. 4.1)  error ~ n u sum|x_i|
mean_and_variance             E[x^2] - E[x]^2                                 |mean| >> std: garbage, < 0
l2_norm                       sqrt(sum(x^2))                                  |x| > 1.3e154: inf; < 1.5e-162: 0
============================  ==============================================  =========================

Argument checking is limited to the floating dtype; there are no special-value rules
beyond what IEEE arithmetic does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stability_lab.numerics import __all__ as _PUBLIC  # the same names as the stable module
from stability_lab.numerics._backend import check_float

__all__ = list(_PUBLIC)


class _Ops:
    """The handful of array operations the textbook formulas need, for either kind."""

    def __init__(self, x: Any, fn: str, arg: str = "x"):
        self.x, like = check_float(x, fn, arg)
        self.torch = like.kind == "torch"
        if self.torch:
            import torch

            self.m = torch
        else:
            self.m = np

    def sum(self, a, dim=None, keepdim=False):
        if self.torch:
            return a.sum() if dim is None else a.sum(dim, keepdim=keepdim)
        with np.errstate(all="ignore"):
            return np.sum(a, axis=dim, keepdims=keepdim, dtype=a.dtype)

    def call(self, name, *args):
        if self.torch:
            return getattr(self.m, name)(*args)
        with np.errstate(all="ignore"):
            return getattr(np, name)(*args)

    def out(self, r):
        if self.torch:
            return r
        r = np.asarray(r, dtype=self.x.dtype)
        return r[()] if r.ndim == 0 else r


def logsumexp(x, dim=-1, keepdim=False):
    """log(sum(exp(x))). Overflows for x > log(max), underflows to -inf for very negative x."""
    o = _Ops(x, "naive.logsumexp")
    return o.out(o.call("log", o.sum(o.call("exp", o.x), dim, keepdim)))


def softmax(x, dim=-1):
    """exp(x) / sum(exp(x)). inf/inf = NaN once exp overflows."""
    o = _Ops(x, "naive.softmax")
    e = o.call("exp", o.x)
    with np.errstate(all="ignore"):
        return o.out(e / o.sum(e, dim, True))


def log_softmax(x, dim=-1):
    """log(softmax(x)). -inf where softmax underflows."""
    o = _Ops(x, "naive.log_softmax")
    return o.out(o.call("log", softmax(o.x, dim)))


def sigmoid(x):
    """1 / (1 + exp(-x))."""
    o = _Ops(x, "naive.sigmoid")
    with np.errstate(all="ignore"):
        return o.out(1 / (1 + o.call("exp", -o.x)))


def log_sigmoid(x):
    """log(sigmoid(x)) with the naive sigmoid."""
    o = _Ops(x, "naive.log_sigmoid")
    return o.out(o.call("log", sigmoid(o.x)))


def softplus(x):
    """log(1 + exp(x))."""
    o = _Ops(x, "naive.softplus")
    with np.errstate(all="ignore"):
        return o.out(o.call("log", 1 + o.call("exp", o.x)))


def log1mexp(x):
    """log(1 - exp(x))."""
    o = _Ops(x, "naive.log1mexp")
    with np.errstate(all="ignore"):
        return o.out(o.call("log", 1 - o.call("exp", o.x)))


def _reduce(o, loss, reduction):
    if reduction == "none":
        return o.out(loss)
    s = o.sum(loss)
    if reduction == "mean":
        s = s / (loss.numel() if o.torch else loss.size)
    return o.out(s)


def binary_cross_entropy_with_logits(logits, targets, reduction="mean"):
    """-(t log(sigmoid(x)) + (1 - t) log(1 - sigmoid(x))) with the naive sigmoid."""
    o = _Ops(logits, "naive.binary_cross_entropy_with_logits", "logits")
    t = targets
    p = sigmoid(o.x)
    with np.errstate(all="ignore"):
        loss = -(t * o.call("log", p) + (1 - t) * o.call("log", 1 - p))
    return _reduce(o, loss, reduction)


def log_loss_and_grad(logits, targets):
    """Per-sample log-loss of hard labels and its gradient, the textbook way.

    p = 1 / (1 + exp(-x)); loss = -log p where t = 1, -log(1 - p) where t = 0; gradient
    by the chain rule through p, as autograd computes it on that graph:
    (-1/p or 1/(1 - p)) * p (1 - p). Once p rounds to 1 on a t = 0 sample (x > 16.6 in
    float32, 36.7 in float64) the loss is inf and the gradient inf * 0 = NaN.
    ``targets`` broadcast against ``logits``; t > 0.5 counts as label 1.
    """
    o = _Ops(logits, "naive.log_loss_and_grad", "logits")
    p = sigmoid(o.x)
    with np.errstate(all="ignore"):
        positive = targets > 0.5
        loss = o.call("where", positive, -o.call("log", p), -o.call("log", 1 - p))
        dp = o.call("where", positive, -1 / p, 1 / (1 - p))
        grad = dp * (p * (1 - p))
    return o.out(loss), o.out(grad)


def cross_entropy(logits, targets, dim=-1, reduction="mean"):
    """-log(softmax(x)[t]) with the naive softmax."""
    o = _Ops(logits, "naive.cross_entropy", "logits")
    p = softmax(o.x, dim)
    if o.torch:
        picked = p.gather(dim, targets.long().unsqueeze(dim)).squeeze(dim)
    else:
        t = np.expand_dims(np.asarray(targets), dim)
        picked = np.squeeze(np.take_along_axis(p, t, axis=dim), axis=dim)
    return _reduce(o, -o.call("log", picked), reduction)


def stable_sum(x, dim=None, keepdim=False):
    """Recursive summation s = s + x_i, left to right (error bound (n - 1) u sum|x_i|).

    (The name is kept so both modules have the same names: this one is not stable.)
    """
    o = _Ops(x, "naive.stable_sum")
    a = o.x.reshape(-1) if dim is None else o.x
    d = 0 if dim is None else dim
    if a.shape[d] == 0:
        return o.out(o.sum(a, d, keepdim if dim is not None else False))
    if o.torch:
        r = o.m.cumsum(a, d).select(d, -1)
        return r.unsqueeze(d) if keepdim and dim is not None else r
    with np.errstate(all="ignore"):
        r = np.take(np.cumsum(a, axis=d, dtype=a.dtype), -1, axis=d)
    return o.out(np.expand_dims(r, d) if keepdim and dim is not None else r)


def mean_and_variance(x, dim=None, *, ddof=0, keepdim=False):
    """mean = E[x]; var = (E[x^2] - E[x]^2) * n / (n - ddof): the one-pass textbook formula."""
    o = _Ops(x, "naive.mean_and_variance")
    n = o.x.size if not o.torch else o.x.numel()
    if dim is not None:
        n = o.x.shape[dim]
    with np.errstate(all="ignore"):
        mean = o.sum(o.x, dim, keepdim) / n
        mean_sq = o.sum(o.x * o.x, dim, keepdim) / n
        var = (mean_sq - mean * mean) * (n / (n - ddof) if n > ddof else float("nan"))
    return o.out(mean), o.out(var)


def l2_norm(x, dim=None, keepdim=False):
    """sqrt(sum(x^2)): overflows/underflows when x^2 does."""
    o = _Ops(x, "naive.l2_norm")
    with np.errstate(all="ignore"):
        return o.out(o.call("sqrt", o.sum(o.x * o.x, dim, keepdim)))
