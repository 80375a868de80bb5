"""Deep-net signatures: per-layer and per-module findings of a deep-net model's trace.

They apply to deep-net traces (the lab's training loop and the watcher), reading the
per-step metrics and the attribution summary (``extras['attribution']``). Thresholds
are the module constants below.

- ``nonfinite_created``: the module that created the first non-finite value (from the
  replay of the failing step), with its pass and the modules that passed it on.
- ``exploding_gradients`` / ``vanishing_gradients``: at an attribution step the gradient
  norm of the first weighted layer is at least ``DEPTH_RATIO`` (100) times that of the
  last (exploding toward the input) or at most 1/100 of it (vanishing). Evidence: the
  per-layer norms and the mean factor per layer, ``ratio^(1/(L-1))``.
- ``dying_relu``: a ReLU layer with at least ``DEAD_FRACTION`` (50%) of its units zero
  for every example of the batch at the last attribution step.
- ``logit_growth`` (model output, metric ``max_abs_logit``) and
  ``attention_logit_growth`` (metric ``attn_logit_max``): the absmax grew at least
  ``LOGIT_GROWTH_FACTOR`` (10x) over its initial value and either the run went
  non-finite, or it came within ``HEADROOM_BITS`` (6) powers of two of the format's max,
  or it exceeded ``SATURATED_LOGIT`` (1e3, where softmax is one-hot in any format:
  exp(-1000) = 0).
- ``loss_scale_collapse``: the dynamic loss scale fell to 1 or below, or more than
  ``SKIP_FRACTION`` (20%) of the steps were skipped.
- ``headroom_shrinking``: a module whose headroom falls steadily and is projected to run
  out within twice the steps run (slower declines stay in the attribution summary).

Gradient underflow in a deep net is the ``gradient_underflow`` signature of every trace
(:mod:`.rounding`): the loop measures ``grad_underflow_frac`` like any other task.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from stability_lab.diagnosis.findings import Finding
from stability_lab.diagnosis.signatures.base import Playbook, Signature
from stability_lab.diagnosis.signatures.common import example_trace, healthy_loss
from stability_lab.precision import FORMATS
from stability_lab.trace import Trace

DEPTH_RATIO = 100.0
DEAD_FRACTION = 0.5
LOGIT_GROWTH_FACTOR = 10.0
HEADROOM_BITS = 6.0
SATURATED_LOGIT = 1e3
SKIP_FRACTION = 0.2

def _attr(trace: Trace) -> dict[str, Any]:
    return trace.extras.get("attribution") or {}


def _series(trace: Trace, module: str, key: str) -> np.ndarray:
    ser = (_attr(trace).get("series") or {}).get(module) or {}
    return np.asarray([np.nan if v is None else v for v in ser.get(key, [])], dtype=np.float64)


def detect_nonfinite_created(trace: Trace) -> list[Finding]:
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


def _gradients_by_depth(trace: Trace, signature: str) -> list[Finding]:
    """``exploding_gradients`` (first/last layer gradient norm >= DEPTH_RATIO) or
    ``vanishing_gradients`` (<= 1/DEPTH_RATIO), at the first attribution step it holds."""
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
    if signature == "exploding_gradients":
        cond, word = ratio >= DEPTH_RATIO, "grows"
    else:
        cond, word = ratio <= 1.0 / DEPTH_RATIO, "shrinks"
    cond = cond & np.isfinite(ratio) & (last > 0)
    if not cond.any():
        return []
    k = int(np.argmax(cond))
    r = float(ratio[k])
    factor = r ** (1.0 / (len(layers) - 1))
    return [Finding(
        signature, int(steps[k]),
        f"the gradient norm {word} {factor:.3g}x per layer from the output to the input: "
        f"{layers[0]} {first[k]:.3g} vs {layers[-1]} {last[k]:.3g} "
        f"({r:.3g}x over {len(layers)} layers) at step {steps[k]}",
        {"ratio_first_to_last": r, "factor_per_layer": factor, "layers": layers,
         "grad_norms": [float(v) for v in norms[:, k]], "step": int(steps[k])},
        "warning", layers[0])]


def detect_exploding_gradients(trace: Trace) -> list[Finding]:
    return _gradients_by_depth(trace, "exploding_gradients")


def detect_vanishing_gradients(trace: Trace) -> list[Finding]:
    return _gradients_by_depth(trace, "vanishing_gradients")


def detect_dying_relu(trace: Trace) -> list[Finding]:
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
    grown = LOGIT_GROWTH_FACTOR * v0
    if not (peak >= grown and (went_bad or near or peak >= SATURATED_LOGIT)):
        return []
    onset = int(np.argmax(np.nan_to_num(values, nan=np.inf) >= grown)) + 1
    why = ("then went non-finite" if went_bad else
           f"within {math.log2(fmt_max / peak):.1f} powers of two of the format max {fmt_max:g}"
           if near else "softmax is one-hot at this size")
    return [Finding(
        sig, onset,
        f"{where} logits grew from {v0:.3g} to {peak:.3g} ({peak / v0:.3g}x), {why}",
        {"initial": v0, "peak": peak, "growth": peak / v0, "format_max": fmt_max,
         "went_nonfinite": went_bad, "metric": name},
        "error" if went_bad else "warning", where)]


def _output_format_max(trace: Trace) -> float:
    fmt_name = (trace.extras.get("format") or {}).get("outputs", "float32")
    return FORMATS.get(fmt_name, FORMATS["float32"]).max


def detect_logit_growth(trace: Trace) -> list[Finding]:
    return _growth(trace.metric("max_abs_logit"), _output_format_max(trace), "max_abs_logit",
                   "logit_growth", "output")


def detect_attention_logit_growth(trace: Trace) -> list[Finding]:
    if "attn_logit_max" not in trace.metrics:
        return []
    return _growth(trace.metric("attn_logit_max"), _output_format_max(trace), "attn_logit_max",
                   "attention_logit_growth", "attention")


def detect_loss_scale_collapse(trace: Trace) -> list[Finding]:
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


def detect_headroom_shrinking(trace: Trace) -> list[Finding]:
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


# -- hand-made traces ----------------------------------------------------------------------
def _deep_trace(n: int = 40, attribution: dict | None = None, outputs: str = "float16",
                **metrics) -> Trace:
    """A mixed-fp16 mlp's trace of ``n`` steps with a healthy loss unless one is given."""
    metrics.setdefault("loss", healthy_loss(n))
    return example_trace(task="mlp", policy="mixed-fp16", precision="float32", step_unit="step",
                         extras={"attribution": attribution or {},
                                 "format": {"name": "float32", "outputs": outputs}},
                         **metrics)


