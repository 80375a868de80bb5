"""Every per-step metric the lab records, declared once.

Four monitors fill a :class:`~stability_lab.trace.Trace`'s ``metrics``: the engine's
batched mode for linear models (``"cohort"``, :mod:`stability_lab.run.cohort`), its
single mode for models with autograd (``"loop"``, :mod:`stability_lab.run.autograd`),
the watcher on a user's own loop (``"watch"``, :mod:`stability_lab.watcher`), and a
closed-form least-squares solve, whose one "step" is the solve (``"solve"``,
:mod:`stability_lab.tasks.linear_regression`). Each records the metrics of this table
that name it, in the table's order; a detector or report that reads a metric finds its
meaning here. Monitors observe: none of them changes the run.
"""

from __future__ import annotations

from dataclasses import dataclass

COHORT, LOOP, WATCH, SOLVE = "cohort", "loop", "watch", "solve"
ALL = (COHORT, LOOP, WATCH, SOLVE)
TRAINING = (COHORT, LOOP, WATCH)


@dataclass(frozen=True)
class Metric:
    name: str
    meaning: str
    #: the monitors that record it
    recorded_by: tuple[str, ...] = ALL


METRICS: tuple[Metric, ...] = (
    Metric("loss", "the step's loss (a batch's for the loop and the watcher; the full "
           "regularized objective per epoch for cohorts; half the mean squared residual of "
           "a solve), unscaled, in float64"),
    Metric("grad_norm", "global 2-norm of the unscaled gradient that reached the update "
           "(of a solve: ||X^T r|| / n at its answer)"),
    Metric("update_norm", "2-norm of the weights' change over the step (0 for a skipped step)",
           TRAINING),
    Metric("weight_norm", "2-norm of all trained weights after the step"),
    Metric("update_ratio", "update_norm / weight_norm", TRAINING),
    Metric("nonfinite_weights", "weights that are inf or NaN after the step"),
    Metric("nonfinite_grads", "non-finite gradient values that reached the optimizer (a step "
           "the loss scaler skipped counts 0 here)"),
    Metric("overflowed_grads", "non-finite gradient values of the step, skipped or not",
           (LOOP, WATCH)),
    Metric("max_abs_logit", "absmax of the model's output (the logits; a solve's predictions)"),
    Metric("headroom_log2", "powers of two between the largest |logit| and the format's "
           "largest finite value", (COHORT,)),
    Metric("grad_min_headroom_log2", "powers of two between the smallest non-zero gradient "
           "entry and the format's smallest normal (negative: subnormal)", (COHORT,)),
    Metric("frac_unchanged", "of the weights whose intended update lr*g was non-zero, the "
           "fraction the rounding left unchanged (updates below half an ulp)", (COHORT,)),
    Metric("clip_factor", "the factor clipping by global norm applied (1: none)", (COHORT,)),
    Metric("frac_saturated", "of the samples, the fraction whose probability is exactly 0 "
           "or 1 (squared-error runs only)", (COHORT,)),
    Metric("frac_saturated_wrong", "of the samples, the fraction whose probability is exactly "
           "0 or 1 on the wrong side: the squared error's gradient there is 0, so they are "
           "never corrected (squared-error runs only)", (COHORT,)),
    Metric("logit_headroom", "powers of two between the largest |output| and the output "
           "format's largest finite value", (WATCH,)),
    Metric("grad_absmax", "largest |gradient| entry", (WATCH,)),
    Metric("grad_headroom", "powers of two between grad_absmax and the gradient format's "
           "largest finite value", (WATCH,)),
    Metric("loss_scale", "the dynamic loss scale the step used (runs with loss scaling)",
           (LOOP, WATCH)),
    Metric("skipped", "1 when the loss scaler skipped the step (non-finite gradients)",
           (LOOP, WATCH)),
    Metric("grad_underflow_frac", "of the gradient values non-zero before a rounding to the "
           "gradient format, the fraction flushed to zero (NaN where the arithmetic is native "
           "and the rounding cannot be seen)", (LOOP,)),
    Metric("lr", "the optimizer's learning rate at the step (first parameter group)",
           (WATCH,)),
    Metric("step_time", "wall-clock seconds of the step", (LOOP, WATCH)),
)

BY_NAME = {m.name: m for m in METRICS}

#: cohort metrics recorded only by runs of the squared-error loss form (``--loss mse``),
#: the one whose gradient vanishes at saturation
SQUARED_ERROR_ONLY = ("frac_saturated", "frac_saturated_wrong")


def metric_names(monitor: str) -> tuple[str, ...]:
    """The metrics ``monitor`` records, in the table's order."""
    if monitor not in ALL:
        raise ValueError(f"unknown monitor {monitor!r}; expected one of {', '.join(ALL)}")
    return tuple(m.name for m in METRICS if monitor in m.recorded_by)
