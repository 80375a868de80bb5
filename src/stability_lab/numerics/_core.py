"""NumPy kernels behind :mod:`stability_lab.numerics` (private).

Every kernel takes NumPy arrays already converted to the *compute* dtype (the policies
``ELEMENTWISE``, ``REDUCE``, ``SOFTMAX``, ``ACCUMULATE`` in ``_backend``) and returns
arrays in that dtype; validation, dtype conversion and the torch wrapping happen in the
callers. The kernels never write into their inputs: for CPU tensors the input array is
a zero-copy view of the tensor.

Reductions work on a 2-D C-contiguous ``(rows, n)`` view with the reduced axis last
(``to_rows``), because NumPy's pairwise summation only applies along a contiguous axis;
reducing over a strided axis would fall back to recursive summation (error ~ n*u).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

try:  # the fused float32 row kernel (C, built at install; optional)
    from stability_lab.numerics import _lsekernel
except ImportError:  # no compiler at install time, or running from an unbuilt tree
    _lsekernel = None


def kernel_targets() -> tuple[str, ...]:
    """Instruction-set copies of the C float32 kernel this CPU runs, best first ((): none)."""
    return tuple(_lsekernel.targets()) if _lsekernel is not None else ()


# The implementation lse_rows uses for float32 rows by default: the best copy of the C
# kernel, unless that is the portable "generic" one. Without AVX2 the compiler turns the
# kernel's vector code into slow scalar sequences and the NumPy kernel is faster (36 vs
# 10 ms for logsumexp of a 10000 x 1000 float32 matrix, benchmarks/bench_numerics.py).
DEFAULT_KERNEL = next((t for t in kernel_targets() if t != "generic"), "numpy")
# Override (None = DEFAULT_KERNEL): "numpy" or a name from kernel_targets(). Set through
# use_kernel(); for tests and benchmarks.
_KERNEL: str | None = None


@contextlib.contextmanager
def use_kernel(name: str | None):
    """Within the block, float32 log-sum-exp rows use ``name`` ("numpy", a target from
    :func:`kernel_targets`, or None for DEFAULT_KERNEL)."""
    global _KERNEL
    if name not in (None, "numpy") and name not in kernel_targets():
        raise ValueError(f"kernel {name!r} is not available here: {kernel_targets()}")
    old, _KERNEL = _KERNEL, name
    try:
        yield
    finally:
        _KERNEL = old


# Elements per block in the blocked reductions. Intermediates (x - max, exp) of one block
# live in a reused buffer of this many elements (512 KiB in float64), which stays in L2
# cache, so the big arrays are streamed once for the argmax and once for the exp-sum, and
# no large temporary is allocated (first-touch page faults cost as much as the exp).
# Measured on the 2-core dev box (1 MiB L2/core): 2^12 -> 2^16 took logsumexp of a
# 10000x1000 float32 matrix from 24.6 ms to 9.8 ms; larger blocks gained < 5%.
BLOCK = 1 << 16

_LN2 = math.log(2.0)

# softplus(x) = log1p(exp(x)) cut-offs (lo, mid, hi) per compute dtype, the pattern of
# scikit-learn's ``log1pexp`` and Maechler (2012), eq. (10):
#   x <= lo       : exp(x)          log1p(e) = e(1 - e/2 + ...): relative error of dropping
#                                   the e/2 term is below u = eps/2 once e < 2u, i.e.
#                                   x < log(eps) (-36.04 in float64, -15.9 in float32).
#   lo < x <= mid : log1p(exp(x))   exp is well inside range; log1p damps exp's error.
#   mid < x <= hi : x + exp(-x)     log1p(exp(x)) = x + log1p(exp(-x)) and
#                                   log1p(exp(-x)) = exp(-x) to below u*x for x > mid.
#   x > hi        : x               exp(-x) < half an ulp of x (33.3 in float64:
#                                   e^-33.3 = 3.4e-15 < ulp(33.3)/2 = 3.6e-15).
SOFTPLUS_CUTS = {
    np.dtype(np.float64): (-37.0, 18.0, 33.3),
    np.dtype(np.float32): (-17.0, 9.0, 16.6),
}


# --------------------------------------------------------------------------- shape helpers
def to_rows(a: np.ndarray, dim: int | tuple[int, ...] | None
            ) -> tuple[np.ndarray, tuple[int, ...]]:
    """Move axis ``dim`` (or the axes of a tuple, in order) last and return a C-contiguous
    ``(rows, n)`` array + the moved shape (what :func:`from_rows_full` undoes)."""
    if dim is None:
        flat = np.ascontiguousarray(a).reshape(1, a.size)
        return flat, (a.size,)
    axes = (dim,) if isinstance(dim, int) else tuple(dim)
    k = len(axes)
    moved = np.moveaxis(a, axes, tuple(range(a.ndim - k, a.ndim)))
    keep = moved.shape[:a.ndim - k]
    n = math.prod(moved.shape[a.ndim - k:])
    rows = math.prod(keep)
    return np.ascontiguousarray(moved).reshape(rows, n), moved.shape


def from_rows_full(r: np.ndarray, shape: tuple[int, ...], dim: int | tuple[int, ...]
                   ) -> np.ndarray:
    """Inverse of :func:`to_rows` for outputs with the input's shape."""
    axes = (dim,) if isinstance(dim, int) else tuple(dim)
    nd = len(shape)
    out = np.moveaxis(r.reshape(shape), tuple(range(nd - len(axes), nd)), axes)
    return np.ascontiguousarray(out)