def _layer_norms(norms_by_layer: list[list[float]], dead: list[float] | None = None) -> dict:
    """An attribution summary with these gradient norms per layer (one value per
    attribution step, every 10 steps from step 1) and a ReLU layer's dead fractions."""
    names = [f"fc{i}" for i in range(len(norms_by_layer))]
    series: dict[str, Any] = {"steps": list(range(1, 1 + 10 * len(norms_by_layer[0]), 10))}
    series.update({name: {"grad_norm": v} for name, v in zip(names, norms_by_layer)})
    modules = {name: {"type": "Linear"} for name in names}
    if dead is not None:
        series["act0"] = {"dead_frac": dead}
        modules["act0"] = {"type": "ReLU"}
    return {"weighted_layers": names, "series": series, "modules": modules}


def _third_layer_overflows_at_step_3() -> Trace:
    creator = {"step": 3, "pass": "forward", "module": "l3", "kind": "created",
               "detail": "finite inputs, non-finite output"}
    passer = {"step": 3, "pass": "forward", "module": "out", "kind": "passed",
              "detail": "non-finite input"}
    return _deep_trace(3, {"creators": [creator], "passed": [passer]},
                       loss=[2.3, 2.1, math.nan])


def _gradients_256x_larger_at_the_input() -> Trace:
    return _deep_trace(attribution=_layer_norms([[1.0, 4.0 ** (4 - i)] for i in range(5)]))


def _gradients_1e4x_smaller_at_the_input() -> Trace:
    return _deep_trace(attribution=_layer_norms([[10.0 ** (i - 4)] for i in range(5)]))


def _even_gradients_and_live_units() -> Trace:
    return _deep_trace(attribution=_layer_norms([[1.0, 2.0, 1.5, 1.2]] * 5,
                                                dead=[0.05, 0.1, 0.1, 0.1]))


