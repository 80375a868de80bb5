"""Linear least squares, solved many ways, with honest diagnostics.

``solve(X, y, solver=..., precision=...)`` computes ``argmin_b ||X b - y||_2`` with one
of the solvers in :data:`SOLVERS` and returns a :class:`LinearSolution`: the
coefficients and a :class:`SolveDiagnostics` record (condition numbers, numerical rank
and the cutoff that decided it, predicted digits lost, and, when a reference is passed,
the digits that actually agree with it, LRE).

The solvers span the textbook range, from the one to avoid to the one to use:

``normal``
    explicit inverse of the Gram matrix, ``b = inv(X^T X) X^T y``. Forward error grows
    like ``kappa(X)^2 u`` (Higham, *Accuracy and Stability of Numerical Algorithms*,
    2nd ed., sec. 20.4).
``cholesky``
    Cholesky factorization of ``X^T X`` (LAPACK potrf); same ``kappa^2`` behaviour,
    fails outright when the Gram matrix is not numerically positive definite.
``qr``
    Householder QR of ``X`` without pivoting (LAPACK geqrf), ``R b = Q^T y``.
    Backward stable; error ``~ kappa u + kappa^2 u tan(theta)`` (Higham thm. 20.3).
``svd``
    truncated SVD, singular values ``<= rcond * s_max`` dropped (the cutoff is reported).
``pinv``
    ``numpy.linalg.pinv(X) @ y`` with NumPy's default cutoff ``1e-15 * s_max``.
``lstsq``
    ``numpy.linalg.lstsq(X, y)`` with NumPy's default cutoff ``max(m, n) * eps * s_max``.
``ridge``
    Tikhonov regularisation ``min ||X b - y||^2 + alpha ||b||^2`` solved by Householder
    QR of the stacked matrix ``[X; sqrt(alpha) I]`` (Björck, *Numerical Methods for
    Least Squares Problems*, sec. 2.7).
``lsqr``
    Paige & Saunders' LSQR (``scipy.sparse.linalg.lsqr``), with optional damping.
``cg``
    CGLS, conjugate gradients on the normal equations without forming them (Björck
    sec. 7.4), with optional damping.
``gd``
    gradient descent on ``0.5 ||X b - y||^2 (+ 0.5 damp^2 ||b||^2)`` with step ``1/L``,
    ``L = s_max^2 + damp^2``; converges at rate ``1 - 1/kappa^2``.
``auto``
    the lab's recommended path; see :func:`_solve_auto`: exact power-of-two column
    equilibration, Householder QR, rank decided from the singular values of ``R`` with
    the cutoff reported, then fixed-precision iterative refinement of the *augmented
    system* ``[I A; A^T 0][r; x] = [b; 0]`` (Björck 1967; Björck sec. 2.9; Higham
    sec. 20.5) with residuals evaluated in double-double arithmetic (error-free
    transformations TwoSum/TwoProd, vectorised in NumPy). It reaches the accuracy the
    float64 data allow, also for large-residual problems where plain QR loses
    ``kappa^2 tan(theta)``, and costs O(m n^2) for the factorization plus O(m n) per
    refinement step.

Accuracy against a reference is measured as the log relative error (LRE), the number
of agreeing significant digits: ``LRE = -log10(|b - c| / |c|)``, or ``-log10 |b|``
when ``c == 0``, capped at 15 (McCullough, "Assessing the reliability of statistical
software", Am. Stat. 1998).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg

from stability_lab.errors import DataError, UsageError
from stability_lab.formatting import jsonable
from stability_lab.linalg import SOLVERS

__all__ = [
    "SOLVERS",
    "PRECISIONS",
    "LinearSolution",
    "SolveDiagnostics",
    "PerturbationReport",
    "solve",
    "lre",
    "perturbation_digits",
    "validate_inputs",
]

#: Precisions accepted by :func:`solve`; ``float16`` only for the iterative solvers.
PRECISIONS: tuple[str, ...] = ("float64", "float32", "float16")

_LOW_PRECISION_SOLVERS = ("cg", "gd")
_SPARSE_SOLVERS = ("lsqr", "cg", "gd", "auto")
_UNDERDETERMINED_OK = ("svd", "pinv", "lstsq", "ridge", "lsqr", "cg", "gd")

# Which condition number governs each solver's error: methods invariant under column
# scaling (Householder QR, Cholesky; Higham secs. 19.4, 20.4) are governed by the
# condition number of the column-equilibrated matrix, the others by that of X itself.
_SCALING_INVARIANT = ("normal", "cholesky", "qr", "auto", "ridge")
_SQUARES_KAPPA = ("normal", "cholesky")

# One table of the options each solver accepts, with their defaults (None = computed).
_OPTIONS: dict[str, dict[str, Any]] = {
    "normal": {},
    "cholesky": {},
    "qr": {},
    "svd": {"rcond": None},
    "pinv": {"rcond": 1e-15},
    "lstsq": {"rcond": None},
    "ridge": {"alpha": None},
    "lsqr": {"damp": 0.0, "atol": None, "btol": None, "max_iter": None},
    "cg": {"damp": 0.0, "tol": None, "max_iter": None},
    "gd": {"damp": 0.0, "tol": None, "max_iter": 5000, "lr": None},
    "auto": {"rank_tol": None, "max_refine": None, "equilibrate": True},
}

_LRE_CAP = 15.0


# --------------------------------------------------------------------------------------
# result records


@dataclass
class SolveDiagnostics:
    """What a solve did and how far its digits can be trusted.

    ``condition_number`` is the 2-norm condition number ``s_max/s_min`` of X;
    ``condition_number_equilibrated`` that of X with columns scaled to unit 2-norm
    (the one that governs column-scaling-invariant solvers). ``predicted_digits_lost``
    is ``log10`` of the first-order error bound of the solver: ``log10(k + k^2 tan t)``
    for backward-stable orthogonal methods, ``2 log10 k`` for normal equations, with
    ``k`` the governing condition number and ``tan t = ||r|| / (||X|| ||b||)``
    (Higham thm. 20.3). ``lre`` is per-coefficient agreement with a reference.
    """

    solver: str
    precision: str
    n_samples: int
    n_features: int
    status: str = "ok"
    message: str = ""
    condition_number: float = math.nan
    condition_number_equilibrated: float = math.nan
    condition_method: str = ""
    numerical_rank: int | None = None
    rank_deficiency: int | None = None
    rank_cutoff: float | None = None
    rank_cutoff_absolute: float | None = None
    predicted_digits_lost: float = math.nan
    predicted_digits: float = math.nan
    residual_norm: float = math.nan
    residual_sd: float = math.nan
    iterations: int | None = None
    converged: bool | None = None
    refinement_steps: int | None = None
    factor_precision: str | None = None
    rank_decided_by: str = "solver"
    path: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    lre: list[float] | None = None
    lre_min: float | None = None
    warnings: list[str] = field(default_factory=list)
    time_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite floats become strings ``"inf"``, ``"nan"``)."""
        return jsonable(asdict(self))


