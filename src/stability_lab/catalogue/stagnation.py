"""stagnation: bfloat16 weights whose updates fall below half an ulp.

Logistic regression on the standardized breast-cancer features in bfloat16 at lr 0.01
(0.017 of 2/L) with lambda 0.1: from about epoch 140 every weight is bit for bit
unchanged while the gradient norm is still 0.13 of its initial value. The lab's
``raise_lr`` rule (lr below a tenth of 2/L in a stagnated run) raises lr to half of
2/L, and the run converges in bfloat16; ``higher_precision`` (float32) only improves
it within the 300 epochs: at lr 0.01 float32 still moves too slowly to converge.
"""

from __future__ import annotations

from pathlib import Path

from stability_lab.catalogue.common import spec_scenario
from stability_lab.catalogue.registry import Repro, scenario
from stability_lab.spec import RunSpec


@scenario(
    "stagnation",
    "bfloat16 weights with a small lr: updates fall below half an ulp and training stops",
)
def reproduce(ws: Path) -> Repro:
    base = RunSpec(precision="bfloat16", scale="standardized", lr=0.01, lam=0.1, epochs=300)
    return spec_scenario("stagnation", base, [("precision", ["bfloat16", "float32"])])
