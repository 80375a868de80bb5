"""attention_logit_growth: q.k of a transformer block grows toward float16's max.

The lab's ``attention`` task (one block of width 32, two heads, sequences of 16 tokens
to reverse) under Adam at lr 0.3 in ``mixed-fp16``, without qk-layernorm: from about 160
at step 1 the largest attention logit grows 80x in 14 steps, to 2.3 powers of two below
65504; three steps later the score GEMM overflows and the loss is NaN (``stability-lab
run --task attention`` shows that run to its end). The scenario stops at step 14, while
the run has not failed yet: the finding is the warning a user gets before the NaN. The
lab's ``qk_layernorm`` rule layer-normalizes queries and keys, which bounds |q.k| by
the LayerNorm gains.
"""

from __future__ import annotations

from pathlib import Path

from stability_lab.catalogue.common import spec_scenario
from stability_lab.catalogue.registry import Repro, scenario
from stability_lab.spec import RunSpec

#: the attention block that overflows float16 at step 17, stopped at step 14
GROWING_ATTENTION = RunSpec(task="attention", data="digits", policy="mixed-fp16", lr=0.3,
                            epochs=14).replace(qk_layernorm=False)


@scenario(
    "attention_logit_growth",
    "a transformer block under Adam at lr 0.3 in mixed float16: q.k grows 80x in 14 "
    "steps, toward float16's max",
)
def reproduce(ws: Path) -> Repro:
    return spec_scenario("attention_logit_growth", GROWING_ATTENTION, [])
