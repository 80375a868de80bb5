"""Stable numerical primitives for NumPy arrays and torch tensors, accurate to the ulp.

Every function accepts a NumPy array (or anything ``np.asarray`` turns into a float16,
float32 or float64 array) or a torch tensor (float16, bfloat16, float32, float64) and
returns the same kind and dtype. float16/bfloat16 are computed in float32 and rounded
once; element-wise functions compute float32 in float64; accumulations
(:func:`stable_sum`, :func:`mean_and_variance`, :func:`l2_norm`) compute everything in
float64. 0-d NumPy results come back as NumPy scalars of the input's dtype.

torch is imported only when a tensor is passed in (``import stability_lab.numerics``
stays cheap). CPU tensors are computed by the same NumPy kernels through a zero-copy
``Tensor.numpy()`` view (they are faster than torch's own CPU exp on this kind of
machine); tensors on other devices are copied to the CPU and back. Torch results are
differentiable through :class:`torch.autograd.Function` objects with hand-written
backward formulas that stay finite for finite inputs (the max-shift and the piecewise
branches are never differentiated through).

See ``docs/numerics.md`` for the algorithms, cut-offs, special values, the measured
worst-ulp table and the benchmark. The textbook versions live in
:mod:`stability_lab.numerics.naive`, as reproducers of failure only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stability_lab.errors import UsageError

from stability_lab.numerics import _core, _forward
from stability_lab.numerics._backend import (
    _UNSET,
    ELEMENTWISE,
    Like,
    alias,
    check_float,
    check_reduction,
    from_compute,
    is_tensor,
    norm_axes,
    norm_dim,
    to_compute,
)

__all__ = [
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "l2_norm",
    "log1mexp",
    "log_loss_and_grad",
    "log_sigmoid",
    "log_softmax",
    "logsumexp",
    "mean_and_variance",
    "sigmoid",
    "softmax",
    "softplus",
    "stable_sum",
]


def _wants_grad(*xs: Any) -> bool:
    if not any(is_tensor(x) and x.requires_grad for x in xs):
        return False
    import torch

    return torch.is_grad_enabled()


def _autograd(name: str, *args: Any):
    from stability_lab.numerics import _torch

    return _torch.apply(name, *args)


# =========================================================================== element-wise
def _make_elementwise(name: str, doc: str):
    kernel = _forward.ELEMENTWISE_KERNELS[name]

    def fn(x: Any):
        x, like = check_float(x, name, "x")
        if like.kind == "torch" and _wants_grad(x):
            return _autograd(name, x, like)
        return _forward.elementwise(kernel, x, like)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    return fn


sigmoid = _make_elementwise(
    "sigmoid",
    """Logistic function sigmoid(x) = 1 / (1 + exp(-x)), element-wise.

    Algorithm: x >= 0: 1/(1 + exp(-x)); x < 0: exp(x)/(1 + exp(x)), so exp never
    overflows (the formulation of scipy.special.expit). Relative error <= 2 ulp of the
    result for every finite input (float32, float64); sigmoid(+-inf) = 1, 0; NaN -> NaN.
    Gradient: sigmoid(x) * sigmoid(-x) (accurate also where sigmoid(x) rounds to 1).
    """,
)

softplus = _make_elementwise(
    "softplus",
    """softplus(x) = log(1 + exp(x)), element-wise.

    Algorithm: piecewise, as scikit-learn's ``log1pexp`` and Maechler (2012) eq. (10):
    exp(x) for x <= lo, log1p(exp(x)) up to mid, x + exp(-x) up to hi, x beyond, with
    (lo, mid, hi) = (-37, 18, 33.3) in float64 and (-17, 9, 16.6) in float32 (derivation
    in ``_core.SOFTPLUS_CUTS``). Relative error <= 2 ulp for every finite input.
    softplus(-inf) = 0, softplus(inf) = inf. Gradient: sigmoid(x).
    """,
)

log_sigmoid = _make_elementwise(
    "log_sigmoid",
    """log(sigmoid(x)) = -softplus(-x), element-wise.

    Never -inf for finite x (the naive log(sigmoid(x)) is -inf below x ~ -745).
    log_sigmoid(-inf) = -inf, log_sigmoid(inf) = -0. Gradient: sigmoid(-x).
    """,
)

log1mexp = _make_elementwise(
    "log1mexp",
    """log(1 - exp(x)) for x <= 0, element-wise.

    Algorithm (Maechler, "Accurately computing log(1 - exp(-|a|))", 2012): for
    x > -ln 2: log(-expm1(x)); otherwise log1p(-exp(x)). Each branch is used where its
    inner function is accurate and its outer one well conditioned. log1mexp(0) = -inf,
    log1mexp(-inf) = -0, x > 0 or NaN -> NaN (outside the domain). Gradient:
    -1 / expm1(-x) (overflows to -inf only where the true derivative exceeds the format).
    """,
)


# =========================================================================== log-sum-exp
# Spellings: scipy's (axis, keepdims, b, return_sign; positional order of
# scipy.special.logsumexp) and torch's (dim, keepdim). The default axis is None, for
# every input kind: all elements are reduced, as scipy.special does (torch has no
# default: pass dim). See docs/numerics.md, "Spellings and the default axis".
def _weights(x: Any, b: Any, like: Like, fn: str):
    """Promote ``x`` and the weights ``b`` together (scipy's rule: the common type,
    integers and booleans to float64; torch's for tensors), broadcast them, return
    (x, b, like)."""
    if isinstance(b, (bool, np.bool_)):
        raise UsageError(
            f"{fn}: 'b' is the array of weights (scipy's order: logsumexp(x, axis, b, "
            f"keepdims, return_sign)); got the bool {b}. Pass keepdims={b} by keyword.")
    if like.kind == "torch":
        torch = __import__("torch")
        bt = b if is_tensor(b) else torch.as_tensor(np.asarray(b), device=x.device)
        if bt.is_complex():
            raise TypeError(f"{fn}: 'b' must be real; got {bt.dtype}.")
        dt = torch.result_type(x, bt)
        if not dt.is_floating_point:
            dt = torch.get_default_dtype()
        x, bt = torch.broadcast_tensors(x.to(dt), bt.to(dtype=dt, device=x.device))
        x, like = check_float(x, fn, "x")
        return x, bt, like
    if is_tensor(b):
        raise TypeError(f"{fn}: 'b' must be a NumPy array like 'x'; got a torch tensor.")
    try:
        ba = np.asarray(b)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{fn}: 'b' must be an array of weights; got {type(b).__name__} "
                        f"that NumPy cannot convert ({exc}).") from None
    if ba.dtype.kind not in "biuf":
        raise TypeError(f"{fn}: 'b' must be a real array of weights; got dtype {ba.dtype}.")
    dt = np.result_type(x, b if isinstance(b, (int, float)) else ba)
    if dt.kind != "f":
        dt = np.dtype(np.float64)
    try:
        xa, ba = np.broadcast_arrays(x.astype(dt, copy=False), ba.astype(dt, copy=False))
    except ValueError:
        raise UsageError(f"{fn}: 'b' of shape {ba.shape} does not broadcast against 'x' of "
                         f"shape {x.shape}.") from None
    xa, like = check_float(xa, fn, "x")
    return xa, ba, like


def logsumexp(x: Any, axis: Any = _UNSET, b: Any = None, keepdims: Any = _UNSET,
              return_sign: bool = False, *, dim: Any = _UNSET, keepdim: Any = _UNSET):
    """log(sum_i exp(x_i)) over ``axis`` (all elements by default, as scipy).

    Spellings: scipy's ``logsumexp(x, axis=None, b=None, keepdims=False,
    return_sign=False)`` (same positional order) and torch's ``dim=``/``keepdim=`` (by
    keyword). ``axis`` is None, an int or a tuple of ints. ``b``: weights broadcast
    against ``x``; the result is log|sum_i b_i exp(x_i)|, NaN where the sum is negative
    unless ``return_sign=True``, which returns ``(log|sum|, sign)`` as scipy does; an
    entry whose weight is 0 adds nothing even if it is inf or NaN. Integer and boolean
    input is promoted (NumPy: float64, as scipy; tensors: torch's default dtype).

    Algorithm (Blanchard, Higham & Higham, "Accurately computing the log-sum-exp and
    softmax functions", IMA J. Numer. Anal. 41, 2021, Alg. 4.1): with a = max_i x_i at
    index k, lse = a + log1p(sum_{j != k} exp(x_j - a)). The max term's exp(0) = 1 is
    zeroed before summing (not subtracted after). Error (docs/numerics.md):
    |err| <= c u (|lse| + sum_i p_i |x_i| + log2(n) + 2), p = softmax(x), c measured;
    <= 2 ulp when well conditioned (sum_i p_i |x_i| <= |lse|). With weights, scipy's
    generalisation of the split (``_core.lse_weighted_rows``).

    Special values: empty -> -inf; all -inf -> -inf; any +inf (no NaN) -> +inf;
    any NaN -> NaN. Never overflows for finite input. Gradient: softmax(x) (weighted:
    b exp(x - lse) sign, and exp(x - lse) sign for ``b``).
    """
    fn = "logsumexp"
    axis = alias(fn, "axis", axis, "dim", dim, None)
    keep = bool(alias(fn, "keepdims", keepdims, "keepdim", keepdim, False))
    x, like = check_float(x, fn, "x", promote_int="float64")
    if b is not None:
        x, b, like = _weights(x, b, like, fn)
    axes = norm_axes(axis, len(x.shape), fn)
    if b is None and not return_sign:
        if like.kind == "torch" and _wants_grad(x):
            return _autograd("logsumexp", x, like, axes, keep)
        return _forward.lse(x, like, axes, keep)
    if b is None:
        b = np.ones(x.shape, x.dtype) if like.kind == "numpy" else x.new_ones(x.shape)
    if like.kind == "torch" and _wants_grad(x, b):
        return _autograd("logsumexp_weighted", x, b, like, axes, keep, bool(return_sign))
    return _forward.lse_weighted(x, b, like, axes, keep, bool(return_sign))


def log_softmax(x: Any, axis: Any = _UNSET, *, dim: Any = _UNSET):
    """log(softmax(x)) = (x - a) - log1p(sum_{j != k} exp(x_j - a)) over ``axis``.

    ``axis`` (or torch's ``dim``): None (all elements, the default, as scipy), an int or
    a tuple of ints. Integer input: NumPy arrays as ``np.exp`` promotes it (what
    scipy.special gives: int8 -> float16, int16 -> float32, wider -> float64), tensors
    to torch's default dtype.
    Same split as :func:`logsumexp`; both terms are <= 0 so the final subtraction never
    cancels. Special values: all -inf slice -> NaN (like scipy); a slice with +inf ->
    NaN at the +inf entries and -inf elsewhere; NaN anywhere in the slice -> NaN slice;
    empty -> empty. Gradient: g - softmax(x) * sum(g).
    """
    fn = "log_softmax"
    axis = alias(fn, "axis", axis, "dim", dim, None)
    x, like = check_float(x, fn, "x", promote_int="ufunc")
    axes = norm_axes(axis, len(x.shape), fn)
    if like.kind == "torch" and _wants_grad(x):
        return _autograd("log_softmax", x, like, axes)
    return _forward.log_softmax(x, like, axes)


def softmax(x: Any, axis: Any = _UNSET, *, dim: Any = _UNSET):
    """softmax(x)_i = exp(x_i - a) / sum_j exp(x_j - a) over ``axis``, a = max x.

    ``axis`` (or torch's ``dim``): None (all elements, the default, as scipy), an int or
    a tuple of ints. Integer input: NumPy arrays as ``np.exp`` promotes it (what
    scipy.special gives: int8 -> float16, int16 -> float32, wider -> float64), tensors
    to torch's default dtype.
    The shifted sum includes the max term's 1 (it is the denominator), so no split is
    needed here (Blanchard, Higham & Higham 2021, Alg. 4.2 "shift"). Special values
    agree with exp(log_softmax(x)): all -inf -> NaN, +inf entries -> NaN with 0
    elsewhere (scipy 1.17 returns an all-NaN slice there), empty -> empty.
    Gradient: s * (g - sum(g * s)).
    """
    fn = "softmax"
    axis = alias(fn, "axis", axis, "dim", dim, None)
    x, like = check_float(x, fn, "x", promote_int="ufunc")
    axes = norm_axes(axis, len(x.shape), fn)
    if like.kind == "torch" and _wants_grad(x):
        return _autograd("softmax", x, like, axes)
    return _forward.softmax(x, like, axes)


# =========================================================================== losses
def _check_same_kind(fn: str, targets: Any, like: Like) -> None:
    if (like.kind == "torch") != is_tensor(targets):
        want = "a torch tensor" if like.kind == "torch" else "a NumPy array"
        raise TypeError(
            f"{fn}: 'targets' must be {want} like 'logits'; got {type(targets).__name__}."
        )


def _bce_targets(logits: Any, targets: Any, like: Like):
    fn = "binary_cross_entropy_with_logits"
    _check_same_kind(fn, targets, like)
    if like.kind == "torch":
        if targets.is_complex():
            raise TypeError(f"{fn}: 'targets' must be real; got {targets.dtype}.")
        t_np = targets.detach().cpu().double().numpy()  # exact for every real dtype
    else:
        t_np = np.asarray(targets)
        if t_np.dtype.kind not in "biuf":
            raise TypeError(
                f"{fn}: 'targets' must be a real array of probabilities; got dtype "
                f"{t_np.dtype}."
            )
    if tuple(t_np.shape) != tuple(logits.shape):
        raise UsageError(
            f"{fn}: 'targets' must have the shape of 'logits' {tuple(logits.shape)}; got "
            f"{tuple(t_np.shape)}."
        )
    if t_np.size:
        lo, hi = np.min(t_np), np.max(t_np)
        if not (lo >= 0 and hi <= 1):
            raise UsageError(
                f"{fn}: 'targets' must lie in [0, 1]; got values in [{lo:g}, {hi:g}]. "
                "Pass probabilities."
            )
    return t_np


def binary_cross_entropy_with_logits(logits: Any, targets: Any, reduction: str = "mean"):
    """Binary cross-entropy of probabilities ``targets`` given ``logits``.

    Element-wise loss softplus(x) - t x = -(t log sigmoid(x) + (1 - t) log sigmoid(-x)),
    computed as |x| w + log1p(exp(-|x|)) with w = 1 - t for x >= 0 and w = t for x < 0:
    a sum of two non-negative terms, so fractional targets cause no cancellation
    (the common max(x, 0) - x t + log1p(exp(-|x|)) cancels when t is close to 1).
    ``targets`` may be fractional, must have the shape of ``logits`` and lie in [0, 1].
    ``reduction``: 'mean' (NaN for empty input), 'sum' or 'none'; the mean/sum is
    accumulated in float64. Special: x = +-inf gives 0 where the matching weight w is 0
    and +inf otherwise. Gradients: d/dx = sigmoid(x) - t, d/dt = -x.
    """
    fn = "binary_cross_entropy_with_logits"
    logits, like = check_float(logits, fn, "logits")
    reduction = check_reduction(reduction, fn)
    t_np = _bce_targets(logits, targets, like)
    if like.kind == "torch" and _wants_grad(logits, targets):
        return _autograd(fn, logits, targets, like, t_np, reduction)
    return _forward.bce(logits, t_np, like, reduction)


def log_loss_and_grad(logits: Any, targets: Any):
    """Element-wise log-loss and its derivative in one pass: the training kernel.

    Returns ``(softplus(x) - t x, sigmoid(x) - t)``, the element-wise
    :func:`binary_cross_entropy_with_logits` (reduction 'none', identical values) and its
    gradient with respect to the logits, sharing one ``exp(-|x|)``. The gradient is
    (1 - t) - q for x >= 0 and q - t for x < 0 with q = sigmoid(-|x|), formed in the
    compute precision and rounded once: no cancellation for labels 0 and 1, so a
    saturated logit keeps its tiny gradient. ``targets`` may broadcast against
    ``logits`` (for example one column of labels against a (samples x runs) block of
    logits) and must lie in [0, 1]; they are checked once, not broadcast. No autograd:
    outputs are plain values of the logits' kind and dtype (16-bit formats computed in
    float32, rounded once).
    """
    fn = "log_loss_and_grad"
    logits, like = check_float(logits, fn, "logits")
    _check_same_kind(fn, targets, like)
    x = to_compute(logits, like, ELEMENTWISE)
    if like.kind == "torch":
        t = to_compute(targets.detach(), like, ELEMENTWISE)
    else:
        t = np.asarray(targets).astype(x.dtype, copy=False)
    if t.size and not (t.min() >= 0 and t.max() <= 1):
        raise UsageError(f"{fn}: 'targets' must lie in [0, 1]; got values in "
                         f"[{t.min():g}, {t.max():g}]. Pass probabilities.")
    try:
        np.broadcast_shapes(t.shape, x.shape)
    except ValueError:
        raise UsageError(f"{fn}: 'targets' of shape {t.shape} does not broadcast against "
                         f"'logits' of shape {x.shape}.") from None
    loss, grad = _core.bce_and_grad(x, t)
    return from_compute(loss, like), from_compute(grad, like)


def _ce_targets(logits: Any, targets: Any, like: Like, dim: int) -> np.ndarray:
    fn = "cross_entropy"
    _check_same_kind(fn, targets, like)
    if like.kind == "torch":
        torch = __import__("torch")
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise TypeError(
                f"{fn}: 'targets' must be an integer tensor of class indices; got "
                f"{targets.dtype}. Use binary_cross_entropy_with_logits for probabilities."
            )
        t_np = targets.detach().cpu().numpy()
    else:
        t_np = np.asarray(targets)
        if t_np.dtype.kind not in "iu":
            raise TypeError(
                f"{fn}: 'targets' must be an integer array of class indices; got dtype "
                f"{t_np.dtype}."
            )
    shape = tuple(logits.shape)
    want = shape[:dim] + shape[dim + 1:] if shape else ()
    if tuple(t_np.shape) != want:
        raise UsageError(
            f"{fn}: 'targets' must have the shape of 'logits' {shape} without dim {dim}, "
            f"i.e. {want}; got {tuple(t_np.shape)}."
        )
    n_classes = shape[dim] if shape else 1
    if t_np.size:
        lo, hi = int(t_np.min()), int(t_np.max())
        if lo < 0 or hi >= n_classes:
            raise UsageError(
                f"{fn}: 'targets' must be class indices in [0, {n_classes}); got values in "
                f"[{lo}, {hi}]."
            )
    return t_np


def cross_entropy(logits: Any, targets: Any, dim: int = -1, reduction: str = "mean"):
    """Cross-entropy -log softmax(x)_t of integer class ``targets`` along ``dim``.

    Computed as (a - x_t) + log1p(sum_{j != k} exp(x_j - a)) with a = max x at index k:
    both terms are >= 0 (same split as :func:`logsumexp`), so the loss is accurate to a
    few ulp times the conditioning of log_softmax (docs/numerics.md), and is 0 only when
    it truly underflows. ``targets`` has the shape of ``logits`` without ``dim`` and
    values in [0, C). ``reduction``: 'mean' (NaN for empty input), 'sum', 'none'.
    Gradient: softmax(x) - onehot(t).
    """
    fn = "cross_entropy"
    logits, like = check_float(logits, fn, "logits")
    reduction = check_reduction(reduction, fn)
    d = norm_dim(dim, len(logits.shape), fn)
    t_np = _ce_targets(logits, targets, like, d)
    if like.kind == "torch" and _wants_grad(logits):
        return _autograd(fn, logits, like, t_np, d, reduction)
    return _forward.cross_entropy(logits, t_np, like, d, reduction)


# =========================================================================== accumulation
def stable_sum(x: Any, dim: int | None = None, keepdim: bool = False):
    """Sum of ``x`` (over all elements, or along ``dim``), compensated.

    Method: cascaded pairwise summation with an error-free TwoSum at every addition and
    the errors summed separately (vectorised Sum2 of Ogita, Rump & Oishi 2005; Higham,
    "Accuracy and Stability of Numerical Algorithms", 2nd ed., sec. 4.3-4.4), in float64
    for every input dtype. The result is as good as pairwise summation in twice the
    working precision, then rounded: |err| <= u|sum| + O(u^2 log2 n) sum|x_i|.
    Empty -> 0; inf/NaN follow IEEE; intermediate overflow gives +-inf as np.sum does.
    Gradient: ones.
    """
    x, like = check_float(x, "stable_sum", "x")
    d = norm_dim(dim, len(x.shape), "stable_sum", allow_none=True)
    if like.kind == "torch" and _wants_grad(x):
        return _autograd("stable_sum", x, like, d, bool(keepdim))
    return _forward.by_rows(_core.sum2_rows, x, like, d, bool(keepdim))


def mean_and_variance(x: Any, dim: int | None = None, *, ddof: int = 0, keepdim: bool = False):
    """Mean and variance ``(mean, var)`` of ``x`` (all elements, or along ``dim``).

    var = sum (x - mean)^2 / (n - ddof). Algorithm: corrected two-pass (Chan, Golub &
    LeVeque 1983; Bjorck 1996; Higham 2002 sec. 1.9): mean from the compensated
    :func:`stable_sum`, then d = x - mean and var = (sum d^2 - (sum d)^2 / n)/(n - ddof),
    in float64, with sum d^2 scaled by a power of two when max|d| is outside
    [2^-450, 2^450]. No catastrophic cancellation when |mean| >> std (unlike
    E[x^2] - E[x]^2). Empty -> (NaN, NaN); n <= ddof -> var NaN.
    Gradients: d mean/dx = 1/n, d var/dx = 2 (x - mean)/(n - ddof).
    """
    fn = "mean_and_variance"
    x, like = check_float(x, fn, "x")
    d = norm_dim(dim, len(x.shape), fn, allow_none=True)
    if isinstance(ddof, bool) or not isinstance(ddof, (int, np.integer)) or ddof < 0:
        raise UsageError(f"{fn}: 'ddof' must be a non-negative integer; got {ddof!r}.")
    if like.kind == "torch" and _wants_grad(x):
        return _autograd(fn, x, like, d, bool(keepdim), int(ddof))
    return _forward.by_rows(_forward.mean_var_kernel(int(ddof)), x, like, d, bool(keepdim))


def l2_norm(x: Any, dim: int | None = None, keepdim: bool = False):
    """Euclidean norm sqrt(sum x_i^2) (all elements, or along ``dim``).

    Algorithm: float64 accumulation; for float64 input, a two-pass scaled sum of squares
    as in LAPACK's dnrm2 (scale by the power of two 2^-e with max|x| in [2^(e-1), 2^e)
    when max|x| is outside [2^-450, 2^450]), then sqrt(S) * 2^e. No overflow or
    underflow unless the norm itself is outside the format. Empty -> 0; any +-inf ->
    inf (even with NaN, like hypot); otherwise NaN -> NaN. Gradient: x / ||x|| (0 at 0).
    """
    x, like = check_float(x, "l2_norm", "x")
    d = norm_dim(dim, len(x.shape), "l2_norm", allow_none=True)
    if like.kind == "torch" and _wants_grad(x):
        return _autograd("l2_norm", x, like, d, bool(keepdim))
    return _forward.by_rows(_core.l2_norm_rows, x, like, d, bool(keepdim))
