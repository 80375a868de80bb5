"""torch autograd wrappers (private; imported only when a tensor needs a gradient).

The forward passes are the NumPy kernels (through :mod:`stability_lab.numerics._forward`);
the backward passes are hand-written torch expressions that are finite for finite
inputs. Autograd through a max-shift or a ``where`` over branches would not be: e.g.
d/dx of where(x >= 0, 1/(1+exp(-x)), exp(x)/(1+exp(x))) evaluates the gradient of the
unused branch too, which is inf/NaN at x = -1e4.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from stability_lab.numerics import _core, _forward


def _expand(g: torch.Tensor, dim: int | None, keepdim: bool, ndim: int) -> torch.Tensor:
    """Re-insert the reduced dimension(s) of ``g`` so it broadcasts against the input."""
    if ndim == 0:
        return g.reshape(())
    if dim is None:
        return g.reshape((1,) * ndim)
    if keepdim:
        return g
    for d in ((dim,) if isinstance(dim, int) else sorted(dim)):
        g = g.unsqueeze(d)
    return g


def _sum_keep(g: torch.Tensor, dim) -> torch.Tensor:
    return g.sum() if dim is None else g.sum(dim, keepdim=True)


class _Op(torch.autograd.Function):
    """Generic Function: ``fwd(*inputs) -> tensor or tuple``, ``bwd(ctx_tensors, grads)``."""

    @staticmethod
    def forward(ctx, fwd: Callable, bwd: Callable, *inputs: torch.Tensor):
        out = fwd(*inputs)
        outs = out if isinstance(out, tuple) else (out,)
        ctx.bwd = bwd
        ctx.n_in = len(inputs)
        ctx.save_for_backward(*inputs, *outs)
        return out

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        saved = ctx.saved_tensors
        ins, outs = saved[:ctx.n_in], saved[ctx.n_in:]
        return (None, None, *ctx.bwd(ins, outs, grads))


def _elementwise(name: str, x: torch.Tensor, like) -> torch.Tensor:
    kernel = _forward.ELEMENTWISE_KERNELS[name]

    def fwd(x):
        return _forward.elementwise(kernel, x, like)

    derivative = {
        "sigmoid": lambda x: torch.sigmoid(x) * torch.sigmoid(-x),
        "softplus": torch.sigmoid,
        "log_sigmoid": lambda x: torch.sigmoid(-x),
        # d/dx log(1 - e^x) = -e^x / (1 - e^x) = -1 / expm1(-x)
        "log1mexp": lambda x: -1.0 / torch.expm1(-x),
    }[name]

    def bwd(ins, outs, grads):
        return (grads[0] * derivative(ins[0]),)

    return _Op.apply(fwd, bwd, x)


def _logsumexp(x, like, dim, keepdim):
    def bwd(ins, outs, grads):
        (x,), (lse,), (g,) = ins, outs, grads
        lse = _expand(lse, dim, keepdim, x.ndim)
        g = _expand(g, dim, keepdim, x.ndim)
        p = torch.exp(x - lse)  # softmax; x - lse <= 0 (up to rounding) for finite x
        # all -inf slices (lse = -inf) have no gradient: 0 rather than exp(NaN)
        p = torch.where(torch.isneginf(lse), torch.zeros((), dtype=p.dtype), p)
        return (g * p,)

    return _Op.apply(lambda x: _forward.lse(x, like, dim, keepdim), bwd, x)


def _logsumexp_weighted(x, w, like, dim, keepdim, return_sign):
    def bwd(ins, outs, grads):
        (x, w), out, g = ins, outs[0], grads[0]
        out = _expand(out, dim, keepdim, x.ndim)
        g = _expand(g, dim, keepdim, x.ndim)
        # d log|S| / dx_i = sign(S) b_i e^(x_i - log|S|); without return_sign a negative
        # S gave NaN already, so the sign is 1 wherever the result is a number
        p = torch.exp(x - out)
        if return_sign:
            p = p * _expand(outs[1], dim, keepdim, x.ndim)
        p = torch.where(torch.isneginf(out), torch.zeros((), dtype=p.dtype), p)
        return (g * w * p, g * p)

    return _Op.apply(
        lambda x, w: _forward.lse_weighted(x, w, like, dim, keepdim, return_sign), bwd, x, w)


def _log_softmax(x, like, dim):
    def bwd(ins, outs, grads):
        (y,), (g,) = outs, grads
        if y.ndim == 0:
            return (g - torch.exp(y) * g,)
        return (g - torch.exp(y) * _sum_keep(g, dim),)

    return _Op.apply(lambda x: _forward.log_softmax(x, like, dim), bwd, x)


def _softmax(x, like, dim):
    def bwd(ins, outs, grads):
        (s,), (g,) = outs, grads
        if s.ndim == 0:
            return (s * (g - g * s),)
        return (s * (g - _sum_keep(g * s, dim)),)

    return _Op.apply(lambda x: _forward.softmax(x, like, dim), bwd, x)


def _bce(logits, targets, like, t_np, reduction):
    n = logits.numel()

    def bwd(ins, outs, grads):
        x, t = ins
        g = grads[0]
        if reduction == "mean":
            g = g / n
        gx = g * (torch.sigmoid(x) - t.to(x.dtype))
        gt = (-g * x).to(t.dtype) if t.is_floating_point() else None
        return gx, gt

    return _Op.apply(lambda x, t: _forward.bce(x, t_np, like, reduction), bwd, logits, targets)


def _cross_entropy(logits, like, t_np, dim, reduction):
    n = t_np.size
    t = torch.as_tensor(t_np, device=logits.device).long()

    def bwd(ins, outs, grads):
        (x,), (g,) = ins, grads
        if x.ndim == 0:  # one class: the loss is identically 0
            return (torch.zeros_like(x),)
        lse = _forward.lse(x.detach(), like, (dim,), True)
        p = torch.exp(x - lse)
        onehot = torch.zeros_like(x).scatter_(dim, t.unsqueeze(dim), 1)
        if reduction == "none":
            g = g.unsqueeze(dim)
        elif reduction == "mean":
            g = g / n
        return (g * (p - onehot),)

    return _Op.apply(lambda x: _forward.cross_entropy(x, t_np, like, dim, reduction), bwd, logits)


def _count(x: torch.Tensor, dim: int | None) -> int:
    return x.numel() if dim is None or x.ndim == 0 else x.shape[dim]


def _stable_sum(x, like, dim, keepdim):
    def bwd(ins, outs, grads):
        (x,), (g,) = ins, grads
        return (_expand(g, dim, keepdim, x.ndim).expand_as(x).clone(),)

    return _Op.apply(lambda x: _forward.by_rows(_core.sum2_rows, x, like, dim, keepdim), bwd, x)


def _mean_and_variance(x, like, dim, keepdim, ddof):
    kernel = _forward.mean_var_kernel(ddof)

    def bwd(ins, outs, grads):
        (x,), (mean, _var), (gm, gv) = ins, outs, grads
        n = _count(x, dim)
        mean = _expand(mean, dim, keepdim, x.ndim)
        gm = _expand(gm, dim, keepdim, x.ndim)
        gv = _expand(gv, dim, keepdim, x.ndim)
        return (gm / n + gv * 2.0 * (x - mean) / (n - ddof),)

    return _Op.apply(lambda x: _forward.by_rows(kernel, x, like, dim, keepdim), bwd, x)


def _l2_norm(x, like, dim, keepdim):
    def bwd(ins, outs, grads):
        (x,), (nrm,), (g,) = ins, outs, grads
        nrm = _expand(nrm, dim, keepdim, x.ndim)
        g = _expand(g, dim, keepdim, x.ndim)
        safe = torch.where(nrm == 0, torch.ones((), dtype=nrm.dtype), nrm)
        # x / ||x|| computed as (x * 2^-e) / (||x|| * 2^-e) would be the same: the
        # quotient of two finite numbers with |x| <= ||x|| never overflows.
        return (torch.where(nrm == 0, torch.zeros((), dtype=x.dtype), g * (x / safe)),)

    return _Op.apply(lambda x: _forward.by_rows(_core.l2_norm_rows, x, like, dim, keepdim),
                     bwd, x)


_DISPATCH: dict[str, Callable[..., Any]] = {
    "logsumexp": _logsumexp,
    "logsumexp_weighted": _logsumexp_weighted,
    "log_softmax": _log_softmax,
    "softmax": _softmax,
    "binary_cross_entropy_with_logits": _bce,
    "cross_entropy": _cross_entropy,
    "stable_sum": _stable_sum,
    "mean_and_variance": _mean_and_variance,
    "l2_norm": _l2_norm,
}


def apply(name: str, *args: Any):
    if name in ("sigmoid", "softplus", "log_sigmoid", "log1mexp"):
        return _elementwise(name, *args)
    return _DISPATCH[name](*args)
