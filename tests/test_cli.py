"""The main command end to end, and every bad input the issue names."""

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from stability_lab.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_cli(args, capsys):
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def default_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("default")
    proc = subprocess.run(
        [sys.executable, "stability_lab.py", "--task", "logistic_regression", "--sweep",
         "precision,lr,lambda", "--out", str(out), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), out


def test_default_command_text(tmp_path, capsys):
    rc, out, err = run_cli(["--task", "logistic_regression", "--sweep", "precision,lr,lambda",
                            "--out", str(tmp_path), "--no-verify"], capsys)
    assert rc == 0, err
    lines = out.splitlines()
    run_lines = [line for line in lines if line.startswith("Run ")]
    assert len(run_lines) == 4 * 3 * 3 * 2
    assert any(line.endswith(": converged") for line in run_lines)
    assert any("at epoch" in line for line in run_lines)
    assert any(line.startswith("Condition number(X^T X): 2.2e12") for line in lines)
    rec = [line for line in lines if line.startswith("Recommendation: ")]
    assert rec and "scale features" in rec[0]
    # the answer first: the header (model or computation, the condition number, the
    # recommendation), then the stability map, then the brief's run lines
    assert lines[0].startswith("Model or computation? The computation: ")
    first_cond = next(i for i, line in enumerate(lines) if line.startswith("Condition"))
    first_rec = next(i for i, line in enumerate(lines) if line.startswith("Recommendation"))
    first_map = next(i for i, line in enumerate(lines) if line.startswith("Stability map"))
    assert first_cond < first_rec < first_map < min(
        i for i, line in enumerate(lines) if line.startswith("Run "))
    assert not any(line.startswith("Verdicts:") for line in lines)  # the table: --verbose


def test_default_command_json(default_json):
    doc, _ = default_json
    runs = doc["runs"]
    assert {"id", "config", "verdict", "onset_epoch", "final_loss", "findings",
            "phases"} <= set(runs[0])
    diverged = next(r for r in runs if r["verdict"] == "diverged")
    assert diverged["phases"] and {p["name"] for p in diverged["phases"]} & {
        "divergence", "collapse", "oscillation", "spike"}
    verdicts = {r["verdict"] for r in runs}
    assert "converged" in verdicts
    failing = [r for r in runs if r["verdict"] in ("diverged", "overflow", "nan")]
    assert failing and all(isinstance(r["onset_epoch"], int) for r in failing)
    cond = [c["cond_XtX"] for c in doc["conditioning"].values()]
    assert max(cond) == pytest.approx(2.2e12, rel=0.05)  # cond(X)^2, cond(X) ~ 1.5e6
    actions = {r["action"] for r in doc["recommendations"]}
    assert "scale_features" in actions and "lower_lr" in actions
    for rec in doc["recommendations"]:
        assert rec["reason"] and rec["runs"]
    scale = next(r for r in doc["recommendations"] if r["action"] == "scale_features")
    assert scale["evidence"]["cond_after"] < scale["evidence"]["cond_before"] / 1e6


def test_default_command_recommendations_are_verified(default_json):
    """The default command verifies by default (its re-runs are few) and every action its
    Recommendation line lists fixed or improved a failing run on re-run; add_l2, which
    fixes none, is reported as tried and not helping."""
    doc, _ = default_json
    assert doc["verification_status"]["status"] == "verified"
    assert doc["verification"]
    for rec in doc["recommendations"]:
        v = rec["verification"]
        assert v["status"] in ("fixed", "improved", "not_helping"), rec
        if v["status"] != "not_helping":
            assert v["fixed"] + v["improved"] >= 1
    l2 = [r for r in doc["recommendations"] if r["action"] == "add_l2"]
    assert all(r["verification"]["status"] == "not_helping" for r in l2)
    # float32 runs that converge: the brief's 'Run fp32 lr=1e-1: converged' side
    assert any(r["verdict"] == "converged" and r["config"]["precision"] == "float32"
               for r in doc["runs"])


def test_lower_lr_number_is_the_bound(default_json):
    doc, _ = default_json
    rec = next(r for r in doc["recommendations"] if r["action"] == "lower_lr")
    bound = rec["evidence"]["lr_bound"]
    assert rec["delta"]["lr"] <= bound
    # 2/L with L = lambda_max([X,1]^T [X,1] / 4n): recompute independently
    import numpy as np
    from sklearn.datasets import load_breast_cancer

    X = load_breast_cancer().data
    A = np.hstack([X, np.ones((len(X), 1))])
    L = np.linalg.eigvalsh(A.T @ A / (4 * len(X)))[-1]
    run = next(r for r in doc["runs"] if r["config"]["precision"] == "float64"
               and r["config"]["scale"] == "raw" and r["config"]["lambda"] == 0)
    assert run["probes"]["start"]["lr_bound"] == pytest.approx(2 / L, rel=1e-12)
    # the recommendation takes the smallest bound over the failing runs' data variants
    # (bfloat16-rounded features have a slightly larger L)
    assert bound <= 2 / L and bound == pytest.approx(2 / L, rel=1e-4)


def test_show_prints_trace(default_json, capsys):
    doc, out = default_json
    run = next(r for r in doc["runs"] if r["verdict"] == "converged")
    rc, text, err = run_cli(["show", run["id"], "--out", str(out)], capsys)
    assert rc == 0, err
    assert run["id"] in text and "converged" in text
    assert "grad_norm" in text and "cond_XtX" in text


def test_same_command_twice_gives_identical_stored_metrics(tmp_path, capsys):
    args = ["--task", "logistic_regression", "--sweep", "precision=float32,bfloat16",
            "--sweep", "lr=0.01,1", "--epochs", "30"]
    for name in ("a", "b"):
        assert main(args + ["--out", str(tmp_path / name)]) == 0
    capsys.readouterr()

    def dump(name):
        con = sqlite3.connect(tmp_path / name / "lab.sqlite")
        rows = con.execute('SELECT run_id, name, "values" FROM metrics ORDER BY 1, 2').fetchall()
        con.close()
        return rows

    a, b = dump("a"), dump("b")
    assert len(a) > 0 and a == b


def test_rerun_reuses_stored_runs(tmp_path, capsys):
    args = ["--sweep", "lr=0.01,0.1", "--epochs", "20", "--scale", "standardized",
            "--out", str(tmp_path), "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert all(r["reused"] for r in second["runs"])
    assert [r["final_loss"] for r in first["runs"]] == [r["final_loss"] for r in second["runs"]]


BAD = [
    (["--task", "nope"], "Unknown task 'nope'"),
    (["--sweep", "speed"], "Unknown sweep axis 'speed'"),
    (["--sweep", "precision=float8"], "Unknown precision 'float8'"),
    (["--precision", "half"], "Unknown precision 'half'"),
    (["--data", "mnist"], "Unknown data source 'mnist'"),
    (["--lr", "fast"], "'lr' value must be a number"),
    (["--lr", "0"], "'lr' value must be a positive number"),
    (["--sweep", "lr=0.1,-1"], "'lr' value must be a positive number"),
    (["--lambda", "-1"], "'lambda' value must be a number >= 0"),
    (["--epochs", "0"], "'epochs' value must be an integer >= 1"),
    (["--sweep", "kappa"], "synthetic data"),
    (["--data", "synthetic:n=5,d=20"], "n > d"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_one_line_exit_2_nothing_stored(args, message, tmp_path, capsys):
    out = tmp_path / "store"
    rc, stdout, err = run_cli(args + ["--out", str(out)], capsys)
    assert rc == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


CSV_CASES = [
    ("missing", None, "does not exist"),
    ("empty", "", "is empty"),
    ("header only", "a,b,y\n", "is empty"),
    ("nan", "a,b,y\n1,2,0\nnan,3,1\n", "'nan' at row 3"),
    ("inf", "a,b,y\n1,inf,0\n2,3,1\n", "'inf' at row 2"),
    ("text", "a,b,y\n1,red,0\n2,3,1\n", "non-numeric value 'red'"),
    ("no target", "a,b,label\n1,2,0\n2,3,1\n", "Target column 'y' is not in"),
    ("one class", "a,b,y\n1,2,1\n2,3,1\n", "has one class"),
    ("three classes", "a,b,y\n1,2,0\n2,3,1\n4,5,2\n", "has 3 classes"),
    ("nan target", "a,b,y\n1,2,0\n2,3,nan\n4,5,1\n", "empty or NaN at row 3"),
]


@pytest.mark.parametrize("case,text,message", CSV_CASES, ids=[c[0] for c in CSV_CASES])
def test_bad_csv(case, text, message, tmp_path, capsys):
    path = str(tmp_path / "absent.csv") if text is None else write(tmp_path, text)
    out = tmp_path / "store"
    rc, _, err = run_cli(["--data", path, "--target", "y", "--out", str(out)], capsys)
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_csv_data_runs(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 3)) * [1, 100, 1e4]
    y = np.where(X[:, 0] + X[:, 1] / 100 > 0, "yes", "no")
    lines = ["f1,f2,f3,label"] + [f"{a},{b},{c},{t}" for (a, b, c), t in zip(X, y)]
    path = write(tmp_path, "\n".join(lines) + "\n")
    rc, out, err = run_cli(["--data", path, "--target", "label", "--sweep", "scale",
                            "--lr", "0.1", "--out", str(tmp_path / "s"), "--json"], capsys)
    assert rc == 0, err
    doc = json.loads(out)
    by_scale = {r["config"]["scale"]: r for r in doc["runs"]}
    assert by_scale["standardized"]["verdict"] in ("converged", "not_converged")
    assert by_scale["raw"]["verdict"] in ("diverged", "overflow", "nan", "oscillating")


def test_synthetic_hits_kappa(tmp_path, capsys):
    rc, out, err = run_cli(["--data", "synthetic:n=500,d=8,kappa=1e4,seed=1",
                            "--sweep", "kappa=1e2,1e6", "--epochs", "5", "--scale", "raw",
                            "--out", str(tmp_path), "--json"], capsys)
    assert rc == 0, err
    doc = json.loads(out)
    conds = sorted({r["probes"]["start"]["cond_XtX"] for r in doc["runs"]})
    assert conds[0] == pytest.approx(1e4, rel=1e-6)  # cond(X)^2 with cond(X) = 1e2
    assert conds[1] == pytest.approx(1e12, rel=1e-4)


HELP_NO_TORCH = """
import sys
from stability_lab.cli import main
try:
    main({args!r})
except SystemExit:
    pass
print("TORCH" if "torch" in sys.modules else "NOTORCH")
"""


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["--lr", "-1"],
                                  ["--task", "nope"], ["--sweep", "bogus"]])
def test_help_and_argument_errors_do_not_import_torch(args):
    proc = subprocess.run([sys.executable, "-c", HELP_NO_TORCH.format(args=args)],
                          capture_output=True, text=True, cwd=REPO / "tests", timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "NOTORCH", proc.stdout + proc.stderr


def test_module_and_script_entry_points(tmp_path):
    for cmd in ([sys.executable, "-m", "stability_lab", "--help"],
                [sys.executable, "stability_lab.py", "--help"]):
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "stability-lab" in proc.stdout


def test_the_stored_command_is_the_one_main_parsed(tmp_path, capsys, monkeypatch):
    """Called as a library, main() stores its own arguments, not the host's sys.argv."""
    import sqlite3

    monkeypatch.setattr("sys.argv", ["pytest", "-k", "something else"])
    out = tmp_path / "s"
    assert main(["--sweep", "lr=0.01", "--epochs", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    (command,) = sqlite3.connect(out / "lab.sqlite").execute(
        "SELECT command FROM sweeps").fetchone()
    assert command == f"stability-lab run --sweep lr=0.01 --epochs 2 --out {out}"
