"""HTML report: one self-contained, offline file with interactive SVG charts.

The page is built from a ``SweepResult`` (a fresh sweep, or one loaded from the store by
``stability-lab report SWEEP_ID``) in two parts: the data as one JSON document (every
run's config, verdict, findings, phases, metrics, attribution and verification rows)
and a small script (``assets/report.js``, inlined) that draws it as SVG in the browser.
No plotting library and nothing fetched: why is written in docs/architecture.md
("HTML report").

Sections, in order: the header (model or computation, the condition numbers, the
recommendation with its verified outcomes), the stability map (report/maps.py: one
grid per panel, cells coloured by verdict with onset, the 2/L bound and the
verification outcome), loss and gradient-norm curves (one panel per row of the map,
colour by the map's column axis, dash by the remaining axes; failures marked at onset),
digits per solver (linear tasks), the policy evaluation and its conclusion, and a
module x step attribution heatmap per run (deep nets), the verification table, and the
table of every run. Hovering a curve, a map cell, a bar or a table row shows the run's
id and config; clicking it opens the run's detail (trace plots of every metric,
findings, phases, verification, attribution).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from stability_lab.errors import UsageError

ASSETS = Path(__file__).with_name("assets")

#: the axes that get a panel each for the curves, in order of preference (kept for
#: callers of :func:`panels`)
PANEL_AXES = ("policy", "precision", "solver")


def panels(results) -> dict[str, list]:
    """Runs with a trace, one panel per value of the first of :data:`PANEL_AXES` that
    varies across them (else the first that is set): ``{"policy=float16": [runs]}``."""
    runs = [r for r in results if r.trace.n_steps]
    axis = next((a for a in PANEL_AXES if len({getattr(r.spec, a, None) for r in runs}) > 1),
                None)
    if axis is None:
        axis = next((a for a in PANEL_AXES if any(getattr(r.spec, a, None) for r in runs)),
                    None)
    groups: dict[str, list] = {}
    for r in runs:
        groups.setdefault(f"{axis}={getattr(r.spec, axis)}" if axis else "run", []).append(r)
    return groups


def _num(x: Any) -> Any:
    """A float with 5 significant digits (the page's precision), None if not finite."""
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return x
    if not math.isfinite(f):
        return None
    return float(f"{f:.5g}")


def _series(values) -> list:
    return [_num(v) for v in np.asarray(values, dtype=np.float64).tolist()]


def _compact(value: Any) -> Any:
    """JSON-safe and short: floats to 5 significant digits, non-finite as strings."""
    from stability_lab.formatting import jsonable

    value = jsonable(value)

    def walk(v):
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, float):
            return float(f"{v:.5g}")
        return v

    return walk(value)


def curve_layout(result, smap) -> dict[str, Any]:
    """How the curves are laid out: panels (rows of the map, times scale when it is
    swept), colour (the map's column axis) and dash (the other axes)."""
    axes = list(result.sweep.axis_names)
    if smap is None:
        return {"panel_axes": [], "colour": None, "dash": []}
    if smap.y is None:
        panel_axes, colour = [], smap.x
    else:
        panel_axes, colour = [smap.y], smap.x
        if "scale" in axes and "scale" not in (smap.x, smap.y):
            panel_axes.append("scale")
    dash = [a for a in axes if a not in panel_axes and a != colour]
    return {"panel_axes": panel_axes, "colour": colour, "dash": dash}


