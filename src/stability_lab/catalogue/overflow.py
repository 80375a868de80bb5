"""overflow: float16 on raw features, where the gradient itself passes the format's max."""

from __future__ import annotations

from pathlib import Path

from stability_lab.catalogue.common import spec_scenario
from stability_lab.catalogue.registry import Repro, scenario
from stability_lab.spec import RunSpec


@scenario(
    "overflow",
    "float16 logistic regression on raw breast-cancer features: the gradient overflows to inf",
    "loss=inf (verdict overflow) within the first epochs; max|logit| or a gradient sum "
    "passes 65504",
    "raw features up to ~4e3 make X^T (p - y) sum past the float16 maximum 65504; the "
    "step size cannot help: the overflow is in the gradient itself",
    ("standardize the features (scale=standardized): cheapest, keeps float16",
     "compute in float32 (or keep fp32 master weights)",
     "lowering lr does not help: the inf is in the gradient, not the step"),
)
def reproduce(ws: Path) -> Repro:
    base = RunSpec(precision="float16", lr=0.2, lam=0.1)
    return spec_scenario("overflow", base, [("precision", ["float16", "float32"])])
