"""ill_conditioned_blowup: least squares by pinv with a cutoff below rounding.

Not a training run: one direct solve on a one-hot design, this module's own small
computation (task ``catalogue:ill_conditioned_blowup``, re-run from its config by
:data:`~stability_lab.catalogue.registry.RUNNERS`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stability_lab.catalogue.common import catalogue_trace, config_scenario
from stability_lab.catalogue.registry import RUNNERS, Repro, scenario
from stability_lab.remedies.rules import Recommendation
from stability_lab.trace import Trace

#: rows scored with one feature set to a category unseen in training
N_SCORE = 50


def onehot_design(intercept: bool = True, drop_reference: bool = False):
    """The one-hot scenario of :mod:`stability_lab.linalg.onehot`, small and dense: 1000 rows
    drawn from 40 distinct category combinations of 3 features x 5 levels."""
    from stability_lab.linalg.onehot import design_from_codes, make_onehot

    data = make_onehot(n_rows=1000, n_features=3, n_levels=5, n_unique=40, seed=11)
    X = design_from_codes(data.codes, data.n_levels, intercept=intercept,
                          drop_reference=drop_reference).toarray()
    return X, data.y, data.codes


def run(cfg: dict) -> Trace:
    """One solve: pinv with cutoff ``rcond`` (or ridge ``ridge``), with or without a
    reference level dropped per feature; probes the weights and predictions."""
    from stability_lab.linalg.onehot import design_from_codes

    X, y, codes = onehot_design(drop_reference=cfg["drop_reference"])
    lam = cfg.get("ridge", 0.0)
    if lam > 0:
        b = np.linalg.solve(X.T @ X + lam * len(y) * np.eye(X.shape[1]), X.T @ y)
    else:
        b = np.linalg.pinv(X, rcond=cfg["rcond"]) @ y
    Xr, _, _ = onehot_design(drop_reference=True)
    b_ref = np.linalg.lstsq(Xr, y, rcond=None)[0]
    resid = X @ b - y
    # a new row: intercept only (a category unseen in training for every feature)
    new_row = np.zeros(X.shape[1])
    new_row[0] = 1.0
    # 50 scoring rows: distinct training combinations (sorted, so the same rows whatever
    # the training rows' order) with one feature set to an unseen category (all-zero block)
    rng = np.random.default_rng([11, 1])
    combos = np.unique(codes, axis=0)
    score_codes = combos[rng.integers(0, len(combos), size=N_SCORE)].copy()
    score_codes[np.arange(N_SCORE), rng.integers(0, codes.shape[1], size=N_SCORE)] = -1
    X_score = design_from_codes(score_codes, 5, drop_reference=cfg["drop_reference"]).toarray()
    with np.errstate(all="ignore"):
        score_overflow = int(np.sum(~np.isfinite(np.exp(X_score @ b))))
    s = np.linalg.svd(X, compute_uv=False)
    probes = {"start": {"cond_X": float(s[0] / s[-1]) if s[-1] > 0 else float("inf")},
              "end": {"weight_norm": float(np.linalg.norm(b)),
                      "max_abs_coef": float(np.max(np.abs(b))),
                      "max_abs_prediction": float(abs(new_row @ b)),
                      "score_overflow": score_overflow, "score_rows": N_SCORE},
              "reference": {"weight_norm": float(np.linalg.norm(b_ref))},
              "design": {"rank": int(np.linalg.matrix_rank(X)), "columns": int(X.shape[1])}}
    metrics = {"loss": np.array([0.5 * np.mean(resid ** 2)]),
               "weight_norm": np.array([np.linalg.norm(b)]),
               "grad_norm": np.array([np.linalg.norm(X.T @ resid) / len(y)])}
    # one direct solve: the verdict reads the solve, the blow-up is a finding
    return catalogue_trace("ill_conditioned_blowup", {**cfg, "lam": lam}, metrics, b, probes,
                           {"solve": {"status": "ok", "converged": None}}, step_unit="solve")


RUNNERS["ill_conditioned_blowup"] = run


@scenario(
    "ill_conditioned_blowup",
    "least squares by pinv with a cutoff below rounding on one-hot data with an intercept "
    "and duplicated rows (dummy-variable trap)",
)
def reproduce(ws: Path) -> Repro:
    base = {"data": "one-hot 1000x16 (40 unique rows x25)", "precision": "float64",
            "rcond": 1e-18, "drop_reference": False, "ridge": 0.0}
    recs = [
        Recommendation("honest_cutoff", "use the default cutoff rcond = max(n, p) eps",
                       "singular values below max(n, p) eps s_max are rounding noise",
                       {"rcond": 1000 * 2.0 ** -52}, (), {}),
        Recommendation("drop_reference", "drop one reference level per feature",
                       "each feature's block of one-hot columns sums to the intercept column",
                       {"drop_reference": True}, (), {}),
        # the lab's add_l2 fix (the signature record's mitigation), on this solve: a ridge
        Recommendation("add_l2", "add L2 (a ridge penalty) lambda = 1e-6",
                       "a penalty makes the solution unique", {"ridge": 1e-6}, (), {}),
    ]
    return config_scenario("ill_conditioned_blowup", run, base, recs)
