"""overflow: float16 on raw features, where the gradient itself passes the format's max."""

from __future__ import annotations

from pathlib import Path

from stability_lab.catalogue.common import spec_scenario
from stability_lab.catalogue.registry import Repro, scenario
from stability_lab.spec import RunSpec


@scenario(
    "overflow",
    "float16 logistic regression on raw breast-cancer features: the gradient overflows to inf",
)
def reproduce(ws: Path) -> Repro:
    base = RunSpec(precision="float16", lr=0.2, lam=0.1)
    return spec_scenario("overflow", base, [("precision", ["float16", "float32"])])
