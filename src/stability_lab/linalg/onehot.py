"""The one-hot scenario: a pseudo-inverse OLS blow-up, reproduced, diagnosed and fixed.

The production incident this reproduces: categorical features one-hot encoded in
full (every level gets a column) *and* an intercept column (the dummy-variable trap),
many duplicated rows with different labels (the same category combination observed
again and again), a log-linear model fitted by ordinary least squares with
``pinv``/``lstsq`` and a cutoff set far below the rounding level, and predictions
``exp(x^T b)``. The design is exactly rank-deficient (each feature's block of columns
sums to the intercept column), so its smallest singular values are rounding noise of
order ``eps s_max``; with a cutoff below them the pseudo-inverse divides by that noise
and returns weights around 1e12 to 1e15 that cancel on the training rows (the fit looks
fine) but not on a new row whose category was unseen (encoded as all zeros, as with
``OneHotEncoder(handle_unknown="ignore")``): the prediction is of order 1e12 and ``exp``
overflows to inf.

:func:`make_onehot` generates such data at any size (scipy.sparse CSR, 1e6 x 1e4 in
about a second), :func:`onehot_report` runs the incident on a small dense version and
verifies the fixes on the same data: ridge, dropping a reference level per feature,
damped LSQR on the sparse design, aggregating the duplicated rows (weighted least
squares on the unique rows), and an honest cutoff. Each is scored by the size of the
weights, non-finite predictions and agreement of the fitted values with the
identifiable (reference-level) fit. References: Björck, *Numerical Methods for Least
Squares Problems*, sec. 1.3 (rank deficiency), sec. 2.7 (regularisation); Greene,
*Econometric Analysis*, sec. 6.2 (the dummy-variable trap).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.sparse

from stability_lab.linalg.conditioning import condition_info
from stability_lab.errors import UsageError
from stability_lab.formatting import jsonable
from stability_lab.linalg.solvers import solve

__all__ = ["OneHotData", "FitSummary", "OneHotReport", "make_onehot", "design_from_codes",
           "onehot_report"]


@dataclass
class OneHotData:
    """Generated categorical data and its one-hot design.

    ``codes[i, f]`` is the level of feature f in row i; ``X`` the CSR design (intercept
    first when present, then one block per feature); ``y`` the labels; ``group[i]`` the
    index of row i's distinct category combination (duplicated rows share it).
    """

    X: scipy.sparse.csr_matrix
    y: np.ndarray
    codes: np.ndarray
    group: np.ndarray
    n_levels: int
    intercept: bool
    drop_reference: bool
    true_effects: np.ndarray  # (n_features, n_levels)
    true_intercept: float

    @property
    def n_unique(self) -> int:
        return int(np.unique(self.group).size)


def design_from_codes(codes: np.ndarray, n_levels: int, *, intercept: bool = True,
                      drop_reference: bool = False) -> scipy.sparse.csr_matrix:
    """One-hot CSR design for integer ``codes`` (rows x features, levels ``0..n_levels-1``;
    a negative code means an unseen category and gives an all-zero block). With
    ``drop_reference`` level 0 of each feature has no column (treatment coding)."""
    codes = np.asarray(codes)
    m, nf = codes.shape
    width = n_levels - 1 if drop_reference else n_levels
    offset = int(intercept)
    cols = codes - (1 if drop_reference else 0) + offset + width * np.arange(nf)[None, :]
    valid = codes >= (1 if drop_reference else 0)
    rows = np.repeat(np.arange(m), nf).reshape(m, nf)
    r = rows[valid]
    c = cols[valid]
    if intercept:
        r = np.concatenate([np.arange(m), r])
        c = np.concatenate([np.zeros(m, dtype=c.dtype), c])
    data = np.ones(r.size)
    X = scipy.sparse.csr_matrix((data, (r, c)), shape=(m, offset + width * nf))
    X.sum_duplicates()
    return X


def make_onehot(n_rows: int = 2000, n_features: int = 4, n_levels: int = 6, *,
                n_unique: int | None = None, intercept: bool = True,
                drop_reference: bool = False, noise: float = 0.5, effect_scale: float = 0.5,
                seed: int = 0) -> OneHotData:
    """Categorical data with many duplicated rows carrying different labels.

    ``n_unique`` distinct category combinations (default ``max(n_rows // 20, 1)``) are
    drawn uniformly; each row picks one of them uniformly, so rows repeat, and gets the
    label ``y = intercept + sum_f effect[f, level] + noise * N(0, 1)`` (a log-scale
    target: the model's prediction is ``exp(x^T b)``). The design has
    ``intercept + n_features * n_levels`` columns and ``n_features (+1)`` non-zeros per
    row; 1e6 x (1 + 10 * 1000) takes about a second.
    """
    for name, v, lo in (("n_rows", n_rows, 1), ("n_features", n_features, 1),
                        ("n_levels", n_levels, 2)):
        if not (isinstance(v, (int, np.integer)) and v >= lo):
            raise UsageError(f"The {name!r} parameter must be an integer >= {lo}; got {v!r}.")
    rng = np.random.default_rng(seed)
    nu = n_unique if n_unique is not None else max(n_rows // 20, 1)
    if not (isinstance(nu, (int, np.integer)) and nu >= 1):
        raise UsageError(f"The 'n_unique' parameter must be an integer >= 1; got {nu!r}.")
    combos = rng.integers(0, n_levels, size=(nu, n_features))
    # every level of every feature appears at least once (when there are enough combos),
    # so no column is empty and the only rank deficiency is the dummy-variable trap
    for f in range(n_features):
        k = min(n_levels, nu)
        combos[rng.permutation(nu)[:k], f] = np.arange(k)
    group = rng.integers(0, nu, size=n_rows)
    if n_rows >= nu:
        group[rng.permutation(n_rows)[:nu]] = np.arange(nu)
    codes = combos[group]
    effects = effect_scale * rng.standard_normal((n_features, n_levels))
    b0 = 1.0
    y = b0 + effects[np.arange(n_features)[None, :], codes].sum(axis=1)
    y = y + noise * rng.standard_normal(n_rows)
    X = design_from_codes(codes, n_levels, intercept=intercept, drop_reference=drop_reference)
    return OneHotData(X=X, y=y, codes=codes, group=group, n_levels=n_levels,
                      intercept=intercept, drop_reference=drop_reference,
                      true_effects=effects, true_intercept=b0)


@dataclass
class FitSummary:
    """One fit of the scenario: how big the weights are and what the predictions do."""

    name: str
    description: str
    max_abs_coef: float
    train_rmse: float
    max_abs_train_prediction: float
    max_abs_score_prediction: float
    n_score_overflow: int  # exp(prediction) non-finite on the scoring rows
    max_fitted_diff: float  # vs the reference-level fit, on the training rows
    numerical_rank: int | None = None
    rank_cutoff: float | None = None
    solver: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def blown_up(self) -> bool:
        return bool(self.n_score_overflow > 0 or self.max_abs_coef > 1e6)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["blown_up"] = self.blown_up
        return jsonable(d)


@dataclass
class OneHotReport:
    """Before/after report of the one-hot incident (see the module docstring)."""

    scenario: dict[str, Any]
    before: FitSummary
    diagnosis: dict[str, Any]
    fixes: list[FitSummary]
    verdict: str

    @property
    def all_fixed(self) -> bool:
        return self.before.blown_up and not any(f.blown_up for f in self.fixes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": jsonable(self.scenario),
            "before": self.before.to_dict(),
            "diagnosis": jsonable(self.diagnosis),
            "fixes": [f.to_dict() for f in self.fixes],
            "verdict": self.verdict,
            "all_fixed": self.all_fixed,
        }


def _summary(name: str, description: str, coef: np.ndarray, X: Any, y: np.ndarray,
             X_score: Any, ref_fitted: np.ndarray, **extra: Any) -> FitSummary:
    with np.errstate(all="ignore"):
        fitted = X @ coef
        score = X_score @ coef
        overflow = int(np.sum(~np.isfinite(np.exp(score))))
        rmse = float(np.sqrt(np.mean((y - fitted) ** 2)))
    return FitSummary(
        name=name, description=description,
        max_abs_coef=float(np.max(np.abs(coef))),
        train_rmse=rmse,
        max_abs_train_prediction=float(np.max(np.abs(fitted))),
        max_abs_score_prediction=float(np.max(np.abs(score))),
        n_score_overflow=overflow,
        max_fitted_diff=float(np.max(np.abs(fitted - ref_fitted))),
        **extra)


def onehot_report(n_rows: int = 2000, n_features: int = 4, n_levels: int = 6, *,
                  n_unique: int | None = None, rcond: float = 1e-30, seed: int = 0,
                  n_score: int = 50) -> OneHotReport:
    """Reproduce, diagnose and fix the one-hot pseudo-inverse blow-up on one data set.

    Before: ``numpy.linalg.pinv(X, rcond=rcond) @ y`` on the dense full one-hot design
    with intercept (``rcond=1e-30``, a cutoff below the rounding level). Scoring rows:
    ``n_score`` training combinations with one feature set to an unseen category (an
    all-zero block). Diagnosis: rank and condition number (exact SVD), the structural
    null space (one per feature), duplicated rows and the spread of labels within them.
    Fixes, each on the same data and scoring rows: ``ridge`` (alpha 1), ``drop_reference``
    (treatment coding, full column rank, ``solve(auto)``), ``damped_lsqr`` (sparse,
    damp 0.1), ``aggregate_duplicates`` (weighted least squares on the unique rows with
    weights = counts, ``solve(auto)``, minimum-norm on the rank-deficient design) and
    ``honest_cutoff`` (``lstsq`` with NumPy's default cutoff ``max(m, n) eps``).
    """
    if not (isinstance(rcond, (int, float)) and 0 <= rcond < 1):
        raise UsageError(f"The 'rcond' parameter must be a float in [0, 1); got {rcond!r}.")
    data = make_onehot(n_rows, n_features, n_levels, n_unique=n_unique, seed=seed)
    X = data.X.toarray()
    y = data.y
    rng = np.random.default_rng([seed, 1])
    pick = rng.integers(0, n_rows, size=n_score)
    score_codes = data.codes[pick].copy()
    score_codes[np.arange(n_score), rng.integers(0, n_features, size=n_score)] = -1
    X_score = design_from_codes(score_codes, n_levels).toarray()
    X_ref = design_from_codes(data.codes, n_levels, drop_reference=True).toarray()
    X_ref_score = design_from_codes(score_codes, n_levels, drop_reference=True).toarray()

    ref = solve(X_ref, y, solver="auto")
    ref_fitted = X_ref @ ref.coef

    # before: the incident
    with np.errstate(all="ignore"):
        coef_before = np.linalg.pinv(X, rcond=rcond) @ y
    s = np.linalg.svd(X, compute_uv=False)
    before = _summary("pinv_tiny_cutoff", f"numpy.linalg.pinv(X, rcond={rcond:g}) @ y on the "
                      "full one-hot design with intercept", coef_before, X, y, X_score,
                      ref_fitted, numerical_rank=int(np.sum(s > rcond * s[0])),
                      rank_cutoff=rcond, solver="pinv", options={"rcond": rcond})

    # diagnosis
    info = condition_info(X, method="svd")
    _, inverse, counts = np.unique(data.group, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=y)
    means = sums / counts
    within = y - means[inverse]
    dof = n_rows - counts.size
    pure_error_sd = float(math.sqrt(np.dot(within, within) / dof)) if dof > 0 else 0.0
    s_tail = [float(v) for v in s[-(n_features + 2):]]
    diagnosis = {
        "shape": list(X.shape),
        "numerical_rank": info.numerical_rank,
        "rank_deficiency": info.rank_deficiency,
        "expected_rank_deficiency": n_features,
        "cause": (f"dummy-variable trap: each of the {n_features} features' one-hot blocks "
                  "sums to the intercept column, so X has a null space of that dimension"),
        "condition_number": info.kappa,
        "condition_number_effective": info.kappa_effective,
        "rank_cutoff": info.rank_cutoff,
        "smallest_singular_values": s_tail,
        "singular_value_ratio_at_gap": float(s[-n_features - 1] / max(s[-n_features], 1e-300)),
        "n_unique_rows": int(counts.size),
        "duplicated_row_fraction": float(1 - counts.size / n_rows),
        "max_duplicates": int(counts.max()),
        "pure_error_sd": pure_error_sd,
        "explanation": (
            f"the {n_features} smallest singular values are rounding noise "
            f"(~{s[-1] / s[0]:.1e} s_max); pinv with rcond={rcond:g} inverts them and "
            "puts weights of that inverse size along the null space. They cancel on "
            "training rows but not on a row with an unseen category (all-zero block), "
            "where exp(prediction) overflows. Duplicated rows with different labels "
            f"(pure-error sd {pure_error_sd:.3g}) bound how well any model can fit."),
    }

    fixes = []
    r = solve(X, y, solver="ridge", alpha=1.0)
    fixes.append(_summary("ridge", "ridge, alpha = 1 (QR of [X; I])", r.coef, X, y, X_score,
                          ref_fitted, solver="ridge", options={"alpha": 1.0}))
    fixes.append(_summary("drop_reference", "treatment coding (level 0 of each feature "
                          "dropped): full column rank, solve(auto)", ref.coef, X_ref, y,
                          X_ref_score, ref_fitted, numerical_rank=ref.diagnostics.numerical_rank,
                          rank_cutoff=ref.diagnostics.rank_cutoff, solver="auto"))
    lq = solve(data.X, y, solver="lsqr", damp=0.1)
    fixes.append(_summary("damped_lsqr", "LSQR on the sparse design, damp 0.1", lq.coef,
                          X, y, X_score, ref_fitted, solver="lsqr", options={"damp": 0.1}))
    first = np.zeros(counts.size, dtype=int)
    first[inverse[::-1]] = np.arange(n_rows)[::-1]
    Xu = X[first]
    w = np.sqrt(counts.astype(float))
    ag = solve(Xu * w[:, None], means * w, solver="auto")
    fixes.append(_summary("aggregate_duplicates", f"weighted least squares on the "
                          f"{counts.size} unique rows (weights = counts), solve(auto)",
                          ag.coef, X, y, X_score, ref_fitted,
                          numerical_rank=ag.diagnostics.numerical_rank,
                          rank_cutoff=ag.diagnostics.rank_cutoff, solver="auto"))
    hc = solve(X, y, solver="lstsq")
    fixes.append(_summary("honest_cutoff", "numpy.linalg.lstsq with its default cutoff "
                          "max(m, n) eps s_max (minimum-norm solution)", hc.coef, X, y,
                          X_score, ref_fitted, numerical_rank=hc.diagnostics.numerical_rank,
                          rank_cutoff=hc.diagnostics.rank_cutoff, solver="lstsq"))
    ok = [f.name for f in fixes if not f.blown_up]
    verdict = (
        f"unstable computation, not a wrong model: X is rank-deficient by "
        f"{info.rank_deficiency} (dummy-variable trap) and pinv with rcond={rcond:g} "
        f"gave weights up to {before.max_abs_coef:.2g} and {before.n_score_overflow} of "
        f"{n_score} scoring predictions overflowing exp; fixed by {', '.join(ok)} "
        f"(fitted values agree with the reference-level fit to "
        f"{max(f.max_fitted_diff for f in fixes if f.name != 'ridge'):.1g}).")
    scenario = {"n_rows": n_rows, "n_features": n_features, "n_levels": n_levels,
                "n_unique": int(counts.size), "rcond": rcond, "seed": seed,
                "n_score": n_score, "intercept": True, "encoding": "full one-hot"}
    return OneHotReport(scenario=scenario, before=before, diagnosis=diagnosis, fixes=fixes,
                        verdict=verdict)
