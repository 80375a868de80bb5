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