def page_data(result, map_axes=None) -> dict[str, Any]:
    """Everything the page draws, as one JSON-able document."""
    from stability_lab.diagnosis.phases import phase_dicts
    from stability_lab.report.maps import build_map
    from stability_lab.report.terminal import answer_lines, conditioning_line, recommendation_lines
    from stability_lab.report.verification import summarize

    axes = list(result.sweep.axis_names)
    smap = build_map(result, map_axes)
    verif_of: dict[str, list] = {}
    for row in result.verification or []:
        verif_of.setdefault(row["run_id"], []).append(row)
    runs = {}
    for r in result.results:
        t = r.trace
        attr = t.extras.get("attribution") or {}
        runs[r.run_id] = {
            "id": r.run_id, "label": r.spec.label(axes) or r.run_id,
            "config": {a: r.spec.get(a) for a in axes},
            "spec": {k: v for k, v in r.spec.to_dict().items()
                     if v not in (None, [], {}, ())},
            "verdict": r.verdict.status, "verdict_text": str(r.verdict),
            "onset": r.verdict.onset, "failed": r.failed, "final_loss": t.final_loss,
            "step_unit": t.step_unit, "error": t.error,
            "findings": [f.to_dict() for f in r.findings],
            "phases": phase_dicts(t) if t.n_steps else [],
            "metrics": {k: _series(v) for k, v in t.metrics.items()},
            "probes": t.probes, "accuracy": t.extras.get("accuracy"),
            "digits": (t.probes.get("end") or {}).get("digits"),
            "attribution": {k: attr[k] for k in ("modules", "series", "creators",
                                                  "first_creator", "order")
                            if k in attr} or None,
            "verification": verif_of.get(r.run_id, []),
        }
    header = answer_lines(result)
    cond = conditioning_line(result)
    doc = {
        "task": result.sweep.base.task, "data": result.sweep.base.data, "axes": axes,
        "sweep_id": result.sweep_id, "n_runs": len(result.results),
        "header": header, "condition": cond,
        "recommendation": recommendation_lines(result),
        "map": smap.to_dict() if smap else None,
        "curves": curve_layout(result, smap),
        "order": [r.run_id for r in result.results],
        "runs": runs,
        "verification": [{k: v for k, v in row.items() if k != "plan"}
                         for row in result.verification or []],
        "verification_summary": summarize(result.verification or []),
        "verification_plan": (result.verification[0].get("plan")
                              if result.verification else None),
        "policy": result.task_report,
        "solves": all(r.trace.step_unit == "solve" for r in result.results),
    }
    return _compact(doc)


def render(result, map_axes=None) -> str:
    """The report page as one HTML string (no external resource)."""
    esc = html.escape
    data = page_data(result, map_axes)
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False)
    # a JSON string inside <script>: only "</" could end the element early
    blob = blob.replace("</", "<\\/")
    css = (ASSETS / "report.css").read_text()
    js = (ASSETS / "report.js").read_text()
    title = (f"stability-lab: {result.sweep.base.task} on {result.sweep.base.data}, "
             f"{len(result.results)} runs")
    return "\n".join([
        "<!doctype html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{esc(title)}</title>",
        f"<style>{css}</style></head><body>",
        f"<header><h1>{esc(title)}</h1>"
        f"<p class='sub'>Sweep {esc(str(result.sweep_id or '-'))}; axes: "
        f"{esc(', '.join(result.sweep.axis_names) or '(none)')}. Hover a curve, map cell, "
        "bar or row for its run; click it for the run's detail.</p></header>",
        "<main id='app'><noscript>This report draws its charts with JavaScript.</noscript>"
        "</main>",
        "<div id='tip' role='tooltip' hidden></div>",
        "<dialog id='detail'><div class='dhead'><h2 id='dtitle'></h2>"
        "<button id='dclose' type='button' aria-label='close'>close</button></div>"
        "<div id='dbody'></div></dialog>",
        f"<script id='lab-data' type='application/json'>{blob}</script>",
        f"<script>{js}</script>",
        "</body></html>",
    ])


def write_html(result, path: str | Path, map_axes=None) -> None:
    path = Path(path)
    if not path.parent.exists():
        raise UsageError(f"Cannot write the HTML report to {str(path)!r}: folder "
                         f"{str(path.parent)!r} does not exist.")
    path.write_text(render(result, map_axes), encoding="utf-8")
