"""Per-module statistics over the attribution steps, kept as sparse rows.

Columns are ``(module, statistic)`` pairs, numbered as they first appear; a row is one
attribution step's values for the columns it measured (a module that did not run, or a
statistic that does not apply, leaves its column out). Rows with the same columns share
one layout, so the dense table is filled one layout at a time when it is read.
"""

from __future__ import annotations

import numpy as np


class StatTable:
    """Rows of ``{column: value}`` over ``(module, statistic)`` columns."""

    def __init__(self) -> None:
        self._cols: list[tuple[str, str]] = []
        self._col_of: dict[tuple[str, str], int] = {}
        self._colsets: dict[tuple[str, tuple[str, ...]], tuple[int, ...]] = {}
        self._layouts: list[tuple[int, ...]] = []
        self._layout_of: dict[tuple[int, ...], int] = {}
        self._rows: list[tuple[int, list[float]]] = []  # (layout, values in its order)

    def columns(self, module: str, keys: tuple[str, ...]) -> tuple[int, ...]:
        """The columns of ``module``'s statistics ``keys`` (made on first use)."""
        cs = self._colsets.get((module, keys))
        if cs is None:
            out = []
            for k in keys:
                c = self._col_of.get((module, k))
                if c is None:
                    c = self._col_of[(module, k)] = len(self._cols)
                    self._cols.append((module, k))
                out.append(c)
            cs = self._colsets[(module, keys)] = tuple(out)
        return cs

    def add_row(self, row: dict[int, float]) -> None:
        """One attribution step's values, by column."""
        layout = tuple(row)
        lid = self._layout_of.get(layout)
        if lid is None:
            lid = self._layout_of[layout] = len(self._layouts)
            self._layouts.append(layout)
        self._rows.append((lid, list(row.values())))

    def arrays(self) -> dict[str, dict[str, np.ndarray]]:
        """``{module: {statistic: values over the rows}}`` (nan: not measured)."""
        n = len(self._rows)
        table = np.full((n, len(self._cols)), np.nan)
        groups: dict[int, tuple[list[int], list[list[float]]]] = {}
        for i, (lid, values) in enumerate(self._rows):
            g = groups.setdefault(lid, ([], []))
            g[0].append(i)
            g[1].append(values)
        for lid, (idx, values) in groups.items():
            table[np.ix_(idx, self._layouts[lid])] = np.asarray(values, dtype=np.float64)
        out: dict[str, dict[str, np.ndarray]] = {}
        for c, (name, key) in enumerate(self._cols):
            out.setdefault(name, {})[key] = table[:, c].copy()
        return out
