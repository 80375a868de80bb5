"""Non-finite values: ``overflow`` (a value became inf) and ``nan_creation`` (a NaN made
from finite values).

- ``overflow``: loss = +inf (a value past the max, or log(0)), max_abs_logit = inf, or
  any ``headroom*`` metric <= 0. The evidence says which: ``cause`` is ``log(0)`` when the
  logits were finite, ``format_max`` otherwise.
- ``nan_creation``: the first NaN loss, or non-finite gradients from a finite forward
  pass. An inf loss is not NaN (that is ``overflow``), and a NaN after an inf is the
  overflow's consequence, reported there.
"""

from __future__ import annotations

import math

import numpy as np

from stability_lab.diagnosis.findings import Finding
from stability_lab.diagnosis.signatures.base import Playbook, Signature
from stability_lab.diagnosis.signatures.common import (example_trace, healthy_loss, number,
                                                       trace_format)
from stability_lab.trace import Trace


def detect_overflow(trace: Trace) -> list[Finding]:
    loss = trace.metric("loss")
    if loss.size == 0:
        return []
    fmt = trace_format(trace)
    logit = trace.metric("max_abs_logit")
    nfw, _ = trace.nonfinite_counts()
    # a loss of +inf is an overflow whatever produced it (a value past the format's
    # max, or log(0) of a probability rounded to 0 or 1): inf is not NaN
    bad = np.isinf(logit) | np.isposinf(loss)
    worst_head = np.full(loss.shape, np.inf)
    for name, values in trace.metrics.items():
        if name.startswith("headroom") and len(values) == len(loss):
            h = np.asarray(values, dtype=np.float64)
            worst_head = np.fmin(worst_head, h)
            bad |= h <= 0
    if not bad.any():
        return []
    k = int(np.argmax(bad))
    nan_first = np.isnan(loss[:k]).any()
    if nan_first:
        return []
    before = loss[:k]
    fin_logit = logit[:k][np.isfinite(logit[:k])]
    evidence = {
        "step": k + 1, "loss": float(loss[k]),
        "last_finite_loss": float(before[-1]) if before.size else None,
        "max_abs_logit_before": float(fin_logit.max()) if fin_logit.size else None,
        "headroom_log2": float(worst_head[k]), "format": fmt.name, "format_max": fmt.max,
    }
    what = "loss=inf" if np.isposinf(loss[k]) else (
        "max|logit| = inf" if np.isinf(logit[k]) else "a value reached the format's max")
    logit_k = float(logit[k]) if k < logit.size else math.nan
    log_zero = bool(np.isposinf(loss[k]) and math.isfinite(logit_k) and nfw[k] == 0)
    evidence["cause"] = "log(0)" if log_zero else "format_max"
    if log_zero:
        cause = (f"the logits are finite (max|logit| {number(logit_k)}): a probability "
                 f"rounded to exactly 0 or 1 in {fmt.name} made log(0) = -inf, e.g. "
                 "log(1 - p) with p rounded to 1")
    else:
        cause = (f"a value passed the {fmt.name} maximum {fmt.max:.3g} (largest finite "
                 f"|logit| before: {number(evidence['max_abs_logit_before'])})")
    return [Finding("overflow", k + 1, f"{what} at {trace.step_unit} {k + 1}: {cause}",
                    evidence, "error")]


def detect_nan_creation(trace: Trace) -> list[Finding]:
    loss = trace.metric("loss")
    if loss.size == 0:
        return []
    logit = trace.metric("max_abs_logit")
    nfw, nfg = trace.nonfinite_counts()
    # logits may be NaN when absent: only a recorded inf counts as a prior overflow.
    # An inf loss is not NaN (the overflow detector reports it); a NaN loss, or
    # non-finite gradients from a finite forward pass, are created NaNs.
    forward_ok = ~np.isinf(logit) & (nfw == 0)
    created = np.isnan(loss) | ((nfg > 0) & forward_ok)
    if not created.any():
        return []
    k = int(np.argmax(created))
    prior_inf = np.isinf(loss[:k]).any() or np.isinf(logit[:k]).any() or (nfw[:k] > 0).any()
    if prior_inf:
        return []  # NaN after inf is the overflow's consequence, reported there
    where = "loss" if np.isnan(loss[k]) else "gradient"
    evidence = {"step": k + 1, "where": where,
                "last_finite_loss": float(loss[k - 1]) if k > 0 else None,
                "max_abs_logit": None if np.isnan(logit[k]) else float(logit[k]),
                "nonfinite_grads": float(nfg[k]), "weights_finite": bool(nfw[k] == 0)}
    return [Finding(
        "nan_creation", k + 1,
        f"NaN created in the {where} at {trace.step_unit} {k + 1} from finite weights "
        f"(max|logit| {number(evidence['max_abs_logit'])}): an invalid operation such as "
        f"0*inf or inf-inf (e.g. the chain rule through log(1 - p) once p rounds to 1)",
        evidence, "error")]


# -- hand-made traces ----------------------------------------------------------------------
def _logits_overflow_at_step_8() -> Trace:
    loss, logit = healthy_loss(20), np.full(20, 5.0)
    loss[7:] = logit[7:] = np.inf
    return example_trace(loss, max_abs_logit=logit)


def _loss_nan_at_step_6() -> Trace:
    loss = healthy_loss(20)
    loss[5:] = np.nan
    return example_trace(loss, max_abs_logit=np.full(20, 3.0))


def _finite_logits() -> Trace:
    return example_trace(healthy_loss(20), max_abs_logit=np.full(20, 5.0))


OVERFLOW = Signature(
    name="overflow",
    description="a value exceeded the format's largest finite number and became inf",
    detect=detect_overflow,
    applies_to="all",
    playbook=Playbook(
        symptom="loss=inf (verdict overflow) within the first epochs; max|logit| or a "
                "gradient sum passes 65504",
        cause="raw features up to ~4e3 make X^T (p - y) sum past the float16 maximum 65504; "
              "the step size cannot help: the overflow is in the gradient itself",
        fixes=("standardize the features (scale=standardized): cheapest, keeps float16",
               "compute in float32 (or keep fp32 master weights)",
               "lowering lr does not help: the inf is in the gradient, not the step"),
    ),
    mitigations=("scale_features", "higher_precision", "use_bf16_range"),
    scenario="overflow",
    fires_on=_logits_overflow_at_step_8,
    silent_on=_finite_logits,
)

NAN_CREATION = Signature(
    name="nan_creation",
    description="NaN created from finite values (0/0, inf-inf, 0*inf) in loss or gradient",
    detect=detect_nan_creation,
    applies_to="all",
    playbook=Playbook(
        symptom="loss=inf (verdict overflow) and NaN gradients from finite weights and logits",
        cause="sigmoid(z) rounds to exactly 1 for z > 16.6 in float32; log(1 - p) = -inf and "
              "the chain rule multiplies inf by p(1 - p) = 0",
        fixes=("use the fused log-loss (BCE with logits): no extra cost",
               "lower lr below 2/L so logits grow slowly (delays, may not prevent, the NaN)"),
    ),
    mitigations=("fused_logloss",),
    scenario="nan_creation",
    fires_on=_loss_nan_at_step_6,
    silent_on=_finite_logits,
)
