"""Judged against other runs: ``silent_digit_loss`` (against the float64 reference) and
``nondeterminism`` (against runs that differ only in thread count or summation order).

Both read context attached after the run, and are silent without it:

- ``silent_digit_loss``: ``extras['reference']``, filled by :func:`attach_reference`
  (the verifier, the catalogue, and :func:`stability_lab.diagnosis.attach_references`
  in a sweep): a converged run whose digits agreeing with the float64 reference are
  below ``FEW_DIGITS`` (3, capped by the format's own digits less one) while its loss is
  finite and not growing.
- ``nondeterminism``: ``extras['determinism']``, filled by :func:`attach_determinism`:
  the digits agreeing across the variants are more than one below what the
  conditioning explains.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from stability_lab.diagnosis.findings import Finding
from stability_lab.diagnosis.signatures.base import Playbook, Signature
from stability_lab.diagnosis.signatures.common import (entry, example_trace, growing,
                                                       healthy_loss, number, probe,
                                                       trace_format)
from stability_lab.diagnosis.verdict import decide
from stability_lab.trace import Trace

#: digits below which a run that "converged" is reported as silently inaccurate
FEW_DIGITS = 3.0
#: the most digits :func:`agreeing_digits` reports (float64 agreement to the last bit)
LRE_CAP = 15.95


def agreeing_digits(estimate: Any, reference: Any) -> float:
    """Normwise digits of agreement, -log10(||a - b|| / ||b||): one number for a whole
    vector (capped at 15.95); the per-coefficient NIST measure is
    :func:`stability_lab.linalg.records.lre`.

    0 when the estimate is non-finite or off by 100% or more (McCullough 1998).
    """
    a = np.atleast_1d(np.asarray(estimate, dtype=np.float64))
    b = np.atleast_1d(np.asarray(reference, dtype=np.float64))
    if a.shape != b.shape or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return 0.0
    # an overflow-safe norm: a diverged run's weights reach 1e200
    from stability_lab.numerics import l2_norm

    nb = float(l2_norm(b))
    with np.errstate(over="ignore"):
        diff = a - b
    err = float(l2_norm(diff)) if np.all(np.isfinite(diff)) else math.inf
    if err == 0.0:
        return LRE_CAP
    rel = err / nb if nb > 0 else err
    return float(min(LRE_CAP, max(0.0, -math.log10(rel))))


def attach_reference(trace: Trace, reference: Trace) -> dict[str, Any]:
    """Record in ``trace.extras['reference']`` how many digits agree with a float64 run.

    ``reference`` is the matched run in float64 (same spec otherwise). Digits are the LRE
    of the final loss and of the final parameters (when both runs kept them).
    """
    info: dict[str, Any] = {
        "reference_run": reference.run_id,
        "reference_precision": reference.spec.precision,
        "lre_loss": agreeing_digits(trace.final_loss, reference.final_loss),
        "reference_loss": reference.final_loss,
    }
    if trace.final_params is not None and reference.final_params is not None:
        info["lre_params"] = agreeing_digits(trace.final_params, reference.final_params)
    trace.extras["reference"] = info
    return info


def attach_determinism(traces: Sequence[Trace], factors: Sequence[str],
                       predicted_digits: float | None = None) -> dict[str, Any]:
    """Record in each trace's ``extras['determinism']`` how many digits agree across runs
    that differ only in thread count or summation order (mathematically identical).

    Digits: the smallest pairwise LRE of the final parameters (or losses) against the
    first run. ``predicted_digits`` is what the conditioning explains: the format's
    digits less log10 of the condition number of the problem.
    """
    first = traces[0]
    digits = []
    spread = []
    for t in traces[1:]:
        if first.final_params is not None and t.final_params is not None:
            digits.append(agreeing_digits(t.final_params, first.final_params))
        else:
            digits.append(agreeing_digits(t.final_loss, first.final_loss))
        spread.append(abs(t.final_loss - first.final_loss))
    info = {"variants": len(traces), "factors": list(factors),
            "agree_digits": float(min(digits)) if digits else LRE_CAP,
            "loss_spread": float(max(spread)) if spread else 0.0,
            "predicted_digits": predicted_digits,
            "final_losses": [float(t.final_loss) for t in traces]}
    for t in traces:
        t.extras["determinism"] = dict(info)
    return info


def detect_silent_digit_loss(trace: Trace) -> list[Finding]:
    ref = entry(trace.extras, "reference")
    if not ref:
        return []
    loss = trace.metric("loss")
    if loss.size == 0 or not np.all(np.isfinite(loss)) or growing(loss):
        return []  # a visible failure is not silent
    if decide(trace).status != "converged":
        return []  # an unconverged run differs from its reference for other reasons
    digits = ref.get("lre_params", ref.get("lre_loss"))
    if digits is None:
        return []
    fmt = trace_format(trace)
    threshold = min(FEW_DIGITS, fmt.digits - 1.0)
    if digits >= threshold:
        return []
    hc = probe(trace, "end", "hessian_cond")
    predicted = None
    if hc and hc > 0 and math.isfinite(hc):
        predicted = max(0.0, fmt.digits - math.log10(hc))
    evidence = {"digits": float(digits), "lre_loss": ref.get("lre_loss"),
                "lre_params": ref.get("lre_params"), "format_digits": fmt.digits,
                "predicted_digits": predicted, "threshold": threshold,
                "reference_run": ref.get("reference_run")}
    what = "weights" if "lre_params" in ref else "final loss"
    return [Finding(
        "silent_digit_loss", trace.n_steps,
        f"the {what} agree with the float64 reference to {digits:.1f} digits (the loss to "
        f"{number(ref.get('lre_loss'))}) although {fmt.name} carries {fmt.digits:.1f}"
        + (f"; the conditioning predicts {predicted:.1f}" if predicted is not None else ""),
        evidence, "warning")]


def detect_nondeterminism(trace: Trace) -> list[Finding]:
    info = entry(trace.extras, "determinism")
    if not info or info.get("variants", 0) < 2:
        return []
    digits = float(info["agree_digits"])
    predicted = info.get("predicted_digits")
    fmt = trace_format(trace)
    expected = float(predicted) if predicted is not None else fmt.digits
    if digits >= expected - 1.0 or digits >= FEW_DIGITS + 3:
        return []
    evidence = dict(info)
    return [Finding(
        "nondeterminism", None,
        f"{info['variants']} runs differing only in {', '.join(info.get('factors', []))} agree "
        f"to {digits:.1f} digits (final loss spread {number(info.get('loss_spread'))}); the "
        f"conditioning explains {expected:.1f}",
        evidence, "warning")]


# -- hand-made traces ----------------------------------------------------------------------
def _converged_against_reference(weights: list[float]) -> Trace:
    """A converged float32 run with these final weights, against float64's [1, 2]."""
    run = example_trace(healthy_loss(400), precision="float32")
    reference = example_trace(healthy_loss(400))
    run.final_params = np.array(weights)
    reference.final_params = np.array([1.0, 2.0])
    attach_reference(run, reference)
    return run