def _relu_units_dying_from_step_21() -> Trace:
    return _deep_trace(attribution=_layer_norms([[1.0] * 4], dead=[0.05, 0.2, 0.6, 0.8]))


_GROWING_LOGITS = [1.0, 1.1, 2.0, 20.0, 300.0, 2000.0, math.inf]


def _output_logits_overflow_float16() -> Trace:
    return _deep_trace(7, max_abs_logit=_GROWING_LOGITS)


def _attention_logits_overflow_float16() -> Trace:
    return _deep_trace(7, max_abs_logit=[5.0] * 7, attn_logit_max=_GROWING_LOGITS)


def _bounded_logits() -> Trace:
    return _deep_trace(7, max_abs_logit=[5.0] * 7, attn_logit_max=[3.0] * 7)


def _loss_scale_halved_to_1_by_step_17() -> Trace:
    n = 30
    return _deep_trace(n, loss=[1.0] * 5 + [math.inf] * (n - 5),
                       loss_scale=[2.0 ** (16 - i) for i in range(n)], skipped=[1.0] * n)


def _loss_scale_steady() -> Trace:
    return _deep_trace(30, loss_scale=[65536.0] * 30, skipped=[0.0] * 30)


def _projection(projected_step: int) -> dict:
    return {"projections": [{"module": "fc0", "kind": "act", "headroom_first": 10.0,
                             "headroom_last": 2.0, "slope_per_step": -0.2, "r2": 0.99,
                             "projected_step": projected_step, "fitted_steps": [1, 40]}]}


def _headroom_gone_by_step_50() -> Trace:
    return _deep_trace(40, _projection(50))


def _headroom_lasts_1e5_steps() -> Trace:
    return _deep_trace(40, _projection(100000))


NONFINITE_CREATED = Signature(
    name="nonfinite_created",
    description="a module turned finite inputs into inf/NaN (named by replaying the step)",
    detect=detect_nonfinite_created,
    applies_to="deep_net",
    playbook=Playbook(
        symptom="the loss or the gradients turn inf/NaN at one step; the lab names the module "
                "whose finite inputs gave a non-finite output (forward) or whose finite "
                "output gradient gave a non-finite input gradient (backward)",
        cause="a value in that module passed the format's largest finite number (65504 in "
              "float16, 448 in fp8 E4M3), or an invalid operation (0*inf, inf-inf) ran "
              "there; the modules after it only pass the non-finite value on",
        fixes=("compute in bfloat16 autocast (policy mixed-bf16): float32's range",
               "bound the values that module produces (normalize its input, lower lr)"),
    ),
    mitigations=("use_bf16_range",),
    scenario="nonfinite_created",
    fires_on=_third_layer_overflows_at_step_3,
    silent_on=_even_gradients_and_live_units,
)

EXPLODING_GRADIENTS = Signature(
    name="exploding_gradients",
    description="the gradient norm grows layer by layer from the output to the input",
    detect=detect_exploding_gradients,
    applies_to="deep_net",
    playbook=Playbook(
        symptom="the gradient norm of the first weighted layer is 100x or more that of the "
                "last: the earliest layers take the largest steps",
        cause="backpropagation multiplies the gradient by each layer's Jacobian; a gain "
              "above 1 per layer (an init scale too large for the depth) compounds "
              "geometrically over depth",
        fixes=("divide the init scale by the measured factor per layer",
               "clip the gradient norm at its initial value"),
    ),
    mitigations=("depth_exploding_gradients",),
    scenario="exploding_gradients",
    fires_on=_gradients_256x_larger_at_the_input,
    silent_on=_even_gradients_and_live_units,
)

VANISHING_GRADIENTS = Signature(
    name="vanishing_gradients",
    description="the gradient norm shrinks layer by layer from the output to the input",
    detect=detect_vanishing_gradients,
    applies_to="deep_net",
    playbook=Playbook(
        symptom="the gradient norm of the first weighted layer is 1/100 or less of that of "
                "the last: the earliest layers barely learn",
        cause="a gain below 1 per layer (an init scale too small for the depth, or "
              "saturating activations) compounds geometrically over depth",
        fixes=("add layer normalization after each hidden layer",
               "raise the init scale by the measured factor per layer"),
    ),
    mitigations=("depth_vanishing_gradients",),
    scenario="vanishing_gradients",
    fires_on=_gradients_1e4x_smaller_at_the_input,
    silent_on=_even_gradients_and_live_units,
)