@dataclass
class LinearSolution:
    """Coefficients of a least-squares solve and its :class:`SolveDiagnostics`."""

    coef: np.ndarray
    diagnostics: SolveDiagnostics

    @property
    def ok(self) -> bool:
        return self.diagnostics.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "coef": jsonable([float(c) for c in np.asarray(self.coef, dtype=np.float64)]),
            "diagnostics": self.diagnostics.to_dict(),
        }


# --------------------------------------------------------------------------------------
# LRE


def lre(estimate: Any, certified: Any, cap: float = _LRE_CAP) -> np.ndarray:
    """Log relative error: the number of significant digits ``estimate`` shares with
    ``certified``, elementwise.

    ``LRE = -log10(|b - c| / |c|)``, or ``-log10(|b|)`` where ``c == 0``; clipped to
    ``[0, cap]`` (cap 15, the precision of the NIST certified values); a non-finite
    estimate scores 0 (McCullough 1998; NIST StRD).
    """
    b = np.atleast_1d(np.asarray(estimate, dtype=np.float64))
    c = np.atleast_1d(np.asarray(certified, dtype=np.float64))
    out = np.zeros(np.broadcast(b, c).shape)
    b, c = np.broadcast_arrays(b, c)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        err = np.where(c != 0, np.abs(b - c) / np.abs(np.where(c != 0, c, 1.0)), np.abs(b))
        val = np.where(err == 0, cap, -np.log10(err))
    val = np.where(np.isfinite(b), val, 0.0)
    out[...] = np.clip(val, 0.0, cap) + 0.0  # + 0.0 turns -0.0 into 0.0
    return out


# --------------------------------------------------------------------------------------
# input validation


def validate_inputs(X: Any, y: Any, *, allow_sparse: bool = True) -> tuple[Any, np.ndarray]:
    """Check and convert ``X`` (2-D, numeric, finite) and ``y`` (1-D, same length).

    Returns ``(X, y)`` as float64 (``X`` stays a CSR matrix when sparse). Raises
    :class:`DataError` naming the input and what to do.
    """
    if scipy.sparse.issparse(X):
        if not allow_sparse:
            raise UsageError("Input X is a sparse matrix; this solver needs a dense array: "
                             "pass X.toarray() or use solver='lsqr', 'cg', 'gd' or 'auto'.")
        Xs = scipy.sparse.csr_matrix(X)
        if not np.issubdtype(Xs.dtype, np.number) or np.iscomplexobj(Xs.data):
            raise DataError(f"Input X has non-numeric dtype {Xs.dtype}; expected real numbers.")
        Xs = Xs.astype(np.float64)
        if Xs.ndim != 2:
            raise DataError("Input X must be 2-D.")
        _check_finite(Xs.data, "X", shape=None)
        Xa: Any = Xs
        m = Xs.shape[0]
    else:
        Xa = _as_numeric_2d(X)
        m = Xa.shape[0]
    ya = _as_numeric_1d(y)
    if ya.shape[0] != m:
        raise DataError(f"X has {m} rows but y has {ya.shape[0]} entries; they must match "
                        "(one label per row of X).")
    if m == 0 or Xa.shape[1] == 0:
        raise DataError(f"Input X is empty (shape {Xa.shape}); need at least one row and "
                        "one column.")
    if not scipy.sparse.issparse(Xa):
        _check_finite(Xa, "X", shape=Xa.shape)
    _check_finite(ya, "y", shape=ya.shape)
    return Xa, ya


def _as_numeric_2d(X: Any) -> np.ndarray:
    dtypes = getattr(X, "dtypes", None)  # pandas DataFrame: name the bad column
    if dtypes is not None and hasattr(dtypes, "items"):
        for j, (name, dt) in enumerate(dtypes.items()):
            # pandas extension dtypes (StringDtype, Int64, ...) are not NumPy dtypes: ask
            # for their kind, which both expose (i/u/f/b numeric, O/U/S/M... not)
            if getattr(dt, "kind", "O") not in "iufb":
                raise DataError(f"Input X column {name!r} (index {j}) is not numeric (dtype "
                                f"{dt}); encode it first (e.g. one-hot) or drop it.")
    arr = np.asarray(X)
    if arr.ndim == 1:
        raise DataError(f"Input X must be 2-D (rows x features); got shape {arr.shape}. "
                        "Pass X.reshape(-1, 1) for a single feature.")
    if arr.ndim != 2:
        raise DataError(f"Input X must be 2-D (rows x features); got shape {arr.shape}.")
    if np.iscomplexobj(arr):
        raise DataError("Input X is complex; expected real numbers.")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        for j in range(arr.shape[1]):
            for i, v in enumerate(arr[:, j]):
                try:
                    float(v)
                except (TypeError, ValueError):
                    raise DataError(
                        f"Input X column {j} is not numeric (row {i} holds {v!r}); encode "
                        "it first (e.g. one-hot) or drop it.") from None
        arr = arr.astype(np.float64)
    return np.array(arr, dtype=np.float64, copy=True) if arr.dtype != np.float64 else arr


def _as_numeric_1d(y: Any) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.ravel()
    if arr.ndim != 1:
        raise DataError(f"Input y must be 1-D (one label per row); got shape {arr.shape}.")
    if np.iscomplexobj(arr):
        raise DataError("Input y is complex; expected real numbers.")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise DataError(f"Input y is not numeric (dtype {arr.dtype}); expected real "
                            "numbers.") from None
    return arr.astype(np.float64)


def _check_finite(a: np.ndarray, name: str, shape: tuple[int, ...] | None) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        kind = "NaN" if np.isnan(a[bad]).any() else "inf"
        where = ""
        if shape is not None:
            idx = np.unravel_index(int(np.flatnonzero(bad.ravel())[0]), shape)
            where = (f", first at row {idx[0]}, column {idx[1]}" if len(idx) == 2
                     else f", first at index {idx[0]}")
        raise DataError(f"Input {name} contains {kind} ({int(bad.sum())} non-finite "
                        f"entries{where}); drop or impute those rows first.")


