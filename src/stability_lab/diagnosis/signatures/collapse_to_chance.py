"""``collapse_to_chance``: a classifier that learned, then fell back to chance level.

A step too large for the curvature can throw a network into a region where its output
no longer depends on its input (every ReLU dead, say). Training then "converges": the
only parameters still moving are the last biases, which settle on the class frequencies,
the loss settles at their entropy, log C for C balanced classes, and the gradient
vanishes. The verdict sees a flat loss and a small gradient; the accuracy is 1/C. The
digits mlp does this at lr 0.6 (float64, 200 steps, seeds 0 and 1: loss 2.3025 = log 10,
accuracy 10%, gradient norm 2e-5 of its initial value, verdict converged), while the
same runs with the gradient norm clipped at 1 reach 97%. With attribution on, the
float32 run shows why: ``dying_relu`` fires on all three of its ReLU layers.

Reads the loss, the gradient norm and the chance level the training loop records for a
classifier (``extras['chance_loss']`` = log C, ``extras['chance_accuracy']`` = 1/C,
and the final ``extras['accuracy']``); silent on traces without a chance level. It
fires when all of these hold (``W`` is the judging window, ``min(10, steps // 2)``):

- the loss stayed finite (a non-finite run is ``overflow`` or ``nan_creation``);
- the model had learned: the loss once fell below ``LEARNED`` (0.9) x log C;
- it ended at chance: the mean loss of the last W steps is within ``AT_CHANCE`` (2%)
  of log C;
- its gradient vanished: the median gradient norm of the last W steps is below
  ``DEAD_GRADIENT`` (1e-2) x the initial one (a model still trying has a large one);
- where the final accuracy is known, it is at most twice the chance accuracy.

The onset is the first step of the final stretch of W-step windows whose mean loss is
within ``AT_CHANCE`` of log C. A problem whose labels do not depend on the inputs never
learns below 0.9 log C, so it is not flagged: there the model, not the computation, is
at fault.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from stability_lab.diagnosis.findings import Finding
from stability_lab.diagnosis.signatures.base import Playbook, Signature
from stability_lab.diagnosis.signatures.common import entry, example_trace, first_nonfinite
from stability_lab.diagnosis.windows import final_stretch, window
from stability_lab.trace import Trace

#: the model had learned: its loss once fell below this fraction of log C
LEARNED = 0.9
#: at chance: the final loss is within this fraction of log C
AT_CHANCE = 0.02
#: the gradient vanished: the final gradient norm is below this fraction of the initial
DEAD_GRADIENT = 1e-2


def detect_collapse_to_chance(trace: Trace) -> list[Finding]:
    chance = entry(trace.extras, "chance_loss")
    n = trace.n_steps
    if not chance or n < 4 or first_nonfinite(trace) < n:
        return []
    chance = float(chance)
    loss, grad = trace.metric("loss"), trace.metric("grad_norm")
    W = window(n)
    window_means = sliding_window_view(loss, W).mean(axis=1)  # [i]: steps i+1 .. i+W
    in_band = np.abs(window_means - chance) <= AT_CHANCE * chance
    best_at = int(np.argmin(loss))
    g0, final_grad = float(grad[0]), float(np.median(grad[-W:]))
    learned = loss[best_at] < LEARNED * chance
    dead = math.isfinite(g0) and g0 > 0 and final_grad < DEAD_GRADIENT * g0
    if not (learned and in_band[-1] and dead):
        return []
    accuracy = entry(trace.extras, "accuracy")
    chance_accuracy = entry(trace.extras, "chance_accuracy")
    known = accuracy is not None and chance_accuracy is not None
    if known and float(accuracy) > 2.0 * float(chance_accuracy):
        return []
    # the first step of the final stretch of windows whose mean loss is at chance
    onset = final_stretch(in_band) + 1
    classes = round(math.exp(chance))
    final_loss = float(window_means[-1])
    evidence = {"onset": onset, "chance_loss": chance, "classes": classes,
                "final_loss": final_loss, "best_loss": float(loss[best_at]),
                "best_step": best_at + 1, "grad_norm_initial": g0, "grad_norm_final": final_grad,
                "accuracy": None if accuracy is None else float(accuracy),
                "chance_accuracy": None if chance_accuracy is None else float(chance_accuracy),
                "lr": float(trace.spec.lr)}
    unit = trace.step_unit
    accuracy_text = (f" and the accuracy is {float(accuracy):.1%}" if accuracy is not None
                     else "")
    return [Finding(
        "collapse_to_chance", onset,
        f"the loss fell to {loss[best_at]:.3g} at {unit} {best_at + 1}, then settled at "
        f"{final_loss:.5g}, chance level log({classes}) = {chance:.5g}, from {unit} {onset}; "
        f"the gradient norm fell to {final_grad:.2g} ({final_grad / g0:.2g} of initial)"
        f"{accuracy_text}: the output no longer depends on the input",
        evidence, "error")]


# -- hand-made traces ----------------------------------------------------------------------
def _classifier(loss: np.ndarray, grad_norm: np.ndarray, accuracy: float) -> Trace:
    """A 10-class classifier's step trace at lr 0.6, with the chance level its loop records."""
    return example_trace(loss, task="mlp", policy="float64", lr=0.6, step_unit="step",
                         grad_norm=grad_norm,
                         extras={"chance_loss": math.log(10), "chance_accuracy": 0.1,
                                 "accuracy": accuracy})


def _learned_then_thrown_to_chance() -> Trace:
    """Down to 1.2 by step 15, a catapult to 4, then settling on log 10 with no gradient."""
    k = np.arange(60)
    loss = np.where(k < 15, 1.2 + 1.2 * np.exp(-k / 4.0),
                    math.log(10) + 1.7 * np.exp(-(k - 15) / 3.0))
    return _classifier(loss, 10.0 ** (-5.0 * k / 59), accuracy=0.1028)


def _learned_and_kept_it() -> Trace:
    k = np.arange(60)
    return _classifier(0.01 + 2.39 * np.exp(-k / 8.0), 10.0 ** (-2.0 * k / 59), accuracy=0.96)


COLLAPSE_TO_CHANCE = Signature(
    name="collapse_to_chance",
    description="a classifier learned, then settled at chance level with no gradient left",
    detect=detect_collapse_to_chance,
    applies_to="all",
    playbook=Playbook(
        symptom="the run looks converged (flat loss, tiny gradient), but its loss sits at "
                "log C and its accuracy at 1/C after it had been learning",
        cause="a step too large for the curvature threw the network into a region where its "
              "output no longer depends on its input (dead ReLUs, saturated units); only the "
              "last biases still learn, and they settle on the class frequencies",
        fixes=("clip the gradient norm at about its initial value: it bounds the step that "
               "throws the network out (the digits mlp at lr 0.6 reaches 97% with clip 1)",
               "lower lr"),
    ),
    mitigations=("clip", "lower_lr"),
    scenario="collapse_to_chance",
    fires_on=_learned_then_thrown_to_chance,
    silent_on=_learned_and_kept_it,
)
