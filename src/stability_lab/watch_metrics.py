"""What the watcher measures of one step of the user's loop.

The numbers behind each row of a watched run's metrics (:data:`METRICS`, the watcher's
part of the one metric table, :mod:`stability_lab.metrics`): the outputs' largest
magnitude and whether they are finite (:func:`check_outputs`), the gradients' norm,
largest entry and non-finite count (:func:`grad_stats`), the norm of a list of tensors
(the engine's :func:`~stability_lab.run.transforms.global_norm`: weights, the update),
the headroom left in a number format (:func:`format_max`, :func:`headroom`), and the
step's row of metrics
(:func:`step_row`). :class:`~stability_lab.watcher.Watcher` calls them from its hooks;
they take tensors and numbers, never the watcher.
"""

from __future__ import annotations

import math
import time
from typing import Any

from stability_lab.metrics import WATCH, metric_names
from stability_lab.run.transforms import global_norm

#: what the watcher records per step (the one metric table: stability_lab.metrics)
METRICS = metric_names(WATCH)


def check_outputs(torch, outs: list, measure: bool) -> tuple[float | None, bool]:
    """The outputs' absmax (when ``measure``; NaN propagates) and whether any output is
    not finite."""
    out_amax = None
    if measure:  # the outputs' absmax (NaN propagates): the metric and the check
        amaxes = [float(o.abs().max()) for o in outs]
        out_amax = max(amaxes) if amaxes and not any(a != a for a in amaxes) \
            else math.nan
        bad_out = bool(amaxes) and not math.isfinite(out_amax)
    else:  # one pass, no temporary: a sum is finite when every value is (an
        # overflowing sum of finite values is confirmed by the exact check)
        bad_out = not all(math.isfinite(float(o.sum())) for o in outs)
        if bad_out:
            bad_out = not all(bool(torch.isfinite(o).all()) for o in outs)
    return out_amax, bad_out


def grad_stats(torch, params: list) -> tuple[float, float, int]:
    """The gradients' 2-norm, largest magnitude and count of non-finite entries (counted
    only when the norm is not finite)."""
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        both = torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float64)
                           + torch._foreach_norm(grads, math.inf,
                                                 dtype=torch.float64))
        k = len(grads)
        gn = float(torch.linalg.vector_norm(both[:k]))
        amax = float(both[k:].max())
    else:
        gn = amax = 0.0
    nbad = 0 if math.isfinite(gn) else int(sum(int((~torch.isfinite(g)).sum())
                                                 for g in grads))
    return gn, amax, nbad


def step_row(torch, params: list, micro: list[dict[str, Any]], pending: dict[str, Any],
             loss_v: float, skipped: bool, t0: float) -> dict[str, float]:
    """One recorded step's metrics: ``pending`` is what the optimizer hooks measured,
    ``micro`` the step's micro-batches, ``t0`` the ``perf_counter`` at its start."""
    p = pending
    with torch.no_grad():
        wn = global_norm(torch, [q.detach() for q in params])
    nbad_w = 0 if math.isfinite(wn) else int(sum(int((~torch.isfinite(q)).sum())
                                                for q in params))
    outs = [mb.get("out") for mb in micro if mb.get("out") is not None]
    amax = p.get("out_amax", math.nan)
    fmt_out = format_max(torch, outs[0].dtype) if outs else math.nan
    grad_fmt = format_max(torch, params[0].dtype) if params else math.nan
    gam = p.get("grad_absmax", math.nan)
    un = p.get("update_norm", 0.0 if skipped else math.nan)
    used_scale = micro[0].get("scale") if micro else None
    return {
        "loss": loss_v, "grad_norm": math.inf if skipped else p.get("grad_norm",
                                                                    math.nan),
        "update_norm": un, "weight_norm": wn,
        "update_ratio": un / wn if wn > 0 and math.isfinite(un) else math.nan,
        "nonfinite_weights": nbad_w,
        "nonfinite_grads": 0 if skipped else p.get("nonfinite_grads", 0),
        "overflowed_grads": p.get("overflowed_grads", 1 if skipped else 0),
        "max_abs_logit": amax,
        "logit_headroom": headroom(fmt_out, amax),
        "grad_absmax": gam, "grad_headroom": headroom(grad_fmt, gam),
        "loss_scale": used_scale if used_scale is not None else math.nan,
        "skipped": 1.0 if skipped else 0.0, "lr": p.get("lr", math.nan),
        "step_time": time.perf_counter() - t0,
    }


def format_max(torch, dtype) -> float:
    """The largest finite value of a floating-point dtype (NaN for other dtypes)."""
    try:
        return float(torch.finfo(dtype).max)
    except TypeError:
        return math.nan


def headroom(fmax: float, amax: float) -> float:
    """log2(fmax / absmax): powers of two left before the format overflows."""
    if not (amax > 0) or not math.isfinite(fmax):
        return math.nan if not amax == 0 else math.inf
    if not math.isfinite(amax):
        return -math.inf
    return math.log2(fmax / amax)
