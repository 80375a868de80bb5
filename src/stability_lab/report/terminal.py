"""Terminal report: the brief's lines first, then a table.

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

from ..formatting import fmt_num, sci
from ..params import DEFAULT_LABEL_AXES
from ..spec import format_value


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


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


def format_sweep(result, note: str | None = None) -> str:
    axes = result.sweep.axis_names
    out = []
    for r in result.results:
        label = r.spec.label(axes or DEFAULT_LABEL_AXES)
        out.append(f"Run {label}: {r.verdict}")
    line = conditioning_line(result)
    if line:
        out.append(line)
    recs = result.recommendations
    if recs:
        names = []
        for rec in recs:
            short = rec.action.replace("_", " ")
            short = {"add l2": "add L2", "fused logloss": "fused log-loss",
                     "higher precision": "wider precision",
                     "clip": "clip gradients"}.get(short, short)
            if short not in names:
                names.append(short)
        out.append("Recommendation: " + " + ".join(names))
        for rec in recs:
            out.append(f"  - {rec.text}: {rec.reason}")
    else:
        failing = sum(r.failed for r in result.results)
        out.append("Recommendation: none" + (
            " (no rule's evidence holds for the failing runs)" if failing else
            " (no run failed)"))
    if result.task_report is not None:
        from ..tasks import get_task

        task = get_task(result.sweep.base.task)
        if hasattr(task, "format_report"):
            out.append("")
            out.append(task.format_report(result.task_report))
    out.append("")
    out.append(run_table(result))
    counts = Counter(r.verdict.status for r in result.results)
    out.append("")
    out.append("Verdicts: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in
                                        sorted(counts.items(), key=lambda kv: -kv[1])))
    if result.verification:
        from .verification import format_verification

        out.append("")
        out.append(format_verification(result.verification))
    if note:
        out.append(f"Note: {note}")
    if result.store_path:
        reused = sum(r.reused for r in result.results)
        extra = (f" ({reused} reused: same spec and data; --rerun recomputes)"
                 if reused else "")
        out.append(f"Stored {len(result.results)} runs{extra} in {result.store_path} "
                   f"(sweep {result.sweep_id}); 'stability-lab show RUN_ID' prints a run's trace.")
    return "\n".join(out) + "\n"


def solve_table(result) -> str:
    """Least-squares solves: digits against the reference, prediction, rank and cutoff."""
    axes = result.sweep.axis_names or ["solver"]
    headers = ["id", *axes, "verdict", "digits", "predicted lost", "rank", "cutoff",
               "cond(X^T X)", "residual sd", "findings"]
    rows = []
    for r in result.results:
        s, e = r.trace.probes.get("start", {}), r.trace.probes.get("end", {})
        rows.append([
            r.run_id[:8], *[format_value(r.spec.get(a)) for a in axes],
            r.verdict.status.replace("_", " "),
            "-" if e.get("digits") is None else f"{float(e['digits']):.1f}",
            "-" if s.get("predicted_digits_lost") is None
            else f"{float(s['predicted_digits_lost']):.1f}",
            fmt_num(s.get("numerical_rank")), fmt_num(s.get("rank_cutoff")),
            sci(s.get("cond_XtX")), fmt_num(e.get("residual_sd")),
            ",".join(sorted({f.signature for f in r.findings})) or "-",
        ])
    return table(headers, rows)


def run_table(result) -> str:
    if result.results and all(r.trace.step_unit == "solve" for r in result.results):
        return solve_table(result)
    axes = result.sweep.axis_names or DEFAULT_LABEL_AXES
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
            r.verdict.status.replace("_", " "),
            "-" if r.verdict.onset is None else str(r.verdict.onset),
            fmt_num(r.trace.final_loss),
            fmt_num(summary_grad[-1] if summary_grad.size else None),
            fmt_num(logit[-1] if logit.size else None),
            fmt_num(s.get("lr_bound")),
            ",".join(sorted({f.signature for f in r.findings})) or "-",
        ])
    return table(headers, rows)
