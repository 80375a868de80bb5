"""The before/after table of verified mitigations.

::

    Verification (same seed, data order and precision unless the fix changes it):
    run       mitigation      before                after                  loss before -> after  ...
"""

from __future__ import annotations

import math
from typing import Any, Sequence


def _num(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    return f"{x:.4g}" if 1e-3 <= abs(x) < 1e5 else f"{x:.3e}"


def _digits(x: Any) -> str:
    if x is None:
        return "ref"
    return f"{float(x):.1f}"


def _delta(delta: dict[str, Any]) -> str:
    parts = []
    for k, v in delta.items():
        text = f"{v:g}" if isinstance(v, float) else str(v)
        if "/" in text and len(text) > 24:
            text = "..." + text[-20:]
        parts.append(f"{k}={text}")
    return ",".join(parts) or "-"


def format_verification(rows: Sequence[dict[str, Any]]) -> str:
    """The verification table, with a header that says what was (not) verified."""
    from .terminal import table

    if not rows:
        return "Verification: nothing to verify (no failing run has a recommendation)."
    out = ["Verification (re-run with the same seed and data order; digits = agreement "
           "of the final loss with the matched float64 run, 'ref' = is float64):"]
    plan = rows[0].get("plan")
    if plan:
        line = (f"  {plan['failing_runs']} failing run(s) in {plan['groups']} group(s) by "
                f"(recommendations, verdict); one representative per group verified")
        if plan["groups_verified"] < plan["groups"]:
            line += (f"; only the first {plan['groups_verified']} groups "
                     f"(cap {plan['max_groups']})")
        if plan.get("without_recommendation"):
            line += f"; {plan['without_recommendation']} failing run(s) had no recommendation"
        out.append(line)
    headers = ["run", "mitigation", "change", "before", "after", "final loss", "converged at",
               "digits", "fixed"]
    body = []
    for r in rows:
        b, a = r["before"], r["after"]
        label = r.get("label") or r["run_id"][:8]
        if r.get("group_size", 1) > 1:
            label += f" (+{r['group_size'] - 1} alike)"
        body.append([
            label, r["mitigation"], _delta(r.get("delta", {})),
            b["verdict"].replace("_", " "), a["verdict"].replace("_", " "),
            f"{_num(b['final_loss'])} -> {_num(a['final_loss'])}",
            f"{_num(b['epochs_to_converge'])} -> {_num(a['epochs_to_converge'])}",
            f"{_digits(b['digits'])} -> {_digits(a['digits'])}",
            "yes" if r["fixed"] else "NO",
        ])
    out.append(table(headers, body))
    n_fixed = sum(bool(r["fixed"]) for r in rows)
    out.append(f"{n_fixed} of {len(rows)} re-runs fixed the failure; rows marked NO did not.")
    return "\n".join(out)
