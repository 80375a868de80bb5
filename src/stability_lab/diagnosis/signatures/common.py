"""What the detectors read and how they print it, shared by the signature files.

Detectors read a trace through these helpers so that a missing metric, probe or context
entry reads as "no evidence" (NaN, None), never as an error. :func:`example_trace` builds
the hand-made traces the records declare (``fires_on``, ``silent_on``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from stability_lab.precision import FORMATS, Format
from stability_lab.spec import RunSpec
from stability_lab.trace import Trace


def entry(box: Any, key: str) -> Any:
    """``box[key]`` of a trace's ``probes`` or ``extras``; None when absent (or not a dict)."""
    return box.get(key) if isinstance(box, dict) else None


def trace_format(trace: Trace) -> Format:
    """The number format of the run's parameters (float32 when unknown)."""
    info = entry(trace.extras, "format")
    if isinstance(info, dict) and info.get("name") in FORMATS:
        return FORMATS[info["name"]]
    for name in (trace.spec.precision, trace.spec.policy):
        if name in FORMATS:
            return FORMATS[name]
    policy = str(trace.spec.policy or "")
    if "bf16" in policy or "bfloat16" in policy:
        return FORMATS["bfloat16"]
    if "fp16" in policy or "float16" in policy:
        return FORMATS["float16"]
    return FORMATS["float32"]


def gradient_format(trace: Trace) -> Format:
    """The number format the run's gradients are rounded to: a precision policy's
    gradient format (``extras['format']['gradients']``: float16 under mixed-fp16, whose
    parameters are float32), else the parameters' format."""
    info = entry(trace.extras, "format")
    name = info.get("gradients") if isinstance(info, dict) else None
    return FORMATS[name] if name in FORMATS else trace_format(trace)


def first_nonfinite(trace: Trace) -> int:
    """0-based index of the first step with a non-finite loss, weight or gradient (or n)."""
    loss = trace.metric("loss")
    nfw, nfg = trace.nonfinite_counts()
    bad = ~np.isfinite(loss) | (nfw > 0) | (nfg > 0)
    return int(np.argmax(bad)) if bad.any() else len(loss)


def loss_while_finite(trace: Trace) -> np.ndarray:
    """The loss of the steps before the first non-finite loss, weight or gradient."""
    return trace.metric("loss")[:first_nonfinite(trace)]


def grad_small(trace: Trace, fmt: Format) -> np.ndarray:
    """Per step: the gradient norm is below the convergence tolerance relative to its
    initial value (1e-3, or sqrt(eps) of a narrower format)."""
    grad = trace.metric("grad_norm")
    g0 = grad[0] if grad.size and np.isfinite(grad[0]) and grad[0] > 0 else 1.0
    gtol = max(1e-3, math.sqrt(fmt.eps))
    return grad / g0 <= gtol


def growing(loss: np.ndarray) -> bool:
    """The finite loss ends far above its running minimum (diverging, not settling)."""
    fin = loss[np.isfinite(loss)]
    if fin.size < 3:
        return False
    return bool(fin[-1] > 4.0 * max(float(np.min(fin)), 1e-300) and fin[-1] > 0)


def probe(trace: Trace, group: str, name: str) -> float | None:
    """A probe value as a float (None when absent or not a number)."""
    value = (entry(trace.probes, group) or {}).get(name)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def number(x: Any) -> str:
    """A value of the evidence for a finding's message: 3 significant digits, 'n/a'."""
    if x is None:
        return "n/a"
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3g}"


# -- hand-made traces ---------------------------------------------------------------------
def healthy_loss(n: int = 100) -> np.ndarray:
    """A loss that descends smoothly and settles: 0.2 + 0.5 exp(-step / 10)."""
    return 0.2 + 0.5 * np.exp(-0.1 * np.arange(n))


def example_trace(loss, *, precision: str = "float64", lr: float = 0.1, lam: float = 0.0,
                  task: str = "logistic_regression", policy: str | None = None,
                  step_unit: str = "epoch", probes: dict | None = None,
                  extras: dict | None = None, **metrics) -> Trace:
    """A hand-made trace: ``loss`` and the named per-step metrics (a gradient norm falling
    from 1 to 1e-6 unless given), as a run of that spec would leave them."""
    loss = np.asarray(loss, dtype=np.float64)
    arrays = {"loss": loss, "grad_norm": np.linspace(1.0, 1e-6, loss.size)}
    arrays.update({k: np.asarray(v, dtype=np.float64) for k, v in metrics.items()})
    spec = RunSpec(task=task, precision=precision, policy=policy, lr=lr, lam=lam)
    return Trace(spec=spec, metrics=arrays, probes=probes or {}, extras=extras or {},
                 step_unit=step_unit)
