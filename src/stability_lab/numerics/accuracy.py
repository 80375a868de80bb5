"""Measure the worst error of :mod:`stability_lab.numerics` against mpmath references.

Run ``python -m stability_lab.numerics.accuracy`` (needs mpmath and torch; about a
minute on 2 cores). It prints the worst-ulp table quoted in docs/numerics.md. The tests
import the reference and ulp helpers from here.

Definitions
-----------
* ulp error of a computed value c for the exact value y in a format with p significand
  bits and minimum normal exponent emin: |c - y| / 2^(max(e, emin) - p + 1), where
  2^e <= |y| < 2^(e+1). Below the normal range the unit is therefore the smallest
  subnormal, i.e. an absolute error, as the issue asks.
* For the log-sum-exp family the error is also compared with the bound
  u * B (u = 2^-p, unit roundoff) where, with a = max x at index k, p = softmax(x),
  D = sum_j p_j |x_j - a| and r = (log2(n) + 2)(1 - p_k):
      logsumexp:                 B = |lse| + D + r
      log_softmax_i, CE:         B = |log_softmax_i| + D + r
      softmax_i (relative):      B = (|x_i - a| + D + log2(n) + 3) * p_i
  plus, in every case, one smallest subnormal of absolute error (u B + 2^(emin-p+1)) for
  results that underflow. D bounds the effect of rounding the shifted arguments x_j - a (the conditioning term,
  Blanchard, Higham & Higham 2021, sec. 2-4), r that of the sum of the other terms.
  The reported ``c`` is max |err| / (u B) over the test rows.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

FORMATS = {
    "float64": (53, -1022),
    "float32": (24, -126),
    "float16": (11, -14),
    "bfloat16": (8, -126),
}
_EMAX = {"float64": 1023, "float32": 127, "float16": 15, "bfloat16": 127}
DPS = 60


def _mp():
    import mpmath

    mpmath.mp.dps = DPS
    return mpmath


# --------------------------------------------------------------------------- ulp
def ulp(y, fmt: str):
    """ulp of the exact value ``y`` (mpf) in format ``fmt``; the smallest subnormal at 0."""
    mp = _mp()
    p, emin = FORMATS[fmt]
    if y == 0:
        return mp.ldexp(1, emin - p + 1)
    _, e = mp.frexp(y)  # y = m 2^e, 1/2 <= |m| < 1
    return mp.ldexp(1, max(e - 1, emin) - p + 1)


def overflow_threshold(fmt: str) -> float:
    """Exact values at or beyond this magnitude round to infinity in ``fmt``."""
    p, _ = FORMATS[fmt]
    mp = _mp()
    return mp.ldexp(2 - mp.ldexp(1, -p), _EMAX[fmt])


def _error_or_verdict(c: float, y, fmt: str):
    """(y, None) when |c - y| is a finite question, else (y, 0 or inf): c NaN, or an
    infinity on either side (a y that overflows the format counts as its infinity)."""
    mp = _mp()
    if math.isnan(c):
        return y, math.inf
    if not mp.isinf(y) and abs(y) >= overflow_threshold(fmt):
        y = mp.inf if y > 0 else mp.ninf
    if mp.isinf(y) or math.isinf(c):
        same = math.isinf(c) and mp.isinf(y) and (c > 0) == (y > 0)
        return y, 0.0 if same else math.inf
    return y, None


def abs_error(c: float, y, fmt: str):
    """|c - y| as mpf; 0 if y overflows the format and c is the matching infinity."""
    mp = _mp()
    y, verdict = _error_or_verdict(c, y, fmt)
    return abs(mp.mpf(c) - y) if verdict is None else mp.mpf(verdict)


def ulp_error(c: float, y, fmt: str) -> float:
    """|c - y| in ulps of y (inf if c is NaN or a wrong infinity; results that overflow
    the format are expected to be the infinity of their sign)."""
    mp = _mp()
    y, verdict = _error_or_verdict(c, y, fmt)
    return float(abs(mp.mpf(c) - y) / ulp(y, fmt)) if verdict is None else verdict


# --------------------------------------------------------------------------- references
@functools.cache
def ref_softplus(x: float):
    mp = _mp()
    v = mp.mpf(x)
    if v > 0:  # x + log1p(exp(-x)): avoids forming exp(1e308)
        return v + mp.log1p(mp.exp(-v))
    return mp.log1p(mp.exp(v))


@functools.cache
def ref_sigmoid(x: float):
    mp = _mp()
    v = mp.mpf(x)
    if v >= 0:
        return 1 / (1 + mp.exp(-v))
    e = mp.exp(v)
    return e / (1 + e)


def ref_log_sigmoid(x: float):
    return -ref_softplus(-x)


@functools.cache
def ref_log1mexp(x: float):
    mp = _mp()
    v = mp.mpf(x)
    if v > 0 or math.isnan(x):
        return mp.nan
    if v == 0:
        return mp.ninf
    if v > -1:  # -expm1 is accurate near 0
        return mp.log(-mp.expm1(v))
    return mp.log1p(-mp.exp(v))  # log1p keeps the tiny -e^x for very negative x


@functools.cache
def ref_bce(x: float, t: float):
    mp = _mp()
    v, tt = mp.mpf(x), mp.mpf(t)
    w = (1 - tt) if v >= 0 else tt  # exact identity softplus(x) - t x = |x| w + softplus(-|x|)
    return abs(v) * w + mp.log1p(mp.exp(-abs(v)))


def ref_lse_row(row) -> tuple:
    """(lse, log_softmax list, softmax list, D, r) of a finite row, in mpmath."""
    mp = _mp()
    xs = [mp.mpf(float(v)) for v in row]
    n = len(xs)
    k = max(range(n), key=lambda i: xs[i])
    a = xs[k]
    sh = [v - a for v in xs]
    es = [mp.exp(s) for s in sh]
    s_others = mp.fsum(es[j] for j in range(n) if j != k)
    big_l = mp.log1p(s_others)
    lse = a + big_l
    lsm = [s - big_l for s in sh]
    sm = [mp.exp(v) for v in lsm]
    d = mp.fsum(sm[j] * abs(sh[j]) for j in range(n))
    r = (math.log2(n) + 2) * (1 - sm[k])
    return lse, lsm, sm, sh, d, r


# --------------------------------------------------------------------------- input sets
def special_grid(fmt: str) -> np.ndarray:
    """Hand-built adversarial inputs for element-wise functions (float64 values exactly
    representable in ``fmt``)."""
    p, emin = FORMATS[fmt]
    emax = _EMAX[fmt]
    big = math.ldexp(2 - 2.0 ** (1 - p), emax)
    tiny = _emin_sub(fmt)
    vals = [0.0, tiny, 2 * tiny, math.ldexp(1, emin) - tiny, math.ldexp(1, emin),
            1.0, 0.5, 2.0, math.log(2), 1e-8, 1e-3, 0.1, 0.9, 3.0, 10.0,
            -37, 18, 33.3, -17, 9, 16.6, 36.04, 15.9, 30, 40, 50, 88.7, 103.9, 87.3,
            700, 708.39, 709.78, 709.79, 710, 744.44, 745.13, 746, 1e3, 1e4, 1e5, 1e10,
            1e20, 1e38, 1e100, 1e300, big / 2, big]
    vals += [math.ldexp(1, k) for k in range(emin - p + 1, emax + 1, 7)]
    out = []
    for v in vals:
        for s in (1.0, -1.0):
            out.append(s * v)
    a = np.array(out, dtype=np.float64)
    a = _round_to(a, fmt)
    a = a[np.isfinite(a)]
    # neighbours of every grid point
    nb = np.concatenate([a, _next(a, fmt, +1), _next(a, fmt, -1)])
    nb = nb[np.isfinite(nb)]
    return np.unique(nb)


def random_values(fmt: str, n: int, seed: int = 0) -> np.ndarray:
    """n/2 values with uniformly random bit patterns (the whole exponent range, subnormals
    included) and n/2 uniform in [-60, 60] (where the functions are not trivial)."""
    rng = np.random.default_rng(seed)
    h = n // 2
    if fmt == "float64":
        bits = rng.integers(0, 2**64 - 1, size=h * 2, dtype=np.uint64).view(np.float64)
    elif fmt in ("float32", "bfloat16"):
        bits = rng.integers(0, 2**32 - 1, size=h * 2, dtype=np.uint32).view(np.float32)
    else:
        bits = rng.integers(0, 2**16 - 1, size=h * 2, dtype=np.uint16).view(np.float16)
    with np.errstate(all="ignore"):
        bits = bits.astype(np.float64)
        bits = _round_to(bits[np.isfinite(bits)][:h], fmt)
    mid = _round_to(rng.uniform(-60, 60, size=n - h), fmt)
    out = np.concatenate([bits, mid])
    return out[np.isfinite(out)]


def _emin_sub(fmt: str) -> float:
    """The smallest positive subnormal of ``fmt``."""
    p, emin = FORMATS[fmt]
    return math.ldexp(1, emin - p + 1)


def _finite_rows(rows, fmt: str) -> list[np.ndarray]:
    """Each row rounded to ``fmt`` (as float64), dropping rows that do not stay finite."""
    out = []
    for r in rows:
        a = _round_to(np.asarray(r, np.float64), fmt)
        if np.isfinite(a).all():
            out.append(a)
    return out


def _round_to(a: np.ndarray, fmt: str) -> np.ndarray:
    a = np.asarray(a, np.float64)
    with np.errstate(all="ignore"):
        if fmt == "float64":
            return a.copy()
        if fmt == "float32":
            return a.astype(np.float32).astype(np.float64)
        if fmt == "float16":
            return a.astype(np.float16).astype(np.float64)
        import torch

        return torch.from_numpy(a).to(torch.bfloat16).double().numpy()


def _next(a: np.ndarray, fmt: str, direction: int) -> np.ndarray:
    if fmt in ("float64", "float32", "float16"):
        dt = np.dtype(fmt)
        with np.errstate(all="ignore"):
            return np.nextafter(a.astype(dt), dt.type(np.inf * direction)).astype(np.float64)
    import torch

    t = torch.from_numpy(a).to(torch.bfloat16)
    return torch.nextafter(t, torch.full_like(t, math.inf * direction)).double().numpy()


def evaluate(fn: Callable, values: np.ndarray, fmt: str, *extra: np.ndarray) -> np.ndarray:
    """fn applied to ``values`` converted to ``fmt`` (torch for bfloat16); float64 result."""
    if fmt == "bfloat16":
        import torch

        args = [torch.from_numpy(np.asarray(v, np.float64)).to(torch.bfloat16) for v in
                (values, *extra)]
        return fn(*args).double().numpy()
    dt = np.dtype(fmt)
    return np.asarray(fn(values.astype(dt), *(e.astype(dt) for e in extra)), np.float64)


# --------------------------------------------------------------------------- measurement
ELEMENTWISE_REFS = {
    "sigmoid": ref_sigmoid,
    "log_sigmoid": ref_log_sigmoid,
    "softplus": ref_softplus,
    "log1mexp": ref_log1mexp,
}


def worst_elementwise(name: str, fmt: str, values: np.ndarray) -> tuple[float, float]:
    """(worst ulp error, the input where it occurs) of numerics.<name> over ``values``."""
    from stability_lab import numerics

    if name == "log1mexp":
        values = -np.abs(values)
    got = evaluate(getattr(numerics, name), values, fmt)
    ref = ELEMENTWISE_REFS[name]
    errs = [ulp_error(float(c), ref(float(v)), fmt) for c, v in zip(got, values)]
    i = int(np.argmax(errs))
    return errs[i], float(values[i])


BCE_TARGETS = (0.0, 1.0, 0.5, 0.25, 0.75, 0.1, 0.9, 1 - 2.0**-20, 2.0**-20, 0.3, 0.7)


def worst_bce(fmt: str, values: np.ndarray, seed: int = 0) -> tuple[float, tuple]:
    from stability_lab import numerics

    rng = np.random.default_rng(seed)
    xs = np.repeat(values, 2)
    ts = np.concatenate([rng.choice(BCE_TARGETS, size=len(values)),
                         rng.uniform(0, 1, size=len(values))])
    ts = _round_to(ts, fmt)
    got = evaluate(lambda x, t: numerics.binary_cross_entropy_with_logits(x, t, "none"),
                   xs, fmt, ts)
    errs = [ulp_error(float(c), ref_bce(float(x), float(t)), fmt)
            for c, x, t in zip(got, xs, ts)]
    i = int(np.argmax(errs))
    return errs[i], (float(xs[i]), float(ts[i]))


def reduction_rows(fmt: str, seed: int = 0) -> list[np.ndarray]:
    """Rows for the log-sum-exp family: adversarial rows plus random ones."""
    big = float(np.finfo(np.float32).max) if fmt in ("float32", "bfloat16") else (
        65504.0 if fmt == "float16" else float(np.finfo(np.float64).max))
    tiny = _emin_sub(fmt)
    rows = [
        [0.0], [5.0], [0.0, -30.0], [0.0, -1e-20], [0.0, 0.0], [1.0, 2.0], [-1.0, -1.0],
        [big, big], [big, -big], [-big, -big], [big], [-big], [tiny, -tiny], [tiny, tiny],
        [1e4, -1e4, 0.0], [700.0, -700.0], [-700.0, -700.5, -701.0], [0.0, -40.0, -50.0],
        [30.0, 0.0, -30.0], [-0.5, -0.5, -0.5, -0.5], [1e-300, -23.0], [100.0, 99.0, 98.0],
        [-1e4, -1e4 + 1, -1e4 - 1], [0.3, -700.0, -700.5],
    ]
    rng = np.random.default_rng(seed)
    for n in (2, 3, 10, 100):
        for scale in (1e-5, 1.0, 10.0, 1e3):
            for shift in (0.0, 5.0, -50.0, 1e4):
                rows.append((shift + scale * rng.standard_normal(n)).tolist())
    return _finite_rows(rows, fmt)


def kernel_rows(fmt: str, seed: int = 1) -> list[np.ndarray]:
    """Rows that exercise the C kernel's vector lanes and tails (lengths 1-40 and 1000):
    ties for the max, terms far below the format's normal range (x - max < -87 in
    float32), terms past the kernel's e^-700 cut-off, and entries near -finfo.max."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in list(range(1, 41)) + [1000]:
        a = rng.standard_normal(n) * rng.choice([0.1, 3.0, 40.0])
        if n >= 3:
            k = rng.integers(0, n, size=2)
            a[k] = a.max()  # ties
        rows.append(a)
        if n >= 2:
            b = np.full(n, -1e3)
            b[rng.integers(0, n)] = 0.0
            b[rng.integers(0, n)] = -95.0  # subnormal in float32: kept in float64
            b[rng.integers(0, n)] = -699.5
            rows.append(b)
            c = -rng.random(n) * 20.0
            c[rng.integers(0, n)] = -3e38
            rows.append(c)
    return _finite_rows(rows, fmt)


