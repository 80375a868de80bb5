"""nonfinite_created: the digits mlp on inputs of the scale of raw counts (1e5) in mixed
float16: the first layer's outputs pass 65504 at step 1.

The lab's ``mlp`` (3 ReLU layers of 64 with LayerNorm, momentum SGD at lr 0.1, full
batch) under policy ``mixed-fp16`` (float32 master weights, float16 GEMMs, dynamic loss
scaling) on the digits scaled to 1e5, the scale of raw counts or prices. ``fc0``'s
outputs pass float16's largest value in the forward pass, so the loss is NaN from step
1; the replay of the failing step names ``fc0`` as the module whose finite inputs gave a
non-finite output, and the LayerNorm and ReLU after it as the modules that passed it on.
The lab's ``use_bf16_range`` rule (policy ``mixed-bf16``: bfloat16 has float32's
exponent range) converges within the 120 steps; float32 is the same run's reference.
"""

from __future__ import annotations

from pathlib import Path

from stability_lab.catalogue.common import spec_scenario
from stability_lab.catalogue.registry import Repro, scenario
from stability_lab.spec import RunSpec

#: the mlp on digits scaled to 1e5 in mixed float16 (also loss_scale_collapse's run)
SCALED_DIGITS_MIXED_FP16 = RunSpec(task="mlp", data="digits", policy="mixed-fp16", lr=0.1,
                                   epochs=120, scale="100000").replace(norm="layernorm")


@scenario(
    "nonfinite_created",
    "the digits mlp on inputs scaled to 1e5 in mixed float16: its first layer's outputs "
    "pass 65504 at step 1",
)
def reproduce(ws: Path) -> Repro:
    return spec_scenario("nonfinite_created", SCALED_DIGITS_MIXED_FP16, [])
