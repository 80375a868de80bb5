"""Sweep axes of the deep-net tasks (``mlp``, ``attention``, user models).

Torch-free on purpose: :mod:`stability_lab.params` imports this module so that the
CLI can parse and check ``--sweep policy`` or ``--sweep depth=2,8`` before any heavy
import. The semantics of every policy are in ``docs/deep.md`` and
:mod:`stability_lab.deep.policies`.
"""

from __future__ import annotations

from .errors import UsageError
from .params import (
    DEEP_TASKS,
    Axis,
    choice,
    int_at_least,
    nonnegative_float,
    positive_float,
    register_axis,
)

#: precision policies, cheapest first is *not* implied: see POLICY_COST
POLICIES = (
    "float64",
    "float32",
    "mixed-bf16",
    "mixed-fp16",
    "mixed-fp16-noscale",
    "bfloat16",
    "float16",
    "fp8",
)

#: relative cost of a policy on the hardware it targets (bytes moved per parameter and
#: activation, tensor-core throughput): used to pick "the cheapest policy within
#: tolerance". Lower is cheaper. Pure 16-bit formats halve memory and bandwidth against
#: mixed ones (which keep fp32 master weights); fp8 GEMMs run at twice 16-bit speed.
POLICY_COST = {
    "float64": 8.0,
    "float32": 4.0,
    "mixed-bf16": 2.5,
    "mixed-fp16": 2.5,
    "mixed-fp16-noscale": 2.5,
    "bfloat16": 2.0,
    "float16": 2.0,
    "fp8": 1.5,
}

ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid")
NORMS = ("none", "layernorm", "batchnorm")
OPTIMIZERS = ("sgd", "momentum", "adam")


def parse_policy(text: str) -> str:
    value = str(text).strip().lower()
    aliases = {"fp32": "float32", "fp64": "float64", "bf16": "bfloat16", "fp16": "float16",
               "amp-bf16": "mixed-bf16", "amp-fp16": "mixed-fp16", "fp8-e4m3": "fp8"}
    value = aliases.get(value, value)
    if value not in POLICIES:
        raise UsageError(
            f"Unknown policy {text!r}; expected one of: {', '.join(POLICIES)}."
        )
    return value


def parse_bool(name: str):
    def parse(text: str) -> bool:
        value = str(text).strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off", "none"):
            return False
        raise UsageError(f"The '{name}' value must be true or false. Got {text!r} instead.")

    return parse


def parse_attribute_every(text: str) -> int:
    value = str(text).strip().lower()
    if value in ("off", "none", "no"):
        return 0
    try:
        k = int(value, 10)
    except ValueError:
        raise UsageError(
            f"The 'attribute_every' value must be an integer >= 0 (0: off). Got {text!r} "
            "instead; pass e.g. --attribute 10."
        ) from None
    if k < 0:
        raise UsageError(
            f"The 'attribute_every' value must be an integer >= 0 (0: off). Got {text!r} instead."
        )
    return k


for _axis in (
    Axis("policy", "policy", parse_policy, POLICIES,
         "precision policy of a deep-net run: pure float32/bfloat16/float16, mixed "
         "(fp32 master weights) bf16/fp16 with or without loss scaling, emulated fp8",
         tasks=DEEP_TASKS),
    Axis("depth", "depth", int_at_least("depth", 1), ("2", "4", "8"),
         "number of hidden layers (mlp) or of transformer blocks (attention)",
         tasks=DEEP_TASKS, param=True),
    Axis("width", "width", int_at_least("width", 2), ("32", "64", "128"),
         "hidden width (mlp) or model dimension (attention)", tasks=DEEP_TASKS, param=True),
    Axis("activation", "activation", choice("activation", ACTIVATIONS), ACTIVATIONS,
         "hidden activation of the mlp", tasks=DEEP_TASKS, param=True),
    Axis("init_scale", "init_scale", positive_float("init_scale"), ("0.1", "1", "3"),
         "multiplier on the variance-preserving init std (1: He/Xavier)",
         tasks=DEEP_TASKS, param=True),
    Axis("norm", "norm", choice("norm", NORMS), NORMS,
         "normalization after each hidden linear layer (mlp)", tasks=DEEP_TASKS, param=True),
    Axis("optimizer", "optimizer", choice("optimizer", OPTIMIZERS), OPTIMIZERS,
         "optimizer: sgd, momentum (SGD, 0.9) or adam; default momentum for mlp and user "
         "models, adam for attention", tasks=DEEP_TASKS, param=True),
    Axis("seq_len", "seq_len", int_at_least("seq_len", 2), ("8", "16", "32"),
         "sequence length of the attention task", tasks=DEEP_TASKS, param=True),
    Axis("heads", "heads", int_at_least("heads", 1), ("1", "2", "4"),
         "attention heads per block (must divide width)", tasks=DEEP_TASKS, param=True),
    Axis("qk_layernorm", "qk_layernorm", parse_bool("qk_layernorm"), ("false", "true"),
         "layer-normalize queries and keys before their product (Wortsman et al. 2023)",
         tasks=DEEP_TASKS, param=True),
    Axis("z_loss", "z_loss", nonnegative_float("z_loss"), ("0", "1e-4"),
         "coefficient of the auxiliary z-loss z * log(Z)^2 on the output logits",
         tasks=DEEP_TASKS, param=True),
    Axis("attribute_every", "attribute_every", parse_attribute_every, ("0", "10", "1"),
         "per-layer attribution every K steps (0: off); non-finite creators are named "
         "whatever K is", tasks=DEEP_TASKS, param=True),
):
    register_axis(_axis)
