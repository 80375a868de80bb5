"""dying_relu: the digits mlp at lr 1, where large updates kill most ReLU units.

The run of :mod:`.collapse_to_chance` (the digits mlp in float64, momentum SGD at lr 1,
seed 8), 60 steps, with per-layer attribution every 5 steps: by step 11 most units of
every ReLU layer output zero for every example of the batch (2-14% at step 1); a dead
unit's gradient is exactly zero, so nothing brings it back, and the network settles at
chance level. The lab's ``dying_relu_lr`` rule lowers lr 10x.
"""

from __future__ import annotations

from pathlib import Path

from stability_lab.catalogue.collapse_to_chance import LR, SEED
from stability_lab.catalogue.common import spec_scenario
from stability_lab.catalogue.registry import Repro, scenario
from stability_lab.spec import RunSpec


@scenario(
    "dying_relu",
    "the digits mlp in float64 at lr 1 (60 steps): large updates push most ReLU units "
    "below zero for every example",
)
def reproduce(ws: Path) -> Repro:
    base = RunSpec(task="mlp", data="digits", policy="float64", epochs=60, lr=LR,
                   seed=SEED).replace(attribute_every=5)
    return spec_scenario("dying_relu", base, [])