def reduction_errors(fmt: str, rows: list[np.ndarray], seed: int = 0) -> dict:
    """Per function: (worst ulp over well-conditioned outputs, worst c over all outputs)."""
    from stability_lab import numerics

    mp = _mp()
    p, _ = FORMATS[fmt]
    u = 2.0 ** -p
    rng = np.random.default_rng(seed)
    res = {k: [0.0, 0.0] for k in ("logsumexp", "log_softmax", "softmax", "cross_entropy")}
    for row in rows:
        n = len(row)
        lse, lsm, sm, sh, d, r = ref_lse_row(row)
        xs = [mp.mpf(float(v)) for v in row]
        got_lse = float(evaluate(numerics.logsumexp, row, fmt))
        got_lsm = evaluate(numerics.log_softmax, row, fmt)
        got_sm = evaluate(numerics.softmax, row, fmt)
        t = int(rng.integers(0, n))
        if fmt == "bfloat16":
            import torch

            got_ce = float(numerics.cross_entropy(
                torch.from_numpy(row).to(torch.bfloat16), torch.tensor(t)).double())
        else:
            got_ce = float(numerics.cross_entropy(row.astype(fmt), np.array(t)))
        tiny = _emin_sub(fmt)  # results that underflow: absolute error in subnormal units
        wsum = mp.fsum(sm[j] * abs(xs[j]) for j in range(n))  # sum_j s_j |x_j|
        # logsumexp
        err = abs_error(got_lse, lse, fmt)
        bound = u * (abs(lse) + d + r) + tiny
        kappa = wsum / abs(lse) if lse != 0 else mp.inf
        _upd(res["logsumexp"], err, bound, ulp_error(got_lse, lse, fmt), kappa)
        for i in range(n):
            err = abs_error(float(got_lsm[i]), lsm[i], fmt)
            bound = u * (abs(lsm[i]) + d + r) + tiny
            kappa = (abs(xs[i]) + wsum) / abs(lsm[i]) if lsm[i] != 0 else mp.inf
            _upd(res["log_softmax"], err, bound, ulp_error(float(got_lsm[i]), lsm[i], fmt), kappa)
            err = abs_error(float(got_sm[i]), sm[i], fmt)
            bound = u * (abs(sh[i]) + d + math.log2(n) + 3) * sm[i] + tiny
            # |x_i| (1 - s_i) + sum_{j != i} s_j |x_j|
            kappa = abs(xs[i]) * (1 - sm[i]) + (wsum - sm[i] * abs(xs[i]))
            _upd(res["softmax"], err, bound, ulp_error(float(got_sm[i]), sm[i], fmt), kappa)
        err = abs_error(got_ce, -lsm[t], fmt)
        bound = u * (abs(lsm[t]) + d + r) + tiny
        kappa = (abs(xs[t]) + wsum) / abs(lsm[t]) if lsm[t] != 0 else mp.inf
        _upd(res["cross_entropy"], err, bound, ulp_error(got_ce, -lsm[t], fmt), kappa)
    return res


