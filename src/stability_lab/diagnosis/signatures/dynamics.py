"""Step-size dynamics: ``divergence``, ``edge_of_stability`` and ``loss_spike``.

``W`` is the judging window, ``min(10, steps // 2)``.

- ``divergence``: the loss ends above 4x its running minimum (or goes non-finite after
  growing); the evidence compares lr with the probe ``lr_bound`` = 2/L.
- ``edge_of_stability``: over the last 2W steps the loss differences alternate in sign
  (>= 85%), the swing is above rounding noise, and there is no net descent; the evidence
  gives lr times the sharpness where the end probe has it.
- ``loss_spike``: a loss above mean + ``SPIKE_K`` std of the previous W steps (and
  ``SPIKE_REL`` above their maximum) that undoes at least ``SPIKE_UNDO`` of the progress
  made from the first loss, and comes back to the pre-spike level; one that does not come
  back is divergence or a new level, not a spike.
"""

from __future__ import annotations

import numpy as np

from stability_lab.diagnosis.findings import Finding
from stability_lab.diagnosis.signatures.base import Playbook, Signature
from stability_lab.diagnosis.signatures.common import (example_trace, first_nonfinite,
                                                       growing, healthy_loss,
                                                       loss_while_finite, number, probe,
                                                       trace_format)
from stability_lab.diagnosis.windows import final_stretch, window
from stability_lab.trace import Trace

#: loss-spike rule: a value above mean + SPIKE_K std of the previous window
SPIKE_K = 6.0
#: ... and above the window's maximum by this fraction of its mean (noise floor)
SPIKE_REL = 0.05
#: ... and that undoes at least this fraction of the descent made so far (loss[0] down to
#: the window's maximum). Near a fit the loss is tiny and its mini-batch noise is large
#: relative to it: a healthy float64 attention run at lr 0.05 jumps from 6e-3 to 2.6e-2
#: (4x, z = 14) and back in one step, 0.7% of its descent from 2.9; a spike that matters
#: gives back a visible part of what training gained
SPIKE_UNDO = 0.05


def detect_divergence(trace: Trace) -> list[Finding]:
    loss = trace.metric("loss")
    if loss.size < 3:
        return []
    k = first_nonfinite(trace)
    fin = loss[:k]
    if fin.size < 2:
        return []
    running_min = np.minimum.accumulate(fin)
    above = fin > 2.0 * np.maximum(running_min, 1e-300)
    went_nonfinite = k < loss.size
    grew = fin[-1] > 2.0 * max(running_min[-1], 1e-300) and fin[-1] > 0
    if went_nonfinite:
        if not grew:
            return []
    elif not (growing(fin) and fin[-1] > 4.0 * abs(fin[0])):
        return []
    onset = final_stretch(above) + 1
    lr = float(trace.spec.lr)
    bound = probe(trace, "start", "lr_bound")
    evidence = {"onset": onset, "initial_loss": float(fin[0]), "min_loss": float(running_min[-1]),
                "last_finite_loss": float(fin[-1]), "went_nonfinite": went_nonfinite,
                "lr": lr, "lr_bound": bound,
                "lr_over_bound": lr / bound if bound else None}
    grad = trace.metric("grad_norm")[:k]
    if grad.size and np.isfinite(grad).any():
        evidence["max_grad_norm"] = float(np.nanmax(grad))
    if bound:
        cause = (f"lr {lr:g} is {lr / bound:.3g}x the stability bound 2/L = {bound:.3g}"
                 if lr > bound else f"lr {lr:g} is below 2/L = {bound:.3g}: look at the format")
    else:
        cause = "no curvature probe to compare lr with"
    return [Finding(
        "divergence", onset,
        f"loss grew from {fin[0]:.3g} (min {running_min[-1]:.3g}) to {fin[-1]:.3g}"
        f"{' then non-finite' if went_nonfinite else ''} from {trace.step_unit} {onset}; {cause}",
        evidence, "error")]


