"""vanishing_gradients: a sigmoid mlp, where each layer divides the gradient by 4.

The lab's ``mlp`` with 4 sigmoid layers of 64 (Xavier init), momentum SGD at lr 0.5,
attribution every 5 steps. The sigmoid's slope is at most 1/4, so backpropagation
shrinks the gradient about 4x per layer: at step 1 the first layer's gradient norm is
0.003 of the output layer's, and after 100 steps the loss is still at chance level.
The lab's ``depth_vanishing_gradients`` rule adds layer normalization after each hidden
layer (the model has none).
"""

from __future__ import annotations

from pathlib import Path

from stability_lab.catalogue.common import spec_scenario
from stability_lab.catalogue.registry import Repro, scenario
from stability_lab.spec import RunSpec


@scenario(
    "vanishing_gradients",
    "a digits mlp of 4 sigmoid layers: the gradient shrinks 4x per layer toward the input",
)
def reproduce(ws: Path) -> Repro:
    base = RunSpec(task="mlp", data="digits", policy="float32", lr=0.5, epochs=100).replace(
        depth=4, activation="sigmoid", attribute_every=5)
    return spec_scenario("vanishing_gradients", base, [])
