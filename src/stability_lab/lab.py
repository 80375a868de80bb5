"""The lab's main job: run a sweep, diagnose every run, recommend, store.

This is the Python API behind ``stability-lab run``::

    from stability_lab import RunSpec, Sweep, run_sweep
    result = run_sweep(Sweep(RunSpec(), [("precision", ["float64", "float16"])]))
    for r in result.results:
        print(r.spec.precision, r.verdict)

Order of work: validate every spec and load every data variant (bad input raises
:class:`~stability_lab.errors.LabError` before anything is written), then open the
store, run the specs (cohorts in lockstep), diagnose and store each run as soon as
its cohort finishes, then compute the conditioning report and the recommendations.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from stability_lab.run import engine
from stability_lab.diagnosis.findings import Finding, Verdict
from stability_lab.diagnosis.policy_evaluation import sweep_report
from stability_lab.diagnosis.record import RunResult, diagnose_trace, record_of, trace_from_record
from stability_lab.errors import LabError
from stability_lab.formatting import from_jsonable
from stability_lab.remedies.recommend import recommend
from stability_lab.remedies.rules import Context
from stability_lab.remedies.sweep_result import SweepResult
from stability_lab.spec import Sweep, content_digests
from stability_lab.spec.tasks import task_entry
from stability_lab.store import Store
from stability_lab.trace import Trace


def run_sweep(sweep: Sweep, *, out: str | Path | None = None, command: str = "",
              progress: Callable[[int, int], None] | None = None, cohorts: bool = True,
              rerun: bool = False, executor: Any = None) -> SweepResult:
    """Run, diagnose, recommend and (if ``out`` is given) store one sweep.

    ``executor`` runs the cohorts elsewhere (:class:`stability_lab.run.executor.DaskExecutor`);
    their traces come back here, and only this process writes the store."""
    specs = sweep.specs
    if out is not None:
        from stability_lab.paths import check_output_dir

        check_output_dir(out)  # before any work: a sweep never runs only to fail to save
    prepared = engine.prepare(specs)  # raises on bad input: nothing written yet
    store = Store(out) if out is not None else None
    results: list[RunResult | None] = [None] * len(specs)
    sweep_id = None
    stored = False  # whether this sweep stored anything (a run or a link)
    try:
        if store is not None:
            sweep_id = store.begin_sweep(command, sweep.base.task, sweep.axes, sweep.base)
            if not rerun:
                for i, spec in enumerate(specs):
                    if store.has_run(spec.run_id):
                        rec = store.load_run(spec.run_id)
                        res = RunResult(spec, trace_from_record(rec),
                                        Verdict(**_verdict_fields(rec)),
                                        [Finding(**f) for f in from_jsonable(rec["findings"])],
                                        reused=True)
                        results[i] = res
                        store.link(sweep_id, spec.run_id, i)
                        stored = True
        todo = [i for i, r in enumerate(results) if r is None]

        def sink(j: int, trace: Trace) -> None:
            i = todo[j]
            trace.meta.update(content_digests(trace.spec))  # what the run id hashed
            res = diagnose_trace(trace)
            results[i] = res
            if store is not None:
                nonlocal stored
                store.save_run(record_of(res), trace.metrics, sweep_id, i)
                stored = True

        done_before = len(specs) - len(todo)

        def relay(done: int, total: int) -> None:
            if progress:
                progress(done_before + done, len(specs))

        if progress:  # the work starts: every check has passed, the store is open
            progress(done_before, len(specs))
        engine.run_specs([specs[i] for i in todo], prepared, relay, cohorts, sink,
                         executor=executor)
        final = [r for r in results if r is not None]
        from stability_lab.diagnosis import attach_references, reconcile

        # never narrower-and-converged beside wider-and-not; silent digit loss against
        # the matched float64 run
        again = reconcile(final)
        again += [r for r in attach_references(final) if r not in again]
        for res in again:
            if store is not None:
                store.save_run(record_of(res), res.trace.metrics, sweep_id,
                               results.index(res))
        conditioning, ctx = _context(final, prepared, sweep)
        recs = recommend(ctx)
        # deep-net sweeps: the policy evaluation (cheapest policy within tolerance)
        report = sweep_report(final) if task_entry(sweep.base.task).family == "deep" else None
        result = SweepResult(sweep, final, conditioning, recs, sweep_id,
                             str(store.path) if store else None, report, context=ctx,
                             prepared=prepared)
        from stability_lab.remedies.advisories import advisories

        result.advisories = advisories(result)
        if store is not None:
            store.finish_sweep(sweep_id, conditioning, [r.to_dict() for r in recs])
        return result
    except LabError:
        # a user error that surfaced mid-sweep (a build() failing on its second call):
        # no sweep row is left behind unless runs were stored in it
        if store is not None and not stored:
            store.discard_if_unused(sweep_id)
        raise
    finally:
        if store is not None:
            store.close()


def _verdict_fields(rec: dict[str, Any]) -> dict[str, Any]:
    return {"status": rec["verdict"], "onset": rec["onset"], "detail": rec["verdict_detail"] or ""}


def _context(results: list[RunResult], prepared: engine.DataCache,
             sweep: Sweep) -> tuple[dict[str, dict[str, Any]], Context]:
    conditioning: dict[str, dict[str, Any]] = {}
    grams: dict[tuple, np.ndarray] = {}
    standardized: dict[str, float] = {}
    #: variant key -> its conditioning facts, each variant computed once
    facts_of: dict[tuple, dict[str, Any]] = {}
    for (task_name, data_key), variant in prepared.variants.items():
        task = prepared.task(task_name)
        facts = facts_of[(task_name, data_key)] = task.conditioning(variant)
        if facts:
            conditioning[getattr(variant, "variant", str(data_key))] = facts
        eig = getattr(variant, "feature_eig", None)  # extremes of X^T X / n
        if eig is not None:
            grams[(variant.source, variant.scale, variant.fmt.name)] = eig
    #: standardized float64 variants already looked at (their value finite or not)
    tried: set[tuple] = set()
    for r in results:
        source = r.spec.data
        if source in standardized or "cond_XtX" not in r.trace.probes.get("start", {}):
            continue
        task = prepared.task(r.spec.task)
        std_spec = r.spec.replace(scale="standardized", precision="float64")
        key = (std_spec.task, task.data_key(std_spec))
        if key in tried:
            continue
        tried.add(key)
        if key not in facts_of:
            facts_of[key] = task.conditioning(prepared.get(std_spec))
        value = facts_of[key].get("cond_XtX")
        if value is not None and math.isfinite(value):
            standardized[source] = float(value)
    return conditioning, Context(results, conditioning, standardized, sweep.axis_names, grams)


def verify_and_store(result: SweepResult, out: str | Path | None = None,
                     max_groups: int | None = None) -> list[dict[str, Any]]:
    """Verify a sweep's recommendations (:func:`stability_lab.remedies.verify.verify_sweep`)
    and store the re-runs and their before/after rows beside the sweep in ``out``."""
    from stability_lab.remedies.verify import MAX_GROUPS, verify_sweep

    rows = verify_sweep(result, MAX_GROUPS if max_groups is None else max_groups)
    if out is not None and rows:
        with Store(out) as store:
            for res in result.reruns:
                store.save_run(record_of(res), res.trace.metrics)
            for row in rows:
                store.save_verification(row["run_id"], row["mitigation"], row["fixed_run_id"],
                                        row)
    return rows
