"""What the three deep-net tasks share: validation, running, findings, the report."""

from __future__ import annotations

from typing import Any

from stability_lab.errors import UsageError
from stability_lab.spec import RunSpec
from stability_lab.tasks.base import Task
from stability_lab.trace import Trace
from stability_lab.remedies import deep_rules as rules  # noqa: F401  (registers the deep-net recommendation rules)


class DeepTask(Task):
    step_unit = "step"
    supports_cohort = False

    def validate(self, spec: RunSpec) -> None:
        from stability_lab.spec.axes import POLICIES

        policy = spec.policy or spec.precision
        if policy not in POLICIES:
            raise UsageError(f"Unknown policy {policy!r}; expected one of: {', '.join(POLICIES)}.")
        if not (spec.lr > 0):
            raise UsageError(f"The 'lr' value must be positive. Got {spec.lr!r} instead.")

    def run(self, spec: RunSpec, prepared: Any) -> Trace:
        from stability_lab.diagnosis.deep import detect
        from stability_lab.run.loop import train

        trace = train(spec, self.problem(spec, prepared))
        trace.extras["deep_findings"] = [f.to_dict() for f in detect(trace)]
        return trace

    def problem(self, spec: RunSpec, prepared: Any):
        raise NotImplementedError

    def sweep_report(self, results: list) -> dict[str, Any]:
        from stability_lab.diagnosis.policy_report import sweep_report

        return sweep_report(results)

    def format_report(self, report: dict[str, Any], verbose: bool = False) -> str:
        from stability_lab.diagnosis.policy_report import format_report

        return format_report(report, verbose=verbose)