def from_rows_reduced(r: np.ndarray, a_shape: tuple[int, ...],
                      dim: int | tuple[int, ...] | None, keepdim: bool) -> np.ndarray:
    """Shape a per-row result ``(rows,)`` like a reduction of ``a_shape`` over ``dim``."""
    if dim is None:
        out = r.reshape(())
        return out.reshape((1,) * len(a_shape)) if keepdim else out
    axes = (dim,) if isinstance(dim, int) else tuple(dim)
    red = tuple(s for i, s in enumerate(a_shape) if i not in axes)
    out = r.reshape(red)
    return np.expand_dims(out, tuple(sorted(axes))) if keepdim else out


# --------------------------------------------------------------------------- element-wise
def softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)), piecewise (see SOFTPLUS_CUTS)."""
    lo, mid, hi = SOFTPLUS_CUTS[x.dtype]
    out = np.empty_like(x)
    with np.errstate(all="ignore"):
        a = x <= lo
        c = x > mid
        d = x > hi
        b = ~(a | c)  # also holds NaN, which log1p(exp(.)) propagates
        cd = c & ~d
        out[a] = np.exp(x[a])
        xb = x[b]
        out[b] = np.log1p(np.exp(xb))
        xc = x[cd]
        out[cd] = xc + np.exp(-xc)
        out[d] = x[d]
    return out


def log_sigmoid(x: np.ndarray) -> np.ndarray:
    """log(sigmoid(x)) = -softplus(-x)."""
    return -softplus(-x)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1/(1+exp(-x)) for x >= 0, exp(x)/(1+exp(x)) for x < 0: exp never overflows.

    Branch-free: with e = exp(-|x|) both branches are (1 or e) / (1 + e), the same two
    roundings as the piecewise form, without boolean-mask gathers (3x faster).
    """
    with np.errstate(all="ignore"):
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1.0, e) / (1.0 + e)  # NaN: x >= 0 is False, e is NaN


def log1mexp(x: np.ndarray) -> np.ndarray:
    """log(1 - exp(x)) for x <= 0 (Maechler 2012): x > -ln2: log(-expm1(x)), else log1p(-exp(x)).

    x = 0 gives -inf, x > 0 and NaN give NaN.
    """
    out = np.empty_like(x)
    with np.errstate(all="ignore"):
        near = x > -_LN2  # includes x >= 0: log(-expm1(0)) = -inf, log(negative) = NaN
        far = ~near  # includes NaN
        out[near] = np.log(-np.expm1(x[near]))
        out[far] = np.log1p(-np.exp(x[far]))
    return out


