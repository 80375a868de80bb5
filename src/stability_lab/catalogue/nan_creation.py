"""nan_creation: the textbook sigmoid-then-log loss, whose log(1 - p) meets p rounded to 1."""

from __future__ import annotations

from pathlib import Path

from stability_lab.catalogue.common import spec_scenario
from stability_lab.catalogue.registry import Repro, scenario
from stability_lab.spec import RunSpec


@scenario(
    "nan_creation",
    "naive sigmoid-then-log loss in float32: log(1 - p) with p rounded to 1 gives inf, "
    "its gradient NaN",
)
def reproduce(ws: Path) -> Repro:
    base = RunSpec(precision="float32", scale="standardized", lr=5.0, lam=0.01, loss="naive")
    return spec_scenario("nan_creation", base, [("loss", ["naive", "stable"])])