def _upd(slot, err, bound, ulps, kappa):
    """slot = [worst ulp where kappa <= 1, worst err/bound]."""
    if kappa <= 1:
        slot[0] = max(slot[0], ulps)
    slot[1] = max(slot[1], float(err / bound) if bound > 0 else (0.0 if err == 0 else math.inf))


def main(n_random: int = 4000) -> None:
    import numpy
    import torch

    from stability_lab import numerics

    fmts = ("float64", "float32", "float16", "bfloat16")
    print(f"mpmath dps={DPS}; numpy {numpy.__version__}; torch {torch.__version__}")
    print("\nElement-wise functions: worst error in ulps of the result's format "
          f"(adversarial grid + {n_random} random values per format; x -> -|x| for "
          "log1mexp)")
    print(f"{'function':<34}" + "".join(f"{f:>22}" for f in fmts))
    vals = {f: np.concatenate([special_grid(f), random_values(f, n_random)]) for f in fmts}
    for name in ELEMENTWISE_REFS:
        cells = []
        for f in fmts:
            w, at = worst_elementwise(name, f, vals[f])
            cells.append(f"{w:.3f} @ {at:.3g}")
        print(f"{name:<34}" + "".join(f"{c:>22}" for c in cells))
    cells = []
    for f in fmts:
        w, (x, t) = worst_bce(f, vals[f])
        cells.append(f"{w:.3f} @ {x:.3g},{t:.2g}")
    print(f"{'binary_cross_entropy (elementwise)':<34}" + "".join(f"{c:>22}" for c in cells))
    print("\nlog-sum-exp family: worst ulp where kappa <= 1 | worst c = err / (u B)")
    print(f"{'function':<34}" + "".join(f"{f:>22}" for f in fmts))
    table = {f: reduction_errors(f, reduction_rows(f)) for f in fmts}
    for name in ("logsumexp", "log_softmax", "softmax", "cross_entropy"):
        cells = [f"{table[f][name][0]:.3f} | {table[f][name][1]:.3f}" for f in fmts]
        print(f"{name:<34}" + "".join(f"{c:>22}" for c in cells))
    from stability_lab.numerics import _core

    paths = ["numpy", *_core.kernel_targets()]
    rows32 = reduction_rows("float32") + kernel_rows("float32")
    print(f"\nfloat32 log-sum-exp family by implementation ({len(rows32)} rows: the rows "
          "above plus rows of 1-40 and 1000 elements): worst ulp where kappa <= 1 | worst c")
    names = ("logsumexp", "log_softmax", "softmax", "cross_entropy")
    print(f"{'implementation':<34}" + "".join(f"{n:>22}" for n in names))
    for path in paths:
        with _core.use_kernel(path):
            res = reduction_errors("float32", rows32)
        label = "NumPy kernel" if path == "numpy" else f"C kernel, {path}"
        print(f"{label:<34}" + "".join(f"{res[n][0]:.3f} | {res[n][1]:.3f}".rjust(22)
                                       for n in names))
    t = np.linspace(-103.0, 0.0, 2_000_001).astype(np.float32)
    t = t[t < 0]
    pair = np.stack([np.zeros_like(t), t], axis=1)
    ref = np.log1p(np.exp(t.astype(np.float64)))
    spacing = np.spacing(ref.astype(np.float32)).astype(np.float64)
    cells = []
    for path in paths:
        with _core.use_kernel(path):
            got = numerics.logsumexp(pair, axis=-1).astype(np.float64)
        ulps = np.abs(got - ref) / spacing
        cells.append(f"{path} {ulps.max():.2f} @ {t[ulps.argmax()]:.4g}")
    print(f"lse([0, t]) = log1p(exp(t)), {t.size} float32 t in [-103, 0), worst ulp vs "
          "float64 (exp's own error shows here): " + "; ".join(cells))
    default = _core.DEFAULT_KERNEL
    print("(the first table uses the default: "
          + ("the NumPy kernel" if default == "numpy" else f"the C kernel, {default}")
          + "; softmax always uses the NumPy kernel)")
    print("\nvalues tested per format: " + ", ".join(f"{f} {len(vals[f])}" for f in fmts))


if __name__ == "__main__":
    main()
