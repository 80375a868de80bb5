"""``stability-lab show RUN_ID``: one stored run's trace.

Prints the run's configuration, verdict, findings, probes, environment, its
instability phases, any verification re-runs, and the per-step metrics (every step
with ``--all``; otherwise about 40 rows, always including the first, the last and the
onset). ``--json`` prints the stored record with its metric arrays.
"""

from __future__ import annotations

import argparse
import json
import sys

from stability_lab.errors import UsageError

HELP = "print one stored run's trace (metrics per epoch/step, probes, findings, phases)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", metavar="RUN_ID", help="a run id (or a unique prefix of one)")
    p.add_argument("--out", default="lab-runs", metavar="DIR", help="folder of the run store")
    p.add_argument("--all", action="store_true", help="print every step")
    p.add_argument("--json", action="store_true", help="print the stored record as JSON")
    p.add_argument("--html", metavar="PATH", help="also write the run's HTML report to PATH")


def _rows(n: int, onset: int | None, every_step: bool, limit: int = 40) -> list[int]:
    if every_step or n <= limit:
        return list(range(n))
    step = max(1, n // limit)
    idx = set(range(0, n, step)) | {n - 1}
    if onset:
        idx |= {i for i in range(onset - 3, onset + 2) if 0 <= i < n}
    return sorted(idx)


def _probe_value(v) -> str:
    """A probe's value; NaN (not measured at these weights) says so instead of 'nan'."""
    from stability_lab.formatting import fmt_num

    if isinstance(v, float) and v != v:
        return "not computed (non-finite)"
    if isinstance(v, str) and v == "nan":
        return "not computed (non-finite)"
    return fmt_num(v) if not isinstance(v, str) else v


def main(args: argparse.Namespace) -> int:
    from stability_lab.diagnosis.phases import phase_dicts
    from stability_lab.formatting import fmt_num, jsonable
    from stability_lab.diagnosis.record import trace_from_record
    from stability_lab.report.tables import table
    from stability_lab.store import Store

    with Store(args.out, create=False) as store:
        rec = store.load_run(args.run_id)
    if rec is None:
        raise UsageError(
            f"No run {args.run_id!r} in {args.out}/lab.sqlite; pass an id printed by "
            "'stability-lab run' (a unique prefix is enough) or the right --out."
        )
    trace = trace_from_record(rec)
    phases = phase_dicts(trace)
    if getattr(args, "html", None):
        _write_html(rec, trace, args)
    if args.json:
        # the stored record, its metric arrays moved to the end, then the phases
        doc = {k: v for k, v in rec.items() if k != "metrics"}
        doc["metrics"] = rec["metrics"]
        doc["phases"] = phases
        json.dump(jsonable(doc), sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    w = sys.stdout.write
    spec = rec["spec"]
    # status is the run's outcome (its verdict); a run that raised is an error
    status = "error" if rec["status"] == "error" else (rec["verdict"] or "unknown")
    w(f"Run {rec['id']}  task={rec['task']}  status={status}\n")
    w("Config: " + " ".join(f"{k}={v}" for k, v in spec.items()
                            if v not in (None, [], {}, ())) + "\n")
    verdict = rec["verdict"] + (f" ({rec['verdict_detail']})" if rec["verdict_detail"] else "")
    w(f"Verdict: {verdict.replace('_', ' ')}\n")
    if rec.get("error"):
        w(f"Error: {rec['error']}\n")
    for f in rec["findings"] or []:
        onset = f" at {rec['step_unit']} {f['onset']}" if f.get("onset") else ""
        w(f"Finding: {f['signature']}{onset}: {f['message']}\n")
    for group, values in (rec["probes"] or {}).items():
        if isinstance(values, dict):
            w(f"Probes ({group}): "
              + ", ".join(f"{k}={_probe_value(v)}" for k, v in values.items()) + "\n")
    if phases:
        w("Phases: " + "; ".join(
            f"{p['name']} {p['start']}-{p['end']}" for p in phases) + "\n")
    meta = rec.get("meta") or {}
    if meta:
        w("Environment: " + ", ".join(f"{k}={v}" for k, v in meta.items()) + "\n")
    for row in rec.get("verifications") or []:
        before, after = (v.get("verdict") if isinstance(v, dict) else v
                         for v in (row.get("before"), row.get("after")))
        w(f"Verification: {row.get('mitigation')}: {before} -> {after} "
          f"(fixed: {row.get('fixed')})\n")
    metrics = rec["metrics"]
    names = [n for n in ("loss", "grad_norm", "update_norm", "weight_norm", "update_ratio",
                         "nonfinite_weights", "nonfinite_grads", "max_abs_logit",
                         "headroom_log2", "frac_unchanged") if n in metrics]
    names += [n for n in sorted(metrics) if n not in names]
    n = trace.n_steps
    rows = []
    for i in _rows(n, rec.get("onset"), args.all):
        rows.append([str(i + 1), *[fmt_num(metrics[name][i]) if i < len(metrics[name]) else "-"
                                   for name in names]])
    w(f"\nTrace ({n} {rec['step_unit']}s):\n")
    w(table([rec["step_unit"], *names], rows) + "\n")
    return 0


def _write_html(rec, trace, args) -> None:
    """The sweep report's HTML page (report/html.py) for this one run."""
    import json as _json

    from stability_lab.diagnosis.findings import Finding, Verdict
    from stability_lab.formatting import from_jsonable
    from stability_lab.remedies.sweep_result import SweepResult
    from stability_lab.remedies.rules import Recommendation
    from stability_lab.diagnosis.record import RunResult
    from stability_lab.report.html import write_html
    from stability_lab.spec import Sweep
    from stability_lab.store import Store

    verdict = Verdict(rec["verdict"] or "error", rec["onset"], rec["verdict_detail"] or "")
    res = RunResult(trace.spec, trace, verdict,
                    [Finding(**f) for f in from_jsonable(rec["findings"] or [])])
    recs = []
    if rec.get("sweep_id") is not None:
        with Store(args.out, create=False) as store:
            row = store.conn.execute("SELECT recommendations FROM sweeps WHERE id=?",
                                     (rec["sweep_id"],)).fetchone()
        for r in _json.loads(row[0]) if row and row[0] else []:
            recs.append(Recommendation(r["action"], r["text"], r["reason"],
                                       r.get("delta") or {}, tuple(r.get("runs") or ()),
                                       r.get("evidence") or {}))
    result = SweepResult(Sweep(trace.spec), [res], recommendations=recs,
                         verification=list(rec.get("verifications") or []))
    write_html(result, args.html)
