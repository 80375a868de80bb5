"""Verification: re-run a failing run with each recommended fix, same seed, and compare.

For a sweep (``stability-lab run ... --verify``), :func:`verify_sweep`:

1. takes every failing run (verdict in ``FAILED``) and the recommendations that list it;
2. verifies every one of them when the task runs in lockstep cohorts and the re-runs
   number at most ``MAX_RERUNS`` (cheap: they run as cohorts too); otherwise it groups
   them by (set of recommendations, verdict) and verifies one representative per
   group, the first in sweep order (at most ``max_groups`` groups; the table says how
   many runs each representative stands for and how many groups were left out);
3. re-runs each verified spec with each recommendation's ``delta`` applied alone
   (``spec.replace(**delta)``) and with all deltas together (merged in recommendation
   order; a later delta wins on a shared key), with the same seed, data order and,
   unless the delta changes it, precision. When "all" changes the data (feature
   scaling) and lowers lr, the lr bound is recomputed for the new data (an lr below
   2/L of raw features is needlessly tiny once they are standardized);
4. runs the matched float64 run of every before/after spec that is not float64, and
   records the digits agreeing with it (LRE of the final loss; of the weights too, in
   ``extras['reference']``), which also feeds the ``silent_digit_loss`` detector;
5. stores every re-run with ``Store.save_run`` (so ``show`` works on it) and every row
   with ``Store.save_verification`` beside the original run.

A row is ``fixed`` when the re-run converged and none of the failing run's signatures
(warning or error) is detected in it; its ``outcome`` is ``fixed``, ``improved`` (the
re-run no longer fails but has not converged in the epochs given) or ``not fixed``. A
mitigation that does not fix the run is kept in the table with ``fixed: false``.

The signature catalogue (:mod:`stability_lab.catalogue`) builds its rows with the same
:func:`make_row`, :func:`merge_deltas`, :func:`rebound_lr` and :func:`rediagnose`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .diagnosis.findings import FAILED
from .diagnosis.signatures import attach_reference, detect_all
from .params import DEFAULT_LABEL_AXES
from .recommend import Recommendation, RunResult, safe_lr

MAX_GROUPS = 8
#: exhaustive verification (every failing run) up to this many re-runs
MAX_RERUNS = 600


@dataclass
class Attempt:
    """One re-run to make: ``before`` with ``delta`` applied, named ``mitigation``."""

    before: RunResult
    mitigation: str
    delta: dict[str, Any]
    group_size: int = 1


def merge_deltas(recs: Sequence[Recommendation]) -> dict[str, Any]:
    """All recommendations' deltas together, in order (later wins on a shared key)."""
    out: dict[str, Any] = {}
    for rec in recs:
        out.update(rec.delta)
    return out


def _alarms(result: RunResult) -> set[str]:
    """The signatures of the run's warning and error findings."""
    return {f.signature for f in result.findings if f.severity in ("warning", "error")}


def side(result: RunResult, digits: float | None) -> dict[str, Any]:
    """One side (before or after) of a verification row."""
    conv = result.verdict.onset if result.verdict.status == "converged" else None
    return {
        "run_id": result.run_id,
        "verdict": result.verdict.status,
        "verdict_text": str(result.verdict),
        "final_loss": result.trace.final_loss,
        "epochs_to_converge": conv,
        "steps": result.trace.n_steps,
        "digits": digits,
        "findings": sorted(_alarms(result)),
    }


def is_fixed(before: RunResult, after: RunResult, target: str | None = None) -> bool:
    """The after-run no longer shows the failure.

    With a ``target`` signature (the catalogue): the target is no longer detected, and the
    re-run converged (when the baseline failed) or at least did not fail (when it did not:
    a silent failure's 'converged' verdict is not to be trusted). Without one (sweeps):
    the re-run converged and none of the before-run's warning/error signatures remain.
    """
    after_sigs = _alarms(after)
    if target is not None:
        # a failed baseline must now converge; otherwise the re-run must not fail
        required = 2 if before.verdict.status in FAILED else 1
        return target not in after_sigs and _rank(after) >= required
    return after.verdict.status == "converged" and not (_alarms(before) & after_sigs)


def make_row(attempt: Attempt, after: RunResult, digits_before: float | None,
             digits_after: float | None, target: str | None = None,
             label: str | None = None) -> dict[str, Any]:
    before = attempt.before
    return {
        "run_id": before.run_id,
        "label": label or before.run_id[:8],
        "mitigation": attempt.mitigation,
        "delta": dict(attempt.delta),
        "fixed_run_id": after.run_id,
        "group_size": attempt.group_size,
        "before": side(before, digits_before),
        "after": side(after, digits_after),
        "fixed": (fixed := is_fixed(before, after, target)),
        "outcome": outcome(before, after, fixed),
    }


def _rank(result: RunResult) -> int:
    status = result.verdict.status
    return 2 if status == "converged" else (0 if status in FAILED else 1)


