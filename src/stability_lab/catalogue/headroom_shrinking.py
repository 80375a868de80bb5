"""headroom_shrinking: a module's headroom to float16's max falls step after step.

The transformer block of :mod:`.attention_logit_growth` (Adam at lr 0.3, mixed float16,
no qk-layernorm, 14 steps), with per-layer attribution at every step: the headroom of
the attention module's outputs (powers of two between their largest value and 65504)
falls by about 0.8 per step, and the fit projects it to run out at step 16 (the run
left alone overflows at step 17). The lab's ``use_bf16_range`` rule computes in
bfloat16 autocast (policy ``mixed-bf16``), whose float32 range leaves more than 100
powers of two of headroom.
"""

from __future__ import annotations

from pathlib import Path

from stability_lab.catalogue.attention_logit_growth import GROWING_ATTENTION
from stability_lab.catalogue.common import spec_scenario
from stability_lab.catalogue.registry import Repro, scenario


@scenario(
    "headroom_shrinking",
    "the same transformer block with per-layer attribution: the attention module's "
    "headroom to 65504 falls 0.8 powers of two per step",
)
def reproduce(ws: Path) -> Repro:
    return spec_scenario("headroom_shrinking", GROWING_ATTENTION.replace(attribute_every=1),
                         [])
