"""`stability-lab report SWEEP_ID`: a stored sweep re-rendered purely from the store."""

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from stability_lab.cli import main

REPO = Path(__file__).resolve().parents[1]
SWEEP = ["--sweep", "precision=float64,float16", "--sweep", "lr=0.01,1", "--epochs", "20"]


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A verified sweep, with what `run` printed."""
    out = tmp_path_factory.mktemp("store")
    proc = subprocess.run([sys.executable, "stability_lab.py", *SWEEP, "--verify",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def _cli(args, capsys):
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_report_prints_what_the_run_printed(stored, capsys):
    out, printed = stored
    rc, text, err = _cli(["report", "1", "--out", str(out)], capsys)
    assert rc == 0, err
    assert text == printed
    assert "Verification (re-run" in text and "verified, same seed" in text
    # 'last' is the latest sweep
    assert _cli(["report", "last", "--out", str(out)], capsys)[1] == printed


def test_report_html_and_json_from_the_store(stored, tmp_path, capsys):
    out, _ = stored
    page = tmp_path / "r.html"
    rc, text, err = _cli(["report", "1", "--out", str(out), "--html", str(page), "--quiet"],
                         capsys)
    assert rc == 0, err
    assert text.splitlines()[0].startswith("Model or computation?")
    assert not any(line.startswith("Run ") for line in text.splitlines())
    html = page.read_text()
    assert '"verification":[{' in html and '"map":{' in html
    rc, js, err = _cli(["report", "1", "--out", str(out), "--json"], capsys)
    doc = json.loads(js)
    assert rc == 0 and len(doc["runs"]) == 8 and doc["verification"]
    assert doc["sweep"]["note"].startswith("scale=raw,standardized added")


def test_report_of_a_store_made_before_the_report_columns(stored, tmp_path, capsys):
    """An older store (no report/verification/note columns) renders from its runs and
    the verification rows stored beside them, and is migrated when next written."""
    import shutil

    out, printed = stored
    old = tmp_path / "old"
    shutil.copytree(out, old)
    con = sqlite3.connect(old / "lab.sqlite")
    for col in ("report", "verification", "note"):
        con.execute(f"ALTER TABLE sweeps DROP COLUMN {col}")
    con.commit()
    con.close()
    rc, text, err = _cli(["report", "1", "--out", str(old)], capsys)
    assert rc == 0, err
    # the same report, less the note (older stores did not keep it); the rows stored
    # beside the runs have their fix's keys sorted (lr=..,scale=.. for scale=..,lr=..)
    def norm(line):
        return " ".join(",".join(sorted(t.split(","))) if "=" in t else t
                        for t in line.split())

    expect = [norm(line) for line in printed.splitlines()
              if not line.startswith(("Note:", "Stored"))]
    got = [norm(line) for line in text.splitlines() if not line.startswith("Stored")]
    assert got == expect
    # `report` opens the store read-only; the next writer adds the columns
    from stability_lab.store import Store

    def cols():
        con = sqlite3.connect(old / "lab.sqlite")
        have = {r[1] for r in con.execute("PRAGMA table_info(sweeps)")}
        con.close()
        return have

    assert not {"report", "verification", "note"} & cols()
    Store(old).close()
    assert {"report", "verification", "note"} <= cols()


@pytest.mark.parametrize("sweep_id,message", [
    ("7", "No sweep 7 in"), ("abc", "SWEEP_ID must be a sweep number"),
])
def test_bad_sweep_id_is_one_line_exit_2(stored, sweep_id, message, capsys):
    out, _ = stored
    rc, text, err = _cli(["report", sweep_id, "--out", str(out)], capsys)
    assert rc == 2 and message in err and err.count("\n") == 1 and not text


def test_missing_store_is_one_line_and_creates_nothing(tmp_path, capsys):
    rc, _, err = _cli(["report", "1", "--out", str(tmp_path / "none")], capsys)
    assert rc == 2 and "No run store" in err and err.count("\n") == 1
    assert not (tmp_path / "none").exists()


def test_report_command_does_not_import_torch(stored, tmp_path):
    out, _ = stored
    code = ("import sys; from stability_lab.cli import main; "
            f"rc = main(['report', '1', '--out', {str(out)!r}, '--html', "
            f"{str(tmp_path / 'r.html')!r}, '--quiet']); "
            "print('TORCH' if 'torch' in sys.modules else 'NOTORCH', rc)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(REPO / "src"),
                                                       "PATH": "/usr/bin:/bin"})
    assert proc.stdout.strip().splitlines()[-1] == "NOTORCH 0", proc.stdout + proc.stderr


def test_per_layer_output_is_cut_to_culprit_layers():
    from stability_lab.diagnosis.policy_evaluation import culprit_modules
    from stability_lab.report.policies import format_report

    healthy = {"type": "Linear", "act_headroom_min": 12.0, "grad_headroom_min": 20.0,
               "grad_flush_max": 0.0}
    tab = {"modules": {"fc1": dict(healthy), "fc2": {**healthy, "grad_flush_max": 0.05},
                       "head": {**healthy, "act_headroom_min": 1.5}, "relu": dict(healthy)},
           "creators": [{"module": "relu", "kind": "passed"}], "projections": []}
    assert culprit_modules(tab) == ["fc2", "head"]
    row = {"policy": "float16", "first_nonfinite": {"module": "fc1", "pass": "forward",
                                                    "step": 3, "detail": "x"}}
    assert culprit_modules(tab, row) == ["fc1", "fc2", "head"]
    clean = {"modules": {"fc1": dict(healthy)}, "creators": [], "projections": []}
    report = {"tolerance": {"accuracy_drop": 0.01, "loss_rtol": 0.1, "loss_atol": 1e-3},
              "groups": [{"label": "mlp", "reference": "float32", "policies": [],
                          "cheapest_within_tolerance": None, "rejected": {},
                          "layers": {"float16": tab, "float32": clean}}]}
    short = format_report(report)
    assert "per layer: no culprit layer in float32" in short
    assert "    fc2 " in short and "    head " in short
    assert "    fc1 " not in short and "    relu " not in short
    full = format_report(report, verbose=True)
    assert "    fc1 " in full and "    relu " in full


def test_report_matches_run_when_a_rerun_is_a_run_of_the_sweep(tmp_path, capsys):
    """bfloat16 standardized converges where its float64 twin does not: the sweep judges
    it not converged (never more converged than its wider twin). That run is also the
    scale_features re-run of bfloat16 raw; verification must not re-judge it as
    converged, or the run prints a verdict the store (and 'report') does not hold."""
    argv = ["--sweep", "precision=float64,bfloat16", "--lr", "0.2", "--lambda", "0.1",
            "--epochs", "60", "--verify", "--no-progress", "--out", str(tmp_path)]
    rc, printed, err = _cli(argv, capsys)
    assert rc == 0, err
    line = next(x for x in printed.splitlines()
                if x.startswith("Run bfloat16 scale=standardized:"))
    assert "not converged (loss gap" in line and "warning" not in line
    rc, text, err = _cli(["report", "last", "--out", str(tmp_path)], capsys)
    assert rc == 0, err
    assert text == printed
