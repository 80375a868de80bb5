"""HTML report with plots: one self-contained file (PNG plots inlined as base64).

Sections: the verdict lines, the condition numbers, the recommendations with their
evidence, loss and gradient-norm curves, one panel per policy, precision or solver
(whichever the sweep varies; one line per run, failures marked at their onset), the
verification table if any, and the run table.
"""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import UsageError


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


#: the axes that get a panel each, in order of preference
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
    groups: dict[str, list] = defaultdict(list)
    for r in runs:
        groups[f"{axis}={getattr(r.spec, axis)}" if axis else "run"].append(r)
    return dict(groups)


def _curves(result, metric: str, title: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    groups = panels(result.results)
    if not groups:
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.2), squeeze=False)
    for ax, (key, runs) in zip(axes[0], groups.items()):
        for r in runs:
            y = r.trace.metric(metric)
            x = np.arange(1, len(y) + 1)
            finite = np.isfinite(y) & (y > 0)
            color = "tab:green" if r.verdict.status == "converged" else (
                "tab:red" if r.verdict.failed else "tab:gray")
            ax.plot(x[finite], y[finite], color=color, alpha=0.6, lw=1)
            if r.verdict.onset and r.verdict.failed and r.verdict.onset <= len(y):
                k = r.verdict.onset - 1
                yk = y[k] if np.isfinite(y[k]) and y[k] > 0 else (
                    y[finite][-1] if finite.any() else 1.0)
                ax.plot([k + 1], [yk], "x", color="tab:red")
        ax.set_yscale("log")
        ax.set_title(f"{title}: {key}", fontsize=9)
        ax.legend(handles=[Line2D([], [], color="tab:green", label="converged"),
                           Line2D([], [], color="tab:red", label="failed (x: onset)"),
                           Line2D([], [], color="tab:gray", label="other")],
                  fontsize=7, loc="best")
        ax.set_xlabel(result.results[0].trace.step_unit)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def render(result) -> str:
    from .terminal import conditioning_line, run_table

    esc = html.escape
    axes = result.sweep.axis_names
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>stability-lab report</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;}"
        "pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}"
        ".fail{color:#b00}.ok{color:#070}</style></head><body>",
        "<h1>stability-lab report</h1>",
        f"<p>Task <b>{esc(result.sweep.base.task)}</b>, data <b>{esc(result.sweep.base.data)}"
        f"</b>, {len(result.results)} runs, axes: {esc(', '.join(axes) or '(none)')}.</p>",
        "<h2>Runs</h2><ul>",
    ]
    for r in result.results:
        cls = "ok" if r.verdict.status == "converged" else ("fail" if r.verdict.failed else "")
        parts.append(f"<li class='{cls}'>Run {esc(r.spec.label(axes))}: {esc(str(r.verdict))}"
                     "</li>")
    parts.append("</ul>")
    line = conditioning_line(result)
    if line:
        parts.append(f"<h2>Conditioning</h2><p>{esc(line)}</p>")
    parts.append("<h2>Recommendations</h2>")
    if result.recommendations:
        parts.append("<ul>")
        for rec in result.recommendations:
            parts.append(f"<li><b>{esc(rec.text)}</b>: {esc(rec.reason)}</li>")
        parts.append("</ul>")
    else:
        parts.append("<p>None: no rule's evidence holds.</p>")
    for metric, title in (("loss", "loss"), ("grad_norm", "gradient norm")):
        img = _curves(result, metric, title)
        if img:
            parts.append(f"<h2>{title.capitalize()}</h2><img src='data:image/png;base64,{img}'>")
    if result.verification:
        from .verification import format_verification

        parts.append(f"<h2>Verification</h2><pre>{esc(format_verification(result.verification))}"
                     "</pre>")
    parts.append(f"<h2>Table</h2><pre>{esc(run_table(result))}</pre></body></html>")
    return "\n".join(parts)


def write_html(result, path: str | Path) -> None:
    path = Path(path)
    if not path.parent.exists():
        raise UsageError(f"Cannot write the HTML report to {str(path)!r}: folder "
                         f"{str(path.parent)!r} does not exist.")
    path.write_text(render(result))

