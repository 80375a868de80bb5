"""The record of one run as the rest of the lab sees it: spec, trace, verdict, findings.

:class:`RunResult` is what diagnosis makes of a :class:`~stability_lab.trace.Trace`
(:func:`diagnose_trace`), what recommendation rules read, what verification compares
before and after, and what the store keeps (:func:`record_of`); :func:`trace_from_record`
turns a stored record back into a trace (``show``, ``report``, reuse of stored runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stability_lab.diagnosis import diagnose
from stability_lab.diagnosis.findings import Finding, Verdict
from stability_lab.formatting import from_jsonable
from stability_lab.spec import RunSpec
from stability_lab.trace import Trace


@dataclass
class RunResult:
    """A run as the report sees it: spec, trace, verdict, findings."""

    spec: RunSpec
    trace: Trace
    verdict: Verdict
    findings: list[Finding] = field(default_factory=list)
    #: True when the run was loaded from the store rather than run now
    reused: bool = False

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @property
    def failed(self) -> bool:
        return self.verdict.failed

    @property
    def healthy(self) -> bool:
        return self.verdict.status == "converged"

    def record(self) -> dict[str, Any]:
        return {
            "id": self.run_id,
            "config": self.spec.to_dict(),
            "verdict": self.verdict.to_dict(),
            "onset_epoch": self.verdict.onset,
            "final_loss": self.trace.final_loss,
            "findings": [f.to_dict() for f in self.findings],
            "summary": summary(self.trace),
            "probes": self.trace.probes,
            "meta": self.trace.meta,
            "extras": self.trace.extras,
            "error": self.trace.error,
            "step_unit": self.trace.step_unit,
        }


def summary(trace: Trace) -> dict[str, Any]:
    """Last and extreme values of the metrics, for tables and the store."""
    out: dict[str, Any] = {"steps": trace.n_steps}
    for name, values in trace.metrics.items():
        v = np.asarray(values, dtype=np.float64)
        if v.size == 0:
            continue
        out[f"{name}_last"] = float(v[-1])
        finite = v[np.isfinite(v)]
        if finite.size:
            out[f"{name}_max"] = float(finite.max())
    return out



def trace_from_record(rec: dict[str, Any]) -> Trace:
    """Rebuild a trace from a stored run (for reuse and for ``show``)."""
    extras = dict(rec.get("extras") or {})
    params = extras.pop("final_params", None)
    return Trace(
        spec=RunSpec.from_dict(rec["spec"]),
        metrics={k: np.asarray(v, dtype=np.float64) for k, v in rec["metrics"].items()},
        probes=from_jsonable(rec.get("probes") or {}),
        meta=rec.get("meta") or {},
        step_unit=rec.get("step_unit") or "epoch",
        error=rec.get("error"),
        extras=extras,
        final_params=None if params is None else np.asarray(from_jsonable(params),
                                                            dtype=np.float64),
    )


def diagnose_trace(trace: Trace) -> RunResult:
    verdict, findings = diagnose(trace)
    return RunResult(trace.spec, trace, verdict, findings)


def record_of(result: RunResult) -> dict[str, Any]:
    """The store's record of a run (its final parameters kept when small)."""
    rec = result.record()
    params = result.trace.final_params
    if params is not None and params.size <= 10_000:
        rec["extras"] = {**rec["extras"], "final_params": params}
    return rec
