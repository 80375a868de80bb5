"""The policy evaluation of a deep-net sweep as lines (terminal, ``report``, ``--json``'s
text form): one table per matched group, the culprit layers, the recommendation.
The judgment itself is :mod:`stability_lab.diagnosis.policy_evaluation`; nothing here
changes it.
"""

from __future__ import annotations

import math
from typing import Any

from stability_lab.diagnosis.policy_evaluation import TAIL, culprit_modules
from stability_lab.report.tables import plain_text, table_lines, verdict_style


def _f(v: Any, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return format(v, spec)



def one_policy(policies: list[dict[str, Any]]) -> str:
    """The conclusion of a group that ran one policy (the same words in the HTML
    report's script): there is no cheaper one to choose."""
    name = policies[0]["policy"] if policies else "none"
    return (f"One policy ran ({name}): no other to compare it with (--sweep policy "
            "compares them).")


def format_report(report: dict[str, Any], verbose: bool = False) -> str:
    """The policy evaluation as plain text (see :func:`report_lines`)."""
    return plain_text(report_lines(report, verbose))


def report_lines(report: dict[str, Any], verbose: bool = False, console=None) -> list:
    """The policy evaluation as lines of styled segments; per-layer tables cut to the
    culprit layers (:func:`culprit_modules`) unless ``verbose``. Tables are laid out by
    rich (report/terminal.py, ``table_lines``): for ``console`` (a terminal) in its width,
    without one as plain text."""
    tol = report["tolerance"]
    lines = [f"Policy evaluation (tolerance: accuracy within {tol['accuracy_drop']:.0%} and "
             f"final loss within {tol['loss_rtol']:.0%} + {tol['loss_atol']:g} of the "
             "reference, run not failed, no warning/error finding; 'loss' is the mean of "
             f"the last {tol.get('loss_is_mean_of_last_steps', TAIL)} steps, the run "
             "table's 'final loss' the last step's)"]
    for g in report["groups"]:
        lines.append("")
        lines.append(f"{g['label']}  (reference: {g['reference'] or 'none'})")
        rows = []
        for p in g["policies"]:
            scale = "-"
            if p.get("scale_trajectory"):
                tr = p["scale_trajectory"]
                scale = f"{tr[0][1]:g}->{_f(p['scale_min'], 'g')}->{_f(p['scale_final'], 'g')}"
            rows.append([
                p["policy"], (p["verdict"], verdict_style(p["verdict"])),
                _f(p["final_loss"], ".4g"),
                _f(p.get("loss_gap"), "+.3g"),
                _f(p["accuracy"], ".1%"),
                _f(p.get("accuracy_gap") * 100 if p.get("accuracy_gap") is not None
                   else None, "+.1f"),
                str(p.get("skipped_steps", "-")), scale,
                _f(p.get("grad_underflow_frac"), ".2%"),
                _f(p.get("min_headroom_log2"), ".1f"),
                _f(p["step_time_ms"], ".2f"), _f(p["cost"], "g"),
                ("yes", "green") if p.get("within_tolerance") else ("no", "red"),
            ])
        lines += table_lines(["policy", "verdict", "loss", "dloss", "acc", "dacc(pt)",
                              "skipped", "loss scale", "underflow", "headroom(2^)", "step ms",
                              "cost", "ok"], rows, console)
        for p in g["policies"]:
            fc = p.get("first_nonfinite")
            if fc:
                lines.append(f"  {p['policy']}: first non-finite value created by "
                             f"{fc['module']} ({fc['pass']} pass, step {fc['step']}): "
                             f"{fc['detail']}")
        rows_of = {p["policy"]: p for p in g["policies"]}
        clean = [pol for pol, tab in g["layers"].items()
                 if tab["modules"] and not culprit_modules(tab, rows_of.get(pol))]
        if clean and not verbose:
            lines.append(f"  per layer: no culprit layer in {', '.join(clean)} "
                         "(--verbose lists every layer)")
        for pol, tab in g["layers"].items():
            mods = tab["modules"]
            if mods and not verbose:
                keep = culprit_modules(tab, rows_of.get(pol))
                if not keep:
                    continue
                else:
                    hidden = len(mods) - len(keep)
                    mods = {k: mods[k] for k in keep}
                    lines.append("")
                    lines.append(f"  per layer, {pol}: culprit layer(s)"
                                 + (f"; {hidden} other(s) with --verbose" if hidden else ""))
            elif mods:
                lines.append("")
                lines.append(f"  per layer, {pol}:")
            if mods:
                rows = [[name, m.get("type", ""), _f(m.get("act_absmax_max")),
                         _f(m.get("act_headroom_min"), ".1f"),
                         _f(m.get("grad_absmax_max")), _f(m.get("grad_headroom_min"), ".1f"),
                         _f(m.get("grad_below_normal_max"), ".1%"),
                         _f(m.get("grad_flush_max"), ".1%"), _f(m.get("grad_norm_last")),
                         _f(m.get("update_ratio_median")), _f(m.get("dead_frac_last"), ".0%")]
                        for name, m in mods.items()]
                lines += table_lines(
                    ["module", "type", "act max", "act hr", "grad max", "grad hr",
                     "grad<normal", "grad flush", "grad norm", "upd/w", "dead"],
                    rows, console, indent=4)
            # warn only when the projected run-out is near: within twice the steps run
            # (a float64 layer losing 3 of 1023 powers of two is no news)
            near = [pr for pr in tab["projections"]
                    if pr["projected_step"] <= 2 * max(pr["fitted_steps"][1], 1)]
            far = len(tab["projections"]) - len(near)
            if far and verbose:
                lines.append(f"    ({far} slower headroom decline(s) projected beyond twice "
                             "the steps run: see --json)")
            for pr in near:
                lines.append(f"    warning: {pr['module']} {pr['kind']} headroom "
                             f"{pr['headroom_first']:.1f} -> {pr['headroom_last']:.1f} "
                             f"(steps {pr['fitted_steps'][0]}-{pr['fitted_steps'][1]}), "
                             f"projected to run out at step {pr['projected_step']}")
        lines.append("")
        if len(g["policies"]) < 2:  # nothing to choose between
            lines.append(one_policy(g["policies"]))
            continue
        if g["cheapest_within_tolerance"]:
            lines.append(f"Cheapest policy within tolerance: {g['cheapest_within_tolerance']}")
        else:
            lines.append("No policy stayed within tolerance of the reference.")
        for pol, why in g["rejected"].items():
            lines.append(f"  rejected {pol}: {why}")
    # text lines as one plain segment each; table lines are already segments
    return [[(ln, "")] if isinstance(ln, str) else ln for ln in lines]
