"""What a sweep comes to: its diagnosed runs, the conditioning report, the
recommendations with what their verification showed, and the advisories.

:func:`stability_lab.lab.run_sweep` builds one; :mod:`stability_lab.report.stored`
rebuilds one from the store; every report (terminal, JSON, HTML) reads one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stability_lab.diagnosis.record import RunResult
from stability_lab.formatting import jsonable
from stability_lab.remedies.rules import Context, Recommendation
from stability_lab.spec import Sweep

if TYPE_CHECKING:
    from stability_lab.run.engine import DataCache


@dataclass
class SweepResult:
    sweep: Sweep
    results: list[RunResult]
    conditioning: dict[str, dict[str, Any]] = field(default_factory=dict)
    recommendations: list[Recommendation] = field(default_factory=list)
    sweep_id: int | None = None
    store_path: str | None = None
    #: task-specific report (policy evaluation for deep nets), or None
    task_report: dict[str, Any] | None = None
    #: before/after rows of mitigation re-runs (``--verify``)
    verification: list[dict[str, Any]] = field(default_factory=list)
    #: the re-runs behind those rows that are not runs of the sweep (stored beside it)
    reruns: list[RunResult] = field(default_factory=list, repr=False, compare=False)
    context: Context | None = None
    #: the sweep's prepared data variants (``--verify`` re-runs reuse them)
    prepared: DataCache | None = field(default=None, repr=False, compare=False)
    #: "verified", "skipped" (more re-runs than verification takes by default), "off"
    #: (--no-verify) or None (the API caller decides)
    verify_status: str | None = None
    #: re-runs verification takes (or took)
    verify_reruns: int | None = None
    #: lower_lr re-runs at a ladder of lrs, per feature scale (verify.py)
    lr_ladder: dict[str, Any] = field(default_factory=dict)
    #: advisories that hold whether or not a run failed (advisories.py)
    advisories: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        from stability_lab.diagnosis.phases import phase_dicts

        out = {
            "sweep": {"id": self.sweep_id, "axes": self.sweep.axis_names,
                      "base": self.sweep.base.to_dict(), "store": self.store_path,
                      "runs": len(self.results)},
            "runs": [
                {"id": r.run_id, "config": r.spec.to_dict(), "label":
                 r.spec.label(self.sweep.axis_names), "verdict": r.verdict.status,
                 "verdict_text": str(r.verdict), "onset_epoch": r.verdict.onset,
                 "final_loss": r.trace.final_loss,
                 "findings": [f.to_dict() for f in r.findings],
                 "phases": phase_dicts(r.trace),
                 "probes": r.trace.probes, "error": r.trace.error, "reused": r.reused,
                 **({"policy": r.spec.policy} if r.spec.policy else {}),
                 **({"attribution": r.trace.extras["attribution"]}
                    if "attribution" in r.trace.extras else {})}
                for r in self.results
            ],
            "conditioning": self.conditioning,
            "recommendations": [rec.to_dict() for rec in self.recommendations],
        }
        if self.task_report is not None:
            out["report"] = self.task_report
        if self.verification:
            out["verification"] = self.verification
        out["advisories"] = self.advisories
        if self.verify_status is not None:
            out["verification_status"] = {"status": self.verify_status,
                                          "reruns": self.verify_reruns,
                                          "lr_ladder": self.lr_ladder}
        return jsonable(out)