def _weights_right_to_one_digit() -> Trace:
    return _converged_against_reference([1.05, 2.0])


def _weights_right_to_seven_digits() -> Trace:
    return _converged_against_reference([1.0000001, 2.0])


def _variants_apart_by(difference: float) -> Trace:
    """Three float32 runs whose weights differ by ``difference``, where the conditioning
    explains 6 digits of agreement."""
    runs = [example_trace(healthy_loss(), precision="float32") for _ in range(3)]
    for i, run in enumerate(runs):
        run.final_params = np.array([1.0 + difference * i, 2.0])
    attach_determinism(runs, ["row order"], predicted_digits=6.0)
    return runs[0]


def _variants_agree_to_three_digits() -> Trace:
    return _variants_apart_by(1e-3)


def _variants_agree_to_the_last_bits() -> Trace:
    return _variants_apart_by(1e-13)


SILENT_DIGIT_LOSS = Signature(
    name="silent_digit_loss",
    description="the run converges but agrees with the float64 reference to few digits",
    detect=detect_silent_digit_loss,
    applies_to="all",
    playbook=Playbook(
        symptom="verdict converged, loss close to float64's, but the weights (what you "
                "interpret) are right to about one digit",
        cause="bfloat16 carries 2.4 digits; rounding of every update and of X itself, "
              "amplified by the Hessian's condition, leaves ~1 digit in the weights",
        fixes=("compute in float32 (or keep fp32 master weights)",),
    ),
    mitigations=("higher_precision",),
    scenario="silent_digit_loss",
    fires_on=_weights_right_to_one_digit,
    silent_on=_weights_right_to_seven_digits,
)

NONDETERMINISM = Signature(
    name="nondeterminism",
    description="results change with thread count or summation order beyond what the "
                "conditioning explains",
    detect=detect_nondeterminism,
    applies_to="all",
    playbook=Playbook(
        symptom="two runs of the same spec on the same data (rows in another order, another "
                "thread count) end at different losses and weights",
        cause="the dynamics are chaotic above the stability bound: rounding differences of "
              "order u from the summation order are amplified every step",
        fixes=("lower lr below 2/L: the iteration contracts and order effects stay at "
               "rounding level",
               "fix the reduction order (deterministic kernels, sorted data); does not make "
               "the result right, only repeatable"),
    ),
    mitigations=("lower_lr",),
    scenario="nondeterminism",
    fires_on=_variants_agree_to_three_digits,
    silent_on=_variants_agree_to_the_last_bits,
)
