"""Values the format rounds to a dead end: ``stagnation`` (an update rounds away),
``gradient_underflow`` (a gradient rounds to zero) and ``saturation`` (a probability
rounds to exactly 0 or 1).

``W`` is the judging window, ``min(10, steps // 2)``.

- ``stagnation``: over the last W steps ``frac_unchanged`` >= 0.5 (or, where the task
  does not count unchanged weights, ``update_ratio`` below half an ulp, eps/2) while the
  gradient is not small or the run stopped (loss unchanged) away from the task's float64
  optimum.
- ``gradient_underflow``: ``grad_underflow_frac`` (the share of gradient values that
  were non-zero before the rounding to the gradient format and zero after it) reaches
  ``UNDERFLOW_FRACTION`` (5%) at some step while the task is not solved yet (loss above
  ``SOLVED``, 1%, of its first value: a solved run's gradient is small because it is
  done, and flushing it holds nothing back); the onset is the first such step, and the
  finding is an error when on average ``UNDERFLOW_ERROR_FRACTION`` (25%) of the values
  per step carry no signal. The mean is over the steps where the fraction was measured
  (NaN where the arithmetic is native and the lab cannot see the rounding).
- ``saturation``: ``frac_saturated_wrong`` (probabilities exactly 0 or 1 on the wrong
  side: zero gradient) >= 0.02 over the last W steps while the loss is not improving.
"""

from __future__ import annotations

import numpy as np

from stability_lab.diagnosis.findings import Finding
from stability_lab.diagnosis.signatures.base import Playbook, Signature
from stability_lab.diagnosis.signatures.common import (example_trace, first_nonfinite,
                                                       gradient_format, grad_small, healthy_loss,
                                                       trace_format)
from stability_lab.diagnosis.windows import SOLVED, final_stretch, frozen_off_optimum, window
from stability_lab.trace import Trace

#: a step at which this share of the gradient values flushed to zero is an underflow
UNDERFLOW_FRACTION = 0.05
#: ... and the finding is an error when this share is lost on average per step
UNDERFLOW_ERROR_FRACTION = 0.25


def detect_stagnation(trace: Trace) -> list[Finding]:
    n = trace.n_steps
    k = first_nonfinite(trace)
    if n < 4 or k < n:
        return []
    fmt = trace_format(trace)
    W = window(n)
    # a run that stopped away from the task's float64 optimum is stuck whatever its
    # gradient norm (relative to its start, in its format) says
    small = grad_small(trace, fmt) & (not frozen_off_optimum(trace, W))
    unchanged = trace.metric("frac_unchanged")
    ratio = trace.metric("update_ratio")
    if np.isfinite(unchanged[-W:]).all():
        stuck = (unchanged >= 0.5) & ~small
        what = "frac_unchanged"
    elif np.isfinite(ratio[-W:]).all():
        stuck = (ratio < fmt.eps / 2) & ~small
        what = "update_ratio"
    else:
        return []
    if not stuck[-W:].all():
        return []
    onset = final_stretch(stuck) + 1
    grad = trace.metric("grad_norm")
    evidence = {"frac_unchanged": float(unchanged[-1]) if what == "frac_unchanged" else None,
                "update_ratio": float(ratio[-1]), "half_ulp_ratio": fmt.eps / 2,
                "grad_norm": float(grad[-1]), "grad_norm_initial": float(grad[0]),
                "lr": float(trace.spec.lr), "format": fmt.name}
    lead = (f"{unchanged[-1]:.0%} of weights did not change" if what == "frac_unchanged"
            else f"update/weight ratio {ratio[-1]:.2g} below half an ulp ({fmt.eps / 2:.2g})")
    return [Finding(
        "stagnation", onset,
        f"{lead} from {trace.step_unit} {onset} in {fmt.name}: lr x grad is below half an ulp "
        f"of the weights while the grad norm is still {grad[-1]:.2g} "
        f"({grad[-1] / grad[0]:.2g} of initial)",
        evidence, "error")]


def detect_gradient_underflow(trace: Trace) -> list[Finding]:
    frac = trace.metric("grad_underflow_frac")
    measured = frac[np.isfinite(frac)]
    if measured.size == 0:
        return []
    hit = np.nan_to_num(frac, nan=0.0) >= UNDERFLOW_FRACTION
    loss = trace.metric("loss")
    finite = loss[np.isfinite(loss)]
    if finite.size and finite[0] > 0 and loss.size == hit.size:
        # once the loss is below SOLVED of its start the task is solved: the gradient
        # is small because the run is done, and values flushed then hold nothing back
        hit &= ~(loss < SOLVED * finite[0])
    if not hit.any():
        return []
    k = int(np.argmax(hit))
    peak, mean = float(measured.max()), float(measured.mean())
    fmt = gradient_format(trace)
    scale = trace.metric("loss_scale")
    evidence = {"step": k + 1, "max_frac": peak, "mean_frac": mean,
                "format": fmt.name, "format_tiny": fmt.tiny, "format_subnormal": fmt.subnormal,
                "loss_scale": float(scale[k]) if np.isfinite(scale[k]) else None}
    return [Finding(
        "gradient_underflow", k + 1,
        f"{peak:.1%} of gradient values flushed to zero (below {fmt.subnormal:.2g}, the "
        f"smallest {fmt.name} subnormal) from {trace.step_unit} {k + 1}; mean {mean:.1%} "
        f"of entries per step carry no signal",
        evidence, "error" if mean >= UNDERFLOW_ERROR_FRACTION else "warning")]