def _check_solver(solver: str, precision: str, options: dict[str, Any]) -> dict[str, Any]:
    if solver not in SOLVERS:
        raise UsageError(f"Unknown solver {solver!r}; valid solvers are: "
                         f"{', '.join(SOLVERS)}.")
    if precision not in PRECISIONS:
        raise UsageError(f"Unknown precision {precision!r}; valid precisions are: "
                         f"{', '.join(PRECISIONS)}.")
    if precision == "float16" and solver not in _LOW_PRECISION_SOLVERS:
        raise UsageError(f"Solver {solver!r} does not run in float16 (LAPACK has no half "
                         f"precision); use precision='float32' or solver "
                         f"{' or '.join(repr(s) for s in _LOW_PRECISION_SOLVERS)}.")
    table = _OPTIONS[solver]
    unknown = sorted(set(options) - set(table))
    if unknown:
        accepted = ", ".join(table) if table else "none"
        raise UsageError(f"Solver {solver!r} got unknown option(s) {', '.join(unknown)}; "
                         f"accepted options: {accepted}.")
    merged = dict(table)
    merged.update(options)
    for key in ("rcond", "alpha", "rank_tol", "atol", "btol", "tol", "lr"):
        v = merged.get(key)
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise UsageError(f"The {key!r} option of solver {solver!r} must be a float >= 0; "
                             f"got {v!r}.")
    if "damp" in merged and not (isinstance(merged["damp"], (int, float))
                                 and math.isfinite(merged["damp"]) and merged["damp"] >= 0):
        raise UsageError(f"The 'damp' option of solver {solver!r} must be a float >= 0; got "
                         f"{merged['damp']!r}.")
    for key in ("max_iter", "max_refine"):
        v = merged.get(key)
        if v is not None and not (isinstance(v, (int, np.integer)) and v >= 0):
            raise UsageError(f"The {key!r} option of solver {solver!r} must be an integer "
                             f">= 0; got {v!r}.")
    return merged


# --------------------------------------------------------------------------------------
# double-double arithmetic (Dekker 1971; Knuth TAOCP vol. 2; Ogita, Rump & Oishi 2005)

