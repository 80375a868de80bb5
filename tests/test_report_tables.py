"""Terminal tables laid out by rich (report/terminal.py: table_lines), not hand-padded:
plain text for pipes and files, rich's own look with colour on a terminal."""

import io

from rich.console import Console

from stability_lab.diagnosis.findings import Finding
from stability_lab.report.terminal import format_sweep, print_sweep
from stability_lab.report.tables import plain_text, table, table_lines
from stability_lab.report.verification import format_verification, verification_lines
from test_report_maps import _hand_built

HEADERS = ["run", "verdict", "findings"]
ROWS = [["float64 lr=1", ("diverged", "red"), "divergence"],
        ["float16 lr=0.1", ("converged", "green"), "-"],
        ["[b]x[/b] \\ y", "not converged", ":smile:"]]


def _terminal(width):
    return Console(file=io.StringIO(), width=width, force_terminal=True,
                   color_system="standard", highlight=False)


def test_plain_table_layout():
    """Piped: header, a dashed rule as wide as each column, columns two spaces apart,
    one line per row, no trailing spaces, no escape codes; cells are text, never markup."""
    assert table(HEADERS, ROWS).splitlines() == [
        "run             verdict        findings",
        "--------------  -------------  ----------",
        "float64 lr=1    diverged       divergence",
        "float16 lr=0.1  converged      -",
        "[b]x[/b] \\ y    not converged  :smile:",
    ]
    assert table(["a", "bb"], []).splitlines() == ["a  bb", "-  --"]
    # a plain table never wraps, however long its rows
    long = [["x" * 300, "y " * 200]]
    assert len(table(["a", "b"], long).splitlines()) == 3


def test_terminal_table_is_rich_with_colour_and_fits_the_width():
    console = _terminal(40)
    lines = table_lines(HEADERS, ROWS[:2] + [["float16 lr=0.1 lambda=0.001 scale=raw",
                                              ("overflow", "red"), "overflow"]], console)
    text = plain_text(lines).splitlines()
    assert set(text[1]) <= {"─", " "} and "─" in text[1]  # rich's rule under the header
    assert all(len(line) <= 40 for line in text)  # long cells wrapped at spaces
    assert any(line.startswith("scale=raw") or " scale=raw" in line for line in text)
    styles = {str(style) for line in lines for t, style in line if t.strip()}
    assert "bold" in styles and "red" in styles and "green" in styles
    # where even wrapping at spaces cannot fit, rows stay whole: no number cut mid-word
    narrow = table_lines(["a", "b"], [["2.171e+05 -> 0.1967", "scale=standardized,lr=0.53"]],
                         _terminal(20))
    assert "2.171e+05 -> 0.1967" in plain_text(narrow)
    assert "scale=standardized,lr=0.53" in plain_text(narrow)


def _tty():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    return Tty()


def test_verbose_run_table_coloured_on_a_terminal_plain_in_a_pipe():
    res = _hand_built()
    tty, pipe = _tty(), io.StringIO()
    print_sweep(res, file=tty, verbose=True)
    print_sweep(res, file=pipe, verbose=True)
    coloured = tty.getvalue()
    div = next(r for r in res.results if r.verdict.status == "diverged")
    row = next(line for line in coloured.splitlines() if line.startswith(div.run_id[:8]))
    assert "\x1b[31mdiverged" in row  # the verdict cell, red
    assert "─" in coloured
    plain = pipe.getvalue()
    assert "\x1b[" not in plain and plain == format_sweep(res, verbose=True)
    lines = plain.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("id "))
    assert lines[head + 1].startswith("--------  ")
    assert lines[head + 2].startswith(res.results[0].run_id[:8] + "  ")
    # without --verbose: no table
    assert not any(line.startswith("id ") for line in format_sweep(res).splitlines())


def test_verification_table_plain_and_coloured():
    side = {"verdict": "diverged", "final_loss": 5.0, "epochs_to_converge": None,
            "digits": None, "findings": ["divergence"]}
    rows = [{"run_id": "abc", "label": "float64 lr=1", "mitigation": "lower_lr",
             "delta": {"lr": 0.1}, "before": side, "fixed": True, "outcome": "fixed",
             "after": {**side, "verdict": "converged", "findings": []}}]
    text = format_verification(rows).splitlines()
    assert text[1].startswith("run           mitigation  change  before    after")
    assert text[2].startswith("------------  ----------  ------  --------  ---------")
    assert text[3].endswith("divergence -> none  yes")
    styled = verification_lines(rows, console=_terminal(200))
    styles = {(t.strip(), str(s)) for line in styled for t, s in line}
    assert ("yes", "green") in styles and ("diverged", "red") in styles


def test_a_warning_is_named_once_on_its_run_line():
    res = _hand_built()
    ok = next(r for r in res.results if r.verdict.status == "converged")
    ok.findings = [Finding("gradient_underflow", 3, "from the detector"),
                   Finding("gradient_underflow", 3, "from the layer check")]
    line = next(line for line in format_sweep(res).splitlines()
                if line.startswith("Run ") and line.endswith(")") and "warning" in line)
    assert line.endswith("converged (warning: gradient_underflow)")