def detect_saturation(trace: Trace) -> list[Finding]:
    wrong = trace.metric("frac_saturated_wrong")
    if wrong.size == 0 or not np.isfinite(wrong).any():
        return []
    W = window(len(wrong))
    w = np.nan_to_num(wrong, nan=0.0)
    if w[-W:].min() < 0.02:
        return []
    loss = trace.metric("loss")
    fin = loss[np.isfinite(loss)]
    if fin.size > W and (fin[-W - 1] - fin[-1]) > 1e-3 * abs(fin[-1]):
        return []  # still learning: the saturated points are being fixed
    k = int(np.argmax(w >= 0.02))
    sat = trace.metric("frac_saturated")
    grad = trace.metric("grad_norm")
    evidence = {"step": k + 1, "frac_saturated_wrong": float(w[-1]),
                "frac_saturated": float(sat[-1]) if np.isfinite(sat[-1]) else None,
                "final_loss": float(loss[-1]), "grad_norm": float(grad[-1])}
    return [Finding(
        "saturation", k + 1,
        f"{w[-1]:.1%} of samples have a probability of exactly 0 or 1 on the wrong side from "
        f"{trace.step_unit} {k + 1}: their gradient is zero, the loss is stuck at {loss[-1]:.3g}",
        evidence, "error")]


# -- hand-made traces ----------------------------------------------------------------------
def _bfloat16_weights_frozen_from_step_21() -> Trace:
    n = 50
    unchanged = np.zeros(n)
    unchanged[20:] = 0.9
    return example_trace(np.full(n, 0.4), precision="bfloat16", frac_unchanged=unchanged,
                         grad_norm=np.full(n, 0.5), update_ratio=np.full(n, 1e-4))


def _weights_move() -> Trace:
    return example_trace(healthy_loss(50), frac_unchanged=np.zeros(50),
                         update_ratio=np.full(50, 1e-3))


def _thirty_percent_flushed_from_step_13() -> Trace:
    frac = np.zeros(30)
    frac[12:] = 0.3
    return example_trace(healthy_loss(30), precision="float32", grad_underflow_frac=frac)


def _one_percent_flushed() -> Trace:
    """The share a loss-scaled float16 run flushes (0.5% to 1.2% on the digits mlp)."""
    return example_trace(healthy_loss(30), precision="float32",
                         grad_underflow_frac=np.full(30, 0.01))


def _wrong_side_saturated_from_the_start() -> Trace:
    return example_trace(np.full(40, 0.19), frac_saturated_wrong=np.full(40, 0.3))


def _nothing_saturated() -> Trace:
    return example_trace(healthy_loss(40), frac_saturated_wrong=np.zeros(40))


STAGNATION = Signature(
    name="stagnation",
    description="updates below half an ulp of the weights: training stops while the "
                "gradient is large",
    detect=detect_stagnation,
    applies_to="all",
    playbook=Playbook(
        symptom="loss flat at a poor value while the gradient norm stays large; most weights "
                "are bit-for-bit unchanged each epoch (verdict stagnated)",
        cause="w - lr*g rounds back to w when |lr*g| < ulp(w)/2; bfloat16 has 8 bits of "
              "precision, so an update below 0.4% of the weight is lost",
        fixes=("raise lr towards 2/L so updates clear half an ulp (free)",
               "keep fp32 master weights / compute in float32 (memory cost)"),
    ),
    mitigations=("raise_lr", "higher_precision"),
    scenario="stagnation",
    fires_on=_bfloat16_weights_frozen_from_step_21,
    silent_on=_weights_move,
)

GRADIENT_UNDERFLOW = Signature(
    name="gradient_underflow",
    description="gradient values flushed to zero in a narrow format (no loss scaling)",
    detect=detect_gradient_underflow,
    applies_to="all",
    playbook=Playbook(
        symptom="a large share of the per-sample gradient is exactly zero in float16 "
                "(grad_underflow_frac); the fit ends further from the float64 fit than with loss "
                "scaling",
        cause="(p - y)/n falls below the smallest float16 subnormal 6e-8 once |p - y| < "
              "1.2e-3 with n = 20000; those samples contribute nothing",
        fixes=("scale the loss by 2^k (dynamic loss scaling) before the fp16 backward, "
               "unscale in fp32",
               "compute the gradient in float32 / bfloat16 (wider exponent)"),
    ),
    mitigations=("use_loss_scaling",),
    scenario="gradient_underflow",
    fires_on=_thirty_percent_flushed_from_step_13,
    silent_on=_one_percent_flushed,
)

SATURATION = Signature(
    name="saturation",
    description="probabilities exactly 0 or 1 on the wrong side kill the gradient",
    detect=detect_saturation,
    applies_to="all",
    playbook=Playbook(
        symptom="the loss stalls at a high value; a fraction of samples have p == 0 or p == 1 "
                "on the wrong side, with zero gradient",
        cause="the MSE gradient (p - y) p (1 - p) is exactly 0 once p rounds to 0 or 1; large "
              "logits from unscaled features put misclassified samples there",
        fixes=("standardize the features so logits start small",
               "use the log-loss (cross-entropy with logits): its gradient p - y does not "
               "vanish; on raw features it also needs lr below 2/L (alone, at lr 0.01, it "
               "diverges)"),
    ),
    mitigations=("scale_features",),
    scenario="saturation",
    fires_on=_wrong_side_saturated_from_the_start,
    silent_on=_nothing_saturated,
)
