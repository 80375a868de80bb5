"""The two windowing rules the verdict and the signature detectors share.

Both judge a run on its last steps, never on a single step: :func:`window` says how many
steps that is for a trace of a given length, and :func:`final_stretch` where the final
run of steps meeting a condition began (the onset the verdict and the detectors report).
:func:`task_optimum` and :func:`at_optimum` read the task's float64 optimum,
:func:`frozen_off_optimum` whether a run stopped, loss unchanged, away from it, and
:data:`SOLVED` when a loss counts as solved. They live here, below both, so that
neither imports the other.
"""

from __future__ import annotations

import numpy as np


def window(n: int, cap: int = 10) -> int:
    """The judging window for ``n`` steps: half of them, between 2 and ``cap``."""
    return max(2, min(cap, n // 2 or 1))


def final_stretch(flags: np.ndarray) -> int:
    """0-based start of the last run of True values reaching the end (len if none)."""
    if flags.size == 0 or not flags[-1]:
        return len(flags)
    false = np.flatnonzero(~flags)
    return int(false[-1] + 1) if false.size else 0


#: a loss below this fraction of its start has solved its task (the verdict's rule for
#: step traces; gradient_underflow ignores the steps from there)
SOLVED = 0.01

#: a loss whose relative change over the judging window is at most this has stopped
#: (float64's convergence rtol: a run still improving by more is still training)
FROZEN_RTOL = 1e-5


def task_optimum(trace) -> dict | None:
    """The task's float64 optimum as the run recorded it (``extras['optimum']``, where
    the task computed one: logistic regression), when it was attained and the run's
    final weights are finite; None otherwise."""
    extras = getattr(trace, "extras", None)
    opt = extras.get("optimum") if isinstance(extras, dict) else None
    return opt if opt and opt.get("attained") and opt.get("final_finite") else None


def at_optimum(opt: dict) -> bool:
    """The final weights are within the format's tolerance of the optimum, in loss gap
    and in float64 gradient norm."""
    return (float(opt["gap"]) <= float(opt["tol_gap"])
            and float(opt["grad_norm64"]) <= float(opt["tol_grad"]))


def frozen_off_optimum(trace, W: int) -> bool:
    """The run stopped away from its task's float64 optimum: its loss changed by at most
    :data:`FROZEN_RTOL` (relative) over the last ``W`` steps, and its final weights are
    not :func:`at_optimum`. False where no optimum is known. Its own gradient norm,
    measured in its format relative to its start, may look small there: the optimum
    says it is not done."""
    opt = task_optimum(trace)
    if opt is None:
        return False
    loss = trace.metric("loss")
    if loss.size <= W or not np.isfinite(loss[-W - 1:]).all():
        return False
    change = abs(float(loss[-W - 1]) - float(loss[-1])) / max(abs(float(loss[-1])), 1e-300)
    return change <= FROZEN_RTOL and not at_optimum(opt)
