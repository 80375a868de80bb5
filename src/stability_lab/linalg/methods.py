"""The textbook least-squares solvers, from the one to avoid to the ones to use.

Each takes ``(X, y, opts, diag)``: X and y already rounded to the working precision (X
dense, or SciPy sparse for the iterative ones), ``opts`` the solver's options merged
with their defaults (see the solver table in :mod:`stability_lab.linalg.solvers`), and
``diag`` the :class:`~stability_lab.linalg.records.SolveDiagnostics` it fills in (rank
and cutoff, iterations, convergence, warnings). Each returns the coefficients.

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
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg

from stability_lab.linalg.diagnostics import norm_estimate, pow2_scale

__all__ = [
    "solve_cg",
    "solve_cholesky",
    "solve_gd",
    "solve_lsqr",
    "solve_lstsq",
    "solve_normal",
    "solve_pinv",
    "solve_qr",
    "solve_ridge",
    "solve_svd",
]

#: LSQR's options and their defaults (None = computed from the problem); declared here,
#: beside the solver, because ``auto`` runs LSQR with them on large sparse X


def solve_normal(X, y, opts, diag):
    """Explicit inverse of the Gram matrix, ``b = inv(X^T X) X^T y``."""
    G = X.T @ X
    return np.linalg.inv(G) @ (X.T @ y)


def solve_cholesky(X, y, opts, diag):
    """Cholesky factorization of ``X^T X`` (LAPACK potrf), then two triangular solves."""
    G = X.T @ X
    c, low = scipy.linalg.cho_factor(G, lower=False, check_finite=False)
    return scipy.linalg.cho_solve((c, low), X.T @ y, check_finite=False)


def solve_qr(X, y, opts, diag):
    """Householder QR of X without pivoting (LAPACK geqrf), ``R b = Q^T y``; a zero
    diagonal entry of R (exactly rank-deficient X) is a failure, not a division by 0."""
    Q, R = np.linalg.qr(X, mode="reduced")
    if np.any(np.diag(R) == 0):
        raise np.linalg.LinAlgError("R has an exactly zero diagonal entry (rank-deficient X)")
    return scipy.linalg.solve_triangular(R, Q.T @ y, check_finite=False)


def _truncated_svd(X, y, rcond, diag):
    """Minimum-norm solution over the singular values ``> rcond * s_max``; the rank and
    cutoff go into ``diag``."""
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


def solve_svd(X, y, opts, diag):
    """Truncated SVD at ``rcond`` (default :func:`_default_rcond`), cutoff reported."""
    rcond = opts["rcond"]
    if rcond is None:
        rcond = _default_rcond(X)
    return _truncated_svd(X, y, rcond, diag)


def solve_pinv(X, y, opts, diag):
    """``numpy.linalg.pinv(X, rcond) @ y`` (NumPy's default cutoff ``1e-15 * s_max``)."""
    rcond = opts["rcond"]
    P = np.linalg.pinv(X, rcond=rcond)
    s = np.linalg.svd(X, compute_uv=False)
    cutoff = rcond * s[0]
    diag.numerical_rank = int((s > cutoff).sum())
    diag.rank_deficiency = int(min(X.shape) - diag.numerical_rank)
    diag.rank_cutoff, diag.rank_cutoff_absolute = float(rcond), float(cutoff)
    return P @ y


def solve_lstsq(X, y, opts, diag):
    """``numpy.linalg.lstsq`` (LAPACK gelsd), NumPy's cutoff ``max(m, n) eps s_max``."""
    rc = opts["rcond"]
    coef, _, rank, s = np.linalg.lstsq(X, y, rcond=rc)
    if rc is None:
        rc = _default_rcond(X)
    diag.numerical_rank = int(rank)
    diag.rank_deficiency = int(min(X.shape) - rank)
    diag.rank_cutoff, diag.rank_cutoff_absolute = float(rc), float(rc * s[0])
    return coef


def solve_ridge(X, y, opts, diag):
    """``min ||X b - y||^2 + alpha ||b||^2`` by QR of ``[X; sqrt(alpha) I]``.

    With ``alpha`` given this is textbook ridge in the units of X. By default
    (``alpha=None``) the penalty is put on the equilibrated coefficients, ``alpha_rel
    ||X D||_2^2 ||D^-1 b||^2`` with ``alpha_rel = 1e-12`` and D the unit-column-norm
    scaling, so that it does not depend on the units of the columns and only bites in
    directions with ``s < 1e-6 s_max`` (bias ~ ``alpha_rel kappa^2`` relative)."""
    n = X.shape[1]
    alpha = opts["alpha"]
    if alpha is None:
        d = pow2_scale(np.linalg.norm(X.astype(np.float64), axis=0)).astype(X.dtype)
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


def solve_lsqr(X, y, opts, diag):
    """Paige & Saunders' LSQR (``scipy.sparse.linalg.lsqr``), optionally damped; stops
    at ``atol = btol = eps`` or after ``10 n + 100`` iterations by default."""
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
    """``v -> X v`` and ``v -> X^T v`` in ``dtype`` (a sparse X transposed once)."""
    if scipy.sparse.issparse(X):
        Xc = X.astype(dtype)
        XT = Xc.T.tocsr()
        return (lambda v: Xc @ v), (lambda v: XT @ v)
    return (lambda v: X @ v), (lambda v: X.T @ v)


def solve_cg(X, y, opts, diag):
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


def solve_gd(X, y, opts, diag):
    """Gradient descent with the optimal fixed step ``1/L``; the error in the direction
    of singular value s decays like ``(1 - s^2/L)^k`` (so ``~kappa^2`` iterations)."""
    dt = y.dtype
    mv, rmv = _matvecs(X, dt)
    damp = float(opts["damp"])
    L = norm_estimate(X) ** 2 + damp ** 2
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
