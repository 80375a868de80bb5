"""Stability maps: where the computation breaks, as a grid of verdicts over two axes.

A map is data first (:func:`build_map`), drawn twice: as a compact character grid in
the terminal (:func:`format_map`) and as an interactive grid in the HTML report.

- Axes: ``x`` (columns) and ``y`` (rows) are two swept axes: lr x precision by default
  (policy or solver stands in for precision when the sweep varies it), or any two
  with ``--map X,Y``. A sweep with one axis gets a one-row map (``y`` is None).
- Panels: one per combination of the values of the remaining swept axes (lambda,
  scale, kappa, seed, ...), in sweep order.
- Cells: the run's verdict, its onset (epoch or step) and, when the run was verified,
  the best outcome of its re-runs (fixed > improved > not fixed) with every row.
- The 2/L bound: when x is lr and the runs carry the ``lr_bound`` probe (2/L of the
  loss they saw), each panel row records its bound and the number of lr columns at or
  below it; the terminal draws a ``|`` there, the HTML a line.

Nothing here parses text: the map is built from ``SweepResult.results`` (spec,
verdict, trace probes) and ``SweepResult.verification`` rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from stability_lab.errors import UsageError
from stability_lab.spec import format_value

#: verdict -> (letter, colour name): one character per verdict in the terminal grid
VERDICT_STYLE: dict[str, tuple[str, str]] = {
    "converged": ("C", "green"),
    "not_converged": ("n", "yellow"),
    "diverged": ("D", "red"),
    "overflow": ("O", "magenta"),
    "nan": ("N", "bright_magenta"),
    "oscillating": ("W", "bright_red"),
    "stagnated": ("S", "cyan"),
    "error": ("E", "bright_black"),
}
#: verification outcome -> mark after the cell
OUTCOME_MARK = {"fixed": "+", "improved": "^", "not fixed": "x"}
_OUTCOME_RANK = {"fixed": 2, "improved": 1, "not fixed": 0}

#: the axes preferred as rows and as columns, in order
ROW_AXES = ("precision", "policy", "solver")
COL_AXES = ("lr", "lambda", "scale", "kappa", "clip", "batch_size", "seed")


@dataclass
class Cell:
    run_id: str
    label: str
    config: dict[str, Any]
    verdict: str
    verdict_text: str
    onset: int | None
    failed: bool
    #: best outcome of the run's verification re-runs, or None if it was not verified
    outcome: str | None = None
    #: every verification row for the run: mitigation, outcome, after-verdict
    verification: list[dict[str, Any]] = field(default_factory=list)
    #: least-squares solves: correct digits against the reference (no onset there)
    digits: float | None = None

    @property
    def text(self) -> str:
        """``D2+``: verdict letter, onset (digits for solves), verification mark."""
        letter = VERDICT_STYLE.get(self.verdict, ("?", ""))[0]
        onset = "" if self.onset is None or self.verdict in ("converged", "not_converged") \
            else str(self.onset)
        if self.digits is not None and math.isfinite(self.digits):
            onset = f"{self.digits:.0f}"
        return letter + onset + (OUTCOME_MARK.get(self.outcome, "") if self.outcome else "")

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "label": self.label, "config": self.config,
                "verdict": self.verdict, "verdict_text": self.verdict_text,
                "onset": self.onset, "failed": self.failed, "outcome": self.outcome,
                "text": self.text, "verification": self.verification,
                "digits": self.digits}


@dataclass
class Panel:
    #: the other axes' values this panel holds fixed, e.g. {"lambda": 0, "scale": "raw"}
    fixed: dict[str, Any]
    #: cells[row][col], None where the sweep has no run
    cells: list[list[Cell | None]]
    #: per row: 2/L (smallest over the row's runs) and how many columns are at or
    #: below it; None where the runs carry no bound
    bounds: list[dict[str, Any] | None] = field(default_factory=list)

    @property
    def title(self) -> str:
        return " ".join(f"{k}={format_value(v)}" for k, v in self.fixed.items()) or "all runs"


@dataclass
class StabilityMap:
    x: str
    y: str | None
    x_values: list[Any]
    y_values: list[Any]
    panel_axes: list[str]
    panels: list[Panel]
    step_unit: str = "epoch"

    def cells(self) -> list[Cell]:
        return [c for p in self.panels for row in p.cells for c in row if c is not None]

    def to_dict(self) -> dict[str, Any]:
        from stability_lab.formatting import jsonable

        return jsonable({
            "x": self.x, "y": self.y, "x_values": self.x_values, "y_values": self.y_values,
            "panel_axes": self.panel_axes, "step_unit": self.step_unit,
            "legend": {v: s[0] for v, s in VERDICT_STYLE.items()},
            "outcome_marks": OUTCOME_MARK,
            "panels": [{"title": p.title, "fixed": p.fixed, "bounds": p.bounds,
                        "cells": [[c.to_dict() if c else None for c in row]
                                  for row in p.cells]} for p in self.panels],
        })


def parse_map_arg(text: str, axes: Sequence[str]) -> tuple[str, str]:
    """``--map X,Y`` -> (x, y), both swept axes of the sweep."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) != 2 or parts[0] == parts[1]:
        raise UsageError(f"--map takes two different swept axes as X,Y (e.g. lr,precision). "
                         f"Got {text!r}.")
    for p in parts:
        if p not in axes:
            raise UsageError(f"--map axis {p!r} is not swept; the sweep's axes are: "
                             f"{', '.join(axes) or '(none)'}.")
    return parts[0], parts[1]


