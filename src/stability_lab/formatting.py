"""Presenting numbers: JSON-safe values and short text forms.

One home for the conversions every report needs, so that the store, the JSON
output, the tables and the recommendation texts write numbers the same way:

- :func:`jsonable`: plain JSON types; non-finite floats become ``"inf"``, ``"-inf"``,
  ``"nan"`` (JSON has no spelling for them); :func:`from_jsonable` undoes that;
- :func:`round_sig`: a number rounded to a few significant digits (recommended values);
- :func:`fmt_num`: a table cell with ``sig`` significant digits;
- :func:`sci`: the compact scientific form the brief prints (``2.4e7``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def jsonable(value: Any) -> Any:
    """Plain JSON types; non-finite floats become the strings 'inf', '-inf', 'nan'."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, (np.floating, float)):
        f = float(value)
        if math.isnan(f):
            return "nan"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return f
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def from_jsonable(value: Any) -> Any:
    """Undo :func:`jsonable`'s encoding of non-finite floats ('inf', '-inf', 'nan')."""
    if isinstance(value, dict):
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    if value in ("inf", "-inf", "nan"):
        return float(value)
    return value


def round_sig(x: float, digits: int = 2) -> float:
    """``x`` rounded to ``digits`` significant digits (as ``%g`` prints it), as a float."""
    return float(f"{x:.{digits}g}")


def fmt_num(x: Any, sig: int = 3) -> str:
    """A table cell: '-' for None, inf/nan spelled out, ``sig`` significant digits."""
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    return f"{x:.{sig}g}" if 1e-3 <= abs(x) < 1e5 else f"{x:.{sig - 1}e}"


def sci(x: float | None) -> str:
    """Compact scientific form, as the brief prints it: 2.4e7, 1.5e-06 -> 1.5e-6."""
    if x is None or not math.isfinite(x):
        return str(x)
    if 1e-3 <= abs(x) < 1e4:
        return f"{x:.2g}"
    mant, _, exp = f"{x:.1e}".partition("e")
    return f"{mant}e{int(exp)}"
