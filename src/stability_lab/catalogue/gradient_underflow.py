"""gradient_underflow: mixed fp16 without loss scaling, where dL/dz = (p - y)/n flushes to
zero in the fp16 backward.

The model is a user's logistic regression in torch (:func:`logistic_model`, the task
``stability_lab.catalogue.gradient_underflow:logistic_model``), trained by the lab's deep
loop under its precision policies: ``mixed-fp16-noscale`` (fp32 master weights, fp16
compute and gradients) against ``mixed-fp16`` (the same with dynamic loss scaling).
"""

from __future__ import annotations

from pathlib import Path

from stability_lab.catalogue.common import spec_scenario
from stability_lab.catalogue.registry import Repro, scenario
from stability_lab.spec import RunSpec

TASK = "stability_lab.catalogue.gradient_underflow:logistic_model"


def logistic_model():
    """A user model (``build()`` of :mod:`stability_lab.tasks.user`): logistic regression
    on 20000 generated samples of 10 features, one full batch, the fused log-loss."""
    import numpy as np
    import torch

    rng = np.random.default_rng(3)
    n, d = 20000, 10
    X = rng.standard_normal((n, d))
    w = rng.standard_normal(d) * 3
    y = (rng.random(n) < 1 / (1 + np.exp(-X @ w))).astype(np.float64)
    inputs = torch.tensor(X, dtype=torch.float32)
    targets = torch.tensor(y, dtype=torch.float32).reshape(-1, 1)
    return (torch.nn.Linear(d, 1), [(inputs, targets)],
            torch.nn.functional.binary_cross_entropy_with_logits)


def float64_policy(spec: RunSpec) -> RunSpec | None:
    """The matched float64 run of a run under a precision policy."""
    return spec.replace(policy="float64") if spec.policy != "float64" else None


@scenario(
    "gradient_underflow",
    "fp16 gradients without loss scaling (20000 samples): dL/dz = (p - y)/n flushes to zero",
)
def reproduce(ws: Path) -> Repro:
    base = RunSpec(task=TASK, policy="mixed-fp16-noscale", lr=4.0, epochs=60).replace(
        optimizer="sgd")
    return spec_scenario("gradient_underflow", base, [], reference=float64_policy)
