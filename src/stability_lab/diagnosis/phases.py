"""Instability phases: an online segmentation of a loss (and gradient-norm) trace.

Each step gets one label, from the statistics of a trailing window of the previous
``window`` finite, non-spike losses (windowed statistics in the spirit of OLMo-core's
spike rule):

- ``collapse``: the loss, a weight or a gradient is non-finite (absorbing: every later
  step is collapse).
- ``spike``: the loss is above mean + k std of the window *and* above the window's
  maximum by ``spike_rel`` of its mean (so rounding noise on a flat plateau is no spike).
  Spike values are kept out of the window.
- ``recovery``: the steps after a spike while the loss is still above the pre-spike
  window maximum and coming down. If it is not back within ``recovery_limit`` steps,
  the spike and its aftermath are relabelled ``divergence``.
- ``divergence``: the loss is above twice its running minimum and the window trends up.
- ``oscillation``: over the last 2W steps the loss differences alternate in sign at
  least 85% of the time, the swing is above rounding noise, and there is no net descent.
- ``stable_descent``: the window's second half is below its first half by more than the
  noise (2 std / sqrt(W/2)) and ``rtol`` relative.
- ``plateau``: none of the above (a converged run ends in a plateau; its evidence says
  whether the gradient is small).

A label change takes effect only after it has held for ``patience`` steps (hysteresis),
except collapse and spike, which take effect at once; the phase's start is the first step
of the new label. Phases are contiguous, 1-based and inclusive.

Use :class:`PhaseTracker` online (``update(loss, grad_norm)`` per step, ``phases`` at any
time), or :func:`segment` on a finished :class:`~stability_lab.trace.Trace`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stability_lab.formatting import jsonable
from stability_lab.diagnosis.signatures.common import trace_format
from stability_lab.diagnosis.signatures.dynamics import SPIKE_K, SPIKE_REL

PHASES = ("stable_descent", "plateau", "oscillation", "spike", "recovery", "divergence",
          "collapse")


def _std(x: np.ndarray) -> float:
    """Standard deviation without overflow: losses of 1e200 are common in divergence,
    and their squares are not representable. Scaled by the largest |x| (exact for a
    power of two), two-pass."""
    if x.size == 0:
        return math.nan
    with np.errstate(invalid="ignore", over="ignore"):
        top = float(np.max(np.abs(x)))
        if not math.isfinite(top) or top == 0:
            return 0.0 if top == 0 else math.nan
        scale = 2.0 ** math.frexp(top)[1]
        return float(np.std(x / scale)) * scale


@dataclass
class Phase:
    name: str
    start: int  # 1-based, inclusive
    end: int  # 1-based, inclusive
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"name": self.name, "start": self.start, "end": self.end,
                         "evidence": self.evidence})


class PhaseTracker:
    """Online phase segmentation; feed one step at a time with :meth:`update`."""

    def __init__(self, window: int = 10, k: float = SPIKE_K, spike_rel: float = SPIKE_REL,
                 rtol: float = 1e-4, patience: int = 3, recovery_limit: int = 50,
                 noise_eps: float = 2.0 ** -23):
        self.window = max(3, int(window))
        self.k = float(k)
        self.spike_rel = float(spike_rel)
        self.rtol = float(rtol)
        self.patience = max(1, int(patience))
        self.recovery_limit = int(recovery_limit)
        self.noise_eps = float(noise_eps)
        self.step = 0
        self._hist: deque[float] = deque(maxlen=self.window)  # clean values for stats
        self._recent: deque[float] = deque(maxlen=2 * self.window)  # every finite value
        self._running_min = math.inf
        self._g0: float | None = None
        self._phases: list[Phase] = []
        self._pending: tuple[str, int, dict] | None = None  # (label, first step, evidence)
        self._spike_top: float | None = None  # pre-spike window maximum while recovering
        self._spike_start: int | None = None
        self._collapsed = False

    # -- feeding -------------------------------------------------------------------
    def update(self, loss: float, grad_norm: float = math.nan, nonfinite: bool = False) -> str:
        """Label one step; returns the label of the phase the step now belongs to."""
        self.step += 1
        t = self.step
        loss = float(loss)
        label, evidence = self._label(loss, float(grad_norm), nonfinite)
        self._commit(label, t, evidence)
        if math.isfinite(loss):
            self._recent.append(loss)
            if label not in ("spike", "recovery"):
                self._hist.append(loss)
            self._running_min = min(self._running_min, loss)
        return self._phases[-1].name

    def _label(self, loss: float, grad: float, nonfinite: bool) -> tuple[str, dict]:
        if self._g0 is None and math.isfinite(grad) and grad > 0:
            self._g0 = grad
        if self._collapsed or nonfinite or not math.isfinite(loss):
            self._collapsed = True
            return "collapse", {"loss": loss}
        hist = np.fromiter(self._hist, float) if self._hist else np.empty(0)
        if self._spike_top is not None:
            if loss <= self._spike_top:
                self._spike_top = None
                self._spike_start = None
            elif self.step - (self._spike_start or self.step) > self.recovery_limit:
                self._relabel_divergence()
                self._spike_top = None
                return "divergence", {"loss": loss, "reason": "spike did not recover"}
            else:
                return "recovery", {"loss": loss, "target": self._spike_top}
        if hist.size >= min(self.window, 3):
            mu, sd, top = float(hist.mean()), _std(hist), float(hist.max())
            if loss > mu + self.k * sd and loss - top > self.spike_rel * abs(mu):
                self._spike_top = top
                self._spike_start = self.step
                z = (loss - mu) / sd if sd > 0 else math.inf
                return "spike", {"loss": loss, "window_mean": mu, "window_std": sd, "z": z}
        recent = np.fromiter(self._recent, float) if self._recent else np.empty(0)
        gr = grad / self._g0 if self._g0 and math.isfinite(grad) else math.nan
        if recent.size >= 4:
            half = max(2, min(self.window, recent.size) // 2)
            w = recent[-2 * half:]
            first, second = w[: w.size // 2], w[w.size // 2:]
            level = max(abs(float(np.median(w))), 1e-300)
            noise = _std(np.diff(w)) / math.sqrt(max(1, second.size))
            drop = float(first.mean() - second.mean())
            amp = float(w.max() - w.min())
            d = np.diff(w)
            s = np.sign(d[d != 0])
            rate = float(np.mean(s[1:] != s[:-1])) if s.size > 2 else 0.0
            if (loss > 2.0 * max(self._running_min, 1e-300) and loss > 0
                    and -drop > max(2 * noise, self.rtol * level)):
                return "divergence", {"loss": loss, "running_min": self._running_min}
            if (recent.size >= 8 and rate >= 0.85 and amp > 8 * self.noise_eps * level
                    and abs(drop) < 0.25 * amp):
                return "oscillation", {"sign_change_rate": rate, "amplitude": amp}
            if drop > max(2 * noise, self.rtol * level):
                return "stable_descent", {"drop": drop, "grad_ratio": gr}
            return "plateau", {"level": level, "grad_ratio": gr}
        return "stable_descent", {"grad_ratio": gr}

    def _commit(self, label: str, t: int, evidence: dict) -> None:
        if not self._phases:
            self._phases.append(Phase(label, t, t, evidence))
            return
        cur = self._phases[-1]
        if label == cur.name:
            cur.end = t
            self._pending = None
            return
        immediate = label in ("collapse", "spike", "recovery") or cur.name in ("spike",)
        if immediate:
            self._pending = None
            self._phases.append(Phase(label, t, t, evidence))
            return
        if self._pending is None or self._pending[0] != label:
            self._pending = (label, t, evidence)
        cur.end = t
        if t - self._pending[1] + 1 >= self.patience:
            start = self._pending[1]
            cur.end = start - 1
            if cur.end < cur.start:
                self._phases.pop()
            self._phases.append(Phase(label, start, t, self._pending[2]))
            self._pending = None
            self._merge_tail()

    def _merge_tail(self) -> None:
        if len(self._phases) >= 2 and self._phases[-2].name == self._phases[-1].name:
            last = self._phases.pop()
            self._phases[-1].end = last.end

    def _relabel_divergence(self) -> None:
        start = self._spike_start or self.step
        while self._phases and self._phases[-1].start >= start:
            self._phases.pop()
        if self._phases and self._phases[-1].end >= start:
            self._phases[-1].end = start - 1
        self._phases.append(Phase("divergence", start, self.step - 1,
                                  {"reason": "spike did not recover"}))

    # -- reading ---------------------------------------------------------------------
    @property
    def phases(self) -> list[Phase]:
        return list(self._phases)

    @property
    def current(self) -> str | None:
        return self._phases[-1].name if self._phases else None


def segment(trace, **options: Any) -> list[Phase]:
    """Phases of a finished trace (loss, grad_norm and non-finite counts per step)."""
    loss = trace.metric("loss")
    if loss.size == 0:
        return []
    grad = trace.metric("grad_norm")
    nfw, nfg = trace.nonfinite_counts()
    bad = (nfw > 0) | (nfg > 0)
    if "noise_eps" not in options:
        options["noise_eps"] = trace_format(trace).eps
    tracker = PhaseTracker(**options)
    for i in range(loss.size):
        tracker.update(loss[i], grad[i], bool(bad[i]))
    return tracker.phases


def phase_dicts(trace) -> list[dict[str, Any]]:
    """The phases of a trace as JSON-able dicts (``[]`` for a trace without steps)."""
    return [p.to_dict() for p in segment(trace)]


def segment_values(loss, grad_norm=None, **options: Any) -> list[Phase]:
    """Phases of bare arrays (for hand-made traces and other tools)."""
    loss = np.asarray(loss, dtype=np.float64)
    grad = np.full(loss.shape, np.nan) if grad_norm is None else np.asarray(grad_norm, float)
    tracker = PhaseTracker(**options)
    for i in range(loss.size):
        tracker.update(loss[i], grad[i])
    return tracker.phases
