"""``auto``, the lab's recommended least-squares path, and its choice between dense and
sparse.

Dense X (or sparse X small enough to densify): exact power-of-two column equilibration,
Householder QR with column pivoting, rank decided from the singular values of ``R`` with
the cutoff reported, then fixed-precision iterative refinement of the augmented system
with residuals in double-double (:func:`stability_lab.linalg.doubledouble.refine_least_squares`).
It reaches the accuracy the float64 data allow, also for large-residual problems where
plain QR loses ``kappa^2 tan(theta)``, and costs O(m n^2) for the factorization plus
O(m n) per refinement step. In float32 it factors in float32 and refines with
double-double residuals (mixed-precision refinement).

Large sparse X: equilibrated LSQR, O(nnz) per iteration.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse

from stability_lab.linalg import SOLVER_TABLE
from stability_lab.linalg.diagnostics import column_norms, kappa_from_svals, pow2_scale
from stability_lab.linalg.doubledouble import refine_least_squares
from stability_lab.linalg.methods import solve_lsqr
from stability_lab.linalg.records import SolveDiagnostics

__all__ = ["AUTO_DENSIFY_LIMIT", "solve_auto"]

#: LSQR's record: the sparse path runs it with its default options
_LSQR = next(s for s in SOLVER_TABLE if s.name == "lsqr")

#: m * n entries; a sparse X above it stays sparse (equilibrated LSQR), below it is
#: densified for the QR path
AUTO_DENSIFY_LIMIT = 20_000_000


def solve_auto(X: Any, y: np.ndarray, opts: dict[str, Any], diag: SolveDiagnostics,
               precision: str, X_lo: np.ndarray | None = None) -> np.ndarray:
    """Coefficients by the ``auto`` path; ``X`` (float64, dense or CSR) and ``y``
    (float64) as validated, not yet rounded to ``precision``: the data are rounded to it
    here, and the refinement works on the rounded data in float64 and double-double.
    Records the path taken in ``diag.path``."""
    dt = np.dtype(precision)
    m, n = X.shape
    if scipy.sparse.issparse(X) and m * n > AUTO_DENSIFY_LIMIT:
        diag.path = "equilibrated LSQR (sparse)"
        return _solve_sparse(X, y.astype(dt), diag)
    Xd = X.toarray() if scipy.sparse.issparse(X) else X
    Xd, yd = Xd.astype(dt).astype(np.float64), y.astype(dt).astype(np.float64)
    diag.path = "equilibrated QR + double-double augmented refinement"
    return _solve_dense(Xd, yd, opts, diag, precision, X_lo)


def _solve_dense(X, y, opts, diag, precision, X_lo=None):
    """The lab's recommended least-squares path (dense X).

    1. Equilibrate: scale column j by ``2^-round(log2 ||x_j||)`` (exact in binary).
    2. Factor ``A = X D`` by Householder QR with column pivoting (LAPACK geqp3), in the
       requested precision; float32 falls back to a float64 factor when
       ``kappa(A) u_32 > 0.05`` (refinement would not converge).
    3. Rank: singular values of R (exact to rounding); rank = #{s_i > tol s_1} with
       ``tol = max(m, n) eps`` (reported). Rank-deficient problems are solved on the
       leading ``k`` pivoted columns and the result projected onto the row space: the
       minimum-norm solution in equilibrated units.
    4. Refine the augmented system ``[I A; A^T 0][r; x] = [b; 0]`` (Björck 1967) with
       double-double residuals (:func:`refine_least_squares`); at most ``max_refine``
       steps (default 10 with a float64 factor, 30 with a float32 one).
    """
    m, n = X.shape
    Xw = np.asarray(X, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    d = pow2_scale(np.linalg.norm(Xw, axis=0)) if opts["equilibrate"] else np.ones(n)
    A = Xw * d
    A_lo = None if X_lo is None else np.asarray(X_lo, dtype=np.float64) * d
    fdt = np.float32 if precision == "float32" else np.float64
    Q1, R, perm = scipy.linalg.qr(A.astype(fdt), mode="economic", pivoting=True)
    s = np.linalg.svd(R.astype(np.float64), compute_uv=False)
    kappa_eq = kappa_from_svals(s)
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
    Rk = R[:k, :k]
    max_refine = opts["max_refine"] if opts["max_refine"] is not None else (
        10 if fdt is np.float64 else 30)
    refined = refine_least_squares(A[:, cols], b, Q1[:, :k], Rk, max_refine,
                                   None if A_lo is None else A_lo[:, cols])
    diag.refinement_steps = refined.steps
    diag.converged = refined.converged
    if not refined.converged:
        diag.warnings.append("iterative refinement stagnated: the problem is too "
                             "ill-conditioned for it to converge; digits limited by kappa.")
    z = np.zeros(n)
    z[cols] = refined.x_hi + refined.x_lo
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


def _solve_sparse(X, y, diag):
    """Sparse, large X: equilibrated LSQR (column scaling by powers of two, which is
    the Jacobi preconditioner for the normal equations), O(nnz) per iteration."""
    d = pow2_scale(column_norms(X))
    A = X @ scipy.sparse.diags(d)
    z = solve_lsqr(A, y, _LSQR.options, diag)
    return z * d
