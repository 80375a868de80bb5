"""loss_scale_collapse: a forward overflow that the dynamic loss scale cannot fix.

The run of :mod:`.nonfinite_created` (the digits mlp on inputs scaled to 1e5, mixed
float16 with dynamic loss scaling): the loss itself is non-finite at every step, so the
scaler halves the scale at every step, from 65536 to below 1 within 17 steps, and every
step is skipped. Scaling the loss cannot bring a forward value back into float16's
range; the lab's ``use_bf16_range`` rule (policy ``mixed-bf16``) can.
"""

from __future__ import annotations

from pathlib import Path

from stability_lab.catalogue.common import spec_scenario
from stability_lab.catalogue.nonfinite_created import SCALED_DIGITS_MIXED_FP16
from stability_lab.catalogue.registry import Repro, scenario


@scenario(
    "loss_scale_collapse",
    "the same mlp in mixed float16: the loss overflows at every step and the dynamic loss "
    "scale halves from 65536 to below 1",
)
def reproduce(ws: Path) -> Repro:
    return spec_scenario("loss_scale_collapse", SCALED_DIGITS_MIXED_FP16, [])