def default_axes(axes: Sequence[str]) -> tuple[str, str | None] | None:
    """(x, y) for a sweep's axes: lr x precision when both are swept, else the nearest."""
    axes = list(axes)
    if not axes:
        return None
    y = next((a for a in ROW_AXES if a in axes), None)
    rest = [a for a in axes if a != y]
    x = next((a for a in COL_AXES if a in rest), rest[0] if rest else None)
    if x is None:  # one axis: a single row
        return y, None
    if y is None:
        # no precision-like axis: the first axis that is not x gives the rows
        others = [a for a in axes if a != x]
        y = others[0] if others else None
    return x, y


def _best_outcome(rows: list[dict[str, Any]]) -> str | None:
    outcomes = [r.get("outcome") or ("fixed" if r.get("fixed") else "not fixed") for r in rows]
    if not outcomes:
        return None
    return max(outcomes, key=lambda o: _OUTCOME_RANK.get(o, -1))


def _key(v: Any) -> Any:
    # spec values are hashable already (floats, strings, ints, None)
    return v


def build_map(result, xy: tuple[str, str | None] | None = None) -> StabilityMap | None:
    """The stability map of a sweep (``SweepResult``); None when nothing is swept."""
    axes = list(result.sweep.axis_names)
    if xy is None:
        xy = default_axes(axes)
    if xy is None or not result.results:
        return None
    x, y = xy
    values = dict(result.sweep.axes)
    x_values = list(values[x])
    y_values = list(values[y]) if y else [None]
    panel_axes = [a for a in axes if a not in (x, y)]
    verif: dict[str, list[dict[str, Any]]] = {}
    for row in result.verification or []:
        verif.setdefault(row["run_id"], []).append({
            "mitigation": row["mitigation"],
            "outcome": row.get("outcome") or ("fixed" if row.get("fixed") else "not fixed"),
            "after": (row.get("after") or {}).get("verdict"),
            "after_run_id": row.get("fixed_run_id")})
    panels: dict[tuple, Panel] = {}
    index_x = {_key(v): i for i, v in enumerate(x_values)}
    index_y = {_key(v): i for i, v in enumerate(y_values)}
    bound_of: dict[tuple, list[float]] = {}
    label_axes = axes
    for r in result.results:
        pkey = tuple(r.spec.get(a) for a in panel_axes)
        panel = panels.get(pkey)
        if panel is None:
            panel = panels[pkey] = Panel(
                dict(zip(panel_axes, pkey)),
                [[None] * len(x_values) for _ in y_values])
        xi = index_x.get(_key(r.spec.get(x)))
        yi = index_y.get(_key(r.spec.get(y))) if y else 0
        if xi is None or yi is None:
            continue
        rows = verif.get(r.run_id, [])
        panel.cells[yi][xi] = Cell(
            r.run_id, r.spec.label(label_axes),
            {a: r.spec.get(a) for a in axes}, r.verdict.status, str(r.verdict),
            r.verdict.onset, r.verdict.failed, _best_outcome(rows), rows,
            _digits(r))
        bound = (r.trace.probes.get("start") or {}).get("lr_bound")
        if x == "lr" and bound is not None and math.isfinite(float(bound)):
            bound_of.setdefault(pkey + (yi,), []).append(float(bound))
    ordered = [panels[k] for k in _panel_order(result, panel_axes) if k in panels]
    for pkey, panel in zip([k for k in _panel_order(result, panel_axes) if k in panels],
                           ordered):
        panel.bounds = []
        for yi in range(len(y_values)):
            b = bound_of.get(pkey + (yi,))
            if not b:
                panel.bounds.append(None)
                continue
            bound = min(b)
            below = sum(1 for v in x_values if float(v) <= bound)
            panel.bounds.append({"lr_bound": bound, "columns_at_or_below": below})
    step_unit = result.results[0].trace.step_unit
    return StabilityMap(x, y, x_values, y_values, panel_axes, ordered, step_unit)


def _digits(r) -> float | None:
    if r.trace.step_unit != "solve":
        return None
    d = (r.trace.probes.get("end") or {}).get("digits")
    return None if d is None else float(d)


