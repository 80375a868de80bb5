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
   ``extras['reference']``), which also feeds the ``silent_digit_loss`` detector; a
   before- or after-run that is a run of the sweep itself keeps the verdict and findings
   the sweep gave it (only its digits are read), so the report the sweep prints and the
   one ``stability-lab report SWEEP_ID`` rebuilds from the store agree;
5. stores every re-run with ``Store.save_run`` (so ``show`` works on it) and every row
   with ``Store.save_verification`` beside the original run.

A row is ``fixed`` when the re-run converged and none of the failing run's signatures
(warning or error) is detected in it; its ``outcome`` is ``fixed``, ``improved`` (the
re-run no longer fails but has not converged in the epochs given) or ``not fixed``; a
re-run of a classifier that ends stuck at chance level (the verdict's ``stuck_at_chance``)
learned nothing and is ``not fixed``, whatever its verdict. A mitigation that does not
fix the run is kept in the table with ``fixed: false``.

For one run and a given list of recommendations (the signature catalogue,
:mod:`stability_lab.catalogue`), :func:`verify_run` makes the same re-runs (each fix
alone, then all together, the lr re-bounded as in 3), runs their float64 references as
in 4, and builds the rows with the same :func:`make_row`, judged against the run's
target signature. It takes the runner, so a run that is not a plain RunSpec of a task
(a computation of the catalogue's own, configured by a dict) is verified the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from stability_lab.diagnosis.findings import FAILED
from stability_lab.diagnosis.record import RunResult
from stability_lab.diagnosis.signatures import agreeing_digits, attach_reference
from stability_lab.formatting import round_sig
from stability_lab.remedies.rules import Recommendation, safe_lr
from stability_lab.spec import RunSpec
from stability_lab.spec.axes import default_label_axes
from stability_lab.trace import Trace

MAX_GROUPS = 8
#: verification runs by default when a sweep needs at most this many re-runs
VERIFY_BY_DEFAULT = 200
#: multiples of the safe lr (0.9 * 2/L) tried to find the largest lr that converges
LR_LADDER = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
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


def fix_deltas(recs: Sequence[Recommendation]) -> list[tuple[str, dict[str, Any]]]:
    """The re-runs that verify recommendations on one run, as (mitigation, delta): each
    recommendation alone, in order, then all of them together when there are several."""
    out = [(rec.action, dict(rec.delta)) for rec in recs]
    if len(recs) > 1:
        out.append(("all", merge_deltas(recs)))
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
        # a float64 run is its own reference (no digits to compare); any other run
        # without digits had no matched float64 run
        "reference": (result.spec.policy or result.spec.precision) == "float64",
        "findings": sorted(_alarms(result)),
    }


def is_fixed(before: RunResult, after: RunResult, target: str | None = None) -> bool:
    """The after-run no longer shows the failure.

    With a ``target`` signature (the catalogue): the target is no longer detected, and the
    re-run converged (when the baseline failed) or at least did not fail (when it did not:
    a silent failure's 'converged' verdict is not to be trusted). Without one (sweeps):
    none of the before-run's warning/error signatures remain and the re-run converged, or,
    for a before-run that did not fail but carried such findings, the re-run does not
    fail and is no less converged.
    """
    if after.verdict.evidence.get("stuck_at_chance"):
        return False  # a classifier that learned nothing is not a fix, converged or not
    after_sigs = _alarms(after)
    if target is not None:
        # a failed baseline must now converge; otherwise the re-run must not fail
        required = 2 if before.verdict.status in FAILED else 1
        return target not in after_sigs and _rank(after) >= required
    alarms = _alarms(before)
    if alarms & after_sigs:
        return False
    if after.verdict.status == "converged":
        return True
    # a run that did not fail but carried warning/error findings (gradient underflow in
    # a run still training): its failure is those findings; gone, with the re-run no
    # less converged and not failing, it is fixed
    return (bool(alarms) and before.verdict.status not in FAILED
            and after.verdict.status not in FAILED and _rank(after) >= _rank(before))


#: digits a least-squares re-run must gain over its before-run to count as fixed
SOLVE_DIGITS_GAINED = 2.0


def solve_fixed(before: RunResult, after: RunResult, digits_before: float | None,
                digits_after: float | None) -> bool:
    """A least-squares solve's failure is lost digits: the re-run did not fail and agrees
    with the reference to at least :data:`SOLVE_DIGITS_GAINED` more digits."""
    if digits_after is None or after.verdict.status in FAILED or after.trace.error:
        return False
    return digits_after >= (digits_before or 0.0) + SOLVE_DIGITS_GAINED


def make_row(attempt: Attempt, after: RunResult, digits_before: float | None,
             digits_after: float | None, target: str | None = None,
             label: str | None = None) -> dict[str, Any]:
    before = attempt.before
    # a sweep's least-squares solve is judged by the digits it recovers (the catalogue's
    # solves, with a target signature, by that signature)
    solve = before.trace.step_unit == "solve" and target is None
    return {
        "run_id": before.run_id,
        "label": label or before.run_id[:8],
        "mitigation": attempt.mitigation,
        "delta": dict(attempt.delta),
        "fixed_run_id": after.run_id,
        "group_size": attempt.group_size,
        "before": side(before, digits_before),
        "after": side(after, digits_after),
        "fixed": (fixed := (solve_fixed(before, after, digits_before, digits_after)
                            if solve else is_fixed(before, after, target))),
        "outcome": outcome(before, after, fixed),
        # what the digits measure: a solve's agreement with its certified/reference
        # coefficients, else the final loss's agreement with the matched float64 run
        "digits_against": "reference" if solve else "float64",
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
        # failing runs, and runs that did not converge which a recommendation lists
        recs = [rec for rec in recommendations if r.run_id in rec.runs]
        # a least-squares solve that lost digits, or a working run with warning/error
        # findings, fails silently: re-run it when a recommendation lists it
        silent = bool(recs) and (r.trace.step_unit == "solve" or bool(_alarms(r)))
        if not (r.failed or r.verdict.status == "not_converged" or silent) or r.trace.error:
            continue
        if not recs:
            unrecommended += r.failed
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
            for mitigation, delta in fix_deltas(recs_of[rep.run_id]):
                attempts.append(Attempt(rep, mitigation, delta, size))
    info = {"failing_runs": sum(len(m) for m in groups.values()) + unrecommended,
            "groups": len(keys),
            "groups_verified": len(keys) if exhaustive else min(len(keys), max_groups),
            "exhaustive": exhaustive,
            "without_recommendation": unrecommended, "max_groups": max_groups}
    return attempts, info


def outcome(before: RunResult, after: RunResult, fixed: bool) -> str:
    if fixed:
        return "fixed"
    if (before.verdict.status in FAILED and after.verdict.status not in FAILED
            and not after.verdict.evidence.get("stuck_at_chance")):
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
    from stability_lab.run.engine import DataCache

    if "scale" not in delta or "lr" not in delta:
        return
    prepared = prepared or DataCache()
    spec = before.replace(**delta)
    bound = getattr(prepared.task(spec.task), "lr_bound", None)
    if bound is None:
        return
    delta["lr"] = min(before.lr, safe_lr(bound(spec, prepared.get(spec))))


def rerun_count(result, max_groups: int = MAX_GROUPS) -> int:
    """How many re-runs verifying a sweep takes (the attempts, not their references)."""
    prepared = getattr(result, "prepared", None)
    exhaustive = True
    if prepared is not None:
        exhaustive = prepared.task(result.sweep.base.task).supports_cohort
    attempts, _ = plan(result.results, result.recommendations, max_groups,
                       exhaustive=exhaustive)
    return len(attempts)


def close_recommendations(result, status: str = "verified", reruns: int | None = None,
                          ) -> None:
    """Attach to each recommendation what verification showed, and give numeric advice
    the value that worked.

    ``status``: "verified" (``result.verification`` holds the rows), "skipped" (too many
    re-runs: each action is marked not verified) or "off" (``--no-verify``). An action
    whose re-runs fixed or improved nothing is ``not_helping``: reports list it as tried,
    never as advice. ``lower_lr`` becomes the largest lr of the ladder that converged on
    re-run, beside the theoretical bound 2/L; when none did, it says so, and a
    ``scale_features`` that helped is put first.
    """
    from dataclasses import replace

    result.verify_status = status
    if reruns is not None:
        result.verify_reruns = reruns
    recs = list(result.recommendations)
    if status != "verified":
        result.recommendations = [replace(r, verification={
            "status": "not_verified", "why": status, "reruns_needed": reruns}) for r in recs]
        return
    rows = result.verification
    ladder = getattr(result, "lr_ladder", {}) or {}
    out = []
    for rec in recs:
        ids = set(rec.runs)
        mine = [r for r in rows if r["mitigation"] == rec.action and r["run_id"] in ids]
        fixed = sum(r.get("outcome") == "fixed" for r in mine)
        improved = sum(r.get("outcome") == "improved" for r in mine)
        info: dict[str, Any] = {"reruns": len(mine), "fixed": fixed, "improved": improved,
                                "status": ("fixed" if fixed else "improved" if improved
                                           else "not_helping" if mine else "not_verified")}
        if not mine:
            info["why"] = "no failing run of this action was re-run"
        text, delta = rec.text, dict(rec.delta)
        lad = (ladder.get(rec.action) or {}).get(str(rec.evidence.get("scale")))
        if rec.action == "lower_lr" and lad:
            info["ladder"] = lad
            bound = rec.evidence.get("lr_bound")
            epochs = lad.get("epochs")
            worked = lad.get("largest_converged")
            if worked is not None:
                c, total = lad["converged_at_largest"]
                text = (f"lower lr to {worked:g} (the largest lr tried that converged within "
                        f"{epochs} epochs on re-run: {c} of {total} re-runs; the theoretical "
                        f"bound 2/L is {bound:.2g})")
                delta["lr"] = worked
                info["status"] = "fixed"
            else:
                info["no_lr_converged"] = True
                text = (f"lower lr to at most {rec.delta.get('lr'):g} (2/L = {bound:.2g}): no lr "
                        f"tried (up to {lad.get('largest_tried'):g}) converged within {epochs} "
                        f"epochs on scale={rec.evidence.get('scale')} features")
        out.append(replace(rec, text=text, delta=delta, verification=info))
    lr_stuck = any(r.action == "lower_lr" and (r.verification or {}).get("no_lr_converged")
                   for r in out)
    if lr_stuck:
        # lead with scaling when no lr converges on the unscaled features
        out.sort(key=lambda r: 0 if r.action == "scale_features" and r.advised else 1)
    result.recommendations = out


def _lr_ladder(attempts: Sequence[Attempt]) -> list[Attempt]:
    """Extra re-runs of each lower_lr attempt at multiples of its safe lr (below the
    failing lr): the largest that converges is the advice that worked."""
    extra = []
    for a in attempts:
        if a.mitigation != "lower_lr" or "lr" not in a.delta:
            continue
        safe = float(a.delta["lr"])
        for k in LR_LADDER[1:]:
            lr = round_sig(safe * k)
            if lr >= a.before.spec.lr:
                break
            extra.append(Attempt(a.before, "lower_lr_ladder", {**a.delta, "lr": lr},
                                 a.group_size))
    return extra


def verify_sweep(result, max_groups: int = MAX_GROUPS) -> list[dict[str, Any]]:
    """Verify a sweep's recommendations on its failing runs; fills ``result.verification``
    (the rows) and ``result.reruns`` (the re-runs that are not runs of the sweep; the
    caller stores both: :func:`stability_lab.lab.verify_and_store`)."""
    from stability_lab.diagnosis.record import diagnose_trace
    from stability_lab.run import engine

    # the sweep's data variants (identical for the same data_key) are reused, not reloaded
    prepared = getattr(result, "prepared", None) or engine.DataCache()
    task = prepared.task(result.sweep.base.task)
    attempts, info = plan(result.results, result.recommendations, max_groups,
                          exhaustive=task.supports_cohort)
    for attempt in attempts:
        if attempt.mitigation == "all":
            rebound_lr(attempt.before.spec, attempt.delta, prepared)
    ladder = _lr_ladder(attempts) if task.supports_cohort else []
    by_id = {r.run_id: r for r in result.results}
    ladder_specs = [a.before.spec.replace(**a.delta) for a in ladder]
    fixed_specs = [a.before.spec.replace(**a.delta) for a in attempts]
    wanted = []
    for spec in [a.before.spec for a in attempts] + fixed_specs:
        wanted.append(spec)
        if spec.precision != "float64":
            wanted.append(spec.replace(precision="float64"))
    todo, seen = [], set(by_id)
    for spec in wanted + ladder_specs:
        if spec.run_id not in seen:
            seen.add(spec.run_id)
            todo.append(spec)
    new: dict[str, RunResult] = {}
    if todo:
        for trace in engine.run_specs(todo, prepared):
            new[trace.run_id] = diagnose_trace(trace)
    pool = {**by_id, **new}

    def digits(res: RunResult) -> float | None:
        if res.trace.step_unit == "solve":  # agreement with the certified/reference solution
            value = res.trace.probes.get("end", {}).get("digits")
            return float(value) if isinstance(value, (int, float)) else None
        if res.spec.precision == "float64":
            return None
        ref = pool.get(res.spec.replace(precision="float64").run_id)
        if ref is None:
            return None
        if res.run_id in by_id:
            # a run of the sweep: read its digits, leave its trace as the sweep stored it
            return agreeing_digits(res.trace.final_loss, ref.trace.final_loss)
        info_ref = attach_reference(res.trace, ref.trace)
        return info_ref["lre_loss"]

    rows = []
    #: run id -> digits against its float64 run, computed once (the reference attached,
    #: then the run re-diagnosed with it)
    digits_of: dict[str, float | None] = {}
    axes = result.sweep.axis_names or default_label_axes(result.sweep.base.task)
    for attempt, spec in zip(attempts, fixed_specs):
        after = pool[spec.run_id]
        for res in (attempt.before, after):
            if res.run_id not in digits_of:
                digits_of[res.run_id] = digits(res)
                # the sweep's own runs keep the judgment the sweep printed and stored
                # (reconciled with their wider twins, their reference attached where it
                # counts); re-diagnosing one here would print a verdict that 'report
                # SWEEP_ID' does not (a re-run that is also a run of the sweep)
                if res.run_id not in by_id:
                    rediagnose(res)
        row = make_row(attempt, after, digits_of[attempt.before.run_id],
                       digits_of[after.run_id], label=attempt.before.spec.label(axes))
        row["plan"] = info
        rows.append(row)
    result.lr_ladder = _ladder_summary(attempts, ladder, pool)
    result.reruns = list(new.values()) if rows else []
    result.verification = rows
    return rows


def _ladder_summary(attempts, ladder, pool) -> dict[str, Any]:
    """Per feature scale: the lrs tried for lower_lr on re-run and the largest that
    converged (with how many of its re-runs converged)."""
    tried = [a for a in attempts if a.mitigation == "lower_lr"] + list(ladder)
    out: dict[str, Any] = {}
    for a in tried:
        spec = a.before.spec.replace(**a.delta)
        res = pool.get(spec.run_id)
        s = out.setdefault(str(spec.scale), {"tried": {}, "epochs": 0})
        s["epochs"] = max(s["epochs"], spec.epochs)
        t = s["tried"].setdefault(spec.lr, [0, 0])
        t[1] += 1
        if res is not None and res.verdict.status == "converged":
            t[0] += 1
    for s in out.values():
        conv = [lr for lr, (c, _n) in s["tried"].items() if c > 0]
        s["largest_converged"] = max(conv) if conv else None
        s["largest_tried"] = max(s["tried"])
        if conv:
            c, total = s["tried"][max(conv)]
            s["converged_at_largest"] = [c, total]
        s["tried"] = {f"{lr:g}": {"converged": c, "reruns": n}
                      for lr, (c, n) in sorted(s["tried"].items())}
    return {"lower_lr": out} if out else {}


def float64_reference(spec: RunSpec) -> RunSpec | None:
    """The matched float64 run of a spec (None when it is float64 already)."""
    return spec.replace(precision="float64") if spec.precision != "float64" else None


def verify_run(before: Any, recommendations: Sequence[Recommendation],
               run: Callable[[list[Any]], list[Trace]] | None = None,
               apply: Callable[[Any, dict[str, Any]], Any] | None = None,
               reference: Callable[[Any], Any | None] = float64_reference,
               target: str | None = None, label: str = "baseline",
               ) -> tuple[RunResult, list[dict[str, Any]], list[RunResult]]:
    """Verify recommendations on one run: re-run it with each fix alone, then all
    together, with the same seed, and judge each re-run against it.

    ``before`` is the run's configuration: a RunSpec (the defaults run it on the engine
    and apply a delta with ``spec.replace(**delta)``) or anything ``run`` and ``apply``
    understand. ``run`` turns configurations into traces, in order; ``reference`` gives
    the configuration of a run's matched float64 run (None: no reference), whose final
    loss the row's digits are measured against (and attached to the run, so the
    ``silent_digit_loss`` detector sees it). A row is fixed when ``target``, the
    signature the fixes must remove, is gone (see :func:`is_fixed`).

    Returns the before-run, the rows (one per re-run, ``label`` naming the before-run)
    and every result, references included, in the order they were run.
    """
    from stability_lab.diagnosis.record import diagnose_trace

    if run is None:
        from stability_lab.run import engine

        run = engine.run_specs
    if apply is None:
        apply = _replace
    attempts = fix_deltas(recommendations)
    if isinstance(before, RunSpec):
        for mitigation, delta in attempts:
            if mitigation == "all":
                rebound_lr(before, delta)
    configs = [before] + [apply(before, delta) for _, delta in attempts]
    references = [reference(c) for c in configs]
    traces = run(configs + [r for r in references if r is not None])
    results = [diagnose_trace(t) for t in traces]
    runs, reference_results = results[:len(configs)], iter(results[len(configs):])
    digits: list[float | None] = []
    for res, ref in zip(runs, references):
        if ref is None:
            digits.append(None)
        else:
            digits.append(attach_reference(res.trace, next(reference_results).trace)["lre_loss"])
    for res in runs:
        rediagnose(res)
    first = runs[0]
    rows = [make_row(Attempt(first, mitigation, delta), after, digits[0], after_digits,
                     target, label=label)
            for (mitigation, delta), after, after_digits in zip(attempts, runs[1:], digits[1:])]
    return first, rows, results


def _replace(spec: RunSpec, delta: dict[str, Any]) -> RunSpec:
    return spec.replace(**delta)


def rediagnose(res: RunResult) -> None:
    """Diagnose again now that the float64 reference is attached (silent digit loss).

    The one diagnosis path (:func:`stability_lab.diagnosis.diagnose`): verdict, the
    catalogue's detectors and the deep-net findings the task computed, so nothing the
    first diagnosis found (``loss_scale_collapse``, per-layer findings) is lost.
    """
    from stability_lab.diagnosis import diagnose

    if not res.trace.error:
        res.verdict, res.findings = diagnose(res.trace)
