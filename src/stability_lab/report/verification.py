"""The before/after table of verified mitigations.

::

    Verification (same seed, data order and precision unless the fix changes it):
    run       mitigation      before                after                  loss before -> after  ...
"""

from __future__ import annotations

from typing import Any, Sequence

from stability_lab.formatting import fmt_num


def _num(x: Any) -> str:
    return fmt_num(x, 4)


def _digits(side: dict[str, Any]) -> str:
    """A side's digits against its matched float64 run: ``ref`` for a float64 run (it is
    the reference), ``-`` for a run that has no float64 match to compare with (a deep-net
    run verified without one). Rows stored before ``reference`` was recorded read ``ref``."""
    x = side.get("digits")
    if x is None:
        return "ref" if side.get("reference", True) else "-"
    return f"{float(x):.1f}"


def _delta(delta: dict[str, Any]) -> str:
    parts = []
    for k, v in delta.items():
        text = f"{v:g}" if isinstance(v, float) else str(v)
        if "/" in text and len(text) > 24:
            text = "..." + text[-20:]
        parts.append(f"{k}={text}")
    return ",".join(parts) or "-"


def _row_cells(r: dict[str, Any]) -> list[Any]:
    """One verification row's cells; verdicts and the fixed column carry their colour."""
    from stability_lab.report.tables import verdict_style

    b, a = r["before"], r["after"]
    label = r.get("label") or r["run_id"][:8]
    if r.get("group_size", 1) > 1:
        label += f" (+{r['group_size'] - 1} alike)"
    return [
        label, r["mitigation"], _delta(r.get("delta", {})),
        (b["verdict"].replace("_", " "), verdict_style(b["verdict"])),
        (a["verdict"].replace("_", " "), verdict_style(a["verdict"])),
        f"{_num(b['final_loss'])} -> {_num(a['final_loss'])}",
        f"{_num(b['epochs_to_converge'])} -> {_num(a['epochs_to_converge'])}",
        f"{_digits(b)} -> {_digits(a)}",
        f"{_sigs(b)} -> {_sigs(a)}",
        ("yes", "green") if r["fixed"] else ("NO", "red"),
    ]


def _sigs(side: dict[str, Any]) -> str:
    return ",".join(side.get("findings") or []) or "none"


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per mitigation: how many re-runs it fixed, improved, and did not fix."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        s = out.setdefault(r["mitigation"], {"mitigation": r["mitigation"], "runs": 0,
                                             "fixed": 0, "improved": 0, "not fixed": 0})
        s["runs"] += 1
        s[r.get("outcome") or ("fixed" if r["fixed"] else "not fixed")] += 1
    return list(out.values())


def format_verification(rows: Sequence[dict[str, Any]], max_rows: int = 16) -> str:
    """The verification table as plain text (see :func:`verification_lines`)."""
    from stability_lab.report.tables import plain_text

    return plain_text(verification_lines(rows, max_rows))


def verification_lines(rows: Sequence[dict[str, Any]], max_rows: int = 16,
                       console=None) -> list:
    """The verification table, with a header that says what was (not) verified, as lines
    of styled segments; its tables are laid out by rich (report/terminal.py,
    ``table_lines``): for ``console`` (a terminal) in its width, without one as plain text.

    Short sweeps print every row. Long ones print a summary per mitigation and, as
    examples, the first row of each (mitigation, verdict before, outcome); ``--json``
    has every row.
    """
    from stability_lab.report.tables import table_lines

    if not rows:
        return [[("Verification: nothing to verify (no failing run has a recommendation).",
                  "")]]
    if all(r.get("digits_against") == "reference" for r in rows):
        out = ["Verification (re-run on the same data; digits = agreement of the "
               "coefficients with the certified/reference solution):"]
    else:
        out = ["Verification (re-run with the same seed and data order; digits = agreement "
               "of the final loss with the matched float64 run, 'ref' = is float64, '-' = no "
               "float64 run to compare with):"]
    plan = rows[0].get("plan")
    if plan:
        if plan.get("exhaustive"):
            line = f"  every one of {plan['failing_runs']} failing or unconverged run(s) verified"
        else:
            line = (f"  {plan['failing_runs']} failing run(s) in {plan['groups']} group(s) by "
                    f"(recommendations, verdict); one representative per group verified")
            if plan["groups_verified"] < plan["groups"]:
                line += (f"; only the first {plan['groups_verified']} groups "
                         f"(cap {plan['max_groups']})")
        if plan.get("without_recommendation"):
            line += f"; {plan['without_recommendation']} failing run(s) had no recommendation"
        out.append(line)
    headers = ["run", "mitigation", "change", "before", "after", "final loss", "converged at",
               "digits", "signatures", "fixed"]
    if len(rows) <= max_rows:
        out.extend(table_lines(headers, [_row_cells(r) for r in rows], console))
    else:
        out.extend(table_lines(["mitigation", "re-runs", "fixed", "improved", "not fixed"],
                               [[s["mitigation"], str(s["runs"]), str(s["fixed"]),
                                 str(s["improved"]), str(s["not fixed"])]
                                for s in summarize(rows)], console))
        seen, examples = set(), []
        for r in rows:
            key = (r["mitigation"], r["before"]["verdict"], r.get("outcome"))
            if key not in seen:
                seen.add(key)
                examples.append(r)
        out.append(f"Examples (first re-run of each mitigation, verdict and outcome; "
                   f"--json has all {len(rows)}):")
        out.extend(table_lines(headers, [_row_cells(r) for r in examples], console))
    n_fixed = sum(bool(r["fixed"]) for r in rows)
    n_improved = sum(r.get("outcome") == "improved" for r in rows)
    out.append(f"{n_fixed} of {len(rows)} re-runs fixed the failure, {n_improved} improved it "
               "(no longer failing, not yet converged); rows marked NO did not fix it.")
    # text lines as one plain segment each; table lines are already segments
    return [[(line, "")] if isinstance(line, str) else line for line in out]
