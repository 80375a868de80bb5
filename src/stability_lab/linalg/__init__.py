"""Linear algebra the lab judges with: least-squares solvers with their diagnostics,
double-double refinement, condition numbers at any size, NIST's certified problems and
the duplicated-rows one-hot scenario. Everything here computes in float64 or better,
whatever the precision of the run it judges; nothing here knows of specs, tasks or
stores.

The least-squares solvers are one registry of declared records, :data:`SOLVER_TABLE`,
here and free of NumPy and SciPy (a record names its function as ``module:function``,
imported when it first solves), so that the command line checks ``--solver`` cheaply;
:func:`stability_lab.linalg.solvers.solve` runs them. Adding a solver is its function
(one file, or :mod:`.methods`) and one record (``docs/extending.md``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

#: precisions a solve runs in; float16 only for the iterative solvers
PRECISIONS: tuple[str, ...] = ("float64", "float32", "float16")

_LAPACK_PRECISIONS = ("float64", "float32")


@dataclass(frozen=True)
class Solver:
    """One least-squares solver and everything :func:`solve` needs to know about it."""

    name: str
    #: one line: the algorithm
    summary: str
    #: ``"module:function"`` of the solver, imported when it first solves: ``(X, y, opts,
    #: diag) -> coef`` with X and y rounded to the working precision; with
    #: ``mixed_precision``, ``(X, y, opts, diag, precision, X_lo)`` with the validated
    #: float64 data
    function: str
    #: the options it accepts, with their defaults (None = computed from the problem)
    options: Mapping[str, Any]
    #: precisions it runs in (LAPACK has no half precision: only the iterative solvers
    #: that need nothing but products run in float16)
    precisions: tuple[str, ...] = _LAPACK_PRECISIONS
    #: takes a SciPy sparse X (it needs only products with X and X^T)
    sparse_input: bool = False
    #: takes X with fewer rows than columns (it returns a minimum-norm or regularised fit)
    underdetermined: bool = False
    #: invariant under column scaling: its error is governed by the condition number of
    #: the column-equilibrated X, not of X (Householder QR, Cholesky; Higham secs. 19.4,
    #: 20.4)
    scaling_invariant: bool = False
    #: forms the normal equations: its error bound is ``kappa^2 u`` (Higham sec. 20.4)
    squares_kappa: bool = False
    #: works with ``X^T X``, formed or through products (normal equations, CGLS, gradient
    #: descent): its digits fall with ``cond(X)^2``
    on_normal_equations: bool = False
    #: receives the float64 data and the precision, rounds the data itself and refines in
    #: higher precision; only it accepts a double-double design (``X_lo``)
    mixed_precision: bool = False


    def resolve(self) -> Callable[..., Any]:
        """The solver's function (imports its module: NumPy and SciPy)."""
        module, _, attr = self.function.partition(":")
        return getattr(importlib.import_module(module), attr)


#: every solver, in the order the ``solver`` axis lists them
SOLVER_TABLE: tuple[Solver, ...] = (
    Solver("normal", "explicit inverse of the Gram matrix, inv(X^T X) X^T y",
           "stability_lab.linalg.methods:solve_normal", MappingProxyType({}),
           scaling_invariant=True, squares_kappa=True, on_normal_equations=True),
    Solver("cholesky", "Cholesky factorization of X^T X (LAPACK potrf)",
           "stability_lab.linalg.methods:solve_cholesky", MappingProxyType({}),
           scaling_invariant=True, squares_kappa=True, on_normal_equations=True),
    Solver("qr", "Householder QR of X without pivoting (LAPACK geqrf)",
           "stability_lab.linalg.methods:solve_qr", MappingProxyType({}),
           scaling_invariant=True),
    Solver("svd", "truncated SVD, cutoff rcond * s_max (default max(m, n) eps)",
           "stability_lab.linalg.methods:solve_svd", MappingProxyType({"rcond": None}),
           underdetermined=True),
    Solver("pinv", "numpy.linalg.pinv(X) @ y, cutoff 1e-15 * s_max",
           "stability_lab.linalg.methods:solve_pinv", MappingProxyType({"rcond": 1e-15}),
           underdetermined=True),
    Solver("lstsq", "numpy.linalg.lstsq, cutoff max(m, n) eps s_max",
           "stability_lab.linalg.methods:solve_lstsq", MappingProxyType({"rcond": None}),
           underdetermined=True),
    Solver("ridge", "Tikhonov by Householder QR of [X; sqrt(alpha) I]",
           "stability_lab.linalg.methods:solve_ridge", MappingProxyType({"alpha": None}),
           underdetermined=True, scaling_invariant=True),
    Solver("lsqr", "Paige & Saunders' LSQR, optionally damped",
           "stability_lab.linalg.methods:solve_lsqr",
           MappingProxyType({"damp": 0.0, "atol": None, "btol": None, "max_iter": None}),
           sparse_input=True, underdetermined=True),
    Solver("cg", "CGLS: conjugate gradients on the normal equations, not formed",
           "stability_lab.linalg.methods:solve_cg",
           MappingProxyType({"damp": 0.0, "tol": None, "max_iter": None}),
           precisions=PRECISIONS, sparse_input=True, underdetermined=True,
           on_normal_equations=True),
    Solver("gd", "gradient descent with step 1 / (s_max^2 + damp^2)",
           "stability_lab.linalg.methods:solve_gd",
           MappingProxyType({"damp": 0.0, "tol": None, "max_iter": 5000, "lr": None}),
           precisions=PRECISIONS, sparse_input=True, underdetermined=True,
           on_normal_equations=True),
    Solver("auto", "equilibrated pivoted QR + double-double augmented refinement",
           "stability_lab.linalg.auto:solve_auto",
           MappingProxyType({"rank_tol": None, "max_refine": None, "equilibrate": True}),
           sparse_input=True, scaling_invariant=True, mixed_precision=True),
)

#: the solver names, in table order (the ``solver`` axis)
SOLVERS: tuple[str, ...] = tuple(s.name for s in SOLVER_TABLE)
