"""What the three deep-net tasks share: validation, running, findings, the report."""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from ..spec import RunSpec
from ..tasks.base import Task
from ..trace import Trace
from . import rules  # noqa: F401  (registers the deep-net recommendation rules)


class DeepTask(Task):
    step_unit = "step"
    supports_cohort = False

    def validate(self, spec: RunSpec) -> None:
        from ..deep_axes import POLICIES

        policy = spec.policy or spec.precision
        if policy not in POLICIES:
            raise UsageError(f"Unknown policy {policy!r}; expected one of: {', '.join(POLICIES)}.")
        if not (spec.lr > 0):
            raise UsageError(f"The 'lr' value must be positive. Got {spec.lr!r} instead.")

    def run(self, spec: RunSpec, prepared: Any) -> Trace:
        from .detectors import detect
        from .loop import train

        trace = train(spec, self.problem(spec, prepared))
        trace.extras["deep_findings"] = [f.to_dict() for f in detect(trace)]
        return trace

    def problem(self, spec: RunSpec, prepared: Any):
        raise NotImplementedError

    def sweep_report(self, results: list) -> dict[str, Any]:
        from .report import sweep_report

        return sweep_report(results)

    def format_report(self, report: dict[str, Any], verbose: bool = False) -> str:
        from .report import format_report

        return format_report(report, verbose=verbose)
