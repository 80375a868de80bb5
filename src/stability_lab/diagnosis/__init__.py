"""Diagnosis: pure functions of traces.

:func:`diagnose` gives a run's verdict and its findings (failure signatures with
onset and evidence). Detectors never run training; they read a trace and its spec.
"""

from __future__ import annotations

from ..trace import Trace
from .findings import FAILED, VERDICTS, Finding, Verdict
from .verdict import DEFAULT_RULES, VerdictRules, decide

__all__ = ["diagnose", "decide", "Finding", "Verdict", "VerdictRules", "DEFAULT_RULES",
           "FAILED", "VERDICTS"]


def diagnose(trace: Trace) -> tuple[Verdict, list[Finding]]:
    """Verdict and findings of one run.

    Findings are the signature catalogue's detectors run on the trace, plus the
    per-layer findings a deep-net task computed while it ran (stored in
    ``trace.extras["deep_findings"]`` because they need the model's hooks).
    """
    from .signatures import detect_all

    verdict = decide(trace)
    if trace.error:
        return verdict, []
    findings = detect_all(trace)
    findings += [Finding(**f) for f in trace.extras.get("deep_findings", [])]
    return verdict, findings
