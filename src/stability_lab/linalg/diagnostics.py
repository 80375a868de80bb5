"""The numbers a least-squares solve reports about its data: condition numbers, numerical
rank, and the digits a solver's error bound predicts it loses.

Two condition numbers are measured, because solvers differ in which one governs their
error: ``kappa(X)`` for the methods that see the columns as given (SVD-based, LSQR, CGLS,
gradient descent), and ``kappa(X D)``, with D the exact power-of-two column equilibration
of :func:`pow2_scale`, for the methods invariant under column scaling (Householder QR,
Cholesky; Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., secs. 19.4,
20.4). Both are exact (LAPACK SVD) for dense X with at most 2000 columns, estimated
(:func:`stability_lab.linalg.conditioning.condition_info`) for sparse or wider X.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse

from stability_lab.linalg.conditioning import condition_info, sigma_max

__all__ = [
    "DataConditioning",
    "column_norms",
    "condition_of_data",
    "kappa_from_svals",
    "norm_estimate",
    "pow2_scale",
    "predicted_digits_lost",
]

#: dense X with more columns than this gets estimated, not exact, condition numbers
_EXACT_COLUMNS = 2000


def pow2_scale(norms: np.ndarray) -> np.ndarray:
    """Column scale factors ``2^-round(log2 ||x_j||)``: scaling by powers of two is
    exact in binary floating point, so equilibration adds no rounding error."""
    d = np.ones_like(norms)
    ok = norms > 0
    d[ok] = np.ldexp(1.0, -np.round(np.log2(norms[ok])).astype(int))
    return d


def column_norms(X: Any) -> np.ndarray:
    """The 2-norm of each column of a dense or SciPy sparse X."""
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


def kappa_from_svals(s: np.ndarray) -> float:
    """``s_max / s_min`` of singular values in decreasing order; inf when singular."""
    if s.size == 0 or s[0] == 0:
        return math.inf
    with np.errstate(divide="ignore"):
        return float(s[0] / s[-1]) if s[-1] > 0 else math.inf


@dataclass(frozen=True)
class DataConditioning:
    """The condition numbers and numerical rank of a design X."""

    #: 2-norm condition number of X
    kappa: float
    #: 2-norm condition number of X D, D the unit-column-norm equilibration
    kappa_equilibrated: float
    #: how they were obtained: "exact (LAPACK SVD)" or "estimate (...)"
    method: str
    #: singular values of X above ``rank_cutoff * s_max``
    numerical_rank: int
    #: the rank cutoff relative to s_max, ``max(m, n) eps`` for the exact method
    rank_cutoff: float


def condition_of_data(X: Any) -> DataConditioning:
    """``kappa(X)``, ``kappa(X D)`` and the numerical rank of X, with D the power-of-two
    unit-column-norm equilibration; rank at the cutoff ``max(m, n) eps s_max``."""
    d = pow2_scale(column_norms(X))
    if scipy.sparse.issparse(X) or X.shape[1] > _EXACT_COLUMNS:
        Xd = X @ scipy.sparse.diags(d) if scipy.sparse.issparse(X) else X * d
        info = condition_info(X)
        return DataConditioning(info.kappa, condition_info(Xd).kappa,
                                f"estimate ({info.method})", info.numerical_rank,
                                info.rank_cutoff)
    s = _svals_dense(X)
    sd = _svals_dense(X * d)
    tol = max(X.shape) * float(np.finfo(np.float64).eps)
    rank = int(np.sum(s > tol * s[0])) if s.size and s[0] > 0 else 0
    return DataConditioning(kappa_from_svals(s), kappa_from_svals(sd), "exact (LAPACK SVD)",
                            rank, tol)


def norm_estimate(X: Any) -> float:
    """``||X||_2``: exact for dense X up to 2000 columns, else by Lanczos."""
    if not scipy.sparse.issparse(X) and X.shape[1] <= _EXACT_COLUMNS:
        return float(np.linalg.norm(X.astype(np.float64), 2))
    return sigma_max(X)


def predicted_digits_lost(kappa: float, squares_kappa: bool, X: Any, coef: np.ndarray,
                          residual_norm: float) -> float | None:
    """``log10`` of a solver's first-order forward error bound, relative to the unit
    roundoff: ``2 log10 kappa`` for the normal equations (``squares_kappa``), else
    ``log10(kappa + kappa^2 tan t)`` with ``tan t = ||r|| / (||X|| ||b||)`` for the
    backward-stable methods (Higham thm. 20.3). ``kappa`` is the condition number that
    governs the solver; None when it is not a finite positive number.
    """
    if not (math.isfinite(kappa) and kappa > 0):
        return None
    if squares_kappa:
        return 2 * math.log10(kappa)
    bn = float(np.linalg.norm(coef)) if np.all(np.isfinite(coef)) else math.nan
    tan = (residual_norm / (norm_estimate(X) * bn)
           if bn and math.isfinite(bn) and math.isfinite(residual_norm) and bn > 0 else 0.0)
    return math.log10(kappa + kappa ** 2 * tan)
