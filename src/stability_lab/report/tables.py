"""Tables and styled lines, the bricks of every terminal report: laid out by rich,
plain text in a pipe, one colour per verdict."""

from __future__ import annotations

from typing import Any


#: one line of the report: styled segments ``[(text, style), ...]``; the style is a rich
#: style (a string such as ``"bold red"``, a ``rich.style.Style``, or ``""`` for none)
Line = list[tuple[str, Any]]


def _cell(value: Any):
    """A table cell as rich Text: a string (never read as markup), or ``(text, style)``."""
    from rich.text import Text

    if isinstance(value, Text):
        return value
    if isinstance(value, tuple):
        text, style = value
        return Text(str(text), style=style or "")
    return Text(str(value))


def _cell_text(value: Any) -> str:
    return value[0] if isinstance(value, tuple) else str(value)


def table_lines(headers: list[str], rows: list[list[Any]], console=None,
                indent: int = 0) -> list[Line]:
    """A table laid out by rich (``rich.table.Table``), as lines of styled segments.

    Cells are strings, or ``(text, style)`` pairs whose style colours the cell on a
    terminal. ``console`` is the terminal's rich Console: the table gets rich's own look
    there (a bold header over a rule) and fits the terminal's width, wrapping long cells.
    Without one, the plain text that a pipe or a file gets: columns two spaces apart, a
    dashed rule under the header, one line per row whatever its length, no escape codes.
    ``indent``: spaces before every line (the width left to the table shrinks by as many).
    """
    from io import StringIO

    from rich import box
    from rich.cells import cell_len
    from rich.console import Console
    from rich.table import Table

    plain = console is None
    if plain:
        console = Console(file=StringIO(), width=100_000, color_system=None,
                          highlight=False, markup=False, emoji=False, force_terminal=False,
                          legacy_windows=False)
    tbl = Table(box=None if plain else box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                padding=(0, 1) if plain else (0, 1, 0, 0), header_style="" if plain else "bold",
                expand=False)
    for h in headers:
        tbl.add_column(_cell(h), no_wrap=plain, overflow="ignore" if plain else "fold")
    if plain:
        # the rule under the header, as wide as each column
        widths = [max([cell_len(h), *(cell_len(_cell_text(r[i])) for r in rows)])
                  for i, h in enumerate(headers)]
        tbl.add_row(*(_cell("-" * w) for w in widths))
    for r in rows:
        tbl.add_row(*(_cell(c) for c in r))
    options = console.options
    if not plain:
        from rich.measure import Measurement

        options = options.update_width(max(20, options.max_width - indent))
        # cells wrap at spaces to fit the terminal; where even that is too wide, rows stay
        # whole (the terminal wraps them) rather than numbers broken mid-word
        least, most = Measurement.get(console, options.update_width(100_000), tbl)
        if least > options.max_width:
            options = options.update_width(most)
    out: list[Line] = []
    for segs in console.render_lines(tbl, options, pad=False):
        line = [(s.text, s.style or "") for s in segs if s.text and not s.control]
        while line and not line[-1][0].strip():  # no trailing padding
            line.pop()
        if line:
            line[-1] = (line[-1][0].rstrip(), line[-1][1])
        out.append([(" " * indent, "")] + line if indent and line else line)
    return out


def plain_text(lines: list[Line]) -> str:
    """Lines of styled segments as plain text (styles dropped, trailing spaces cut)."""
    return "\n".join("".join(t for t, _ in line).rstrip() for line in lines)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A table as plain text, laid out by rich (see :func:`table_lines`)."""
    return plain_text(table_lines(headers, rows))


def verdict_style(status: str) -> str:
    """How a verdict is coloured on a terminal: converged green, failed red."""
    from stability_lab.diagnosis.findings import FAILED

    return "green" if status == "converged" else ("red" if status in FAILED else "")
