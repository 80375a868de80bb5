"""saturation: a sigmoid classifier trained with squared error, whose wrong-side outputs
round to exactly 0 or 1 and get no gradient."""

from __future__ import annotations

from pathlib import Path

from stability_lab.catalogue.common import spec_scenario
from stability_lab.catalogue.registry import Repro, scenario
from stability_lab.diagnosis.record import RunResult
from stability_lab.remedies.rules import Recommendation
from stability_lab.spec import RunSpec


@scenario(
    "saturation",
    "a sigmoid classifier trained with squared error on raw features: wrong-side outputs "
    "saturate at exactly 0 or 1 and stop learning",
)
def reproduce(ws: Path) -> Repro:
    base = RunSpec(precision="float32", loss="mse")

    def extra(first: RunResult) -> list[Recommendation]:
        return [
            Recommendation("logloss", "train with the log-loss (BCE with logits)",
                           "its gradient p - y stays +-1 for saturated wrong-side samples",
                           {"loss": "stable"}, (first.run_id,), {}),
            Recommendation("scale_features", "standardize the features",
                           "logits start near 0, far from saturation",
                           {"scale": "standardized"}, (first.run_id,), {}),
        ]

    return spec_scenario("saturation", base, [], extra)
