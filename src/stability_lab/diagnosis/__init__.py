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
    """Verdict and findings of one run."""
    verdict = decide(trace)
    findings: list[Finding] = []
    try:
        from .signatures import detect_all
    except ImportError:  # the signature catalogue is optional
        detect_all = None
    if detect_all is not None and not trace.error:
        findings = detect_all(trace)
    return verdict, findings
