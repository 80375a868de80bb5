"""The NIST StRD linear least-squares problems, and every solver run against them.

NIST's Statistical Reference Datasets (https://www.itl.nist.gov/div898/strd/lls/lls.shtml)
give eleven linear regression problems with coefficients certified to 15 significant
digits (computed in 500-digit arithmetic). :func:`run_nist` solves each with each
solver of :mod:`stability_lab.linalg.solvers` and scores the coefficients and the residual
standard deviation by the log relative error (LRE, digits correct, capped at 15).

The packaged data (``data/nist/nist_strd.json``) hold, per problem, the raw x and y
exactly as printed in the ``.dat`` files (decimal strings, parsed to the nearest
float64), the model form and the certified values. ``ceiling`` is the LRE of the
*exact* least-squares solution of the float64 design and response (the best any
float64 solver given that design can do); it was computed with mpmath at 100 digits
and is re-checked by ``tests/test_nist.py``.

The design is formed from the raw x in float64 (``x**k`` by ``numpy.power``); for
polynomial problems :meth:`NistProblem.design_dd` also gives the design in
double-double (high and low parts, each power formed with error-free products), which
``solve(..., solver="auto", X_lo=...)`` uses to go past the float64 ceiling (Filip).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from stability_lab.errors import UsageError
from stability_lab.linalg import SOLVERS
from stability_lab.linalg.doubledouble import dd_residual, two_prod, two_sum
from stability_lab.linalg.perturbation import perturbation_digits
from stability_lab.linalg.records import lre
from stability_lab.linalg.solvers import solve

__all__ = [
    "PROBLEMS",
    "NIST_SOLVERS",
    "NistProblem",
    "load_problem",
    "run_nist",
    "format_nist",
]

#: The eleven problems in NIST's order of difficulty.
PROBLEMS: tuple[str, ...] = (
    "Norris", "Pontius", "NoInt1", "NoInt2", "Longley", "Filip",
    "Wampler1", "Wampler2", "Wampler3", "Wampler4", "Wampler5",
)

#: Solvers shown by :func:`run_nist`: all of :data:`stability_lab.linalg.SOLVERS`.
NIST_SOLVERS: tuple[str, ...] = SOLVERS

_DATA_FILE = "nist_strd.json"


@dataclass(frozen=True)
class NistProblem:
    """One certified problem: raw data, model form and certified values."""

    name: str
    x: np.ndarray  # (m, k) predictors as float64
    y: np.ndarray  # (m,)
    x_text: tuple[tuple[str, ...], ...]
    y_text: tuple[str, ...]
    model: dict[str, Any]
    parameter_names: tuple[str, ...]
    certified: np.ndarray
    certified_text: tuple[str, ...]
    certified_residual_sd: float
    difficulty: str
    ceiling: tuple[float, ...]  # LRE of the exact LS solution of the float64 data
    ceiling_residual_sd: float

    @property
    def n_observations(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_parameters(self) -> int:
        return len(self.parameter_names)

    def design(self) -> np.ndarray:
        """The float64 design matrix of the model (powers of x by ``numpy.power``)."""
        m = self.model
        if m["kind"] == "polynomial":
            x = self.x[:, 0]
            degs = range(0 if m["intercept"] else 1, m["polynomial_degree"] + 1)
            return np.column_stack([np.power(x, d) if d else np.ones_like(x) for d in degs])
        cols = [self.x[:, j] for j in range(self.x.shape[1])]
        if m["intercept"]:
            cols.insert(0, np.ones(self.x.shape[0]))
        return np.column_stack(cols)

    def design_dd(self) -> tuple[np.ndarray, np.ndarray]:
        """Design in double-double: ``(hi, lo)`` with ``hi + lo`` equal to the exact
        powers of the float64 x to about 32 digits. Powers are built by repeated
        error-free multiplication: ``p_{k+1} = p_k * x`` with ``p_k = hi + lo``,
        ``TwoProd(hi, x)`` plus ``lo * x`` (Dekker's double-double product)."""
        m = self.model
        if m["kind"] != "polynomial":
            X = self.design()
            return X, np.zeros_like(X)
        x = self.x[:, 0]
        hi_cols, lo_cols = [np.ones_like(x)], [np.zeros_like(x)]
        for _ in range(m["polynomial_degree"]):
            p, e = two_prod(hi_cols[-1], x)
            e = e + lo_cols[-1] * x
            h, lo = two_sum(p, e)
            hi_cols.append(h)
            lo_cols.append(lo)
        start = 0 if m["intercept"] else 1
        return np.column_stack(hi_cols[start:]), np.column_stack(lo_cols[start:])


@lru_cache(maxsize=1)
def _raw() -> dict[str, Any]:
    path = Path(__file__).resolve().parents[1] / "data" / "nist" / _DATA_FILE
    return json.loads(path.read_text(encoding="utf-8"))


def load_problem(name: str) -> NistProblem:
    """Load one problem by name (case-insensitive)."""
    canon = {p.lower(): p for p in PROBLEMS}
    key = canon.get(str(name).lower())
    if key is None:
        raise UsageError(f"Unknown NIST problem {name!r}; valid problems are: "
                         f"{', '.join(PROBLEMS)}.")
    d = _raw()["problems"][key]
    x_text = tuple(tuple(row) for row in d["x"])
    y_text = tuple(d["y"])
    return NistProblem(
        name=key,
        x=np.array([[float(v) for v in row] for row in x_text]),
        y=np.array([float(v) for v in y_text]),
        x_text=x_text,
        y_text=y_text,
        model=d["model"],
        parameter_names=tuple(d["parameter_names"]),
        certified=np.array([float(v) for v in d["certified"]]),
        certified_text=tuple(d["certified"]),
        certified_residual_sd=float(d["certified_residual_sd"]),
        difficulty=d["difficulty"],
        ceiling=tuple(d.get("ceiling", [math.nan] * len(d["certified"]))),
        ceiling_residual_sd=float(d.get("ceiling_residual_sd", math.nan)),
    )


def _select(names: Iterable[str] | None, valid: tuple[str, ...], what: str) -> list[str]:
    if names is None:
        return list(valid)
    if isinstance(names, str):
        names = [names]
    canon = {v.lower(): v for v in valid}
    out = []
    for n in names:
        for part in str(n).split(","):
            part = part.strip()
            if not part:
                continue
            if part.lower() not in canon:
                raise UsageError(f"Unknown {what} {part!r}; valid {what}s are: "
                                 f"{', '.join(valid)}.")
            if canon[part.lower()] not in out:
                out.append(canon[part.lower()])
    if not out:
        raise UsageError(f"No {what} selected; valid {what}s are: {', '.join(valid)}.")
    return out


def _residual_sd(X: np.ndarray, y: np.ndarray, coef: np.ndarray,
                 X_lo: np.ndarray | None = None) -> float:
    """Residual SD ``sqrt(RSS / (m - p))`` with the residual in double-double, so that it
    measures the coefficients and not the cancellation in ``y - X b``."""
    m, p = X.shape
    if not np.all(np.isfinite(coef)):
        return math.nan
    rh, rl = dd_residual(X, y, (coef, np.zeros_like(coef)), X_lo)
    r = rh + rl
    return float(math.sqrt(float(np.dot(r, r)) / (m - p)))


def run_nist(problems: Iterable[str] | None = None, solvers: Iterable[str] | None = None,
             *, perturb: float | None = None, trials: int = 20, seed: int = 0,
             extended_design: bool = False) -> dict[str, Any]:
    """Solve the NIST problems with each solver and score them.

    Returns a JSON-ready dict: ``problems`` (list, one entry per problem with its
    condition numbers, float64 ceiling and ``results``: solver -> LRE of coefficients
    (minimum and per coefficient), LRE of the residual SD, rank, cutoff, status,
    predicted digits, time) and ``solvers``. With ``perturb`` each result also holds
    :func:`stability_lab.linalg.perturbation.perturbation_digits` statistics for that relative
    perturbation size. With ``extended_design`` the ``auto`` solver is given the
    double-double design (:meth:`NistProblem.design_dd`) instead of the float64 one.
    """
    pnames = _select(problems, PROBLEMS, "problem")
    snames = _select(solvers, NIST_SOLVERS, "solver")
    out: dict[str, Any] = {"solvers": snames, "problems": [], "lre_cap": 15.0,
                           "perturb": perturb, "extended_design": bool(extended_design)}
    for pname in pnames:
        prob = load_problem(pname)
        X = prob.design()
        y = prob.y
        entry: dict[str, Any] = {
            "problem": prob.name, "difficulty": prob.difficulty,
            "n_observations": prob.n_observations, "n_parameters": prob.n_parameters,
            "parameters": list(prob.parameter_names),
            "ceiling_lre": list(prob.ceiling),
            "ceiling_lre_min": float(min(prob.ceiling)),
            "ceiling_residual_sd_lre": prob.ceiling_residual_sd,
            "results": {},
        }
        for sname in snames:
            t0 = time.perf_counter()
            kw: dict[str, Any] = {}
            X_lo = None
            if extended_design and sname == "auto":
                _, X_lo = prob.design_dd()  # its high part is design(), bit for bit
                kw["X_lo"] = X_lo
            sol = solve(X, y, solver=sname, reference=prob.certified, **kw)
            d = sol.diagnostics
            if sname == snames[0]:
                entry["condition_number"] = d.condition_number
                entry["condition_number_equilibrated"] = d.condition_number_equilibrated
            sd = _residual_sd(X, y, sol.coef, X_lo) if sol.ok else math.nan
            sd_lre = float(lre(sd, prob.certified_residual_sd)[0])
            res: dict[str, Any] = {
                "status": d.status,
                "message": d.message,
                "lre_min": float(d.lre_min),
                "lre": d.lre,
                "residual_sd": sd,
                "residual_sd_lre": sd_lre,
                "numerical_rank": d.numerical_rank,
                "rank_decided_by": d.rank_decided_by,
                "rank_cutoff": d.rank_cutoff,
                "predicted_digits": d.predicted_digits,
                "iterations": d.iterations,
                "refinement_steps": d.refinement_steps,
                "coef": [float(c) for c in sol.coef],
                "time_s": time.perf_counter() - t0,
            }
            if perturb is not None:
                rep = perturbation_digits(X, y, solver=sname, rel=perturb, trials=trials,
                                          seed=seed, reference=prob.certified)
                res["perturbation"] = {
                    "rel": perturb, "trials": trials, "seed": seed,
                    "digits_mean": rep.digits_mean, "digits_std": rep.digits_std,
                    "digits_min": rep.digits_min,
                    "digits_mean_min": float(min(rep.digits_mean)),
                    "predicted_digits": rep.predicted_digits,
                    "predicted_digits_min": rep.predicted_digits_min,
                    "predicted_digits_normwise": rep.predicted_digits_normwise,
                    "failed_trials": rep.failed_trials,
                }
            entry["results"][sname] = res
        out["problems"].append(entry)
    from stability_lab.formatting import jsonable

    return jsonable(out)


def _f1(v: Any) -> str:
    return f"{v:.1f}" if isinstance(v, (int, float)) else str(v)


def _fmt_kappa(v: Any) -> str:
    if isinstance(v, str):
        return v
    return f"{v:9.2e}" if v is not None and math.isfinite(v) else "      inf"


def format_nist(report: dict[str, Any]) -> str:
    """Plain-text table of a :func:`run_nist` report: one block per problem, one line per
    solver (minimum LRE over coefficients, LRE of the residual SD, numerical rank,
    digits predicted from the condition number), failures shown as such."""
    lines = []
    pert = report.get("perturb")
    for p in report["problems"]:
        lines.append(
            f"{p['problem']} ({p['difficulty']}, n={p['n_observations']}, "
            f"p={p['n_parameters']})  kappa(X)={_fmt_kappa(p.get('condition_number')).strip()}"
            f"  kappa(X D)={_fmt_kappa(p.get('condition_number_equilibrated')).strip()}"
            f"  float64 ceiling: coef {_f1(p['ceiling_lre_min'])}, "
            f"res.sd {_f1(p['ceiling_residual_sd_lre'])}")
        head = (f"  {'solver':<9} {'LRE coef':>8} {'LRE sd':>6} {'rank':>5} "
                f"{'pred':>5}")
        if pert is not None:
            head += f" {'perturb':>7}"
        lines.append(head + "  note")
        for s, r in p["results"].items():
            rank = ("-" if r["numerical_rank"] is None or r.get("rank_decided_by") != "solver"
                    else str(r["numerical_rank"]))
            pred = r["predicted_digits"]
            pred_s = f"{pred:5.1f}" if isinstance(pred, float) else f"{'-':>5}"
            line = (f"  {s:<9} {r['lre_min']:8.1f} {r['residual_sd_lre']:6.1f} "
                    f"{rank:>5} {pred_s}")
            if pert is not None:
                pd = r.get("perturbation", {}).get("digits_mean_min")
                line += f" {pd:7.1f}" if isinstance(pd, float) else f" {'-':>7}"
            note = ""
            if r["status"] != "ok":
                note = f"FAILED ({r['message']})"
            elif r.get("refinement_steps"):
                note = f"{r['refinement_steps']} refinement steps"
            elif r.get("iterations"):
                note = f"{r['iterations']} iterations"
            lines.append(line + ("  " + note if note else ""))
        lines.append("")
    lines.append("LRE = digits agreeing with NIST's certified values (cap 15); sd = residual "
                 "standard deviation; pred = digits predicted from kappa for that solver; "
                 "ceiling = LRE of the exact LS solution of the float64 design.")
    if pert is not None:
        lines.append(f"perturb = mean over trials of the digits surviving relative "
                     f"perturbations of {pert:g} (worst coefficient).")
    return "\n".join(lines)
