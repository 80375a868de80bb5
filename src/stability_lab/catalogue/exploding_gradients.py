"""exploding_gradients: a deep tanh mlp initialized too large for its depth.

The lab's ``mlp`` with 8 tanh layers of 64 at ``init_scale`` 6 (weights 6x Xavier's),
momentum SGD at lr 0.02, attribution every 5 steps. At that scale every tanh layer is
saturated: its outputs stay bounded while backpropagation multiplies the gradient by
a gain above 1 per layer (the chaotic phase of mean-field theory), so the first
layer's gradient norm is over 100x the output layer's at step 1 and the network never
learns (chance level). The lab's ``depth_exploding_gradients`` rule divides the init
scale by the measured factor per layer.
"""

from __future__ import annotations

from pathlib import Path

from stability_lab.catalogue.common import spec_scenario
from stability_lab.catalogue.registry import Repro, scenario
from stability_lab.spec import RunSpec


@scenario(
    "exploding_gradients",
    "a digits mlp of 8 tanh layers initialized at 6x Xavier: the gradient norm grows "
    "1.8x per layer toward the input",
)
def reproduce(ws: Path) -> Repro:
    base = RunSpec(task="mlp", data="digits", policy="float32", lr=0.02, epochs=60).replace(
        depth=8, activation="tanh", init_scale=6.0, attribute_every=5)
    return spec_scenario("exploding_gradients", base, [])