_SPLITTER = 134217729.0  # 2**27 + 1, Veltkamp's splitting constant for binary64


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``s + e == a + b`` exactly, ``s = fl(a + b)`` (Knuth's TwoSum, 6 flops)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def _split(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = _SPLITTER * a
    hi = t - (t - a)
    return hi, a - hi


def _two_prod(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``p + e == a * b`` exactly (Dekker's TwoProduct via Veltkamp splitting; valid for
    ``|a|, |b| < 2**996``, which the equilibrated data satisfy)."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, e


def _dd_sum(hi: np.ndarray, lo: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum ``hi + lo`` along ``axis`` in double-double: a pairwise TwoSum tree on the
    leading parts, the rounding errors and trailing parts summed in float64. The result
    is as accurate as if computed in about twice the working precision (Ogita, Rump &
    Oishi, SIAM J. Sci. Comput. 26, 2005, Sum2 in cascaded form)."""
    hi = np.moveaxis(hi, axis, 0)
    lo = np.moveaxis(lo, axis, 0)
    while hi.shape[0] > 1:
        if hi.shape[0] % 2:
            pad = np.zeros((1,) + hi.shape[1:])
            hi = np.concatenate([hi, pad])
            lo = np.concatenate([lo, pad])
        s, e = _two_sum(hi[0::2], hi[1::2])
        lo = (lo[0::2] + lo[1::2]) + e
        hi = s
    s, e = _two_sum(hi[0], lo[0])
    return s, e


def _chunk_rows(n: int) -> int:
    return max(1, (1 << 18) // max(n, 1))


def _dd_products(Ab: np.ndarray, Ab_lo: np.ndarray | None, v_hi: np.ndarray,
                 v_lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The element-wise products ``(Ab + Ab_lo) * (v_hi + v_lo)`` (``v`` broadcast) as
    ``(p, lo)``: ``p = fl(Ab v_hi)`` and ``lo`` its TwoProd error plus ``Ab v_lo`` and,
    when given, ``Ab_lo v_hi`` (the ``Ab_lo v_lo`` term is dropped)."""
    p, e = _two_prod(Ab, v_hi)
    lo = e + Ab * v_lo
    if Ab_lo is not None:
        lo = lo + Ab_lo * v_hi
    return p, lo


def _dd_residuals(A: np.ndarray, b: np.ndarray, x: tuple[np.ndarray, np.ndarray],
                  r: tuple[np.ndarray, np.ndarray],
                  A_lo: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Residuals of the augmented system ``[I A; A^T 0][r; x] = [b; 0]`` in double-double:
    ``f = b - r - A x`` and ``g = -A^T r``, each rounded once to float64 at the end.
    ``x`` and ``r`` are (high, low) pairs; ``A_lo`` is an optional low-order part of A
    (a double-double matrix ``A + A_lo``). Rows are processed in chunks to bound memory.
    """
    m, n = A.shape
    x_hi, x_lo = x
    r_hi, r_lo = r
    f = np.empty(m)
    g_hi = np.zeros(n)
    g_lo = np.zeros(n)
    step = _chunk_rows(n)
    for i0 in range(0, m, step):
        Ab = A[i0:i0 + step]
        Ab_lo = None if A_lo is None else A_lo[i0:i0 + step]
        k = Ab.shape[0]
        # f = b - r - A x
        p, lo_terms = _dd_products(Ab, Ab_lo, x_hi[None, :], x_lo[None, :])
        hi = np.concatenate([b[i0:i0 + k, None], -r_hi[i0:i0 + k, None], -p], axis=1)
        lo = np.concatenate([np.zeros((k, 1)), -r_lo[i0:i0 + k, None], -lo_terms], axis=1)
        fh, fl = _dd_sum(hi, lo, axis=1)
        f[i0:i0 + k] = fh + fl
        # g = -A^T r
        p, lo_terms = _dd_products(Ab, Ab_lo, r_hi[i0:i0 + k, None], r_lo[i0:i0 + k, None])
        gh, gl = _dd_sum(p, lo_terms, axis=0)
        s, e2 = _two_sum(g_hi, gh)
        g_hi, g_lo = s, g_lo + gl + e2
    return f, -(g_hi + g_lo)


def _dd_residual(A: np.ndarray, b: np.ndarray, x: tuple[np.ndarray, np.ndarray],
                 A_lo: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``r = b - A x`` in double-double, returned as a (high, low) pair."""
    m, n = A.shape
    r_hi = np.empty(m)
    r_lo = np.empty(m)
    step = _chunk_rows(n)
    for i0 in range(0, m, step):
        Ab = A[i0:i0 + step]
        Ab_lo = None if A_lo is None else A_lo[i0:i0 + step]
        k = Ab.shape[0]
        p, lo_terms = _dd_products(Ab, Ab_lo, x[0][None, :], x[1][None, :])
        hi = np.concatenate([b[i0:i0 + k, None], -p], axis=1)
        lo = np.concatenate([np.zeros((k, 1)), -lo_terms], axis=1)
        r_hi[i0:i0 + k], r_lo[i0:i0 + k] = _dd_sum(hi, lo, axis=1)
    return r_hi, r_lo


def _dd_add(a: tuple[np.ndarray, np.ndarray], d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s, e = _two_sum(a[0], d)
    lo = a[1] + e
    return _two_sum(s, lo)


# --------------------------------------------------------------------------------------
# condition numbers used by the diagnostics


def _pow2_scale(norms: np.ndarray) -> np.ndarray:
    """Column scale factors ``2^-round(log2 ||x_j||)``: scaling by powers of two is
    exact in binary floating point, so equilibration adds no rounding error."""
    d = np.ones_like(norms)
    ok = norms > 0
    d[ok] = np.ldexp(1.0, -np.round(np.log2(norms[ok])).astype(int))
    return d


def _column_norms(X: Any) -> np.ndarray:
    if scipy.sparse.issparse(X):
        return np.sqrt(np.asarray(X.multiply(X).sum(axis=0)).ravel())
    return np.linalg.norm(X, axis=0)


def _svals_dense(X: np.ndarray) -> np.ndarray:
    """Singular values of a dense X; via R of a QR first when X is tall (cheaper)."""
    m, n = X.shape
    if m > 2 * n:
        R = np.linalg.qr(X, mode="r")
        return np.linalg.svd(R, compute_uv=False)
    return np.linalg.svd(X, compute_uv=False)


def _kappa_from_svals(s: np.ndarray) -> float:
    if s.size == 0 or s[0] == 0:
        return math.inf
    with np.errstate(divide="ignore"):
        return float(s[0] / s[-1]) if s[-1] > 0 else math.inf


def _condition_pair(X: Any) -> tuple[float, float, str, int, float]:
    """(kappa(X), kappa(X D), method, numerical rank of X, relative cutoff) with D the
    unit-column-norm equilibration; rank at the cutoff ``max(m, n) eps s_max``."""
    d = _pow2_scale(_column_norms(X))
    if scipy.sparse.issparse(X) or X.shape[1] > 2000:
        from stability_lab.linalg.conditioning import condition_info

        Xd = X @ scipy.sparse.diags(d) if scipy.sparse.issparse(X) else X * d
        info = condition_info(X)
        return (info.kappa, condition_info(Xd).kappa, f"estimate ({info.method})",
                info.numerical_rank, info.rank_cutoff)
    s = _svals_dense(X)
    sd = _svals_dense(X * d)
    tol = max(X.shape) * float(np.finfo(np.float64).eps)
    rank = int(np.sum(s > tol * s[0])) if s.size and s[0] > 0 else 0
    return _kappa_from_svals(s), _kappa_from_svals(sd), "exact (LAPACK SVD)", rank, tol


# --------------------------------------------------------------------------------------
# solvers. Each takes (X, y, opts, diag) in the working dtype and returns coefficients.


def _solve_normal(X, y, opts, diag):
    G = X.T @ X
    return np.linalg.inv(G) @ (X.T @ y)


def _solve_cholesky(X, y, opts, diag):
    G = X.T @ X
    c, low = scipy.linalg.cho_factor(G, lower=False, check_finite=False)
    return scipy.linalg.cho_solve((c, low), X.T @ y, check_finite=False)


def _solve_qr(X, y, opts, diag):
    Q, R = np.linalg.qr(X, mode="reduced")
    if np.any(np.diag(R) == 0):
        raise np.linalg.LinAlgError("R has an exactly zero diagonal entry (rank-deficient X)")
    return scipy.linalg.solve_triangular(R, Q.T @ y, check_finite=False)


def _truncated_svd(X, y, rcond, diag):
    U, s, Vt = np.linalg.svd(X, full_matrices=False)
    cutoff = rcond * (s[0] if s.size else 0.0)
    keep = s > cutoff
    diag.numerical_rank = int(keep.sum())
    diag.rank_deficiency = int(min(X.shape) - keep.sum())
    diag.rank_cutoff = float(rcond)
    diag.rank_cutoff_absolute = float(cutoff)
    c = (U[:, keep].T @ y) / s[keep]
    return Vt[keep].T @ c


def _default_rcond(X) -> float:
    """NumPy's lstsq cutoff ``eps * max(m, n)`` (relative to s_max) in X's dtype."""
    return float(np.finfo(X.dtype).eps) * max(X.shape)


def _solve_svd(X, y, opts, diag):
    rcond = opts["rcond"]
    if rcond is None:
        rcond = _default_rcond(X)
    return _truncated_svd(X, y, rcond, diag)


def _solve_pinv(X, y, opts, diag):
    rcond = opts["rcond"]
    P = np.linalg.pinv(X, rcond=rcond)
    s = np.linalg.svd(X, compute_uv=False)
    cutoff = rcond * s[0]
    diag.numerical_rank = int((s > cutoff).sum())
    diag.rank_deficiency = int(min(X.shape) - diag.numerical_rank)
    diag.rank_cutoff, diag.rank_cutoff_absolute = float(rcond), float(cutoff)
    return P @ y


def _solve_lstsq(X, y, opts, diag):
    rc = opts["rcond"]
    coef, _, rank, s = np.linalg.lstsq(X, y, rcond=rc)
    if rc is None:
        rc = _default_rcond(X)
    diag.numerical_rank = int(rank)
    diag.rank_deficiency = int(min(X.shape) - rank)
    diag.rank_cutoff, diag.rank_cutoff_absolute = float(rc), float(rc * s[0])
    return coef


def _solve_ridge(X, y, opts, diag):
    """``min ||X b - y||^2 + alpha ||b||^2`` by QR of ``[X; sqrt(alpha) I]``.

    With ``alpha`` given this is textbook ridge in the units of X. By default
    (``alpha=None``) the penalty is put on the equilibrated coefficients, ``alpha_rel
    ||X D||_2^2 ||D^-1 b||^2`` with ``alpha_rel = 1e-12`` and D the unit-column-norm
    scaling, so that it does not depend on the units of the columns and only bites in
    directions with ``s < 1e-6 s_max`` (bias ~ ``alpha_rel kappa^2`` relative)."""
    n = X.shape[1]
    alpha = opts["alpha"]
    if alpha is None:
        d = _pow2_scale(np.linalg.norm(X.astype(np.float64), axis=0)).astype(X.dtype)
        A = X * d
        alpha_eff = 1e-12 * float(np.linalg.norm(A.astype(np.float64), 2)) ** 2
        diag.options["alpha"] = None
        diag.options["alpha_relative_equilibrated"] = 1e-12
    else:
        d = np.ones(n, dtype=X.dtype)
        A = X
        alpha_eff = float(alpha)
    Z = np.vstack([A, math.sqrt(alpha_eff) * np.eye(n, dtype=X.dtype)])
    z = np.concatenate([y, np.zeros(n, dtype=X.dtype)])
    Q, R = np.linalg.qr(Z, mode="reduced")
    return scipy.linalg.solve_triangular(R, Q.T @ z, check_finite=False) * d


def _solve_lsqr(X, y, opts, diag):
    eps = float(np.finfo(np.float64).eps)
    atol = opts["atol"] if opts["atol"] is not None else eps
    btol = opts["btol"] if opts["btol"] is not None else eps
    max_iter = opts["max_iter"] if opts["max_iter"] is not None else 10 * X.shape[1] + 100
    out = scipy.sparse.linalg.lsqr(X, y, damp=opts["damp"], atol=atol, btol=btol,
                                   iter_lim=max_iter)
    diag.iterations = int(out[2])
    diag.converged = bool(out[1] in (1, 2, 4, 5) and out[2] < max_iter)
    if not diag.converged:
        diag.warnings.append(f"LSQR stopped with istop={out[1]} after {out[2]} iterations; "
                             "increase max_iter or precondition (equilibrate columns).")
    return out[0]


def _matvecs(X, dtype):
    if scipy.sparse.issparse(X):
        Xc = X.astype(dtype)
        XT = Xc.T.tocsr()
        return (lambda v: Xc @ v), (lambda v: XT @ v)
    return (lambda v: X @ v), (lambda v: X.T @ v)


def _solve_cg(X, y, opts, diag):
    """CGLS (Hestenes & Stiefel; Björck sec. 7.4.1): CG on ``(X^T X + d^2 I) b = X^T y``
    using only products with X and X^T, in the working dtype."""
    dt = y.dtype
    mv, rmv = _matvecs(X, dt)
    n = X.shape[1]
    damp = dt.type(opts["damp"])
    tol = opts["tol"] if opts["tol"] is not None else 10 * float(np.finfo(dt).eps)
    max_iter = opts["max_iter"] if opts["max_iter"] is not None else 10 * n + 100
    x = np.zeros(n, dtype=dt)
    r = y.copy()
    s = rmv(r) - damp * damp * x
    p = s.copy()
    gamma = float(np.dot(s.astype(np.float64), s))
    gamma0 = gamma
    it = 0
    converged = gamma == 0
    while not converged and it < max_iter:
        q = mv(p)
        denom = float(np.dot(q.astype(np.float64), q)) + float(damp) ** 2 * float(
            np.dot(p.astype(np.float64), p))
        if denom == 0 or not math.isfinite(denom):
            break
        a = dt.type(gamma / denom)
        x = (x + a * p).astype(dt)
        r = (r - a * q).astype(dt)
        s = (rmv(r) - damp * damp * x).astype(dt)
        g_new = float(np.dot(s.astype(np.float64), s))
        it += 1
        if g_new <= (tol ** 2) * gamma0:
            converged = True
            break
        p = (s + dt.type(g_new / gamma) * p).astype(dt)
        gamma = g_new
    diag.iterations, diag.converged = it, bool(converged)
    if not converged:
        diag.warnings.append(f"CGLS did not reach tol={tol:g} in {it} iterations; increase "
                             "max_iter, add damping, or equilibrate the columns.")
    return x


def _norm_est(X) -> float:
    if not scipy.sparse.issparse(X) and X.shape[1] <= 2000:
        return float(np.linalg.norm(X.astype(np.float64), 2))
    from stability_lab.linalg.conditioning import sigma_max

    return sigma_max(X)


def _solve_gd(X, y, opts, diag):
    """Gradient descent with the optimal fixed step ``1/L``; the error in the direction
    of singular value s decays like ``(1 - s^2/L)^k`` (so ``~kappa^2`` iterations)."""
    dt = y.dtype
    mv, rmv = _matvecs(X, dt)
    damp = float(opts["damp"])
    L = _norm_est(X) ** 2 + damp ** 2
    lr = opts["lr"] if opts["lr"] is not None else (1.0 / L if L > 0 else 1.0)
    diag.options["lr"] = lr
    tol = opts["tol"] if opts["tol"] is not None else 10 * float(np.finfo(dt).eps)
    max_iter = opts["max_iter"]
    x = np.zeros(X.shape[1], dtype=dt)
    g0 = None
    it = 0
    converged = False
    lr_t = dt.type(lr)
    d2 = dt.type(damp * damp)
    for it in range(1, max_iter + 1):  # noqa: B007 (it is reported after the loop)
        g = (rmv(mv(x) - y) + d2 * x).astype(dt)
        gn = float(np.linalg.norm(g.astype(np.float64)))
        if g0 is None:
            g0 = gn
        if not math.isfinite(gn):
            break
        if gn <= tol * max(g0, 1e-300):
            converged = True
            break
        x = (x - lr_t * g).astype(dt)
    diag.iterations, diag.converged = it, converged
    if not converged:
        diag.warnings.append(f"gradient descent stopped after {it} iterations without "
                             f"reaching tol={tol:g}; it needs ~kappa^2 iterations.")
    return x


def _solve_auto(X, y, opts, diag, precision, X_lo=None):
    """The lab's recommended least-squares path (dense X).

    1. Equilibrate: scale column j by ``2^-round(log2 ||x_j||)`` (exact in binary).
    2. Factor ``A = X D`` by Householder QR with column pivoting (LAPACK geqp3), in the
       requested precision; float32 falls back to a float64 factor when
       ``kappa(A) u_32 > 0.05`` (refinement would not converge).
    3. Rank: singular values of R (exact to rounding); rank = #{s_i > tol s_1} with
       ``tol = max(m, n) eps`` (reported). Rank-deficient problems are solved on the
       leading ``k`` pivoted columns and the result projected onto the row space: the
       minimum-norm solution in equilibrated units.
    4. Refine the augmented system ``[I A; A^T 0][r; x] = [b; 0]`` (Björck 1967):
       residuals ``f = b - r - A x``, ``g = -A^T r`` in double-double; corrections from
       the QR factor: ``h = R^-T g``, ``dx = R^-1 (Q1^T f - h)``, ``dr = f - Q1(Q1^T f -
       h)``; ``x`` and ``r`` are kept as double-double pairs. Stops when the correction
       no longer shrinks or is below ``u ||x||``. Each step costs O(m n).
    """
    m, n = X.shape
    Xw = np.asarray(X, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    d = _pow2_scale(np.linalg.norm(Xw, axis=0)) if opts["equilibrate"] else np.ones(n)
    A = Xw * d
    A_lo = None if X_lo is None else np.asarray(X_lo, dtype=np.float64) * d
    fdt = np.float32 if precision == "float32" else np.float64
    Q1, R, perm = scipy.linalg.qr(A.astype(fdt), mode="economic", pivoting=True)
    s = np.linalg.svd(R.astype(np.float64), compute_uv=False)
    kappa_eq = _kappa_from_svals(s)
    if fdt is np.float32 and not kappa_eq * float(np.finfo(np.float32).eps) < 0.05:
        fdt = np.float64
        Q1, R, perm = scipy.linalg.qr(A, mode="economic", pivoting=True)
        s = np.linalg.svd(R, compute_uv=False)
        diag.warnings.append("float32 factor too ill-conditioned for refinement "
                             f"(kappa {kappa_eq:.2g}); factored in float64 instead.")
    diag.factor_precision = np.dtype(fdt).name
    eps = float(np.finfo(fdt).eps)
    tol = opts["rank_tol"] if opts["rank_tol"] is not None else max(m, n) * eps
    k = int(np.sum(s > tol * s[0])) if s[0] > 0 else 0
    diag.numerical_rank, diag.rank_deficiency = k, n - k
    diag.rank_cutoff, diag.rank_cutoff_absolute = float(tol), float(tol * s[0])
    diag.condition_number_equilibrated = kappa_eq
    if k == 0:
        diag.warnings.append("X is numerically zero; all coefficients set to 0.")
        return np.zeros(n)
    cols = perm[:k]
    Qk = Q1[:, :k]
    Rk = R[:k, :k]
    Ak = A[:, cols]
    Ak_lo = None if A_lo is None else A_lo[:, cols]
    max_refine = opts["max_refine"] if opts["max_refine"] is not None else (
        10 if fdt is np.float64 else 30)

    def correct(f: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scale = max(float(np.max(np.abs(f), initial=0.0)), float(np.max(np.abs(g), initial=0.0)))
        if scale == 0:
            return np.zeros(k), np.zeros(m)
        fs, gs = (f / scale).astype(fdt), (g / scale).astype(fdt)
        h = scipy.linalg.solve_triangular(Rk, gs, trans="T", check_finite=False)
        f1 = Qk.T @ fs
        dx = scipy.linalg.solve_triangular(Rk, f1 - h, check_finite=False)
        dr = fs - Qk @ (f1 - h)
        return dx.astype(np.float64) * scale, dr.astype(np.float64) * scale

    x0 = scipy.linalg.solve_triangular(Rk, Qk.T @ b.astype(fdt), check_finite=False)
    x = (x0.astype(np.float64), np.zeros(k))
    r = _dd_residual(Ak, b, x, Ak_lo)
    prev = math.inf
    steps = 0
    converged = False
    for steps in range(1, max_refine + 1):  # noqa: B007 (reported after the loop)
        f, g = _dd_residuals(Ak, b, x, r, Ak_lo)
        dx, dr = correct(f, g)
        x = _dd_add(x, dx)
        r = _dd_add(r, dr)
        size = float(np.max(np.abs(dx)))
        xnorm = float(np.max(np.abs(x[0])))
        if size <= 2.0 ** -60 * xnorm or size == 0:
            converged = True
            break
        if size > 0.5 * prev:
            converged = size <= 1e-12 * xnorm
            break
        prev = size
    diag.refinement_steps = steps
    diag.converged = converged
    if not converged:
        diag.warnings.append("iterative refinement stagnated: the problem is too "
                             "ill-conditioned for it to converge; digits limited by kappa.")
    z = np.zeros(n)
    z[cols] = x[0] + x[1]
    if k < n:
        # null space of A (numerically): N = P [-R11^-1 R12; I]; project z onto its
        # orthogonal complement to get the minimum-norm solution.
        R12 = R[:k, k:].astype(np.float64)
        N = np.zeros((n, n - k))
        N[perm[:k]] = -scipy.linalg.solve_triangular(Rk.astype(np.float64), R12)
        N[perm[k:]] = np.eye(n - k)
        Qn, _ = np.linalg.qr(N)
        z = z - Qn @ (Qn.T @ z)
        diag.warnings.append(f"X is rank-deficient (numerical rank {k} of {n} at cutoff "
                             f"{tol:.2g} s_max of the equilibrated X): minimum-norm solution "
                             "in equilibrated units; coefficients along the null space are "
                             "not determined by the data.")
    return z * d


def _solve_auto_sparse(X, y, opts, diag):
    """Sparse, large X: equilibrated LSQR (column scaling by powers of two, which is
    the Jacobi preconditioner for the normal equations), O(nnz) per iteration."""
    d = _pow2_scale(_column_norms(X))
    A = X @ scipy.sparse.diags(d)
    z = _solve_lsqr(A, y, _OPTIONS["lsqr"], diag)  # LSQR's defaults
    return z * d


_DISPATCH: dict[str, Callable[..., np.ndarray]] = {
    "normal": _solve_normal,
    "cholesky": _solve_cholesky,
    "qr": _solve_qr,
    "svd": _solve_svd,
    "pinv": _solve_pinv,
    "lstsq": _solve_lstsq,
    "ridge": _solve_ridge,
    "lsqr": _solve_lsqr,
    "cg": _solve_cg,
    "gd": _solve_gd,
}

_AUTO_DENSIFY_LIMIT = 20_000_000  # m * n entries; above it a sparse X stays sparse


# --------------------------------------------------------------------------------------
# public API


def solve(X: Any, y: Any, solver: str = "auto", precision: str = "float64", *,
          reference: Any = None, diagnose: bool = True, X_lo: Any = None,
          **options: Any) -> LinearSolution:
    """Least-squares coefficients ``argmin_b ||X b - y||_2`` with diagnostics.

    Parameters
    ----------
    X, y
        Design matrix (dense array-like, or SciPy sparse for ``lsqr``, ``cg``, ``gd``,
        ``auto``) and response. Validated: finite, numeric, matching lengths.
    solver
        One of :data:`SOLVERS` (see the module docstring for the algorithms).
    precision
        ``float64`` or ``float32`` (data rounded to it and arithmetic done in it);
        ``float16`` for ``cg`` and ``gd``. ``auto`` in float32 factors in float32 and
        refines with double-double residuals (mixed-precision refinement).
    reference
        Optional reference coefficients (e.g. NIST certified values): the diagnostics
        then carry the per-coefficient LRE and its minimum.
    X_lo
        ``auto`` only: the low-order part of a design held in double-double
        (``X + X_lo``, e.g. powers of x formed with error-free products, see
        :meth:`stability_lab.linalg.nist.NistProblem.design_dd`). Factorization uses X; the
        refinement residuals use ``X + X_lo``, so the solution converges to the
        least-squares solution of the double-double design when ``kappa u < 1``.
    diagnose
        Compute condition numbers (exact SVD for dense X, estimated for sparse or wide
        X). Set False to skip that O(m n^2) work.
    **options
        Solver options, validated against the table in ``_OPTIONS`` (``rcond`` for
        ``svd``/``pinv``/``lstsq``, ``alpha`` for ``ridge``, ``damp``/``tol``/
        ``max_iter`` for the iterative ones, ``rank_tol``/``max_refine`` for ``auto``).

    A numerical failure of the solver (a singular Gram matrix for ``cholesky``, a zero
    pivot for ``qr``) is not an exception: the solution comes back with NaN
    coefficients, ``diagnostics.status == "failed"`` and the reason in ``message``, so
    that a comparison of solvers can show it.
    """
    t0 = time.perf_counter()
    opts = _check_solver(solver, precision, options)
    Xv, yv = validate_inputs(X, y, allow_sparse=solver in _SPARSE_SOLVERS)
    m, n = Xv.shape
    if X_lo is not None:
        if solver != "auto" or precision != "float64":
            raise UsageError("X_lo (double-double design) is only used by solver='auto' in "
                             "float64; drop X_lo or use solver='auto'.")
        X_lo = _as_numeric_2d(X_lo)
        if X_lo.shape != Xv.shape:
            raise DataError(f"X_lo has shape {X_lo.shape} but X has shape {Xv.shape}; "
                            "they must match.")
        _check_finite(X_lo, "X_lo", shape=X_lo.shape)
    if m < n and solver not in _UNDERDETERMINED_OK:
        raise DataError(
            f"X has fewer rows ({m}) than columns ({n}): the least-squares solution is not "
            f"unique; use solver='ridge' (regularised) or the minimum-norm solution "
            f"(solver='svd', 'pinv' or 'lstsq').")
    diag = SolveDiagnostics(solver=solver, precision=precision, n_samples=m, n_features=n,
                            options=dict(opts))
    dt = np.dtype(precision)
    u = float(np.finfo(dt).eps) / 2
    kappa = kappa_eq = math.nan
    data_rank = data_tol = None
    if diagnose:
        kappa, kappa_eq, how, data_rank, data_tol = _condition_pair(Xv)
        diag.condition_number, diag.condition_number_equilibrated = kappa, kappa_eq
        diag.condition_method = how
    coef = np.full(n, np.nan)
    try:
        with np.errstate(all="ignore"):
            if solver == "auto":
                sparse_path = scipy.sparse.issparse(Xv) and m * n > _AUTO_DENSIFY_LIMIT
                if sparse_path:
                    diag.path = "equilibrated LSQR (sparse)"
                    coef = _solve_auto_sparse(Xv, yv.astype(dt), opts, diag)
                else:
                    Xd = Xv.toarray() if scipy.sparse.issparse(Xv) else Xv
                    Xd, yd = Xd.astype(dt).astype(np.float64), yv.astype(dt).astype(np.float64)
                    diag.path = "equilibrated QR + double-double augmented refinement"
                    coef = _solve_auto(Xd, yd, opts, diag, precision, X_lo=X_lo)
                    if diagnose and math.isfinite(diag.condition_number_equilibrated):
                        kappa_eq = diag.condition_number_equilibrated
            else:
                Xw = Xv.astype(dt) if scipy.sparse.issparse(Xv) else np.asarray(Xv, dtype=dt)
                coef = _DISPATCH[solver](Xw, yv.astype(dt), opts, diag)
        coef = np.asarray(coef, dtype=np.float64)
        if not np.all(np.isfinite(coef)):
            diag.status = "failed"
            diag.message = "non-finite coefficients (overflow or breakdown)"
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError, ValueError) as exc:
        diag.status = "failed"
        diag.message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        coef = np.full(n, np.nan)

    # residual, in float64, of the original data
    if diag.status == "ok":
        with np.errstate(all="ignore"):
            res = yv - Xv @ coef
        rn = float(np.linalg.norm(res))
        diag.residual_norm = rn
        diag.residual_sd = rn / math.sqrt(m - n) if m > n else math.nan
    # predicted digits lost from the solver's first-order error bound
    k_gov = kappa_eq if solver in _SCALING_INVARIANT else kappa
    if math.isfinite(k_gov) and k_gov > 0:
        if solver in _SQUARES_KAPPA:
            lost = 2 * math.log10(k_gov)
        else:
            bn = float(np.linalg.norm(coef)) if np.all(np.isfinite(coef)) else math.nan
            tan = (diag.residual_norm / (_norm_est(Xv) * bn)
                   if bn and math.isfinite(bn) and math.isfinite(diag.residual_norm)
                   and bn > 0 else 0.0)
            lost = math.log10(k_gov + k_gov ** 2 * tan)
        diag.predicted_digits_lost = lost
        diag.predicted_digits = float(min(max(-math.log10(u) - lost, 0.0), _LRE_CAP))
    elif diagnose:
        diag.predicted_digits_lost = math.inf
        diag.predicted_digits = 0.0
    if diag.rank_deficiency is None:
        # solvers without a rank decision of their own: report the data's numerical
        # rank at the default cutoff, marked as such
        diag.rank_decided_by = "diagnostics" if data_rank is not None else ""
        if data_rank is not None:
            diag.numerical_rank = data_rank
            diag.rank_deficiency = min(m, n) - data_rank
            diag.rank_cutoff = data_tol
    if reference is not None:
        ref = np.asarray(reference, dtype=np.float64).ravel()
        if ref.shape[0] != n:
            raise UsageError(f"reference has {ref.shape[0]} values but X has {n} columns.")
        vals = lre(coef, ref)
        diag.lre = [float(v) for v in vals]
        diag.lre_min = float(vals.min())
    diag.time_s = time.perf_counter() - t0
    return LinearSolution(coef=coef, diagnostics=diag)


# --------------------------------------------------------------------------------------
# significant digits by perturbation


@dataclass
class PerturbationReport:
    """Digits of each coefficient that survive random relative perturbations.

    ``digits_mean[j]``/``digits_std[j]``/``digits_min[j]``: statistics over trials of
    ``LRE(b_t[j], b_0[j])``, the agreement between the perturbed and unperturbed
    solutions. ``predicted_digits[j] = -log10(rel c_j / |b_j|)`` with ``c`` the first-order
    componentwise bound for a backward-stable solver (Higham eq. 20.9, Björck sec. 1.4):
    ``|db| <= rel (|X+| (|y| + |X||b|) + |(X^T X)^-1| |X|^T |r|)``; for the normal
    equations ``-log10(rel) - 2 log10 kappa``. ``predicted_digits_normwise`` is the
    familiar ``-log10(rel kappa)`` with kappa of the equilibrated X. ``certified_lre`` is
    the unperturbed solution's LRE against ``reference`` when one is given.
    """

    solver: str
    rel: float
    trials: int
    seed: int
    coef: list[float]
    digits_mean: list[float]
    digits_std: list[float]
    digits_min: list[float]
    predicted_digits: list[float]
    predicted_digits_min: float
    predicted_digits_normwise: float
    condition_number: float
    condition_number_equilibrated: float
    certified_lre: list[float] | None = None
    failed_trials: int = 0

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))


def perturbation_digits(X: Any, y: Any, solver: str = "auto", rel: float = 1e-12,
                        trials: int = 20, seed: int = 0, reference: Any = None,
                        precision: str = "float64", **options: Any) -> PerturbationReport:
    """Re-solve under random relative perturbations and count the digits that survive.

    Each trial ``t`` draws ``E``, ``e`` uniform in ``[-1, 1]`` from
    ``numpy.random.default_rng([seed, t])`` (matched across solvers: the same seed gives
    the same perturbations), solves ``(X (1 + rel E)) b = y (1 + rel e)`` and records
    ``LRE(b_t, b_0)`` per coefficient (Higham ch. 20's componentwise perturbation model:
    each datum changed by at most ``rel`` relative).
    """
    if not (isinstance(rel, (int, float)) and 0 < rel < 1):
        raise UsageError(f"The 'rel' perturbation size must be a float in (0, 1); got {rel!r}.")
    if not (isinstance(trials, (int, np.integer)) and trials >= 1):
        raise UsageError(f"The 'trials' count must be an integer >= 1; got {trials!r}.")
    Xv, yv = validate_inputs(X, y, allow_sparse=False)
    base = solve(Xv, yv, solver=solver, precision=precision, reference=reference, **options)
    digits = np.zeros((trials, Xv.shape[1]))
    failed = 0
    for t in range(trials):
        rng = np.random.default_rng([seed, t])
        E = rng.uniform(-1.0, 1.0, size=Xv.shape)
        e = rng.uniform(-1.0, 1.0, size=yv.shape)
        sol = solve(Xv * (1 + rel * E), yv * (1 + rel * e), solver=solver,
                    precision=precision, diagnose=False, **options)
        if not sol.ok:
            failed += 1
        digits[t] = lre(sol.coef, base.coef)
    d = base.diagnostics
    k = d.condition_number_equilibrated
    n = Xv.shape[1]
    pred = [0.0] * n
    pred_norm = 0.0
    if math.isfinite(k) and k > 0 and base.ok:
        x = base.coef
        if solver in _SQUARES_KAPPA:
            lost = 2 * math.log10(k)
            pred = [float(min(max(-math.log10(rel) - lost, 0.0), _LRE_CAP))] * n
            pred_norm = pred[0]
        else:
            # componentwise condition numbers of the LS solution (Higham eq. 20.9):
            # |dx| <= rel (|A+| (|b| + |A||x|) + |(A^T A)^-1| |A|^T |r|)
            Ap = np.linalg.pinv(Xv)
            G_inv = Ap @ Ap.T
            r = yv - Xv @ x
            c = (np.abs(Ap) @ (np.abs(yv) + np.abs(Xv) @ np.abs(x))
                 + np.abs(G_inv) @ (np.abs(Xv).T @ np.abs(r)))
            with np.errstate(divide="ignore"):
                pred = [float(v) for v in np.clip(-np.log10(rel * c / np.abs(x)), 0.0,
                                                  _LRE_CAP)]
            pred_norm = float(min(max(-math.log10(rel * k), 0.0), _LRE_CAP))
    return PerturbationReport(
        solver=solver, rel=float(rel), trials=int(trials), seed=int(seed),
        coef=[float(c) for c in base.coef],
        digits_mean=[float(v) for v in digits.mean(axis=0)],
        digits_std=[float(v) for v in digits.std(axis=0)],
        digits_min=[float(v) for v in digits.min(axis=0)],
        predicted_digits=pred,
        predicted_digits_min=float(min(pred)),
        predicted_digits_normwise=pred_norm,
        condition_number=float(d.condition_number),
        condition_number_equilibrated=float(d.condition_number_equilibrated),
        certified_lre=d.lre,
        failed_trials=failed,
    )