# -- sweeps -----------------------------------------------------------------------------
def plan(results: Sequence[RunResult], recommendations: Sequence[Recommendation],
         max_groups: int = MAX_GROUPS, exhaustive: bool = False,
         ) -> tuple[list[Attempt], dict[str, Any]]:
    """The re-runs to make for a sweep: every failing run (``exhaustive``, if the re-runs
    fit in MAX_RERUNS) or one representative per (recommendations, verdict) group."""
    groups: dict[tuple, list[RunResult]] = {}
    recs_of: dict[str, list[Recommendation]] = {}
    unrecommended = 0
    for r in results:
        if not r.failed or r.trace.error:
            continue
        recs = [rec for rec in recommendations if r.run_id in rec.runs]
        if not recs:
            unrecommended += 1
            continue
        recs_of[r.run_id] = recs
        key = (tuple(rec.action for rec in recs), r.verdict.status)
        groups.setdefault(key, []).append(r)
    keys = list(groups)
    n_rerun = sum(len(m) * (len(k[0]) + (len(k[0]) > 1)) for k, m in groups.items())
    exhaustive = exhaustive and n_rerun <= MAX_RERUNS
    attempts: list[Attempt] = []
    for key in (keys if exhaustive else keys[:max_groups]):
        members = groups[key]
        for rep in (members if exhaustive else members[:1]):
            size = 1 if exhaustive else len(members)
            recs = recs_of[rep.run_id]
            for rec in recs:
                attempts.append(Attempt(rep, rec.action, dict(rec.delta), size))
            if len(recs) > 1:
                attempts.append(Attempt(rep, "all", merge_deltas(recs), size))
    info = {"failing_runs": sum(len(m) for m in groups.values()) + unrecommended,
            "groups": len(keys),
            "groups_verified": len(keys) if exhaustive else min(len(keys), max_groups),
            "exhaustive": exhaustive,
            "without_recommendation": unrecommended, "max_groups": max_groups}
    return attempts, info


def outcome(before: RunResult, after: RunResult, fixed: bool) -> str:
    if fixed:
        return "fixed"
    if before.verdict.status in FAILED and after.verdict.status not in FAILED:
        return "improved"
    return "not fixed"


def rebound_lr(before, delta: dict[str, Any], prepared=None) -> None:
    """A combined fix that rescales the data and lowers lr: take the new data's bound.

    A "lower lr" delta is 0.9 * 2/L of the data the failing run saw; once the same fix
    standardizes the features that bound is needlessly tiny (2/L goes from ~5e-6 to ~0.6
    on breast cancer). ``delta['lr']`` becomes min(the run's lr, 0.9 * 2/L of the new
    data). ``before`` is the failing run's RunSpec; tasks without ``lr_bound`` are left
    alone.
    """
    from .engine import Prepared

    if "scale" not in delta or "lr" not in delta:
        return
    prepared = prepared or Prepared()
    spec = before.replace(**delta)
    bound = getattr(prepared.task(spec.task), "lr_bound", None)
    if bound is None:
        return
    delta["lr"] = min(before.lr, safe_lr(bound(spec, prepared.get(spec))))


def verify_sweep(result, out: str | Path | None = None, max_groups: int = MAX_GROUPS,
                 ) -> list[dict[str, Any]]:
    """Verify a sweep's recommendations on its failing runs; fills ``result.verification``."""
    from . import engine
    from .lab import diagnose_trace, record_of
    from .store import Store

    # the sweep's data variants (identical for the same data_key) are reused, not reloaded
    prepared = getattr(result, "prepared", None) or engine.Prepared()
    task = prepared.task(result.sweep.base.task)
    attempts, info = plan(result.results, result.recommendations, max_groups,
                          exhaustive=task.supports_cohort)
    for attempt in attempts:
        if attempt.mitigation == "all":
            rebound_lr(attempt.before.spec, attempt.delta, prepared)
    by_id = {r.run_id: r for r in result.results}
    fixed_specs = [a.before.spec.replace(**a.delta) for a in attempts]
    wanted = []
    for spec in [a.before.spec for a in attempts] + fixed_specs:
        wanted.append(spec)
        if spec.precision != "float64":
            wanted.append(spec.replace(precision="float64"))
    todo, seen = [], set(by_id)
    for spec in wanted:
        if spec.run_id not in seen:
            seen.add(spec.run_id)
            todo.append(spec)
    new: dict[str, RunResult] = {}
    if todo:
        for trace in engine.run_specs(todo, prepared):
            new[trace.run_id] = diagnose_trace(trace)
    pool = {**by_id, **new}

    def digits(res: RunResult) -> float | None:
        if res.spec.precision == "float64":
            return None
        ref = pool.get(res.spec.replace(precision="float64").run_id)
        if ref is None:
            return None
        info_ref = attach_reference(res.trace, ref.trace)
        return info_ref["lre_loss"]

    rows = []
    #: run id -> digits against its float64 run, computed once (the reference attached,
    #: then the run re-diagnosed with it)
    digits_of: dict[str, float | None] = {}
    axes = result.sweep.axis_names or DEFAULT_LABEL_AXES
    for attempt, spec in zip(attempts, fixed_specs):
        after = pool[spec.run_id]
        for res in (attempt.before, after):
            if res.run_id not in digits_of:
                digits_of[res.run_id] = digits(res)
                rediagnose(res)
        row = make_row(attempt, after, digits_of[attempt.before.run_id],
                       digits_of[after.run_id], label=attempt.before.spec.label(axes))
        row["plan"] = info
        rows.append(row)
    if out is not None and rows:
        with Store(out) as store:
            for res in new.values():
                store.save_run(record_of(res), res.trace.metrics)
            for row in rows:
                store.save_verification(row["run_id"], row["mitigation"], row["fixed_run_id"],
                                        row)
    result.verification = rows
    return rows


def rediagnose(res: RunResult) -> None:
    """Detect again now that the float64 reference is attached (silent digit loss)."""
    if not res.trace.error:
        res.findings = detect_all(res.trace)
