"""A stored sweep as a ``SweepResult``: what ``stability-lab report SWEEP_ID`` renders.

Everything comes from the store (``store.py``): the sweep's axes and base spec, each
run's spec, trace (metrics, probes, extras such as the per-layer attribution), verdict
and findings, the sweep's conditioning and recommendations, and (columns added by a
migration) the task's report, the verification rows and the note. For a sweep stored
before those columns existed, the policy evaluation is recomputed from the runs (deep
nets; no torch needed) and the verification rows are the ones stored beside its runs.
A report rendered from the store is the one the sweep printed when it ran.
"""

from __future__ import annotations


from stability_lab.errors import UsageError
from stability_lab.diagnosis.policy_evaluation import sweep_report
from stability_lab.spec.tasks import task_entry


def parse_sweep_id(text: str, store) -> int:
    """``SWEEP_ID`` (an integer, or ``last``) -> an id the store holds."""
    if text == "last":
        last = store.last_sweep_id()
        if last is None:
            raise UsageError(f"The store {store.path} holds no sweep yet; run one first.")
        return last
    try:
        sweep_id = int(text)
    except ValueError:
        raise UsageError(f"SWEEP_ID must be a sweep number (as 'stability-lab run' prints "
                         f"it: '(sweep 3)') or 'last'. Got {text!r}.") from None
    if store.load_sweep(sweep_id) is None:
        last = store.last_sweep_id()
        have = f"it holds sweeps 1 to {last}" if last else "it holds no sweep"
        raise UsageError(f"No sweep {sweep_id} in {store.path} ({have}); pass a sweep number "
                         "printed by 'stability-lab run' or the right --out.")
    return sweep_id


def load_result(store, sweep_id: int):
    """The stored sweep ``sweep_id`` as a ``SweepResult`` (runs in sweep order)."""
    from stability_lab.diagnosis.findings import Finding, Verdict
    from stability_lab.formatting import from_jsonable
    from stability_lab.remedies.sweep_result import SweepResult
    from stability_lab.diagnosis.record import trace_from_record
    from stability_lab.remedies.rules import Recommendation
    from stability_lab.diagnosis.record import RunResult
    from stability_lab.spec import RunSpec, Sweep

    row = store.load_sweep(sweep_id)
    axes = [(name, list(values)) for name, values in (row["axes"] or [])]
    sweep = Sweep(RunSpec.from_dict(row["base"]), axes)
    results = []
    for run_id in store.run_ids(sweep_id):
        rec = store.load_run(run_id)
        if rec is None:  # pragma: no cover - a link to a run deleted by hand
            continue
        verdict = Verdict(rec["verdict"] or "error", rec["onset"], rec["verdict_detail"] or "")
        findings = [Finding(**f) for f in from_jsonable(rec["findings"] or [])]
        results.append(RunResult(RunSpec.from_dict(rec["spec"]), trace_from_record(rec),
                                 verdict, findings))
    if not results:
        raise UsageError(f"Sweep {sweep_id} in {store.path} has no stored run (it was "
                         "interrupted before its first run finished); run it again.")
    recs = [Recommendation(**{**r, "runs": tuple(r.get("runs") or ())})
            for r in (row["recommendations"] or [])]
    report = row.get("report")
    entry = task_entry(sweep.base.task)
    if report is None and entry is not None and entry.family == "deep" \
            and results[0].trace.step_unit == "step":
        # a store from before the report column: recomputed from the stored traces
        report = sweep_report(results)
    verification = row.get("verification")
    if verification is None:
        verification = store.verification_rows([r.run_id for r in results])
    result = SweepResult(sweep, results, row["conditioning"] or {}, recs, sweep_id,
                         str(store.path), report, verification)
    result.note = row.get("note")
    result.command = row.get("command")
    return result

