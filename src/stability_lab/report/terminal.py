"""Terminal report: the answer first (header), the stability map, the brief's lines.

::

    Run float64 lr=0.01 lambda=0.001 scale=raw: oscillating (...)
    Run float32 lr=0.2 lambda=0 scale=raw: diverged (loss=inf at epoch 14)
    Condition number(X^T X): 2.2e12 (scale=raw), 1.0e5 (scale=standardized)
    Recommendation: scale features + lower lr + add L2
      - scale features (cond 2.2e12 -> 1.0e5): <evidence>
      ...
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from stability_lab.formatting import fmt_num, sci
from stability_lab.spec.axes import default_label_axes
from stability_lab.report.tables import Line, plain_text, table, table_lines, verdict_style
from stability_lab.spec import format_value


def conditioning_line(result) -> str | None:
    """``Condition number(X^T X): ...`` for each data variant the sweep saw."""
    seen: dict[str, float] = {}
    several_sources = len({x.spec.data for x in result.results}) > 1
    for r in result.results:
        start = r.trace.probes.get("start", {})
        if "cond_XtX" not in start:
            continue
        label = f"scale={r.spec.scale}"
        if several_sources:
            label = f"{r.spec.data} {label}"
        seen.setdefault(label, start["cond_XtX"])
    if not seen:
        return None
    if len(seen) == 1:
        ((label, value),) = seen.items()
        return f"Condition number(X^T X): {sci(value)} ({label})"
    parts = [f"{sci(v)} ({k})" for k, v in seen.items()]
    return "Condition number(X^T X): " + ", ".join(parts)


#: how the header names the cause behind each recommendation's action
CAUSES = {
    "scale_features": "unscaled features",
    "lower_lr": "lr above 2/L",
    "add_l2": "X^T X near-singular for the format",
    "fused_logloss": "the naive loss formula",
    "higher_precision": "the number format",
    "clip": "gradient blow-up",
    "raise_lr": "updates below half an ulp",
    "switch_solver": "the solver",
}

_SHORT = {"add l2": "add L2", "fused logloss": "fused log-loss",
          "higher precision": "wider precision", "clip": "clip gradients"}


def _short(action: str) -> str:
    short = action.replace("_", " ")
    return _SHORT.get(short, short)


def _counts(items) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in
                     sorted(Counter(items).items(), key=lambda kv: (-kv[1], kv[0])))


def _best_outcomes(rows) -> dict[str, str]:
    """Failing run id -> best outcome of its verification re-runs."""
    rank = {"fixed": 2, "improved": 1, "not fixed": 0}
    best: dict[str, str] = {}
    for row in rows or []:
        o = row.get("outcome") or ("fixed" if row.get("fixed") else "not fixed")
        if row["run_id"] not in best or rank.get(o, -1) > rank.get(best[row["run_id"]], -1):
            best[row["run_id"]] = o
    return best


def _reach(working, axes) -> str:
    """What the runs that work reach: digits (solves), accuracy (deep nets), loss."""
    import math

    if not working:
        return ""
    if all(r.trace.step_unit == "solve" for r in working):
        d = [float(r.trace.probes.get("end", {}).get("digits")) for r in working
             if r.trace.probes.get("end", {}).get("digits") is not None]
        if d:
            best = max(working, key=lambda r: r.trace.probes.get("end", {}).get("digits")
                       or -1)
            return (f"reach {min(d):.1f}-{max(d):.1f} correct digits of the certified/"
                    f"reference solution (best: {best.spec.label(axes)})")
    acc = [(r.trace.extras.get("accuracy"), r) for r in working
           if r.trace.extras.get("accuracy") is not None]
    losses = [(r.trace.final_loss, r) for r in working
              if r.trace.final_loss is not None and math.isfinite(r.trace.final_loss)]
    parts = []
    if losses:
        lo = min(losses, key=lambda t: t[0])
        hi = max(t[0] for t in losses)
        parts.append(f"final loss {fmt_num(lo[0])}" + (f"-{fmt_num(hi)}" if hi > lo[0] else "")
                     + f" (lowest: {lo[1].spec.label(axes)})")
    if acc:
        a = [t[0] for t in acc]
        parts.append(f"test accuracy {min(a):.1%}-{max(a):.1%}")
    return "reach " + "; ".join(parts) if parts else ""


def answer_lines(result) -> list[str]:
    """One or two lines: is it the model or the computation, with numbers."""
    runs = result.results
    n = len(runs)
    failing = [r for r in runs if r.failed]
    working = [r for r in runs if not r.failed]
    status = Counter(r.verdict.status for r in working)
    work_words = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in status.items())
    at_chance = sum(1 for r in working if r.verdict.evidence.get("stuck_at_chance"))
    if at_chance:  # a classifier that learned nothing works only in the verdict's sense
        work_words += f"; {at_chance} of them stuck at chance level"
    warned = [r for r in working if r.findings]
    # working runs whose accuracy a verified re-run recovered (a least-squares solve that
    # lost digits to its solver fails silently)
    recovered: dict[str, set[str]] = {}
    working_ids = {r.run_id for r in working}
    for rec in result.recommendations:
        if rec.advised and (rec.verification or {}).get("status") in ("fixed", "improved"):
            ids = set(rec.runs) & working_ids
            if ids:
                recovered.setdefault(_short(rec.action), set()).update(ids)
    if not failing and recovered:
        ids = set().union(*recovered.values())
        k = len(ids)
        what = ", ".join(f"{a} ({len(v)})" for a, v in recovered.items())
        solves = all(r.trace.step_unit == "solve" for r in working if r.run_id in ids)
        lost = ("lost digits that a verified re-run recovers" if solves else
                "carry numerical findings that a verified re-run removes")
        first = (f"Model or computation? The computation, silently: no run of {n} fails "
                 f"outright, but {k} working run(s) {lost}: {what}.")
    elif not failing and warned:
        sigs = _counts(sig for r in warned for sig in {f.signature for f in r.findings})
        first = (f"Model or computation? No run of {n} fails, but {len(warned)} working "
                 f"run(s) carry numerical warnings ({sigs}): see their Run lines.")
    elif not failing:
        first = (f"Model or computation? No run of {n} fails: nothing in this sweep points at "
                 "the computation.")
    else:
        covered: dict[str, set[str]] = {}
        failing_ids = {r.run_id for r in failing}
        for rec in result.recommendations:
            ids = set(rec.runs) & failing_ids
            if ids:
                covered.setdefault(CAUSES.get(rec.action, _short(rec.action)), set()).update(ids)
        traced = set().union(*covered.values()) if covered else set()
        causes = ", ".join(f"{k} ({len(v)})" for k, v in
                           sorted(covered.items(), key=lambda kv: -len(kv[1])))
        verdicts = _counts(r.verdict.status for r in failing)
        best = _best_outcomes(result.verification)
        fixed = sum(1 for rid, o in best.items() if o == "fixed" and rid in failing_ids)
        improved = sum(1 for rid, o in best.items() if o == "improved" and rid in failing_ids)
        verified = sum(1 for rid in best if rid in failing_ids)
        if traced and len(traced) == len(failing):
            word = "The computation"
            trace_text = f"every one traced to a numerical cause: {causes}"
        elif traced:
            word = "Mostly the computation"
            trace_text = (f"{len(traced)} traced to a numerical cause ({causes}); "
                          f"{len(failing) - len(traced)} not traced")
        else:
            word = "Not shown to be the computation"
            trace_text = "no rule's evidence ties them to a numerical cause"
        first = (f"Model or computation? {word}: {len(failing)} of {n} runs fail ({verdicts}), "
                 f"{trace_text}.")
        if verified:
            first += (f" Re-run with the same seed, {fixed} of the {verified} verified were "
                      f"fixed and {improved} improved.")
    lines = [first]
    if working:
        reach = _reach(working, result.sweep.axis_names
                       or default_label_axes(result.sweep.base.task))
        lines.append(f"The {len(working)} run(s) that work ({work_words}) {reach}."
                     if reach else f"The {len(working)} run(s) that work: {work_words}.")
    elif failing:
        lines.append("No run works in this sweep.")
    for g in (result.task_report or {}).get("groups") or []:
        # deep nets: the policy evaluation's conclusion belongs to the answer
        n_pol = len(g.get("policies") or [])
        if n_pol < 2:  # one policy: nothing to choose between
            continue
        rejected = list((g.get("rejected") or {}).keys())
        choice = g.get("cheapest_within_tolerance")
        head = (f"Cheapest policy within tolerance of {g.get('reference')}: {choice}"
                if choice else "No policy stayed within tolerance of the reference")
        if len(result.task_report["groups"]) > 1:
            head += f" ({g['label']})"
        tail = (f"; {len(rejected)} of {n_pol} outside it: {', '.join(rejected)}"
                if rejected else f"; all {n_pol} policies within it")
        lines.append(head + tail + ".")
    return lines


def recommendation_lines(result) -> list[str]:
    """``Recommendation: a + b`` with its verified outcomes, then one line per rule.

    Only actions verification did not disprove are advice: an action whose re-runs fixed
    and improved nothing is listed after them as tried and not helping.
    """
    from stability_lab.report.verification import summarize

    recs = result.recommendations
    out = []
    if not recs:
        failing = sum(r.failed for r in result.results)
        return ["Recommendation: none" + (
            " (no rule's evidence holds for the failing runs)" if failing else
            " (no run failed)")]
    advised = [r for r in recs if getattr(r, "advised", True)]
    tried = [r for r in recs if not getattr(r, "advised", True)]
    summary = {s["mitigation"]: s for s in summarize(result.verification or [])}

    def outcome(s) -> str:
        return (f"fixed {s['fixed']}, improved {s['improved']}, not fixed {s['not fixed']} "
                f"of {s['runs']}")

    if advised:
        names = []
        for rec in advised:
            if _short(rec.action) not in names:
                names.append(_short(rec.action))
        line = "Recommendation: " + " + ".join(names)
        key = "all" if "all" in summary else (
            advised[0].action if len(advised) == 1 else None)
        if key in summary:
            line += (f" (verified, same seed{', all together' if key == 'all' else ''}: "
                     f"{outcome(summary[key])} re-runs)")
        elif result.verification:
            line += " (verified: see each line)"
        else:
            line += " (not verified: add --verify)"
        out.append(line)
    else:
        out.append("Recommendation: none verified (every action tried below fixed or "
                   "improved none of the runs it was re-run on)")
    for rec in advised:
        v = getattr(rec, "verification", None)
        if v and v.get("status") != "not_verified":
            tail = (f" [verified: fixed {v['fixed']}, improved {v['improved']} of "
                    f"{v['reruns']} re-runs]")
        else:
            s = summary.get(rec.action)
            tail = f" [verified: {outcome(s)}]" if s else ""
        out.append(f"  - {rec.text}: {rec.reason}{tail}")
    for rec in tried:
        v = rec.verification or {}
        out.append(f"  tried, did not help: {rec.text} (fixed 0 and improved 0 of "
                   f"{v.get('reruns', 0)} re-runs with the same seed)")
    for adv in getattr(result, "advisories", None) or []:
        out.append(f"Advisory: {adv['text']}")
    return out


def header_lines(result) -> list[str]:
    """The answer first: model or computation, the condition numbers, the recommendation."""
    lines = answer_lines(result)
    cond = conditioning_line(result)
    if cond:
        lines.append(cond)
    return lines + recommendation_lines(result)


def sweep_lines(result, note: str | None = None, *, quiet: bool = False,
                verbose: bool = False, width: int = 100,
                map_axes: tuple[str | None, str] | None = None,
                console=None) -> list[Line]:
    """The report as lines of styled segments ``[(text, style), ...]``.

    Order: header (answer, condition numbers, recommendation), the stability map, the
    brief's ``Run ...:`` lines, the task's own report, (``verbose``) the run table,
    the verification and the store line. ``quiet``: the header only. Tables are laid out
    by rich (:func:`table_lines`): for ``console`` (a terminal) in its width, without one
    as plain text.
    """
    from stability_lab.report.maps import build_map, format_map

    axes = result.sweep.axis_names
    out: list[list[tuple[str, str]]] = []

    def add(text: str = "", style: str = "") -> None:
        for line in text.split("\n"):
            out.append([(line, style)] if line else [])

    head = header_lines(result)
    for line in head:
        if line.startswith("Model or computation?"):
            q, _, rest = line.partition("? ")
            word, _, more = rest.partition(": ")
            out.append([(q + "? ", "bold"), (word, "bold red" if "computation" in word
                                             and not word.startswith("Not") else "bold"),
                        (": " + more, "")])
        elif line.startswith(("Recommendation:", "Condition number")):
            label, _, rest = line.partition(": ")
            out.append([(label + ": ", "bold"), (rest, "")])
        else:
            add(line)
    if quiet:
        return out
    smap = build_map(result, map_axes)
    if smap is not None and smap.panels:
        add()
        out.append([("Stability map", "bold"), (f" ({smap.y} x {smap.x})" if smap.y else
                                                  f" ({smap.x})", "dim")])
        out.extend(format_map(smap, width))
    add()
    for r in result.results:
        label = r.spec.label(axes or default_label_axes(r.spec.task))
        line = [(f"Run {label}: ", ""), (str(r.verdict), verdict_style(r.verdict.status))]
        if not r.failed and r.findings:  # a working run's warnings are not silent here
            # each warning once (a detector and the task's own per-layer check can both
            # report gradient_underflow)
            warnings = list(dict.fromkeys(_warning(f) for f in r.findings))
            line.append((" (warning: " + "; ".join(warnings) + ")", "yellow"))
        out.append(line)
    if result.task_report is not None and "groups" in result.task_report:
        # the deep nets' policy evaluation (deep/report.py imports no torch, so a stored
        # sweep's report renders without it)
        from stability_lab.report.policies import report_lines

        add()
        out.extend(report_lines(result.task_report, verbose=verbose, console=console))
    if verbose:
        add()
        out.extend(table_lines(*run_table_rows(result), console=console))
        counts = Counter(r.verdict.status for r in result.results)
        add()
        add("Verdicts: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in
                                     sorted(counts.items(), key=lambda kv: -kv[1])))
    if result.verification:
        from stability_lab.report.verification import verification_lines

        add()
        out.extend(verification_lines(result.verification, console=console))
    if note:
        add(f"Note: {note}", "dim")
    if result.store_path:
        reused = sum(r.reused for r in result.results)
        extra = (f" ({reused} reused: same spec and data; --rerun recomputes)"
                 if reused else "")
        add(f"Stored {len(result.results)} runs{extra} in {result.store_path} "
            f"(sweep {result.sweep_id}); 'stability-lab show RUN_ID' prints a run's trace, "
            f"'stability-lab report {result.sweep_id}' this report again.", "dim")
    return out


def format_sweep(result, note: str | None = None, **kw) -> str:
    """The report as plain text (what a pipe or a file gets)."""
    return plain_text(sweep_lines(result, note, **kw)) + "\n"


def print_sweep(result, note: str | None = None, file=None, **kw) -> None:
    """Write the report: colour through rich on a terminal, plain text otherwise."""
    import sys

    file = file or sys.stdout
    if not (hasattr(file, "isatty") and file.isatty()):
        file.write(format_sweep(result, note, **kw))
        return
    from rich.console import Console
    from rich.text import Text

    console = Console(file=file, highlight=False, soft_wrap=True, force_terminal=True)
    kw.setdefault("width", max(60, console.width))
    for line in sweep_lines(result, note, console=console, **kw):
        text = Text()
        for t, style in line:
            text.append(t, style=style or None)
        console.print(text)


def solve_table_rows(result) -> tuple[list[str], list[list[Any]]]:
    """Least-squares solves: digits against the reference, prediction, rank and cutoff."""
    axes = result.sweep.axis_names or ["solver"]
    headers = ["id", *axes, "verdict", "digits", "predicted lost", "rank", "cutoff",
               "cond(X^T X)", "residual sd", "findings"]
    rows = []
    for r in result.results:
        s, e = r.trace.probes.get("start", {}), r.trace.probes.get("end", {})
        rows.append([
            r.run_id[:8], *[format_value(r.spec.get(a)) for a in axes],
            (r.verdict.status.replace("_", " "), verdict_style(r.verdict.status)),
            "-" if e.get("digits") is None else f"{float(e['digits']):.1f}",
            "-" if s.get("predicted_digits_lost") is None
            else f"{float(s['predicted_digits_lost']):.1f}",
            fmt_num(s.get("numerical_rank")), fmt_num(s.get("rank_cutoff")),
            sci(s.get("cond_XtX")), fmt_num(e.get("residual_sd")),
            _findings_cell(r),
        ])
    return headers, rows


def solve_table(result) -> str:
    return table(*solve_table_rows(result))


def run_table_rows(result) -> tuple[list[str], list[list[Any]]]:
    """The table of every run (``--verbose``): headers and cells."""
    if result.results and all(r.trace.step_unit == "solve" for r in result.results):
        return solve_table_rows(result)
    axes = result.sweep.axis_names or default_label_axes(result.sweep.base.task)
    headers = ["id", *axes, "verdict", "onset", "final loss", "grad norm", "max|logit|",
               "2/L", "findings"]
    rows = []
    for r in result.results:
        s = r.trace.probes.get("start", {})
        summary_grad = r.trace.metric("grad_norm")
        logit = r.trace.metric("max_abs_logit")
        rows.append([
            r.run_id[:8],
            *[format_value(r.spec.get(a)) for a in axes],
            (r.verdict.status.replace("_", " "), verdict_style(r.verdict.status)),
            "-" if r.verdict.onset is None else str(r.verdict.onset),
            fmt_num(r.trace.final_loss),
            fmt_num(summary_grad[-1] if summary_grad.size else None),
            fmt_num(logit[-1] if logit.size else None),
            fmt_num(s.get("lr_bound")),
            _findings_cell(r),
        ])
    return headers, rows


def run_table(result) -> str:
    """The table of every run as plain text."""
    return table(*run_table_rows(result))


def _findings_cell(r) -> tuple[str, str]:
    sigs = ",".join(sorted({f.signature for f in r.findings}))
    return (sigs, "yellow") if sigs else ("-", "")


def _warning(f) -> str:
    """A working run's finding in a few words: its name and the number that proves it."""
    ev = f.evidence or {}
    if f.signature == "silent_digit_loss" and ev.get("digits") is not None:
        return (f"silent_digit_loss: {ev['digits']:.1f} digits agree with the matched "
                f"float64 run, {ev.get('format_digits', float('nan')):.1f} carried")
    return f.signature