def _panel_order(result, panel_axes: list[str]) -> list[tuple]:
    import itertools

    values = dict(result.sweep.axes)
    return [tuple(p) for p in itertools.product(*[values[a] for a in panel_axes])]


# -- terminal ---------------------------------------------------------------------------
def _value_text(axis: str | None, v: Any) -> str:
    if axis is None:
        return ""
    return format_value(v)


def panel_lines(m: StabilityMap, panel: Panel) -> list[tuple[str, list[tuple[str, str]]]]:
    """One panel as lines of (text, style) segments: title, column header, rows."""
    ylab = [str(_value_text(m.y, v)) for v in m.y_values]
    corner = m.x if m.y is None else f"{m.y}\\{m.x}"
    w0 = max([len(s) for s in ylab] + [len(corner)])
    cells_text = [[c.text if c else "." for c in row] for row in panel.cells]
    xlab = [_value_text(m.x, v) for v in m.x_values]
    cw = [max([len(xlab[j])] + [len(row[j]) for row in cells_text] + [1])
          for j in range(len(xlab))]
    bounds = [b for b in panel.bounds if b]
    # one boundary column for the panel when every row agrees on it (same data variant)
    cols = {b["columns_at_or_below"] for b in bounds}
    bar_at = cols.pop() if len(cols) == 1 else None
    out: list[tuple[str, list[tuple[str, str]]]] = []
    title = panel.title
    if bounds:
        lo, hi = min(b["lr_bound"] for b in bounds), max(b["lr_bound"] for b in bounds)
        from stability_lab.formatting import sci

        title += f"  2/L={sci(lo)}" + ("" if hi <= lo * 1.05 else f"..{sci(hi)}")
    if panel.fixed or bounds:
        out.append((title, [(title, "bold")]))

    def join(first: str, items: list[tuple[str, str]], bar_char: str) -> list[tuple[str, str]]:
        segs = [(first.rjust(w0) + " ", "")]
        for j, (t, style) in enumerate(items):
            if bar_at is not None and j == bar_at:
                segs.append((bar_char, "bold blue"))
            else:
                segs.append((" ", ""))
            segs.append((t.ljust(cw[j]), style))
        if bar_at is not None and bar_at == len(items):
            segs.append((bar_char, "bold blue"))
        return segs

    head = join(corner, [(s, "dim") for s in xlab], "|")
    out.append(("".join(s for s, _ in head), head))
    for yi, row in enumerate(panel.cells):
        items = []
        for c, t in zip(row, cells_text[yi]):
            style = VERDICT_STYLE.get(c.verdict, ("", ""))[1] if c else "dim"
            items.append((t, style))
        segs = join(ylab[yi], items, "|")
        out.append(("".join(s for s, _ in segs), segs))
    return out


def legend(m: StabilityMap) -> str:
    seen = {c.verdict for c in m.cells()}
    parts = [f"{VERDICT_STYLE[v][0]} {v.replace('_', ' ')}" for v in VERDICT_STYLE if v in seen]
    text = "Map: " + ", ".join(parts) + (
        "; number = correct digits" if m.step_unit == "solve"
        else f"; number = onset {m.step_unit}")
    if any(c.outcome for c in m.cells()):
        text += "; verified re-run: + fixed, ^ improved, x not fixed"
    if any(b for p in m.panels for b in p.bounds):
        text += "; | = 2/L (lr at or below it to the left)"
    return text


def format_map(m: StabilityMap, width: int = 100) -> list[list[tuple[str, str]]]:
    """The map as lines of styled segments; panels side by side to fit ``width``."""
    blocks = [panel_lines(m, p) for p in m.panels]
    lines: list[list[tuple[str, str]]] = []
    gap = "   "
    i = 0
    while i < len(blocks):
        row = [blocks[i]]
        w = max(len(t) for t, _ in blocks[i])
        i += 1
        while i < len(blocks):
            wi = max(len(t) for t, _ in blocks[i])
            if w + len(gap) + wi > width:
                break
            row.append(blocks[i])
            w += len(gap) + wi
            i += 1
        widths = [max(len(t) for t, _ in b) for b in row]
        height = max(len(b) for b in row)
        for k in range(height):
            segs: list[tuple[str, str]] = []
            for j, b in enumerate(row):
                text, s = b[k] if k < len(b) else ("", [])
                segs.extend(s)
                if j < len(row) - 1:
                    segs.append((" " * (widths[j] - len(text)) + gap, ""))
            lines.append(segs)
        lines.append([])
    lines.append([(legend(m), "dim")])
    return lines


def map_text(m: StabilityMap, width: int = 100) -> str:
    """The map as plain text (what a pipe gets)."""
    return "\n".join("".join(s for s, _ in line).rstrip() for line in format_map(m, width))
