"""Stability maps (report/maps.py) and the terminal layout (report/terminal.py)."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from stability_lab.diagnosis.findings import Verdict
from stability_lab.remedies.rules import Recommendation
from stability_lab.diagnosis.record import RunResult
from stability_lab.report.maps import build_map, default_axes, map_text, parse_map_arg
from stability_lab.report.terminal import format_sweep, header_lines, print_sweep
from stability_lab.errors import UsageError
from stability_lab.spec import RunSpec, Sweep
from stability_lab.trace import Trace

REPO = Path(__file__).resolve().parents[1]


def _run(spec, status, onset=None, bound=None, loss=0.1):
    probes = {"start": {"lr_bound": bound, "cond_XtX": 1e6}} if bound else {}
    trace = Trace(spec, {"loss": np.array([0.7, loss])}, probes)
    return RunResult(spec, trace, Verdict(status, onset))


def _hand_built(verification=()):
    """precision x lr x lambda; 2/L = 0.5 for float64, 0.4 for float16 (made up)."""
    axes = [("precision", ["float64", "float16"]), ("lr", [0.1, 1.0]), ("lambda", [0.0, 0.1])]
    sweep = Sweep(RunSpec(epochs=2), axes)
    table = {("float64", 0.1): ("converged", None), ("float64", 1.0): ("diverged", 3),
             ("float16", 0.1): ("overflow", 7), ("float16", 1.0): ("nan", 2)}
    results = []
    for spec in sweep.specs:
        status, onset = table[(spec.precision, spec.lr)]
        bound = 0.5 if spec.precision == "float64" else 0.4
        results.append(_run(spec, status, onset, bound))
    failing = [r.run_id for r in results if r.failed]
    recs = [Recommendation("lower_lr", "lower lr", "lr above 2/L", {"lr": 0.1},
                           tuple(failing))]
    return SimpleNamespace(sweep=sweep, results=results, recommendations=recs,
                           verification=list(verification), task_report=None,
                           store_path=None, sweep_id=None)


def test_default_axes_prefer_lr_by_precision():
    assert default_axes(["precision", "lr", "lambda"]) == ("lr", "precision")
    assert default_axes(["lambda", "policy"]) == ("lambda", "policy")
    assert default_axes(["solver"]) == ("solver", None)
    assert default_axes(["lr"]) == ("lr", None)
    assert default_axes(["seed", "clip"]) == ("clip", "seed")
    assert default_axes([]) is None


def test_map_of_a_hand_built_sweep():
    res = _hand_built()
    m = build_map(res)
    assert (m.x, m.y, m.panel_axes) == ("lr", "precision", ["lambda"])
    assert [p.title for p in m.panels] == ["lambda=0", "lambda=0.1"]
    p = m.panels[0]
    assert [[c.text for c in row] for row in p.cells] == [["C", "D3"], ["O7", "N2"]]
    # every cell is the run with those values
    for row in p.cells:
        for c in row:
            run = next(r for r in res.results if r.run_id == c.run_id)
            assert run.spec.lam == 0.0 and c.config["lr"] == run.spec.lr
    # 2/L per row: 0.1 <= 0.5 (one column at or below it), 0.1 <= 0.4
    assert [b["lr_bound"] for b in p.bounds] == [0.5, 0.4]
    assert [b["columns_at_or_below"] for b in p.bounds] == [1, 1]
    text = map_text(m)
    assert "2/L=0.4..0.5" in text
    grid = [line for line in text.splitlines() if line.strip().startswith("float16")]
    assert grid and "O7" in grid[0] and "|N2" in grid[0]
    assert "D diverged" in text and "O overflow" in text and "N nan" in text


def test_map_axes_chosen_by_the_user_and_checked():
    res = _hand_built()
    m = build_map(res, parse_map_arg("lambda,lr", res.sweep.axis_names))
    assert (m.x, m.y, m.panel_axes) == ("lambda", "lr", ["precision"])
    assert [p.title for p in m.panels] == ["precision=float64", "precision=float16"]
    assert not any(p.bounds and any(p.bounds) for p in m.panels)  # x is not lr: no 2/L
    for bad in ("lr", "lr,lr", "lr,kappa"):
        with pytest.raises(UsageError, match="--map"):
            parse_map_arg(bad, res.sweep.axis_names)


def test_verification_overlay_takes_each_runs_best_outcome():
    res = _hand_built()
    div = next(r for r in res.results if r.verdict.status == "diverged")
    ovf = next(r for r in res.results if r.verdict.status == "overflow")
    rows = [{"run_id": div.run_id, "mitigation": "lower_lr", "outcome": "not fixed",
             "fixed": False, "after": {"verdict": "diverged"}},
            {"run_id": div.run_id, "mitigation": "all", "outcome": "fixed", "fixed": True,
             "after": {"verdict": "converged"}},
            {"run_id": ovf.run_id, "mitigation": "lower_lr", "outcome": "improved",
             "fixed": False, "after": {"verdict": "not_converged"}}]
    res.verification = rows
    m = build_map(res)
    cells = {c.run_id: c for c in m.cells()}
    assert cells[div.run_id].outcome == "fixed" and cells[div.run_id].text == "D3+"
    assert cells[ovf.run_id].text == "O7^"
    assert len(cells[div.run_id].verification) == 2
    assert "+ fixed" in map_text(m)
    # the header counts runs, not rows: 2 verified runs, 1 fixed, 1 improved
    first = header_lines(res)[0]
    assert "1 of the 2 verified were fixed and 1 improved" in first
    rec = next(line for line in header_lines(res) if line.startswith("Recommendation:"))
    assert "fixed 1" in rec or "verified" in rec


def test_header_answers_with_numbers_and_comes_first():
    res = _hand_built()
    text = format_sweep(res)
    lines = text.splitlines()
    assert lines[0].startswith("Model or computation? The computation: 6 of 8 runs fail")
    assert "lr above 2/L (6)" in lines[0]
    assert lines[1].startswith("The 2 run(s) that work (2 converged) reach final loss 0.1")
    rec = next(i for i, line in enumerate(lines) if line.startswith("Recommendation:"))
    first_map = next(i for i, line in enumerate(lines) if line.startswith("Stability map"))
    first_run = next(i for i, line in enumerate(lines) if line.startswith("Run "))
    assert rec < first_map < first_run
    assert "(not verified: add --verify)" in lines[rec]
    quiet = format_sweep(res, quiet=True).splitlines()
    assert not any(line.startswith(("Run ", "Stability map")) for line in quiet)
    assert quiet[0] == lines[0]


def test_plain_text_when_not_a_terminal_colour_when_it_is():
    res = _hand_built()

    class Tty:
        def __init__(self):
            self.parts = []

        def write(self, s):
            self.parts.append(s)

        def flush(self):
            pass

        def isatty(self):
            return True

    tty, pipe = Tty(), Tty()
    pipe.isatty = lambda: False
    print_sweep(res, file=tty)
    print_sweep(res, file=pipe)
    assert "\x1b[" in "".join(tty.parts)
    assert "\x1b[" not in "".join(pipe.parts)
    assert "".join(pipe.parts) == format_sweep(res)


def test_real_sweep_map_and_plain_pipe(tmp_path):
    """A real small sweep, through the command as a user pipes it: no ANSI codes, the
    header first, the map with the 2/L bar, the Run lines kept."""
    proc = subprocess.run(
        [sys.executable, "stability_lab.py", "--sweep", "precision=float64,float16",
         "--sweep", "lr=0.01,1", "--epochs", "20", "--no-verify", "--out",
         str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "FORCE_COLOR": "", "TERM": "xterm-256color"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "\x1b[" not in out
    lines = out.splitlines()
    assert lines[0].startswith("Model or computation?")
    assert any(line.startswith("Condition number(X^T X): 2.2e12") for line in lines[:4])
    assert "Stability map (precision x lr)" in out
    assert "scale=raw  2/L=4.8e-6" in out
    raw = [line for line in lines if line.strip().startswith("float16 |")]
    assert raw and "O2" in raw[0]  # float16 on raw features overflows at epoch 2
    assert sum(line.startswith("Run ") for line in lines) == 8
    assert any(line.startswith("Run float64 lr=1 scale=raw: diverged") for line in lines)
