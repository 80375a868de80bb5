"""Diagnosis: pure functions of traces.

:func:`diagnose` gives a run's verdict and its findings (failure signatures with
onset and evidence, from the one registry of :mod:`.signatures`). Detectors never run
training; they read a trace and its spec.
"""

from __future__ import annotations

from stability_lab.trace import Trace
from stability_lab.diagnosis.findings import FAILED, VERDICTS, Finding, Verdict
from stability_lab.diagnosis.signatures import attach_reference, detect_all
from stability_lab.diagnosis.verdict import DEFAULT_RULES, VerdictRules, decide

__all__ = ["diagnose", "reconcile", "attach_references", "decide", "Finding", "Verdict",
           "VerdictRules", "DEFAULT_RULES", "FAILED", "VERDICTS"]


def diagnose(trace: Trace) -> tuple[Verdict, list[Finding]]:
    """Verdict and findings of one run.

    Findings are those of every registered signature that applies to the trace: the
    per-layer ones of a deep-net model included (they read the attribution summary the
    training loop or the watcher recorded in the trace).
    """
    verdict = decide(trace)
    if trace.error:
        return verdict, []
    return verdict, detect_all(trace)


#: formats from wide to narrow: a run is never judged more converged than a wider one
WIDTH = {"float64": 3, "float32": 2, "bfloat16": 1, "float16": 1}


def reconcile(results) -> list:
    """A lower-precision run is never more converged than its matched wider run that is
    closer to the optimum.

    ``results`` are RunResults (spec, trace, verdict). Where a run is ``converged``, its
    matched run in a wider format (same spec otherwise) is ``not_converged`` and that
    run's loss gap to the float64 optimum is no larger, the narrow run becomes
    ``not_converged`` too, with the comparison as its reason. Returns the results whose
    verdict changed (the caller stores them again).
    """
    by_id = {r.spec.run_id: r for r in results}
    changed = []
    for r in results:
        if r.verdict.status != "converged" or r.spec.precision not in WIDTH:
            continue
        mine = (r.trace.extras.get("optimum") or {}).get("gap")
        if mine is None:
            continue
        for wide, rank in WIDTH.items():
            if rank <= WIDTH[r.spec.precision]:
                continue
            twin = by_id.get(r.spec.replace(precision=wide).run_id)
            if twin is None or twin.verdict.status != "not_converged":
                continue
            theirs = (twin.trace.extras.get("optimum") or {}).get("gap")
            if theirs is None or theirs > mine:
                continue
            r.verdict = Verdict(
                "not_converged", None,
                f"loss gap {mine:.2g} to the float64 optimum, while the matched {wide} run, "
                f"closer ({theirs:.2g}), has not converged either",
                {**r.verdict.evidence, "wider_run": twin.run_id, "wider_gap": theirs})
            changed.append(r)
            break
    return changed


def attach_references(results) -> list:
    """Silent digit loss inside a sweep: every converged lower-precision run whose matched
    float64 run (same spec otherwise, so same data, init and seed) also converged gets
    that run as its reference (``extras['reference']``: digits of agreement in the loss
    and the weights) and is diagnosed again, so ``silent_digit_loss`` fires in an
    ordinary sweep, not only in verification. Runs that did not converge are left alone:
    two unconverged runs disagree for reasons that are not the format's. Returns the
    results whose findings changed (the caller stores them again).
    """
    by_id = {r.spec.run_id: r for r in results}
    changed = []
    for r in results:
        if (r.verdict.status != "converged" or r.spec.precision not in WIDTH
                or r.spec.precision == "float64" or getattr(r.spec, "policy", None)
                or r.trace.error or "reference" in r.trace.extras):
            continue
        ref = by_id.get(r.spec.replace(precision="float64").run_id)
        if ref is None or ref.verdict.status != "converged" or ref.trace.error:
            continue
        attach_reference(r.trace, ref.trace)
        before = [f.signature for f in r.findings]
        r.verdict, r.findings = diagnose(r.trace)
        if [f.signature for f in r.findings] != before:
            changed.append(r)
    return changed