def bce_elementwise(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """softplus(x) - t*x rewritten as |x| * w + log1p(exp(-|x|)), w = (1-t if x >= 0 else t).

    Algebra: softplus(x) - t x = max(x, 0) - t x + log1p(exp(-|x|)), and
    max(x, 0) - t x = x (1 - t) for x >= 0, |x| t for x < 0. Both terms of the sum are
    >= 0, so there is no cancellation for any t in [0, 1]; 1 - t is exact for t >= 1/2
    (Sterbenz) and has relative error <= u otherwise. w = 0 with |x| = inf gives 0 (the
    limit), not inf*0 = NaN.
    """
    with np.errstate(all="ignore"):
        ax = np.abs(x)
        w = np.where(x >= 0, 1.0 - t, t)
        lin = ax * w
        if not np.isfinite(ax).all():
            lin = np.where(w == 0, 0.0, lin).astype(x.dtype, copy=False)
        return lin + np.log1p(np.exp(-ax))


def bce_and_grad(x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bce_elementwise(x, t), sigmoid(x) - t), sharing e = exp(-|x|); t broadcasts.

    The loss equals bce_elementwise's |x| w + log1p(e) bit for bit. The gradient uses
    q = sigmoid(-|x|) = e / (1 + e), never a rounded sigmoid near 1:
    x >= 0: sigmoid(x) - t = (1 - t) - q;  x < 0: sigmoid(x) - t = q - t.

    Hard labels (every t is 0 or 1, the training case) take a mask-free path: with
    s = 1 - 2t (+-1, exact) and z = s x, the loss is max(z, 0) + log1p(e) (the same bits)
    and the gradient s * sigmoid(z), sigmoid(z) = (1 if z >= 0 else e) / (1 + e); no
    cancellation anywhere, so a saturated logit keeps its tiny gradient
    (sigmoid(20) - 1 = -2.1e-9, not 0, in float32). NumPy's ``where`` is the slow step
    of the general path (about 4 ns per element against 0.3 for a multiply).
    """
    with np.errstate(all="ignore"):
        ax = np.abs(x)
        e = np.negative(ax)
        np.exp(e, out=e)
        if t.size and np.all((t == 0) | (t == 1)):
            s = 1.0 - 2.0 * t
            z = x * s
            loss = np.maximum(z, 0.0)
            loss += np.log1p(e)
            num = np.maximum(e, z >= 0)  # 1 where z >= 0 (e <= 1 there), else e
            grad = np.divide(num, np.add(e, 1.0), out=num)
            grad *= s
            return loss, grad
        pos = x >= 0
        w = np.where(pos, 1.0 - t, t)
        lin = ax * w
        if ax.size and not np.isfinite(ax.max()):
            lin = np.where(w == 0, 0.0, lin).astype(x.dtype, copy=False)
        loss = lin + np.log1p(e)
        q = e / (1.0 + e)
        grad = np.where(pos, (1.0 - t) - q, q - t)
    return loss, grad


# --------------------------------------------------------------------------- log-sum-exp
def lse_rows(x: np.ndarray, lsm: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``x`` (rows, n): the max ``m`` and ``L = log1p(sum_{j != argmax} exp(x_j - m))``.

    lse = m + L (Blanchard, Higham & Higham 2021, Algorithm 4.1 with the log1p split).
    The argmax term is removed by zeroing its exp (which is exactly exp(0) = 1) *before*
    summing, so the sum of the other terms carries no rounding error of size u*1; forming
    the full sum s and then s - 1 would lose all accuracy when the other terms are tiny
    (x = [0, -30] gives lse = 9.4e-14, and s - 1 would be wrong in the 3rd digit).

    If ``lsm`` (same shape as x) is given, it receives log_softmax = (x - m) - L. Both terms
    are <= 0, so that subtraction has no cancellation either.

    Non-finite maxima (all -inf rows, +inf, NaN) are shifted by 0 instead, as scipy does,
    and then lse = m + L gives -inf / +inf / NaN, and log_softmax = (x - m) - L gives NaN
    where x = m = +-inf and -inf elsewhere.
    """
    rows, n = x.shape
    m = np.empty(rows, x.dtype)
    big_l = np.empty(rows, x.dtype)
    if rows == 0:
        return m, big_l
    if n == 0:
        m.fill(-np.inf)
        big_l.fill(0)
        return m, big_l
    path = _KERNEL or DEFAULT_KERNEL
    if (path != "numpy" and x.dtype == np.float32 and x.flags.c_contiguous
            and (lsm is None or lsm.flags.c_contiguous)):
        _lse_kernel_rows(x, lsm, m, big_l, path)
        return m, big_l
    _lse_numpy_rows(x, lsm, m, big_l)
    return m, big_l


def _lse_numpy_rows(x, lsm, m, big_l):
    with np.errstate(all="ignore"):
        if x.shape[1] <= BLOCK:
            _lse_blocked_rows(x, lsm, m, big_l)
        else:
            _lse_long_rows(x, lsm, m, big_l)


def _lse_kernel_rows(x, lsm, m, big_l, target):
    """The C kernel (one read of each row, exp and sum in registers; see _lsekernel.c);
    rows with a NaN or a non-finite max come back flagged and go to the NumPy kernel,
    which owns the special-value rules."""
    rows, n = x.shape
    special = np.empty(rows, np.uint8)
    nspecial = _lsekernel.lse_rows_f32(x, rows, n, m, big_l, lsm, special, target)
    if nspecial:
        idx = np.flatnonzero(special)
        xs = np.ascontiguousarray(x[idx])
        ys = None if lsm is None else np.empty_like(xs)
        ms, ls = np.empty(idx.size, x.dtype), np.empty(idx.size, x.dtype)
        _lse_numpy_rows(xs, ys, ms, ls)
        m[idx], big_l[idx] = ms, ls
        if lsm is not None:
            lsm[idx] = ys


def _lse_blocked_rows(x, lsm, m, big_l):
    rows, n = x.shape
    per = max(1, BLOCK // n)
    k0 = min(per, rows)
    ebuf = np.empty((k0, n), x.dtype)
    ar0 = np.arange(k0)
    for r0 in range(0, rows, per):
        r1 = min(r0 + per, rows)
        k = r1 - r0
        xs = x[r0:r1]
        ar = ar0[:k]
        idx = xs.argmax(axis=1)  # first NaN if any, so NaN rows get m = NaN
        mk = xs[ar, idx]
        m[r0:r1] = mk
        finite_m = np.isfinite(mk)
        all_fin = bool(finite_m.all())
        shift = mk if all_fin else np.where(finite_m, mk, 0)
        e = ebuf[:k]
        if lsm is None:
            np.subtract(xs, shift[:, None], out=e)
            np.exp(e, out=e)
        else:
            y = lsm[r0:r1]
            np.subtract(xs, shift[:, None], out=y)
            np.exp(y, out=e)
        e[ar, idx] = 0
        lk = big_l[r0:r1]
        np.log1p(e.sum(axis=1), out=lk)
        if lsm is not None:
            np.subtract(y, lk[:, None], out=y)
            if not all_fin:
                bad = ~finite_m
                y[bad] = (xs[bad] - mk[bad, None]) - lk[bad, None]


def _lse_long_rows(x, lsm, m, big_l):
    rows, n = x.shape
    ebuf = np.empty(BLOCK, x.dtype)
    nblocks = -(-n // BLOCK)
    parts = np.empty(nblocks, x.dtype)
    for r in range(rows):
        row = x[r]
        i = int(row.argmax())
        mr = row[i]
        fin = bool(np.isfinite(mr))
        shift = mr if fin else x.dtype.type(0)
        for b in range(nblocks):
            c0 = b * BLOCK
            seg = row[c0:c0 + BLOCK]
            e = ebuf[:seg.shape[0]]
            if lsm is None:
                np.subtract(seg, shift, out=e)
                np.exp(e, out=e)
            else:
                y = lsm[r, c0:c0 + BLOCK]
                np.subtract(seg, shift, out=y)
                np.exp(y, out=e)
            if c0 <= i < c0 + BLOCK:
                e[i - c0] = 0
            parts[b] = e.sum()
        lr = np.log1p(parts.sum())  # pairwise within blocks, then over the block sums
        m[r] = mr
        big_l[r] = lr
        if lsm is not None:
            if fin:
                np.subtract(lsm[r], lr, out=lsm[r])
            else:
                lsm[r] = (row - mr) - lr


def lse_weighted_rows(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: ``(log|sum_j w_j exp(x_j)|, sign of the sum)`` (scipy's ``b=`` weights).

    The same split as :func:`lse_rows`, generalised to weights as scipy does it (so
    results and special values agree with ``scipy.special.logsumexp``): a = max of the
    x_j whose weight is non-zero (entries with w_j = 0 add nothing even if x_j is inf or
    NaN), m = sum of the weights at the maximum (ties included), s = sum of the other
    terms w_j exp(x_j - a) / m, and log|sum| = a + log|m| + log1p(s), with s < -1
    reflected to -s - 2 (log1p(-s - 2) = log|1 + s|); sign = sign(1 + s) sign(m).
    Rows whose result is not finite are recomputed directly as log|sum w exp(x)|, so
    inf/NaN follow IEEE as in scipy. Empty rows: (-inf, -1), scipy's values.
    """
    rows, n = x.shape
    if n == 0:
        return np.full(rows, -np.inf, x.dtype), np.full(rows, -1, x.dtype)
    with np.errstate(all="ignore"):
        a = np.where(w == 0, x.dtype.type(-np.inf), x)
        amax = a.max(axis=1) if rows else np.empty(0, x.dtype)
        at_max = a == amax[:, None]
        m = np.where(at_max, w, 0).sum(axis=1)
        a = np.where(at_max, x.dtype.type(-np.inf), a)
        e = w * np.exp(a - amax[:, None])
        s = e.sum(axis=1)
        s = np.where(s == 0, s, s / m)
        sgn = np.sign(s + 1) * np.sign(m)
        s = np.where(s < -1, -s - 2, s)
        out = np.log1p(s) + np.log(np.abs(m)) + amax
        bad = ~np.isfinite(out)
        if bad.any():
            direct = (w[bad] * np.exp(x[bad])).sum(axis=1)
            out[bad] = np.log(np.abs(direct))
            sgn[bad] = np.sign(direct)
    return out.astype(x.dtype, copy=False), sgn.astype(x.dtype, copy=False)


def softmax_rows(x: np.ndarray) -> np.ndarray:
    """exp(x - a) / (1 + sum_{j != k} exp(x_j - a)) per row, a = x_k = max x.

    The denominator 1 + s is formed with a single rounding after s (the other terms) has
    been summed without the max term's 1 in it: summing the 1 along with the rest would
    round every partial sum at the scale of 1 and cost ~log2(n) ulp when p_k ~ 1.
    Rows with a non-finite max get exp(log_softmax) so that the special values agree
    with :func:`lse_rows`.
    """
    rows, n = x.shape
    out = np.empty_like(x)
    if rows == 0 or n == 0:
        return out
    per = max(1, BLOCK // n)
    ar0 = np.arange(min(per, rows))
    with np.errstate(all="ignore"):
        for r0 in range(0, rows, per):
            r1 = min(r0 + per, rows)
            xs = x[r0:r1]
            o = out[r0:r1]
            ar = ar0[:r1 - r0]
            idx = xs.argmax(axis=1)
            mk = xs[ar, idx]
            np.subtract(xs, mk[:, None], out=o)
            np.exp(o, out=o)
            o[ar, idx] = 0
            den = o.sum(axis=1)
            den += 1
            o[ar, idx] = 1
            np.divide(o, den[:, None], out=o)
            finite_m = np.isfinite(mk)
            if not finite_m.all():
                bad = ~finite_m
                xb = np.ascontiguousarray(xs[bad])
                lb = np.empty_like(xb)
                lse_rows(xb, lb)
                o[bad] = np.exp(lb)
    return out


# --------------------------------------------------------------------------- accumulation
def sum2_rows(a: np.ndarray) -> np.ndarray:
    """Compensated pairwise sum of each row of ``a`` (float64).

    Cascaded pairwise summation with Knuth's error-free TwoSum at every addition, the
    error terms summed separately and added at the end: a vectorised variant of
    Ogita, Rump & Oishi's Sum2 (SIAM J. Sci. Comput. 2005; Higham 2002, sec. 4.3-4.4).
    The result is as accurate as pairwise summation in twice the working precision, then
    rounded: |err| <= u|s| + O(u^2 log2(n)) sum|x_i|.

    Rows with inf/NaN, or whose partial sums overflow, fall back to the plain IEEE sum.
    """
    rows, n = a.shape
    if n == 0:
        return np.zeros(rows, a.dtype)
    hi = a
    err = np.zeros(rows, a.dtype)
    with np.errstate(all="ignore"):
        while hi.shape[1] > 1:
            if hi.shape[1] % 2:
                hi = np.concatenate([hi, np.zeros((rows, 1), a.dtype)], axis=1)
            p = hi[:, 0::2]
            q = hi[:, 1::2]
            s = p + q
            z = s - p
            e = (p - (s - z)) + (q - z)  # exact: p + q = s + e (TwoSum)
            err += e.sum(axis=1)
            hi = s
        res = hi[:, 0] + err
        bad = ~np.isfinite(res)
        if bad.any():
            res[bad] = a[bad].sum(axis=1)
    return res


# Squares of values in [2^-450, 2^450] neither overflow nor underflow to a relevant degree:
# an x_i whose square underflows is below 2^-537 and so contributes < 2^-174 relative to
# max|x|^2 >= 2^-900; and n * 2^900 stays far from 2^1024 for any n that fits in memory.
_SAFE_LO = 2.0 ** -450
_SAFE_HI = 2.0 ** 450


def scaled_sumsq_rows(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (S, e) with sum_j d_j^2 = S * 2^(2e) for each row, without over/underflow.

    Two-pass scaling in the manner of LAPACK's dnrm2: find max|d| per row, and if it lies
    outside [2^-450, 2^450], scale the row by the power of two 2^-e that brings max|d| into
    [1/2, 1) (ldexp is exact, unlike division by max|d|), sum the squares, and return e.
    """
    rows, n = d.shape
    e = np.zeros(rows, np.int64)
    if n == 0:
        return np.zeros(rows, d.dtype), e
    with np.errstate(all="ignore"):
        amax = np.max(np.abs(d), axis=1)
        need = ((amax > _SAFE_HI) | (amax < _SAFE_LO)) & (amax > 0) & np.isfinite(amax)
        # np.sum (pairwise along the contiguous last axis), not einsum/dot, whose
        # accumulation order is sequential per SIMD lane.
        s = np.square(d).sum(axis=1) if not need.all() else np.empty(rows, d.dtype)
        if need.any():
            _, ex = np.frexp(amax[need])
            ds = np.ldexp(d[need], -ex[:, None])
            s[need] = np.square(ds).sum(axis=1)
            e[need] = ex
    return s, e


def mean_var_rows(a: np.ndarray, ddof: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance per row (float64), corrected two-pass algorithm.

    mean = Sum2(x) / n (compensated, so |mean error| <= ~u|mean|);
    d = x - mean; var = (sum d^2 - (sum d)^2 / n) / (n - ddof)
    (Bjorck 1996; Chan, Golub & LeVeque 1983, "corrected two-pass"). Shifting by the
    mean removes the catastrophic cancellation of E[x^2] - E[x]^2 when |mean| >> std; the
    (sum d)^2/n term corrects the rounding error left in the mean. sum d^2 is scaled as
    in :func:`scaled_sumsq_rows`, so it only overflows if the variance itself does.
    """
    rows, n = a.shape
    with np.errstate(all="ignore"):
        if n == 0:
            nan = np.full(rows, np.nan, a.dtype)
            return nan, nan.copy()
        total = sum2_rows(a)
        mean = total / n
        over = ~np.isfinite(mean) & np.isfinite(a).all(axis=1)
        if over.any():
            # The sum overflowed although every x is finite (so the mean is too): sum the
            # values scaled by 2^-k with 2^k >= n, which cannot overflow. Scaling by a
            # power of two is exact except for values that become subnormal, and those
            # are below 2^-1022 * n relative to a mean of order max/n: negligible.
            k = math.ceil(math.log2(n)) + 1
            mean[over] = np.ldexp(sum2_rows(np.ldexp(a[over], -k)) / n, k)
        d = a - mean[:, None]
        s1 = d.sum(axis=1)
        s2, ex = scaled_sumsq_rows(d)
        # (sum d)^2 / n is O(u^2) relative to sum d^2; scale it the same way.
        s1s = np.ldexp(s1, -ex)
        var_scaled = (s2 - s1s * s1s / n) / (n - ddof) if n - ddof > 0 else np.full(rows, np.nan)
        var = np.ldexp(var_scaled, 2 * ex)
        var = np.where(var < 0, 0.0, var)  # cannot happen in exact arithmetic
    return mean, var


def l2_norm_rows(a: np.ndarray) -> np.ndarray:
    """sqrt(sum x^2) per row without overflow or underflow (float64), via scaled_sumsq_rows."""
    with np.errstate(all="ignore"):
        s, e = scaled_sumsq_rows(a)
        out = np.ldexp(np.sqrt(s), e)
        # ||x|| = inf even if the row also holds NaN (like hypot)
        out[np.isinf(a).any(axis=1)] = np.inf
    return out
