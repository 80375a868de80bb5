"""rank_deficiency: a duplicated and a constant column leave the weights unidentified."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stability_lab.catalogue.common import spec_scenario, write_csv
from stability_lab.catalogue.registry import Repro, scenario
from stability_lab.diagnosis.record import RunResult
from stability_lab.remedies.rules import Recommendation
from stability_lab.spec import RunSpec
from stability_lab.trace import Trace


def design_probe(trace: Trace) -> None:
    """Rank of the design [X, 1] the run saw (for the rank_deficiency detector)."""
    from stability_lab.tasks import datasets

    spec = trace.spec
    if spec.task != "logistic_regression":
        return
    ds = datasets.load(spec.data, spec.target)
    X = datasets.scale_features(ds.X, spec.scale)
    A = np.hstack([X, np.ones((X.shape[0], 1))])
    const = [ds.feature_names[j] for j in range(X.shape[1]) if np.ptp(ds.X[:, j]) == 0]
    dup = [ds.feature_names[j] for j in range(X.shape[1])
           if any(np.array_equal(ds.X[:, j], ds.X[:, i]) for i in range(j))]
    trace.probes["design"] = {"rank": int(np.linalg.matrix_rank(A)), "columns": A.shape[1],
                              "constant_columns": const, "duplicate_columns": dup,
                              "null_space": "constant or duplicated columns with the intercept"}


@scenario(
    "rank_deficiency",
    "breast cancer with a duplicated column and a constant column, lambda = 0",
)
def reproduce(ws: Path) -> Repro:
    from stability_lab.tasks import datasets

    ds = datasets.load("breast_cancer")
    Xbad = np.column_stack([ds.X, ds.X[:, 0], np.full(ds.n, 7.0)])
    bad = write_csv(ws / "breast_cancer_dup_const.csv", Xbad, ds.y,
                    [*ds.feature_names, "mean radius (copy)", "constant"])
    good = write_csv(ws / "breast_cancer_clean.csv", ds.X, ds.y, ds.feature_names)
    base = RunSpec(data=bad, target="target", scale="standardized", lr=0.3)

    # the lab's add_l2 rule gives the penalty (one that pins the null space within the
    # run's steps); the scenario adds what the design probe knows: which columns to drop
    def extra(first: RunResult) -> list[Recommendation]:
        return [
            Recommendation("drop_columns", "drop the duplicated and constant columns",
                           "'mean radius (copy)' duplicates 'mean radius' and 'constant' is "
                           "constant: [X, 1] has rank 31 < 33 columns",
                           {"data": good}, (first.run_id,), {}),
        ]

    return spec_scenario("rank_deficiency", base, [], extra, post=design_probe)
