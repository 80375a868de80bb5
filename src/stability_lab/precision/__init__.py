"""Number formats: their limits, as data, without importing torch.

A run's ``precision`` names one of these formats. The numbers are IEEE 754 (binary64,
binary32, binary16), Google's bfloat16, and the OCP 8-bit formats E4M3 (finite-only,
max 448) and E5M2 (IEEE-like, max 57344) used for emulated fp8.

``eps`` is the spacing of the format at 1 (2**-mantissa_bits); the unit roundoff is
``eps / 2``. ``tiny`` is the smallest positive normal, ``subnormal`` the smallest
positive subnormal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    name: str
    mantissa_bits: int  # explicit fraction bits
    max: float
    tiny: float
    subnormal: float
    torch_name: str

    @property
    def eps(self) -> float:
        return 2.0 ** -self.mantissa_bits

    @property
    def unit_roundoff(self) -> float:
        return self.eps / 2

    @property
    def digits(self) -> float:
        """Decimal digits carried: -log10(unit roundoff)."""
        return -math.log10(self.unit_roundoff)

    def headroom_log2(self, absmax: float) -> float:
        """Powers of two between ``absmax`` and the format's largest finite value."""
        if not math.isfinite(absmax):
            return -math.inf
        if absmax <= 0:
            return math.inf
        return math.log2(self.max / absmax)

    def torch_dtype(self):
        import torch

        return getattr(torch, self.torch_name)


FORMATS = {
    f.name: f
    for f in (
        Format("float64", 52, 1.7976931348623157e308, 2.2250738585072014e-308, 5e-324, "float64"),
        Format("float32", 23, 3.4028234663852886e38, 1.1754943508222875e-38,
               1.401298464324817e-45, "float32"),
        Format("bfloat16", 7, 3.3895313892515355e38, 1.1754943508222875e-38,
               9.183549615799121e-41, "bfloat16"),
        Format("float16", 10, 65504.0, 6.103515625e-05, 5.960464477539063e-08, "float16"),
        Format("fp8-e4m3", 3, 448.0, 2.0 ** -6, 2.0 ** -9, "float8_e4m3fn"),
        Format("fp8-e5m2", 2, 57344.0, 2.0 ** -14, 2.0 ** -16, "float8_e5m2"),
    )
}


# -- precision policies (the deep-net tasks' --policy) -------------------------------

#: fp8 delayed scaling: amax history length and margin (Transformer Engine's defaults)
AMAX_HISTORY = 16
FP8_MARGIN = 0


@dataclass(frozen=True)
class Policy:
    """A precision policy: where each number lives (see :mod:`stability_lab.precision.policies`
    for the arithmetic that applies it)."""

    name: str
    #: dtype of the parameters the forward sees and the optimizer updates
    param_dtype: str
    #: format GEMM inputs are rounded to ("fp8" means E4M3 forward / E5M2 gradients)
    compute: str
    #: format GEMM outputs are rounded to
    output: str
    #: fp32 master weights: parameters stay float32, casts happen inside the GEMMs
    master: bool = False
    #: promote the autocast fp32-list ops (softmax, log_softmax, layer_norm, losses) to fp32
    autocast: bool = False
    #: dynamic loss scaling
    loss_scaling: bool = False
    #: relative cost on the hardware the policy targets (bytes moved per parameter and
    #: activation, tensor-core throughput): used to pick "the cheapest policy within
    #: tolerance". Lower is cheaper. Pure 16-bit formats halve memory and bandwidth
    #: against mixed ones (which keep fp32 master weights); fp8 GEMMs run at twice
    #: 16-bit speed.
    cost: float = 4.0

    @property
    def dtype(self):
        import torch

        return getattr(torch, self.param_dtype)

    @property
    def emulated(self) -> bool:
        return self.compute not in ("float32", "float64")

    @property
    def act_format(self) -> Format:
        """Format activations are held in (headroom and underflow are measured against it)."""
        if self.compute == "fp8":
            return FORMATS["fp8-e4m3"]
        return FORMATS[self.output]

    @property
    def grad_format(self) -> Format:
        if self.compute == "fp8":
            return FORMATS["fp8-e5m2"]
        return FORMATS[self.output]

    def semantics(self) -> str:
        if not self.emulated:
            return f"native {self.param_dtype} (parameters, data and arithmetic)"
        if self.compute == "fp8":
            return ("fp8 GEMMs emulated: inputs E4M3 (forward) / E5M2 (gradients) with per-tensor "
                    f"delayed scaling (amax history {AMAX_HISTORY}), float32 accumulation and "
                    "output; float32 master weights and non-GEMM ops")
        where = ("float32 master weights, autocast op lists" if self.master
                 else f"{self.param_dtype} parameters and elementwise ops")
        return (f"{self.compute} GEMMs with tensor-core semantics ({self.compute} inputs, float32 "
                f"accumulation, one rounding to {self.output}); {where}"
                + ("; dynamic loss scaling" if self.loss_scaling else ""))


#: every precision policy of the deep-net tasks, in the order sweeps and messages list them
_TABLE = {p.name: p for p in (
    Policy("float64", "float64", "float64", "float64", cost=8.0),
    Policy("float32", "float32", "float32", "float32", cost=4.0),
    Policy("mixed-bf16", "float32", "bfloat16", "bfloat16", master=True, autocast=True,
           cost=2.5),
    Policy("mixed-fp16", "float32", "float16", "float16", master=True, autocast=True,
           loss_scaling=True, cost=2.5),
    Policy("mixed-fp16-noscale", "float32", "float16", "float16", master=True,
           autocast=True, cost=2.5),
    Policy("bfloat16", "bfloat16", "bfloat16", "bfloat16", cost=2.0),
    Policy("float16", "float16", "float16", "float16", cost=2.0),
    Policy("fp8", "float32", "fp8", "float32", master=True, cost=1.5),
)}
POLICIES = tuple(_TABLE)
POLICY_COST = {name: p.cost for name, p in _TABLE.items()}


def get_policy(name: str | None) -> Policy:
    if name not in _TABLE:
        from stability_lab.errors import UsageError

        raise UsageError(f"Unknown policy {name!r}; expected one of: {', '.join(POLICIES)}.")
    return _TABLE[name]