DYING_RELU = Signature(
    name="dying_relu",
    description="half or more of a ReLU layer's units output zero for every example",
    detect=detect_dying_relu,
    applies_to="deep_net",
    playbook=Playbook(
        symptom="most units of a ReLU layer output zero for every example of the batch, and "
                "the dead fraction grew during training",
        cause="large updates pushed those units' pre-activations below zero for every input; "
              "a dead unit's gradient is exactly zero, so no update brings it back",
        fixes=("lower lr (10x)",
               "start the biases slightly positive, or use a leaky activation"),
    ),
    mitigations=("dying_relu_lr",),
    scenario="dying_relu",
    fires_on=_relu_units_dying_from_step_21,
    silent_on=_even_gradients_and_live_units,
)

LOGIT_GROWTH = Signature(
    name="logit_growth",
    description="the output logits grow toward the format's max or a one-hot softmax",
    detect=detect_logit_growth,
    applies_to="deep_net",
    playbook=Playbook(
        symptom="the largest output logit grows 10x or more over training, toward the "
                "format's max or to where the softmax is one-hot",
        cause="nothing bounds the log-partition function log Z: the logits drift until the "
              "softmax saturates (zero gradient) or the output format overflows",
        fixes=("add the z-loss 1e-4 * log(Z)^2 on the output logits",
               "compute the output layer in float32"),
    ),
    mitigations=("z_loss",),
    scenario="logit_growth",
    fires_on=_output_logits_overflow_float16,
    silent_on=_bounded_logits,
)

ATTENTION_LOGIT_GROWTH = Signature(
    name="attention_logit_growth",
    description="the attention logits q.k grow toward the format's max or a one-hot softmax",
    detect=detect_attention_logit_growth,
    applies_to="deep_net",
    playbook=Playbook(
        symptom="the largest attention logit q.k grows 10x or more over training; in float16 "
                "it overflows and the loss goes NaN",
        cause="|q.k| grows with the norms of the query and key projections, which nothing "
              "bounds; past 65504 the float16 softmax computes inf - inf",
        fixes=("layer-normalize queries and keys (qk-layernorm)",
               "compute the attention scores in bfloat16 or float32 (more range)"),
    ),
    mitigations=("qk_layernorm",),
    scenario="attention_logit_growth",
    fires_on=_attention_logits_overflow_float16,
    silent_on=_bounded_logits,
)

LOSS_SCALE_COLLAPSE = Signature(
    name="loss_scale_collapse",
    description="the dynamic loss scale fell to 1 or most steps were skipped",
    detect=detect_loss_scale_collapse,
    applies_to="deep_net",
    playbook=Playbook(
        symptom="the dynamic loss scale falls to 1 or below, or more than a fifth of the "
                "steps are skipped as non-finite",
        cause="the scaler halves the scale at every step with inf/NaN gradients; when the "
              "overflow is in the forward pass (the loss itself), no scale can help and it "
              "collapses",
        fixes=("compute in bfloat16 autocast (policy mixed-bf16): float32's range",
               "find the module that overflows (nonfinite_created) and bound its values"),
    ),
    mitigations=("use_bf16_range",),
    scenario="loss_scale_collapse",
    fires_on=_loss_scale_halved_to_1_by_step_17,
    silent_on=_loss_scale_steady,
)

HEADROOM_SHRINKING = Signature(
    name="headroom_shrinking",
    description="a module's headroom to the format's max falls steadily and will run out",
    detect=detect_headroom_shrinking,
    applies_to="deep_net",
    playbook=Playbook(
        symptom="a module's headroom (powers of two between its largest value and the "
                "format's max) falls steadily and is projected to run out within twice the "
                "steps run",
        cause="the module's values grow geometrically; at the fitted rate they pass the "
              "format's max at the projected step",
        fixes=("compute in bfloat16 autocast (policy mixed-bf16): float32's range",
               "bound the module's values (normalization, weight decay, a lower lr)"),
    ),
    mitigations=("use_bf16_range",),
    scenario="headroom_shrinking",
    fires_on=_headroom_gone_by_step_50,
    silent_on=_headroom_lasts_1e5_steps,
)
