"""nondeterminism: chaotic gradient descent, where the summation order shows in the result.

The run is the lab's logistic task run four times on the same spec, with the rows in
another order and another thread count (this module's own small computation: task
``catalogue:nondeterminism``, re-run from its config by
:data:`~stability_lab.catalogue.registry.RUNNERS`); the first run's trace carries the
agreement of the four.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stability_lab.catalogue.common import catalogue_spec, config_scenario, lr_bound
from stability_lab.catalogue.registry import RUNNERS, Repro, scenario
from stability_lab.formatting import round_sig
from stability_lab.remedies.rules import Recommendation, safe_lr
from stability_lab.spec import RunSpec
from stability_lab.trace import Trace


def run(cfg: dict) -> Trace:
    """The spec of ``cfg`` run in the original row order and three permutations, on one
    and two threads; the first run's trace, with the four runs' agreement attached."""
    import dataclasses

    import torch

    from stability_lab.diagnosis.signatures import attach_determinism
    from stability_lab.run import engine
    from stability_lab.tasks.logistic import LogisticRegression, predicted_digits

    task = LogisticRegression()
    spec = RunSpec(precision=cfg["precision"], scale="standardized", lam=cfg["lam"],
                   lr=cfg["lr"], epochs=cfg["epochs"])
    prep = task.prepare(spec)
    traces = []
    old = torch.get_num_threads()
    try:
        for order, threads in ((0, 1), (1, 1), (2, 2), (3, 2)):
            torch.set_num_threads(threads)
            perm = np.random.default_rng(order).permutation(prep.X.shape[0]) if order else \
                np.arange(prep.X.shape[0])
            p2 = dataclasses.replace(prep, X=prep.X[perm], y64=prep.y64[perm])
            traces.append(engine.run_one(task, spec, p2))
    finally:
        torch.set_num_threads(old)
    first = traces[0]
    attach_determinism(traces, ["row order", "thread count (1, 2)"], predicted_digits(first))
    first.spec = catalogue_spec("nondeterminism", cfg)
    return first


RUNNERS["nondeterminism"] = run


@scenario(
    "nondeterminism",
    "float32 full-batch GD at 10x 2/L: permuting the rows (a different summation order) "
    "changes the result in the first digit",
)
def reproduce(ws: Path) -> Repro:
    B = lr_bound(RunSpec(scale="standardized", lam=0.1))
    base = {"data": "breast_cancer standardized", "precision": "float32", "lam": 0.1,
            "lr": round_sig(10 * B), "epochs": 200}
    recs = [Recommendation("lower_lr", f"lower lr to {safe_lr(B):g}",
                           f"lr {base['lr']:g} is {base['lr'] / B:.3g}x 2/L = {B:.3g}",
                           {"lr": safe_lr(B)}, (), {"lr_bound": B})]
    return config_scenario("nondeterminism", run, base, recs)
