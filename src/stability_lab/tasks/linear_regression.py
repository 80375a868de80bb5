"""Linear least squares under a ``solver`` axis, held to certified or float64 references.

Data (``--data``):

- ``nist:NAME``: one of NIST's StRD linear-regression problems (Longley, Filip, Wampler1-5,
  Norris, Pontius, NoInt1, NoInt2), design formed in float64 from the raw x as NIST's
  model says; the reference is NIST's certified coefficients.
- ``synthetic:n=2000,d=20,kappa=1e8,seed=0``: a design with cond(X) = kappa exactly and
  y = X w + noise (relative noise 1e-3, seeded); the reference is the ``auto`` solve in
  float64 (column equilibration, QR, refinement with double-double residuals).
- ``breast_cancer``, ``digits`` or ``file.csv --target COLUMN``: least squares of the
  (numeric) target on the features plus an intercept column; reference as for synthetic.

One solve is one "step" (``step_unit = "solve"``). The trace records the objective
||y - X b||^2 / (2n), the gradient norm ||X^T r|| / n, ||b||, non-finite counts and
max|X b|, all in float64 at the returned coefficients; the probes hold the condition
numbers, the numerical rank and cutoff, the predicted digits lost (log10 kappa for
backward-stable QR/SVD, 2 log10 kappa for normal equations), and the digits actually
agreeing with the reference (LRE, minimum over coefficients, capped at 15).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from stability_lab.tasks import datasets

from stability_lab.linalg import SOLVERS
from stability_lab.linalg.conditioning import gram_condition
from stability_lab.linalg.solvers import solve, solver_record
from stability_lab.linalg import PRECISIONS, SOLVER_TABLE
from stability_lab.errors import DataError, UsageError
from stability_lab.numerics import l2_norm
from stability_lab.spec import RunSpec
from stability_lab.trace import Trace, environment
from stability_lab.tasks.base import Task

NOISE = 1e-3


@dataclass
class RegressionData:
    name: str
    X: np.ndarray
    y: np.ndarray
    reference: np.ndarray
    reference_kind: str  # "certified" or "float64 auto"
    source: str
    scale: str
    cond_XtX: float
    X_lo: np.ndarray | None = None

    @property
    def variant(self) -> str:
        return f"{self.name} scale={self.scale}"


def _load(spec: RunSpec) -> tuple[str, np.ndarray, np.ndarray, np.ndarray | None, Any]:
    """(name, X, y, certified or None, problem or None) for a data source."""
    source = spec.data
    if source.startswith("nist:"):
        from stability_lab.linalg.nist import load_problem

        problem = load_problem(source.partition(":")[2])
        return problem.name, problem.design(), problem.y.copy(), problem.certified, problem
    if source.startswith("synthetic"):
        params = datasets.parse_synthetic(source)
        if spec.param("kappa") is not None:
            params["kappa"] = spec.param("kappa")
        ds = datasets.synthetic(int(params["n"]), int(params["d"]), params["kappa"],
                                int(params["seed"]))
        rng = np.random.default_rng(int(params["seed"]) + 1)
        w = rng.standard_normal(ds.d)
        clean = ds.X @ w
        y = clean + NOISE * np.linalg.norm(clean) / math.sqrt(ds.n) * rng.standard_normal(ds.n)
        return ds.name, ds.X, y, None, None
    if source.lower().endswith(".csv"):
        ds = _load_csv_regression(source, spec.target)
    else:
        ds = datasets.load(source, spec.target)
    X = np.hstack([ds.X, np.ones((ds.n, 1))])
    return ds.name, X, ds.y, None, None


def _load_csv_regression(path: str, target: str | None) -> datasets.Dataset:
    """A CSV whose target is numeric (not class labels)."""
    ds = datasets.load_csv(path, target)
    try:
        y = np.array([float(c) for c in ds.classes])[ds.y.astype(int)]
    except ValueError:
        raise UsageError(
            f"Target column {target!r} of {path!r} is not numeric; linear_regression needs a "
            "numeric target (use logistic_regression for class labels)."
        ) from None
    return datasets.Dataset(ds.name, ds.X, y, ds.feature_names, ds.target_name)


class LinearRegressionTask(Task):
    name = "linear_regression"
    step_unit = "solve"
    kind = "solve"

    def validate(self, spec: RunSpec) -> None:
        solver = spec.solver or "auto"
        if solver not in SOLVERS:
            raise UsageError(f"Unknown solver {solver!r}; expected one of: "
                             f"{', '.join(SOLVERS)}.")
        if spec.precision not in PRECISIONS:
            raise UsageError(
                f"linear_regression runs in {', '.join(PRECISIONS)}; got precision "
                f"{spec.precision!r}. Pick one of those."
            )
        if spec.precision not in solver_record(solver).precisions:
            able = [s.name for s in SOLVER_TABLE if spec.precision in s.precisions]
            raise UsageError(
                f"Solver {solver!r} does not run in {spec.precision} (only "
                f"{' and '.join(able)} do); use --precision float32 or --solver {able[0]}."
            )

    def data_key(self, spec: RunSpec):
        return (spec.data, spec.target, spec.param("kappa"), spec.scale)

    def prepare(self, spec: RunSpec) -> RegressionData:
        name, X, y, certified, problem = _load(spec)
        if X.shape[0] < X.shape[1]:
            raise DataError(
                f"{name!r} has {X.shape[0]} rows and {X.shape[1]} columns (with the "
                "intercept): the least-squares fit is not unique and the lab's solvers are "
                "compared on unique fits; add rows or drop features (in Python, "
                "stability_lab.linalg.solvers.solve(X, y, solver='svd') gives the minimum-norm "
                "fit)."
            )
        X_lo = None
        if spec.scale != "raw":
            X = datasets.scale_features(X, spec.scale)
            if spec.scale == "standardized":
                # standardizing zeroes an intercept column: put it back
                const = np.all(X == 0, axis=0)
                X[:, const] = 1.0
        if certified is not None and spec.scale == "raw":
            reference, kind = certified, "NIST certified"
            if problem is not None and problem.model["kind"] == "polynomial":
                _, X_lo = problem.design_dd()
        else:
            reference = solve(X, y, solver="auto").coef
            kind = "float64 auto solve"
        return RegressionData(name, X, y, np.asarray(reference, float), kind, spec.data,
                        spec.scale, gram_condition(X), X_lo)

    def conditioning(self, prepared: RegressionData) -> dict[str, Any]:
        return {"cond_XtX": prepared.cond_XtX, "n": int(prepared.X.shape[0]),
                "p": int(prepared.X.shape[1]), "reference": prepared.reference_kind}

    def solve(self, spec: RunSpec, prep: RegressionData) -> Trace:
        solver = spec.solver or "auto"
        extra = {}
        if solver == "auto" and spec.precision == "float64" and prep.X_lo is not None:
            extra["X_lo"] = prep.X_lo  # the polynomial design held in double-double
        sol = solve(prep.X, prep.y, solver=solver, precision=spec.precision,
                    reference=prep.reference, **extra)
        diag = sol.diagnostics
        b = np.asarray(sol.coef, dtype=np.float64)
        with np.errstate(all="ignore"):
            pred = prep.X @ b
            r = prep.y - pred
            n = len(prep.y)
            metrics = {
                "loss": np.array([r @ r / (2 * n)]),
                "grad_norm": np.array([float(l2_norm(prep.X.T @ r)) / n]),
                "weight_norm": np.array([float(l2_norm(b))]),
                "nonfinite_weights": np.array([float(np.sum(~np.isfinite(b)))]),
                "nonfinite_grads": np.array([0.0]),
                "max_abs_logit": np.array([float(np.max(np.abs(pred)))]),
            }
        d = diag.to_dict()
        start = {"cond_XtX": prep.cond_XtX, "condition_number": diag.condition_number,
                 "condition_number_equilibrated": diag.condition_number_equilibrated,
                 "numerical_rank": diag.numerical_rank, "rank_cutoff": diag.rank_cutoff,
                 "predicted_digits_lost": diag.predicted_digits_lost}
        end = {"digits": diag.lre_min, "predicted_digits": diag.predicted_digits,
               "residual_sd": diag.residual_sd, "reference": prep.reference_kind,
               "extended_design": "X_lo" in extra}
        meta = environment()
        meta["solver_path"] = diag.path
        # the reference solution's size: a large certified coefficient vector (Longley's
        # intercept is -3.5e6) is the answer, not a blow-up
        reference = {"weight_norm": float(l2_norm(prep.reference)), "kind": prep.reference_kind}
        trace = Trace(spec=spec, metrics=metrics,
                      probes={"start": start, "end": end, "reference": reference},
                      meta=meta, step_unit="solve",
                      final_params=b)
        trace.extras["solve"] = {k: d[k] for k in ("status", "message", "iterations",
                                                   "converged", "lre", "warnings",
                                                   "rank_deficiency")}
        return trace