def detect_edge_of_stability(trace: Trace) -> list[Finding]:
    loss = loss_while_finite(trace)
    W = window(len(loss))
    tail = loss[-2 * W:]
    if tail.size < 8 or growing(loss):
        return []
    fmt = trace_format(trace)
    diffs = np.diff(tail)
    level = float(np.median(np.abs(tail)))
    amp = float(np.max(tail) - np.min(tail))
    # swings at rounding level are noise, not dynamics
    if amp <= max(8 * fmt.eps * level, 1e-7 * level, 1e-300):
        return []
    signs = np.sign(diffs[diffs != 0])
    if signs.size < 4:
        return []
    rate = float(np.mean(signs[1:] != signs[:-1]))
    h = tail.size // 2
    descent = (tail[:h].mean() - tail[-h:].mean()) > 0.25 * amp
    if rate < 0.85 or descent:
        return []
    d = np.sign(np.diff(loss))
    alt = np.zeros(len(loss), dtype=bool)
    alt[2:] = (d[1:] * d[:-1]) < 0
    # onset: the first step of the final run of alternations (allowing one-step gaps)
    run = alt | np.roll(alt, -1)
    run[-1] = alt[-1] or alt[-2]
    onset = final_stretch(run) + 1
    lr = float(trace.spec.lr)
    sharp = probe(trace, "end", "hessian_max")
    bound = probe(trace, "start", "lr_bound")
    evidence = {"sign_change_rate": rate, "amplitude": amp, "level": level,
                "window": int(tail.size), "lr": lr, "lr_bound": bound,
                "lr_times_sharpness": lr * sharp if sharp is not None else None}
    extra = ""
    if sharp is not None:
        extra = f"; lr x sharpness = {lr * sharp:.3g} (stable below 2)"
    elif bound:
        extra = f"; lr is {lr / bound:.3g}x 2/L"
    return [Finding(
        "edge_of_stability", onset,
        f"loss swings by {amp:.3g} around {level:.3g}, {rate:.0%} sign changes over the last "
        f"{tail.size} {trace.step_unit}s, no net descent{extra}",
        evidence, "warning")]


def detect_loss_spike(trace: Trace) -> list[Finding]:
    loss = loss_while_finite(trace)
    W = window(len(loss))
    if len(loss) < W + 2:
        return []
    from numpy.lib.stride_tricks import sliding_window_view

    win = sliding_window_view(loss[:-1], W)  # window i covers loss[i:i+W], judges loss[i+W]
    cur = loss[W:]
    with np.errstate(over="ignore", invalid="ignore"):
        mu = win.mean(axis=1)
        sd = win.std(axis=1)
    top = win.max(axis=1)
    gained = np.maximum(loss[0] - top, 0.0)  # the descent made before each window's end
    spike = (cur > mu + SPIKE_K * sd) & (cur - top > SPIKE_REL * np.abs(mu))
    if not spike.any():
        return []
    out = []
    idx = np.flatnonzero(spike)
    last_end = -1
    for i in idx:
        t = int(i + W)  # 0-based step of the spike
        if t <= last_end:
            continue
        later = loss[t + 1:]
        back = np.flatnonzero(later <= top[i])
        if back.size == 0:
            continue  # no recovery: divergence or a new level, not a spike
        rec = t + 1 + int(back[0])
        peak_at = t + int(np.argmax(loss[t:rec]))
        if loss[peak_at] - top[i] < SPIKE_UNDO * gained[i]:
            continue  # at its peak it gives back too little of the descent: noise
        last_end = rec
        z = (loss[t] - mu[i]) / sd[i] if sd[i] > 0 else float("inf")
        evidence = {"step": t + 1, "peak_step": peak_at + 1, "peak": float(loss[peak_at]),
                    "window_mean": float(mu[i]), "window_std": float(sd[i]), "z": float(z),
                    "height": float(loss[peak_at] / max(top[i], 1e-300)),
                    "recovered_at": rec + 1, "recovery_steps": rec - t, "k": SPIKE_K,
                    "undone": float((loss[peak_at] - top[i]) / gained[i]) if gained[i] > 0
                    else float("inf")}
        out.append(Finding(
            "loss_spike", t + 1,
            f"loss spiked at {trace.step_unit} {t + 1} to {loss[peak_at]:.3g} "
            f"({evidence['height']:.3g}x the previous {W}-step maximum, z = {number(z)}) and "
            f"recovered by {trace.step_unit} {rec + 1}",
            evidence, "warning"))
    return out[:5]


