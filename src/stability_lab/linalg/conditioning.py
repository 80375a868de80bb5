"""Condition numbers at any size: exact for small dense matrices, estimated for large
dense and SciPy sparse ones without densifying A.

``condition_number(A)`` returns the 2-norm condition number ``kappa(A) = s_max / s_min``
(over the ``min(m, n)`` singular values; ``inf`` for a rank-deficient A) as a float;
``condition_info(A)`` returns the whole :class:`ConditionEstimate` (singular value
extremes, numerical rank, the cutoff that decided it, the method and its error).

Methods
-------
``svd``
    exact to rounding: LAPACK singular values of A (of R from a QR first when A is
    tall, ``m > 2n``). O(m n^2). Rank by the cutoff ``max(m, n) eps s_max``.
``gram``
    for large dense and sparse A. Form the Gram matrix ``G = A^T A`` (or ``A A^T``
    when A is wide; for a sparse A it is built from sparse products, dense when it
    fills in, which is the case for one-hot designs). Then
    ``lambda_max`` by Lanczos (ARPACK ``eigsh``) on G, and the smallest eigenvalues by
    shift-invert Lanczos, ``eigsh(G, sigma=-delta)``, whose inverse operator is a
    Cholesky factorization of ``G + delta I`` (LAPACK potrf when G is dense, SuperLU
    ``splu`` when it stays sparse), ``delta = 10 n eps lambda_max`` so that the
    factorization exists also for a singular G. ``kappa = sqrt(lambda_max /
    lambda_min)`` (Golub & Van Loan, *Matrix Computations*, 4th ed., secs. 8.6, 10.1).
    Eigenvalues ``<= rank_tol * lambda_max`` (default ``n eps``, the resolution of G)
    count as zero: A is then reported rank-deficient with ``kappa = inf``, and the
    number of zero eigenvalues found as the rank deficiency (the search widens until a
    nonzero eigenvalue is seen), with ``kappa_effective`` = the condition number on the
    complement of that null space.

Error of the ``gram`` estimate: Lanczos converges to ``tol`` (1e-10 relative) for both
extremes; the dominant error is forming G, which perturbs each eigenvalue by up to
about ``n eps lambda_max`` (exactly zero for integer data such as one-hot designs), so
the relative error of kappa is at most about ``n eps kappa^2 / 2`` (reported as
``relative_error_bound``). The method can therefore resolve kappa(A) up to about
``1 / sqrt(n eps)`` (7e5 for n = 1e4); above that A is indistinguishable from
rank-deficient through G, and says so. ``svds(..., which='SM')`` and LSQR-based inverse
iteration were not used: both need many iterations on ill-conditioned A and can miss
the smallest singular value without warning.

``condition_number_1norm`` gives a cheap 1-norm estimate for square A (Hager-Higham
``onenormest`` on the LU factors; Higham, *Accuracy and Stability*, sec. 15.3).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg

from stability_lab.errors import DataError, UsageError

__all__ = [
    "ConditionEstimate",
    "condition_info",
    "condition_number",
    "cond_gram",
    "condition_number_1norm",
    "sigma_max",
    "DesignSpectrum",
    "design_spectrum",
    "tsqr_r",
]

METHODS = ("auto", "svd", "gram")
_EXACT_LIMIT_N = 2000          # auto: exact SVD when min(m, n) <= this ...
_EXACT_LIMIT_ENTRIES = 50_000_000  # ... and A has at most this many entries
_DENSE_GRAM_LIMIT = 20_000     # sparse A: G is held dense when n <= this and G fills in


@dataclass
class ConditionEstimate:
    """A 2-norm condition number and how it was obtained."""

    kappa: float
    sigma_max: float
    sigma_min: float
    numerical_rank: int
    rank_deficiency: int
    rank_cutoff: float  # relative to s_max
    kappa_effective: float  # kappa on the complement of the numerical null space
    method: str
    estimator: str
    relative_error_bound: float
    shape: tuple[int, int]
    nnz: int | None
    time_s: float

    def to_dict(self) -> dict[str, Any]:
        from stability_lab.formatting import jsonable

        return jsonable(asdict(self))


def _validate(A: Any) -> Any:
    if scipy.sparse.issparse(A):
        A = scipy.sparse.csr_matrix(A)
        if not np.issubdtype(A.dtype, np.number) or np.iscomplexobj(A.data):
            raise DataError(f"Input A has dtype {A.dtype}; expected real numbers.")
        A = A.astype(np.float64)
        if not np.all(np.isfinite(A.data)):
            raise DataError("Input A contains NaN or inf; drop or impute those entries.")
    else:
        A = np.asarray(A)
        if A.ndim != 2:
            raise DataError(f"Input A must be 2-D; got shape {A.shape}.")
        if not (np.issubdtype(A.dtype, np.number) or A.dtype == np.bool_) or np.iscomplexobj(A):
            raise DataError(f"Input A has dtype {A.dtype}; expected real numbers.")
        A = np.asarray(A, dtype=np.float64)
        if not np.all(np.isfinite(A)):
            raise DataError("Input A contains NaN or inf; drop or impute those entries.")
    if min(A.shape) == 0:
        raise DataError(f"Input A is empty (shape {A.shape}).")
    return A


def sigma_max(A: Any, tol: float = 1e-10, seed: int = 0) -> float:
    """Largest singular value of A by Lanczos on ``A^T A`` (ARPACK), using only
    products with A and A^T: O(nnz) per iteration."""
    A = _validate(A)
    m, n = A.shape
    if min(m, n) <= 2:
        return float(np.linalg.norm(A.toarray() if scipy.sparse.issparse(A) else A, 2))
    AT = A.T.tocsr() if scipy.sparse.issparse(A) else A.T
    k = min(m, n)
    if n <= m:
        op = scipy.sparse.linalg.LinearOperator((n, n), matvec=lambda v: AT @ (A @ v),
                                                dtype=np.float64)
    else:
        op = scipy.sparse.linalg.LinearOperator((m, m), matvec=lambda v: A @ (AT @ v),
                                                dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(k)
    lam = scipy.sparse.linalg.eigsh(op, k=1, which="LA", tol=tol, v0=v0,
                                    return_eigenvectors=False)
    return float(math.sqrt(max(float(lam[0]), 0.0)))


def _gram(A: Any) -> tuple[Any, bool]:
    """``A^T A`` (or ``A A^T`` for wide A), dense when it fills in; (G, is_dense)."""
    m, n = A.shape
    if not scipy.sparse.issparse(A):
        return (A.T @ A if n <= m else A @ A.T), True
    B = A if n <= m else A.T.tocsr()  # G = B^T B, B has the smaller second dimension
    k = B.shape[1]
    Bc = B.tocsc()
    BT = Bc.T.tocsr()
    if k <= _DENSE_GRAM_LIMIT:
        G = np.empty((k, k))
        step = max(1, min(k, 2_000_000 // max(k, 1)))
        for j0 in range(0, k, step):
            blk = BT @ Bc[:, j0:j0 + step]
            G[:, j0:j0 + step] = blk.toarray()
        return G, True
    return (BT @ Bc).tocsc(), False


class _Factor:
    """Cholesky factor of ``G + delta I`` for a dense G, computed in G's own memory
    (one n x n array in all: 800 MB for n = 1e4); ``G`` is consumed."""

    def __init__(self, G: np.ndarray, delta: float):
        n = G.shape[0]
        G[np.diag_indices(n)] += delta
        self.c = scipy.linalg.cho_factor(G, lower=False, overwrite_a=True, check_finite=False)

    def solve(self, v: np.ndarray) -> np.ndarray:
        return scipy.linalg.cho_solve(self.c, v, check_finite=False)


def _smallest_eigs(G: Any, dense: bool, k: int, delta: float, tol: float,
                   seed: int) -> tuple[np.ndarray, Any]:
    """The k smallest eigenvalues of the PSD matrix G by shift-invert Lanczos about
    ``-delta`` (ARPACK mode 3; the inverse applied through a Cholesky / LU
    factorization). A dense G may be passed as a :class:`_Factor` already made (then G
    itself is gone). Returns (eigenvalues ascending, factor for reuse)."""
    if dense:
        fac = G if isinstance(G, _Factor) else _Factor(G, delta)
        n = fac.c[0].shape[0]
        solve = fac.solve
        op = scipy.sparse.linalg.LinearOperator((n, n), matvec=lambda v: v, dtype=np.float64)
    else:
        n = G.shape[0]
        Gs = (G + delta * scipy.sparse.identity(n, format="csc")).tocsc()
        fac = scipy.sparse.linalg.splu(Gs)
        solve = fac.solve
        op = scipy.sparse.linalg.aslinearoperator(G)
    opinv = scipy.sparse.linalg.LinearOperator((n, n), matvec=solve, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(n)
    # in shift-invert mode ARPACK only applies OPinv; `op` is never multiplied
    lam = scipy.sparse.linalg.eigsh(op, k=k, sigma=-delta, which="LM", OPinv=opinv,
                                    tol=tol, v0=v0, return_eigenvectors=False)
    return np.sort(lam), (fac if dense else G)


def condition_info(A: Any, *, method: str = "auto", rank_tol: float | None = None,
                   tol: float = 1e-10, seed: int = 0, max_null: int = 256) -> ConditionEstimate:
    """2-norm condition number of A with its singular value extremes, numerical rank
    and the error of the method; see the module docstring for the algorithms.

    ``rank_tol`` is relative: to ``s_max`` for ``svd`` (default ``max(m, n) eps``) and to
    ``lambda_max = s_max^2`` for ``gram`` (default ``n eps``). ``max_null`` bounds the
    null-space dimension the ``gram`` method searches for.
    """
    if method not in METHODS:
        raise UsageError(f"Unknown method {method!r} for condition_number; valid methods "
                         f"are: {', '.join(METHODS)}.")
    t0 = time.perf_counter()
    A = _validate(A)
    m, n = A.shape
    p = min(m, n)
    sparse = scipy.sparse.issparse(A)
    nnz = int(A.nnz) if sparse else None
    eps = float(np.finfo(np.float64).eps)
    if method == "auto":
        method = ("svd" if not sparse and p <= _EXACT_LIMIT_N and m * n <= _EXACT_LIMIT_ENTRIES
                  else "gram")
    if method == "gram" and p <= 3:
        method = "svd"
    if method == "svd":
        Ad = A.toarray() if sparse else A
        if m > 2 * n:
            s = np.linalg.svd(np.linalg.qr(Ad, mode="r"), compute_uv=False)
        elif n > 2 * m:
            s = np.linalg.svd(np.linalg.qr(Ad.T, mode="r"), compute_uv=False)
        else:
            s = np.linalg.svd(Ad, compute_uv=False)
        rt = rank_tol if rank_tol is not None else max(m, n) * eps
        smax = float(s[0])
        keep = s > rt * smax
        r = int(keep.sum())
        smin = float(s[-1])
        kappa = smax / smin if smin > 0 and r == p else math.inf
        keff = smax / float(s[r - 1]) if r > 0 else math.inf
        return ConditionEstimate(
            kappa=kappa, sigma_max=smax, sigma_min=smin, numerical_rank=r,
            rank_deficiency=p - r, rank_cutoff=rt, kappa_effective=keff, method="svd",
            estimator="LAPACK singular values (of R from Householder QR when A is tall)",
            relative_error_bound=min(p * eps * (smax / smin if smin > 0 else math.inf), 1.0),
            shape=(m, n), nnz=nnz, time_s=time.perf_counter() - t0)

    # gram
    G, dense = _gram(A)
    k_dim = G.shape[0]
    opG = scipy.sparse.linalg.aslinearoperator(G)
    v0 = np.random.default_rng(seed).standard_normal(k_dim)
    lam_max = float(scipy.sparse.linalg.eigsh(opG, k=1, which="LA", tol=tol, v0=v0,
                                              return_eigenvectors=False)[0])
    if lam_max <= 0:
        return ConditionEstimate(math.inf, 0.0, 0.0, 0, p, 0.0, math.inf, "gram",
                                 "A is zero", 0.0, (m, n), nnz, time.perf_counter() - t0)
    rt = rank_tol if rank_tol is not None else k_dim * eps
    zero = rt * lam_max
    delta = 10 * k_dim * eps * lam_max
    nk = min(6, k_dim - 1)
    del opG
    while True:
        try:
            lam, G = _smallest_eigs(G, dense, nk, delta, tol, seed)
        except (np.linalg.LinAlgError, scipy.linalg.LinAlgError, RuntimeError):
            delta *= 100  # G + delta I not numerically positive definite: shift further
            if delta > 1e-3 * lam_max:
                raise
            G, dense = _gram(A)  # the failed factorization overwrote G: form it again
            continue
        nzero = int(np.sum(lam <= zero))
        if nzero < nk or nk >= min(max_null, k_dim - 1):
            break
        nk = min(2 * nk, max_null, k_dim - 1)
    lam_min = max(float(lam[0]), 0.0)
    smax = math.sqrt(lam_max)
    smin = math.sqrt(lam_min)
    if nzero:
        kappa = math.inf
        nonzero = lam[lam > zero]
        keff = math.sqrt(lam_max / float(nonzero[0])) if nonzero.size else math.inf
        bound = math.nan
    else:
        kappa = math.sqrt(lam_max / lam_min)
        keff = kappa
        bound = 0.5 * k_dim * eps * kappa ** 2 + tol
    defic = nzero + (p - k_dim if k_dim < p else 0)
    how = ("dense Cholesky (LAPACK potrf)" if dense else "sparse LU (SuperLU splu)")
    return ConditionEstimate(
        kappa=kappa, sigma_max=smax, sigma_min=smin, numerical_rank=p - defic,
        rank_deficiency=defic, rank_cutoff=math.sqrt(rt), kappa_effective=keff,
        method="gram",
        estimator=(f"lambda_max of A^T A by Lanczos (eigsh, tol {tol:g}); smallest "
                   f"eigenvalues by shift-invert Lanczos about -{delta:.3g} with a {how} "
                   f"of A^T A + delta I; zero if <= {rt:.3g} lambda_max"
                   + (f"; null-space search stopped at {nk} eigenvalues"
                      if nzero >= nk else "")),
        relative_error_bound=bound, shape=(m, n), nnz=nnz, time_s=time.perf_counter() - t0)


def condition_number(A: Any, *, method: str = "auto", **kwargs: Any) -> float:
    """2-norm condition number ``s_max / s_min`` of A (``inf`` if numerically
    rank-deficient): exact SVD for small dense A, the Gram/Lanczos estimate for large
    dense or sparse A. See :func:`condition_info` for the details and error."""
    return condition_info(A, method=method, **kwargs).kappa


def cond_gram(A: Any, **kwargs: Any) -> float:
    """Condition number of the Gram matrix ``A^T A``: ``kappa(A^T A) = kappa(A)^2``,
    computed from A's singular values (never by forming A^T A and inverting it), so it
    is meaningful beyond ``1/eps``."""
    k = condition_number(A, **kwargs)
    return k * k if math.isfinite(k) else math.inf


def gram_condition(X: np.ndarray) -> float:
    """cond(X^T X) = (s_max / s_min)^2 from the singular values of a dense X
    (:func:`design_spectrum`: exact for min(n, p) <= 2000, without copying a large X
    in float64; the Gram estimate beyond), with no rank cutoff: the number the lab
    prints as "Condition number(X^T X)". Unlike
    :func:`cond_gram` it stays finite for numerically rank-deficient X (Filip: 3e30),
    and is inf only when s_min is exactly 0."""
    X = np.asarray(X)
    if X.size == 0:
        return math.nan
    return design_spectrum(X).cond_gram


def condition_number_1norm(A: Any) -> float:
    """Estimate of ``kappa_1(A) = ||A||_1 ||A^-1||_1`` for square A: ``||A^-1||_1`` by
    Hager-Higham block 1-norm estimation (``scipy.sparse.linalg.onenormest``) applied
    through an LU factorization (LAPACK getrf, or SuperLU for sparse A). Usually within
    a factor of 3 of the truth, at the cost of one LU plus a few solves (Higham sec. 15.3).
    Returns ``inf`` for an exactly singular A."""
    A = _validate(A)
    m, n = A.shape
    if m != n:
        raise UsageError(f"condition_number_1norm needs a square matrix; got shape {A.shape}. "
                         "Use condition_number (2-norm, any shape) or cond_gram.")
    if scipy.sparse.issparse(A):
        norm_a = float(abs(A).sum(axis=0).max())
        try:
            lu = scipy.sparse.linalg.splu(A.tocsc())
        except RuntimeError:
            return math.inf
        sol, tsol = lu.solve, (lambda v: lu.solve(v, trans="T"))
    else:
        norm_a = float(np.abs(A).sum(axis=0).max())
        with warnings.catch_warnings():  # exact singularity is answered by inf below
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
            lu, piv = scipy.linalg.lu_factor(A, check_finite=False)
        if np.any(np.diag(lu) == 0):
            return math.inf
        sol = lambda v: scipy.linalg.lu_solve((lu, piv), v, check_finite=False)  # noqa: E731
        tsol = lambda v: scipy.linalg.lu_solve((lu, piv), v, trans=1,  # noqa: E731
                                               check_finite=False)
    if n <= 4:
        Ad = A.toarray() if scipy.sparse.issparse(A) else A
        try:
            return float(np.linalg.cond(Ad, 1))
        except np.linalg.LinAlgError:
            return math.inf
    inv = scipy.sparse.linalg.LinearOperator(
        (n, n), matvec=sol, rmatvec=tsol,
        matmat=lambda M: np.column_stack([sol(c) for c in M.T]),
        rmatmat=lambda M: np.column_stack([tsol(c) for c in M.T]), dtype=np.float64)
    return norm_a * float(scipy.sparse.linalg.onenormest(inv))


def pow2_scale(M: Any) -> float:
    """A power of two near max|M| when that is outside [2^-400, 2^400], else 1.0 (also
    for an empty, zero or non-finite M). Dividing by it is exact and brings huge finite
    entries (1e200, 1e308) into range, so the products a factorization forms cannot
    overflow; data in the ordinary range is left exactly as it is."""
    M = np.asarray(M, dtype=np.float64)
    if M.size == 0:
        return 1.0
    top = float(np.max(np.abs(M)))
    if not math.isfinite(top) or top == 0.0 or 2.0 ** -400 <= top <= 2.0 ** 400:
        return 1.0
    return math.ldexp(1.0, math.frexp(top)[1] - 1)  # in (top/2, top]


def sym_eigvalsh(M: Any) -> np.ndarray:
    """Ascending eigenvalues of symmetric matrices (``(p, p)`` or ``(R, p, p)``), in
    float64, that never raise on finite input: each matrix is divided by a power of two
    near its largest entry first (exact), and the eigenvalues multiplied back, so a value
    beyond float64's range comes out as +-inf, not as LAPACK's "did not converge". A
    matrix with an inf or NaN entry gives NaN eigenvalues."""
    M = np.asarray(M, dtype=np.float64)
    batch = M.reshape(-1, M.shape[-2], M.shape[-1])
    out = np.full(batch.shape[:2], np.nan)
    for k, A in enumerate(batch):
        if not np.all(np.isfinite(A)):
            continue
        c = pow2_scale(A)
        try:
            ev = np.linalg.eigvalsh(A / c)
        except np.linalg.LinAlgError:
            continue
        with np.errstate(over="ignore"):
            out[k] = ev * c
    return out.reshape(M.shape[:-1])


#: exact singular values (TSQR + LAPACK) when min(n, p) is at most this
EXACT_SVD_LIMIT = 2000
#: rows (or columns) per block of the blocked QR: block x p float64 at most 32 MiB
_BLOCK_ENTRIES = 1 << 22


def _pow2_of(X: np.ndarray) -> float:
    """:func:`pow2_scale` of X without a float64 copy of X."""
    if X.size == 0:
        return 1.0
    with np.errstate(invalid="ignore"):
        top = float(max(abs(float(np.max(X))), abs(float(np.min(X)))))
    if not math.isfinite(top) or top == 0.0 or 2.0 ** -400 <= top <= 2.0 ** 400:
        return 1.0
    return math.ldexp(1.0, math.frexp(top)[1] - 1)


def tsqr_r(X: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """The R factor of a tall X (n >= p) by blocked Householder QR (TSQR): R of
    ``[R_prev; X_block]`` block after block, in float64. O(n p^2) time and O(block p +
    p^2) memory: X is never copied whole, whatever its dtype. ``R^T R = X^T X`` and R
    has X's singular values (Demmel, Grigori, Hoemmen & Langou, 2012). ``scale``
    divides every block first (R of X / scale)."""
    n, p = X.shape
    rows = max(p, _BLOCK_ENTRIES // max(p, 1))
    R = np.zeros((0, p))
    for i in range(0, n, rows):
        block = np.asarray(X[i:i + rows], dtype=np.float64)
        if scale != 1.0:
            block = block / scale
        R = np.linalg.qr(np.vstack([R, block]), mode="r")
    return R


@dataclass
class DesignSpectrum:
    """Extreme singular values of a data matrix X and how they were obtained."""

    sigma_max: float
    sigma_min: float  # of the min(n, p) singular values (0 only if exactly singular)
    exact: bool
    method: str
    relative_error_bound: float  # of sigma_max / sigma_min
    #: s_max / s_min when s_max itself is beyond float64 (huge finite data)
    _ratio: float | None = None

    @property
    def cond_gram(self) -> float:
        """cond(X^T X) = (s_max / s_min)^2: inf when s_min is exactly 0 or the value is
        beyond float64, NaN when the singular values are unknown."""
        ratio = self._ratio
        if ratio is None:
            if math.isnan(self.sigma_max) or math.isnan(self.sigma_min):
                return math.nan
            if self.sigma_min == 0:
                return math.inf
            ratio = self.sigma_max / self.sigma_min
        with np.errstate(over="ignore"):
            return float(np.float64(ratio) ** 2)


def design_spectrum(X: np.ndarray, *, exact_limit: int = EXACT_SVD_LIMIT) -> DesignSpectrum:
    """Extreme singular values of X (n x p, any float dtype) without copying X whole in
    float64 and without any n x p x p intermediate.

    ``min(n, p) <= exact_limit``: exact to rounding, LAPACK singular values of the R
    factor of X (tall) or of X^T (wide) from :func:`tsqr_r`: O(n p min(n, p)) time,
    O(block + min(n, p)^2) memory. Larger: the ``gram`` estimate of
    :func:`condition_info` (Lanczos on the Gram matrix, shift-invert for the smallest),
    with its stated relative error.
    """
    n, p = X.shape
    if n == 0 or p == 0:
        return DesignSpectrum(math.nan, math.nan, True, "empty", 0.0)
    k = min(n, p)
    # divided by a power of two first (exact; the ratio does not change), so that huge
    # finite values (1e200, 1e308) do not overflow inside the factorizations
    c = _pow2_of(X)
    if k <= exact_limit:
        try:
            if n * p <= _BLOCK_ENTRIES:  # small: LAPACK on X itself, as it always was
                s = np.linalg.svd(np.asarray(X, dtype=np.float64) / c, compute_uv=False)
            else:
                s = np.linalg.svd(tsqr_r(X if n >= p else X.T, c), compute_uv=False)
        except np.linalg.LinAlgError:
            return DesignSpectrum(math.nan, math.nan, True, "svd", math.nan)
        if not np.all(np.isfinite(s)):
            return DesignSpectrum(math.nan, math.nan, True, "svd", math.nan)
        with np.errstate(over="ignore"):
            smax, smin = float(s[0] * c), float(s[-1] * c)
        if smax == math.inf and smin < math.inf:  # the ratio is still known
            return DesignSpectrum(smax, smin, True, "svd (beyond float64)", 0.0,
                                  _ratio=float(s[0] / s[-1]) if s[-1] > 0 else math.inf)
        eps = float(np.finfo(np.float64).eps)
        bound = min(k * eps * smax / smin, 1.0) if smin > 0 else math.inf
        return DesignSpectrum(smax, smin, True,
                              "LAPACK singular values of R from blocked Householder QR",
                              bound)
    info = condition_info(X if c == 1.0 else np.asarray(X, dtype=np.float64) / c,
                          method="gram", rank_tol=0.0)
    with np.errstate(over="ignore"):
        return DesignSpectrum(float(np.float64(info.sigma_max) * c),
                              float(np.float64(info.sigma_min) * c), False, info.estimator,
                              info.relative_error_bound,
                              _ratio=(info.sigma_max / info.sigma_min
                                      if info.sigma_min > 0 else math.inf))
