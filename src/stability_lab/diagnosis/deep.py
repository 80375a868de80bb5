"""Deep-net findings: pure functions of a trace (no torch).

Each detector reads the per-step metrics and the attribution summary
(``trace.extras["attribution"]``) and returns :class:`Finding` s with the step of
onset and the numbers that prove them. Thresholds are module constants, named below.

- ``exploding_gradients`` / ``vanishing_gradients`` (by depth): at an attribution step
  the gradient norm of the first weighted layer is at least ``DEPTH_RATIO`` (100) times
  that of the last (exploding toward the input) or at most 1/100 of it (vanishing).
  Evidence: the per-layer norms and the mean factor per layer, ``ratio^(1/(L-1))``.
- ``dying_relu``: a ReLU layer with at least ``DEAD_FRACTION`` (50%) of its units
  zero for every example of the batch at the last attribution step.
- ``logit_growth`` (model output) and ``attention_logit_growth`` (metric
  ``attn_logit_max``): the absmax grew at least ``LOGIT_GROWTH`` (10x) over its initial
  value and either the run went non-finite, or it came within ``HEADROOM_BITS`` (6)
  powers of two of the format's max, or it exceeded ``SATURATED_LOGIT`` (1e3, where
  softmax is one-hot in any format: exp(-1000) = 0).
- ``loss_scale_collapse``: the dynamic loss scale fell to 1 or below, or more than
  ``SKIP_FRACTION`` (20%) of the steps were skipped.
- ``gradient_underflow``: on average at least ``UNDERFLOW_FRACTION`` (1%) of the
  gradient values were flushed to zero by the gradient format.
- ``nonfinite_created``: the module that created the first non-finite value (from the
  replay), with its pass.
- ``headroom_shrinking``: a module whose headroom falls steadily and is projected to
  run out within twice the steps run (slower declines are not findings).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from stability_lab.diagnosis.findings import Finding
from stability_lab.precision import FORMATS
from stability_lab.trace import Trace

DEPTH_RATIO = 100.0
DEAD_FRACTION = 0.5
LOGIT_GROWTH = 10.0
HEADROOM_BITS = 6.0
SATURATED_LOGIT = 1e3
SKIP_FRACTION = 0.2
UNDERFLOW_FRACTION = 0.01


def detect(trace: Trace) -> list[Finding]:
    """Every deep-net finding of one run, in a fixed order."""
    if trace.error:
        return []
    out: list[Finding] = []
    for det in (nonfinite_created, gradients_by_depth, dying_relu, logit_growth,
                loss_scale_collapse, gradient_underflow, headroom_shrinking):
        out.extend(det(trace))
    return out


def _attr(trace: Trace) -> dict[str, Any]:
    return trace.extras.get("attribution") or {}


def _series(trace: Trace, module: str, key: str) -> np.ndarray:
    ser = (_attr(trace).get("series") or {}).get(module) or {}
    return np.asarray([np.nan if v is None else v for v in ser.get(key, [])], dtype=np.float64)


def nonfinite_created(trace: Trace) -> list[Finding]:
    created = _attr(trace).get("creators") or []
    if not created:
        return []
    first = created[0]
    passers = [e["module"] for e in _attr(trace).get("passed", [])
               if e["step"] == first["step"] and e["pass"] == first["pass"]]
    return [Finding(
        "nonfinite_created", int(first["step"]),
        f"{first['module']} created the first non-finite value in the {first['pass']} pass at "
        f"step {first['step']} ({first['detail']})"
        + (f"; passed on by {', '.join(passers[:4])}" if passers else ""),
        {"module": first["module"], "pass": first["pass"], "step": first["step"],
         "detail": first["detail"], "passed_on_by": passers[:10],
         "all_creators": [{k: e[k] for k in ("step", "pass", "module")} for e in created[:10]]},
        "error", first["module"])]


def gradients_by_depth(trace: Trace) -> list[Finding]:
    attr = _attr(trace)
    layers = attr.get("weighted_layers") or []
    steps = (attr.get("series") or {}).get("steps") or []
    if len(layers) < 2 or not steps:
        return []
    norms = np.stack([_series(trace, name, "grad_norm") for name in layers])  # (L, T)
    if norms.shape[1] != len(steps):
        return []
    first, last = norms[0], norms[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = first / last
    out = []
    for sig, cond, word in (
        ("exploding_gradients", ratio >= DEPTH_RATIO, "grows"),
        ("vanishing_gradients", ratio <= 1.0 / DEPTH_RATIO, "shrinks"),
    ):
        cond = cond & np.isfinite(ratio) & (last > 0)
        if not cond.any():
            continue
        k = int(np.argmax(cond))
        r = float(ratio[k])
        factor = r ** (1.0 / (len(layers) - 1))
        out.append(Finding(
            sig, int(steps[k]),
            f"the gradient norm {word} {factor:.3g}x per layer from the output to the input: "
            f"{layers[0]} {first[k]:.3g} vs {layers[-1]} {last[k]:.3g} "
            f"({r:.3g}x over {len(layers)} layers) at step {steps[k]}",
            {"ratio_first_to_last": r, "factor_per_layer": factor, "layers": layers,
             "grad_norms": [float(v) for v in norms[:, k]], "step": int(steps[k])},
            "warning", layers[0]))
    return out


def dying_relu(trace: Trace) -> list[Finding]:
    attr = _attr(trace)
    steps = (attr.get("series") or {}).get("steps") or []
    out = []
    for name in attr.get("modules") or {}:
        dead = _series(trace, name, "dead_frac")
        if dead.size == 0 or not np.isfinite(dead).any():
            continue
        last = float(dead[np.isfinite(dead)][-1])
        if last < DEAD_FRACTION:
            continue
        k = int(np.argmax(np.nan_to_num(dead, nan=0.0) >= DEAD_FRACTION))
        out.append(Finding(
            "dying_relu", int(steps[k]) if k < len(steps) else None,
            f"{last:.0%} of the units of {name} output zero for every example "
            f"(from {float(dead[0]):.0%} at step {steps[0]})",
            {"dead_fraction_last": last, "dead_fraction_first": float(dead[0]),
             "module": name}, "warning", name))
    return out


def _growth(values: np.ndarray, fmt_max: float, name: str, sig: str,
            where: str) -> list[Finding]:
    if values.size < 2:
        return []
    finite = np.isfinite(values)
    head = values[finite][:5]
    if head.size == 0:
        return []
    v0 = float(np.median(head))
    if v0 <= 0:
        return []
    went_bad = bool((~finite).any())
    peak = float(np.max(values[finite]))
    near = peak >= fmt_max * 2.0 ** -HEADROOM_BITS
    grew = peak >= LOGIT_GROWTH * v0
    if not (grew and (went_bad or near or peak >= SATURATED_LOGIT)):
        return []
    onset = int(np.argmax(np.nan_to_num(values, nan=np.inf) >= LOGIT_GROWTH * v0)) + 1
    why = ("then went non-finite" if went_bad else
           f"within {math.log2(fmt_max / peak):.1f} powers of two of the format max {fmt_max:g}"
           if near else "softmax is one-hot at this size")
    return [Finding(
        sig, onset,
        f"{where} logits grew from {v0:.3g} to {peak:.3g} ({peak / v0:.3g}x), {why}",
        {"initial": v0, "peak": peak, "growth": peak / v0, "format_max": fmt_max,
         "went_nonfinite": went_bad, "metric": name},
        "error" if went_bad else "warning", where)]


def logit_growth(trace: Trace) -> list[Finding]:
    fmt_name = (trace.extras.get("format") or {}).get("outputs", "float32")
    fmt = FORMATS.get(fmt_name, FORMATS["float32"])
    out = _growth(trace.metric("max_abs_logit"), fmt.max, "max_abs_logit", "logit_growth",
                  "output")
    if "attn_logit_max" in trace.metrics:
        out += _growth(trace.metric("attn_logit_max"), fmt.max, "attn_logit_max",
                       "attention_logit_growth", "attention")
    return out


def loss_scale_collapse(trace: Trace) -> list[Finding]:
    if "loss_scale" not in trace.metrics:
        return []
    scale = trace.metric("loss_scale")
    skipped = trace.metric("skipped")
    n = len(scale)
    if n == 0:
        return []
    frac = float(np.nansum(skipped)) / n
    low = scale <= 1.0
    if not (low.any() or frac > SKIP_FRACTION):
        return []
    onset = int(np.argmax(low)) + 1 if low.any() else int(np.argmax(skipped > 0)) + 1
    loss = trace.metric("loss")
    forward = bool((~np.isfinite(loss[skipped > 0])).any()) if (skipped > 0).any() else False
    return [Finding(
        "loss_scale_collapse", onset,
        f"the loss scale fell from {scale[0]:.3g} to {np.nanmin(scale):.3g}; "
        f"{int(np.nansum(skipped))} of {n} steps skipped ({frac:.0%})"
        + ("; the loss itself overflowed in the forward pass, which no scale can fix"
           if forward else ""),
        {"initial_scale": float(scale[0]), "min_scale": float(np.nanmin(scale)),
         "final_scale": float(scale[-1]), "skipped": int(np.nansum(skipped)),
         "skipped_fraction": frac, "forward_overflow": forward},
        "error", None)]


def gradient_underflow(trace: Trace) -> list[Finding]:
    u = trace.metric("grad_underflow_frac")
    u = u[np.isfinite(u)]
    if u.size == 0:
        return []
    mean = float(np.mean(u))
    if mean < UNDERFLOW_FRACTION:
        return []
    onset = int(np.argmax(trace.metric("grad_underflow_frac") >= UNDERFLOW_FRACTION)) + 1
    fmt = (trace.extras.get("format") or {}).get("gradients", "")
    return [Finding(
        "gradient_underflow", onset,
        f"{mean:.1%} of gradient values flushed to zero in {fmt} on average "
        f"(max {float(np.max(u)):.1%})",
        {"mean_fraction": mean, "max_fraction": float(np.max(u)), "format": fmt},
        "warning", None)]


def headroom_shrinking(trace: Trace) -> list[Finding]:
    """A module's headroom projected to run out within twice the steps run.

    A slow decline projected beyond that (a float64 layer losing 3 of its 1020 powers
    of two) is no finding: it stays in the attribution summary (``--json``) only.
    """
    out = []
    n = trace.n_steps
    for p in (_attr(trace).get("projections") or [])[:5]:
        horizon = p["projected_step"]
        if not horizon <= 2 * max(n, 1):
            continue
        out.append(Finding(
            "headroom_shrinking", int(p["fitted_steps"][0]),
            f"{p['module']} {p['kind']} headroom fell from {p['headroom_first']:.1f} to "
            f"{p['headroom_last']:.1f} powers of two ({p['slope_per_step']:.3g}/step, "
            f"r^2 {p['r2']:.2f}); projected to run out at step {horizon}"
            + (f" (it overflowed at step {p['overflowed_at']})" if p.get("overflowed_at")
               else ""),
            dict(p), "warning", p["module"]))
    return out
