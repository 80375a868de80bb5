"""Linear least squares, solved many ways, with honest diagnostics: the solver table and
:func:`solve`.

``solve(X, y, solver=..., precision=...)`` computes ``argmin_b ||X b - y||_2`` with one
of the solvers in :data:`stability_lab.linalg.SOLVERS` and returns a
:class:`~stability_lab.linalg.records.LinearSolution`: the coefficients and a
:class:`~stability_lab.linalg.records.SolveDiagnostics` record (condition numbers,
numerical rank and the cutoff that decided it, predicted digits lost, and, when a
reference is passed, the digits that actually agree with it, LRE).

Every solver is one :class:`Solver` record of :data:`SOLVER_TABLE`: its function, the
options it accepts with their defaults, the precisions it runs in, whether it takes
sparse or underdetermined X, and which condition number governs its error. The
algorithms are in :mod:`stability_lab.linalg.methods` (the ten textbook ones) and
:mod:`stability_lab.linalg.auto` (the lab's recommended path).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse

from stability_lab.errors import DataError, UsageError
from stability_lab.linalg import PRECISIONS, SOLVER_TABLE, SOLVERS, Solver
from stability_lab.linalg.diagnostics import condition_of_data, predicted_digits_lost
from stability_lab.linalg.records import LRE_CAP, LinearSolution, SolveDiagnostics, lre
from stability_lab.linalg.validation import as_numeric_2d, check_finite, validate_inputs

__all__ = ["solve", "solver_record"]


_BY_NAME = {s.name: s for s in SOLVER_TABLE}

#: the options that must be floats >= 0, and integers >= 0, whichever solver has them
_NONNEGATIVE_FLOATS = ("rcond", "alpha", "rank_tol", "atol", "btol", "tol", "lr")
_NONNEGATIVE_INTS = ("max_iter", "max_refine")


def solver_record(name: str) -> Solver:
    """The :class:`Solver` named ``name``; a UsageError listing the valid ones if none."""
    record = _BY_NAME.get(name)
    if record is None:
        raise UsageError(f"Unknown solver {name!r}; valid solvers are: "
                         f"{', '.join(SOLVERS)}.")
    return record


def _check_solver(solver: str, precision: str, options: dict[str, Any]
                  ) -> tuple[Solver, dict[str, Any]]:
    """The solver's record and its options merged over their defaults, each checked."""
    record = solver_record(solver)
    if precision not in PRECISIONS:
        raise UsageError(f"Unknown precision {precision!r}; valid precisions are: "
                         f"{', '.join(PRECISIONS)}.")
    if precision not in record.precisions:
        able = [s.name for s in SOLVER_TABLE if precision in s.precisions]
        raise UsageError(f"Solver {solver!r} does not run in {precision} (LAPACK has no half "
                         f"precision); use precision='float32' or solver "
                         f"{' or '.join(repr(s) for s in able)}.")
    table = record.options
    unknown = sorted(set(options) - set(table))
    if unknown:
        accepted = ", ".join(table) if table else "none"
        raise UsageError(f"Solver {solver!r} got unknown option(s) {', '.join(unknown)}; "
                         f"accepted options: {accepted}.")
    merged = dict(table)
    merged.update(options)
    for key in _NONNEGATIVE_FLOATS:
        v = merged.get(key)
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise UsageError(f"The {key!r} option of solver {solver!r} must be a float >= 0; "
                             f"got {v!r}.")
    if "damp" in merged and not (isinstance(merged["damp"], (int, float))
                                 and math.isfinite(merged["damp"]) and merged["damp"] >= 0):
        raise UsageError(f"The 'damp' option of solver {solver!r} must be a float >= 0; got "
                         f"{merged['damp']!r}.")
    for key in _NONNEGATIVE_INTS:
        v = merged.get(key)
        if v is not None and not (isinstance(v, (int, np.integer)) and v >= 0):
            raise UsageError(f"The {key!r} option of solver {solver!r} must be an integer "
                             f">= 0; got {v!r}.")
    return record, merged


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
        One of :data:`stability_lab.linalg.SOLVERS` (see :mod:`stability_lab.linalg.methods`
        and :mod:`stability_lab.linalg.auto` for the algorithms).
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
        Solver options, validated against the solver's record in :data:`SOLVER_TABLE`
        (``rcond`` for ``svd``/``pinv``/``lstsq``, ``alpha`` for ``ridge``, ``damp``/
        ``tol``/``max_iter`` for the iterative ones, ``rank_tol``/``max_refine`` for
        ``auto``).

    A numerical failure of the solver (a singular Gram matrix for ``cholesky``, a zero
    pivot for ``qr``) is not an exception: the solution comes back with NaN
    coefficients, ``diagnostics.status == "failed"`` and the reason in ``message``, so
    that a comparison of solvers can show it.
    """
    t0 = time.perf_counter()
    record, opts = _check_solver(solver, precision, options)
    Xv, yv = validate_inputs(X, y, allow_sparse=record.sparse_input)
    m, n = Xv.shape
    if X_lo is not None:
        if not record.mixed_precision or precision != "float64":
            raise UsageError("X_lo (double-double design) is only used by solver='auto' in "
                             "float64; drop X_lo or use solver='auto'.")
        X_lo = as_numeric_2d(X_lo)
        if X_lo.shape != Xv.shape:
            raise DataError(f"X_lo has shape {X_lo.shape} but X has shape {Xv.shape}; "
                            "they must match.")
        check_finite(X_lo, "X_lo", shape=X_lo.shape)
    if m < n and not record.underdetermined:
        raise DataError(
            f"X has fewer rows ({m}) than columns ({n}): the least-squares solution is not "
            f"unique; use solver='ridge' (regularised) or the minimum-norm solution "
            f"(solver='svd', 'pinv' or 'lstsq').")
    diag = SolveDiagnostics(solver=solver, precision=precision, n_samples=m, n_features=n,
                            options=dict(opts))
    dt = np.dtype(precision)
    u = float(np.finfo(dt).eps) / 2
    kappa = kappa_eq = math.nan
    data = None
    if diagnose:
        data = condition_of_data(Xv)
        kappa, kappa_eq = data.kappa, data.kappa_equilibrated
        diag.condition_number, diag.condition_number_equilibrated = kappa, kappa_eq
        diag.condition_method = data.method
    coef = np.full(n, np.nan)
    try:
        with np.errstate(all="ignore"):
            if record.mixed_precision:
                coef = record.resolve()(Xv, yv, opts, diag, precision, X_lo)
                # the condition number it measured on the data it solved (equilibrated,
                # rounded to the precision: singular values of its R factor) governs it
                if diagnose and math.isfinite(diag.condition_number_equilibrated):
                    kappa_eq = diag.condition_number_equilibrated
            else:
                Xw = Xv.astype(dt) if scipy.sparse.issparse(Xv) else np.asarray(Xv, dtype=dt)
                coef = record.resolve()(Xw, yv.astype(dt), opts, diag)
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
    lost = predicted_digits_lost(kappa_eq if record.scaling_invariant else kappa,
                                 record.squares_kappa, Xv, coef, diag.residual_norm)
    if lost is not None:
        diag.predicted_digits_lost = lost
        diag.predicted_digits = float(min(max(-math.log10(u) - lost, 0.0), LRE_CAP))
    elif diagnose:
        diag.predicted_digits_lost = math.inf
        diag.predicted_digits = 0.0
    if diag.rank_deficiency is None:
        # solvers without a rank decision of their own: report the data's numerical
        # rank at the default cutoff, marked as such
        diag.rank_decided_by = "diagnostics" if data is not None else ""
        if data is not None:
            diag.numerical_rank = data.numerical_rank
            diag.rank_deficiency = min(m, n) - data.numerical_rank
            diag.rank_cutoff = data.rank_cutoff
    if reference is not None:
        ref = np.asarray(reference, dtype=np.float64).ravel()
        if ref.shape[0] != n:
            raise UsageError(f"reference has {ref.shape[0]} values but X has {n} columns.")
        vals = lre(coef, ref)
        diag.lre = [float(v) for v in vals]
        diag.lre_min = float(vals.min())
    diag.time_s = time.perf_counter() - t0
    return LinearSolution(coef=coef, diagnostics=diag)
