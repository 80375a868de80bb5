"""silent_digit_loss: a bfloat16 run that converges with about one digit right."""

from __future__ import annotations

from pathlib import Path

from stability_lab.catalogue.common import spec_scenario
from stability_lab.catalogue.registry import Repro, scenario
from stability_lab.diagnosis.record import RunResult
from stability_lab.remedies.rules import Recommendation
from stability_lab.spec import RunSpec


@scenario(
    "silent_digit_loss",
    "bfloat16 logistic regression that converges, with weights agreeing with float64 to ~1 digit",
)
def reproduce(ws: Path) -> Repro:
    base = RunSpec(precision="bfloat16", scale="standardized", lr=0.2, lam=0.1, epochs=600)

    def extra(first: RunResult) -> list[Recommendation]:
        return [Recommendation("higher_precision", "compute in float32",
                               "float32 carries 7.2 digits", {"precision": "float32"},
                               (first.run_id,), {})]

    return spec_scenario("silent_digit_loss", base, [], extra)
