"""Traces: what one run measured.

A :class:`Trace` holds per-step metric arrays (one value per epoch for the linear
tasks, per optimizer step for deep nets), the probes taken at the start and the end
of the run (condition numbers, Hessian extremes, computed in float64), and the
environment facts that change low-order bits (thread count, library versions).
Detectors and verdicts are pure functions of a trace.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stability_lab.spec import RunSpec


@dataclass
class Trace:
    spec: RunSpec
    #: name -> float64 array, all of the same length (the number of steps recorded)
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    #: "start"/"end" -> {probe name: value}, plus task-specific probe groups
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: environment: threads, versions, arithmetic semantics used
    meta: dict[str, Any] = field(default_factory=dict)
    #: unit of one metric entry: "epoch" or "step"
    step_unit: str = "epoch"
    #: a run that raised is kept, with its message
    error: str | None = None
    #: task-specific structured results (per-layer attribution, loss-scale history, ...)
    extras: dict[str, Any] = field(default_factory=dict)
    #: final parameters as float64 (small models only), for digit-agreement checks
    final_params: np.ndarray | None = None

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @property
    def n_steps(self) -> int:
        loss = self.metrics.get("loss")
        return 0 if loss is None else len(loss)

    def metric(self, name: str) -> np.ndarray:
        value = self.metrics.get(name)
        if value is None:
            return np.full(self.n_steps, np.nan)
        return np.asarray(value, dtype=np.float64)

    def nonfinite_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Per step: non-finite weights and gradients (0 where the task records none)."""
        return (np.nan_to_num(self.metric("nonfinite_weights"), nan=0.0),
                np.nan_to_num(self.metric("nonfinite_grads"), nan=0.0))

    @property
    def final_loss(self) -> float:
        loss = self.metrics.get("loss")
        if loss is None or len(loss) == 0:
            return float("nan")
        return float(loss[-1])


def environment() -> dict[str, Any]:
    """Facts that change the low bits of results; recorded with every run."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
    }
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "OPENBLAS_CORETYPE"):
        if os.environ.get(var):
            info[var] = os.environ[var]
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    return info
