"""Warnings before the overflow: headroom that falls steadily, projected to zero.

For each module the headroom series of the attribution steps (powers of two left to the
format's largest finite value) is fitted with a straight line against the step; a
headroom that falls steadily (r^2 >= 0.7, a fall of at least one power of two) is
reported with the step at which the line reaches zero.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares ``y = a + b x``: (a, b, r^2)."""
    if len(x) < 2:
        return math.nan, math.nan, math.nan
    b, a = np.polyfit(x, y, 1)
    pred = a + b * x
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - np.mean(y)) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0
    return float(a), float(b), r2


def headroom_projections(steps: list[int], arrays: dict[str, dict[str, np.ndarray]],
                         min_points: int = 4, min_r2: float = 0.7,
                         min_fall: float = 1.0) -> list[dict[str, Any]]:
    """Modules whose headroom falls steadily, with the step the fit reaches zero.

    The fit uses the attribution steps up to the first where the headroom is no longer
    finite and positive (the overflow itself is not part of the forecast).
    """
    x_all = np.asarray(steps, dtype=np.float64)
    out = []
    for name, ser in arrays.items():
        for kind in ("act", "grad"):
            h = ser.get(f"{kind}_headroom")
            if h is None:
                continue
            ok = np.isfinite(h) & (h > 0)
            stop = int(np.argmin(ok)) if not ok.all() else len(h)
            x, y = x_all[:stop], h[:stop]
            keep = np.isfinite(y)
            x, y = x[keep], y[keep]
            if len(x) < min_points:
                continue
            a, b, r2 = fit_line(x, y)
            fall = float(y[0] - y[-1])
            if not (b < 0 and r2 >= min_r2 and fall >= min_fall):
                continue
            projected = -a / b
            out.append({"module": name, "kind": "activation" if kind == "act" else "gradient",
                        "headroom_first": float(y[0]), "headroom_last": float(y[-1]),
                        "slope_per_step": b, "r2": r2, "fitted_steps": [int(x[0]), int(x[-1])],
                        "projected_step": int(math.ceil(projected)),
                        "overflowed_at": int(x_all[stop]) if stop < len(h) else None})
    out.sort(key=lambda d: d["projected_step"])
    return out