# -- hand-made traces ----------------------------------------------------------------------
def _geometric_growth_above_the_bound() -> Trace:
    """lr 2 against 2/L = 0.5: after 10 steps of descent the loss grows 1.5x a step."""
    loss = np.concatenate([healthy_loss(10), 0.25 * 1.5 ** np.arange(1, 31)])
    return example_trace(loss, lr=2.0, probes={"start": {"lr_bound": 0.5}})


def _alternation_without_descent() -> Trace:
    return example_trace(np.concatenate([healthy_loss(30), 0.3 + 0.02 * (-1) ** np.arange(40)]))


def _spike_at_step_51_that_recovers() -> Trace:
    loss = healthy_loss(80)
    loss[50], loss[51] = 2.0, 1.0
    return example_trace(loss)


def _healthy_descent() -> Trace:
    return example_trace(healthy_loss(100), probes={"start": {"lr_bound": 0.5}})


DIVERGENCE = Signature(
    name="divergence",
    description="the loss grows without bound (gradient descent with lr above 2/L)",
    detect=detect_divergence,
    applies_to="all",
    playbook=Playbook(
        symptom="the loss grows geometrically from the first epochs, then overflows",
        cause="for lr > 2/L the iteration multiplies the error along the top Hessian "
              "direction by |1 - lr L| > 1 each step",
        fixes=("lower lr to below 2/L (the lab prints 2/L from the curvature probe)",
               "clip the gradient norm (bounds each step; slower)"),
    ),
    mitigations=("lower_lr",),
    scenario="divergence",
    fires_on=_geometric_growth_above_the_bound,
    silent_on=_healthy_descent,
)

EDGE_OF_STABILITY = Signature(
    name="edge_of_stability",
    description="the loss oscillates step to step without descending (lr at or above "
                "2/sharpness)",
    detect=detect_edge_of_stability,
    applies_to="all",
    playbook=Playbook(
        symptom="loss alternates up/down every epoch (verdict oscillating) at a level above "
                "the optimum",
        cause="lr times the sharpness (largest Hessian eigenvalue) is above 2 at the optimum, "
              "so the iterates bounce across the valley instead of descending it",
        fixes=("lower lr below 2/L",),
    ),
    mitigations=("lower_lr",),
    scenario="edge_of_stability",
    fires_on=_alternation_without_descent,
    silent_on=_healthy_descent,
)

LOSS_SPIKE = Signature(
    name="loss_spike",
    description="a sudden loss spike (above mean + k std of the recent window) that recovers",
    detect=detect_loss_spike,
    applies_to="all",
    playbook=Playbook(
        symptom="a sudden jump of the loss, many standard deviations above the recent window, "
                "that comes back within a few to a dozen steps",
        cause="as the iterate descends the valley its sharpness (largest Hessian eigenvalue) "
              "grows until lr x sharpness passes 2; the iterate is then thrown out (catapult) "
              "to where the curvature is lower, and descends again",
        fixes=("lower lr below 2/L (the lab prints 2/L from the curvature probe)",),
    ),
    mitigations=("lower_lr",),
    scenario="loss_spike",
    fires_on=_spike_at_step_51_that_recovers,
    silent_on=_healthy_descent,
)
