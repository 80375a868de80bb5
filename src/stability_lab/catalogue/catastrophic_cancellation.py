"""catastrophic_cancellation: standardizing features with the one-pass variance.

The data pipeline is this module's own small computation (the statistics, in the run's
format, by the one-pass or the two-pass formula); the standardized features are written
as a CSV into the work folder and trained on by the lab's logistic task.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stability_lab.catalogue.common import config_scenario, write_csv
from stability_lab.catalogue.registry import Repro, scenario
from stability_lab.remedies.rules import Recommendation
from stability_lab.spec import RunSpec
from stability_lab.trace import Trace

#: the pipeline's guard of the square root: sqrt(max(var, 0) + EPS), as batch
#: normalization adds eps
EPS = 1e-5
DTYPES = {"float64": np.float64, "float32": np.float32}


def cancellation_data() -> tuple[np.ndarray, np.ndarray]:
    """2000 samples of 5 features with means 1e4..5e4 and standard deviations 0.5..3."""
    rng = np.random.default_rng(5)
    n, d = 2000, 5
    Z = rng.standard_normal((n, d))
    offsets = np.array([2e4, 3e4, 5e4, 1e4, 4e4])
    X = offsets + Z * np.array([1.0, 2.0, 0.5, 1.0, 3.0])
    w = np.array([1.5, -2.0, 1.0, 0.5, -1.0])
    y = (rng.random(n) < 1 / (1 + np.exp(-Z @ w))).astype(np.float64)
    return X, y


def standardize(X: np.ndarray, precision: str, variance: str) -> tuple[np.ndarray, dict]:
    """The pipeline: (x - mean) / sqrt(max(var, 0) + EPS) in ``precision``, the variance
    one-pass (``naive``: E[x^2] - E[x]^2) or ``two-pass``; the features as float64 and
    the probe the cancellation detector reads (errors against float64 two-pass)."""
    from stability_lab import numerics
    from stability_lab.numerics import naive

    dt = DTYPES[precision]
    Xd = X.astype(dt)
    if variance == "naive":
        mean, var = naive.mean_and_variance(Xd, 0)
    else:
        mean, var = numerics.mean_and_variance(Xd, 0)
    ref_mean, ref_var = X.mean(0), X.var(0)
    rel = np.abs(var.astype(np.float64) - ref_var) / ref_var
    std = np.sqrt(np.maximum(var, dt(0)) + dt(EPS))
    features = ((Xd - mean.astype(dt)) / std.astype(dt)).astype(np.float64)
    probe = {"variance_rel_error": float(np.max(rel)),
             "negative_variances": int(np.sum(var < 0)),
             "max_mean_over_std": float(np.max(np.abs(ref_mean) / np.sqrt(ref_var))),
             "variance_method": "one-pass E[x^2]-E[x]^2" if variance == "naive"
             else "two-pass", "format": precision, "worst_column": int(np.argmax(rel))}
    return features, probe


def runner(ws: Path):
    """``run(config)``: standardize, write the features to ``ws``, train on them."""

    def run(cfg: dict) -> Trace:
        from stability_lab.run import engine

        X, y = cancellation_data()
        features, probe = standardize(X, cfg["precision"], cfg["variance"])
        path = write_csv(ws / f"standardized-{cfg['variance']}-{cfg['precision']}.csv",
                         features, y, [f"x{j}" for j in range(X.shape[1])])
        spec = RunSpec(data=path, target="target", precision=cfg["precision"], lr=cfg["lr"],
                       epochs=cfg["epochs"])
        trace = engine.run_specs([spec])[0]
        trace.probes["data"] = probe
        return trace

    return run


@scenario(
    "catastrophic_cancellation",
    "standardizing float32 features with |mean|/std ~ 1e5 by the one-pass variance E[x^2]-E[x]^2",
)
def reproduce(ws: Path) -> Repro:
    base = {"data": "generated offsets 1e4..5e4, std 0.5..3", "precision": "float32",
            "variance": "naive", "lr": 2.0, "epochs": 200}
    recs = [Recommendation("two_pass_variance", "compute the variance in two passes",
                           "the one-pass formula subtracts two numbers that agree to "
                           "~(mean/std)^2 = 1e10 relative; the two-pass form subtracts the "
                           "mean first", {"variance": "two-pass"}, (), {})]
    return config_scenario("catastrophic_cancellation", runner(ws), base, recs)
