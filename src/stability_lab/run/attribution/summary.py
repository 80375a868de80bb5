"""The JSON-able attribution of a run: per-module summaries of the statistics the
:class:`~stability_lab.run.attribution.attributor.Attributor` measured, the non-finite
creators, and the headroom projections; what the deep-net signatures and the reports
read (``trace.extras['attribution']``), for runs of the engine and watched runs alike."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from stability_lab.formatting import round_sig
from stability_lab.run.attribution.attributor import Attributor
from stability_lab.run.attribution.headroom import headroom_projections


def _compact(values: np.ndarray, digits: int = 4) -> list[float | None]:
    out = []
    for v in values.tolist():
        out.append(round_sig(v, digits) if math.isfinite(v) else
                   (None if math.isnan(v) else v))
    return out


SERIES_KEYS = ("act_absmax", "act_headroom", "grad_absmax", "grad_headroom", "grad_norm",
               "update_ratio", "dead_frac")
MAX_SERIES_POINTS = 100


def attribution_summary(attributor: Attributor | None,
                        creators: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON-able attribution of a run: per-module summaries, creators, projections."""
    created = [e for e in creators if e["kind"] == "created"]
    out: dict[str, Any] = {"enabled": attributor is not None,
                           "every": attributor.every if attributor else 0,
                           "creators": created,
                           "passed": [e for e in creators if e["kind"] == "passed"][:20],
                           "events": len(creators)}
    if created:
        first = created[0]
        out["first_creator"] = {k: first[k] for k in ("step", "pass", "module", "detail")}
    if attributor is None or not attributor.steps:
        return out
    arrays = attributor.arrays()
    modules: dict[str, Any] = {}
    for name in attributor.order or list(arrays):
        if name in modules or name not in arrays:
            continue
        ser = arrays[name]
        d: dict[str, Any] = {"type": attributor.kinds.get(name, "")}

        def agg(key, how, ser=ser):
            v = ser.get(key)
            if v is None:
                return None
            f = v[np.isfinite(v)]
            if key.endswith("headroom") and v.size and np.isneginf(v).any():
                return -math.inf
            return float(how(f)) if f.size else None

        d["act_absmax_max"] = agg("act_absmax", np.max)
        d["act_headroom_min"] = agg("act_headroom", np.min)
        d["act_below_normal_max"] = agg("act_below_normal", np.max)
        d["act_zero_max"] = agg("act_zero", np.max)
        d["act_flush_max"] = agg("act_flush", np.max)
        d["grad_absmax_max"] = agg("grad_absmax", np.max)
        d["grad_headroom_min"] = agg("grad_headroom", np.min)
        d["grad_below_normal_max"] = agg("grad_below_normal", np.max)
        d["grad_flush_max"] = agg("grad_flush", np.max)
        d["grad_norm_last"] = agg("grad_norm", lambda f: f[-1])
        d["grad_norm_max"] = agg("grad_norm", np.max)
        d["update_ratio_median"] = agg("update_ratio", np.median)
        d["dead_frac_last"] = agg("dead_frac", lambda f: f[-1])
        modules[name] = {k: v for k, v in d.items() if v is not None}
    stride = max(1, math.ceil(len(attributor.steps) / MAX_SERIES_POINTS))
    series = {"steps": attributor.steps[::stride]}
    for name in modules:
        ser = arrays[name]
        series[name] = {k: _compact(ser[k][::stride]) for k in SERIES_KEYS if k in ser}
    out.update({
        "steps_measured": len(attributor.steps),
        "order": list(modules),
        "weighted_layers": attributor.weighted_layers(),
        "modules": modules,
        "projections": headroom_projections(attributor.steps, arrays),
        "series": series,
    })
    return out
