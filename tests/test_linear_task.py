"""The linear_regression task through the main command: solver axis, digits against
NIST's certified values, the switch-solver recommendation, bad input."""

import json

import pytest

from stability_lab.cli import main

# results depend on the BLAS kernel's rounding: re-run under other kernels by .ci/run
pytestmark = pytest.mark.blas


def run_json(args, capsys):
    rc = main(args + ["--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    return json.loads(cap.out)


def test_longley_solver_sweep(tmp_path, capsys):
    doc = run_json(["run", "--task", "linear_regression", "--data", "nist:Longley",
                    "--sweep", "solver=normal,qr,auto", "--out", str(tmp_path)], capsys)
    digits = {r["config"]["solver"]: r["probes"]["end"]["digits"] for r in doc["runs"]}
    assert digits["auto"] >= 14.0  # ceiling 14.6 for Longley's float64 data
    assert digits["normal"] < digits["qr"] < digits["auto"]
    # normal equations lose about twice the digits of QR (2 log10 kappa vs log10 kappa)
    lost = {r["config"]["solver"]: r["probes"]["start"]["predicted_digits_lost"]
            for r in doc["runs"]}
    assert lost["normal"] > 1.5 * lost["qr"]
    rec = next(r for r in doc["recommendations"] if r["action"] == "switch_solver")
    assert rec["delta"] == {"solver": "auto"}
    assert all(r["verdict"] == "converged" for r in doc["runs"])


def test_filip_auto_reaches_twelve_digits_with_the_extended_design(tmp_path, capsys):
    doc = run_json(["run", "--task", "linear_regression", "--data", "nist:Filip",
                    "--sweep", "solver=lstsq,auto", "--out", str(tmp_path)], capsys)
    by = {r["config"]["solver"]: r for r in doc["runs"]}
    assert by["auto"]["probes"]["end"]["digits"] >= 12
    assert by["auto"]["probes"]["end"]["extended_design"] is True
    assert by["lstsq"]["probes"]["end"]["digits"] < 1  # rank 10 at numpy's cutoff
    assert by["auto"]["probes"]["start"]["cond_XtX"] > 1e29


def test_synthetic_condition_sweep_normal_equations_lose_twice(tmp_path, capsys):
    doc = run_json(["run", "--task", "linear_regression",
                    "--data", "synthetic:n=400,d=10,kappa=1e2,seed=0",
                    "--sweep", "kappa=1e3,1e6", "--sweep", "solver=normal,qr",
                    "--out", str(tmp_path)], capsys)
    d = {(r["config"]["params"]["kappa"], r["config"]["solver"]): r["probes"]["end"]["digits"]
         for r in doc["runs"]}
    assert d[(1e6, "normal")] < d[(1e6, "qr")] - 3
    assert d[(1e3, "normal")] > d[(1e6, "normal")] + 3


def test_wide_csv_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "wide.csv"
    path.write_text("a,b,c,d,y\n1,2,3,4,5\n2,3,4,5,6\n")
    rc = main(["run", "--task", "linear_regression", "--data", str(path), "--target", "y",
               "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc == 2 and "has 2 rows and 5 columns" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("args,message", [
    (["--solver", "magic"], "Unknown solver 'magic'"),
    (["--precision", "bfloat16"], "linear_regression runs in"),
    (["--precision", "float16", "--solver", "qr"], "does not run in float16"),
    (["--data", "nist:Nope"], "Unknown NIST problem 'Nope'"),
])
def test_bad_input(args, message, tmp_path, capsys):
    out = tmp_path / "s"
    rc = main(["run", "--task", "linear_regression", *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("data", ["nist:Filip", "nist:Wampler5", "nist:Longley"])
def test_a_lone_normal_equations_solve_gets_a_verified_solver_switch(data, tmp_path, capsys):
    # no other solver ran beside it: the lab proposes its backward-stable path and keeps
    # the advice only because the same-data re-run recovered 2+ digits
    doc = run_json(["run", "--task", "linear_regression", "--data", data, "--solver",
                    "normal", "--out", str(tmp_path), "--no-progress"], capsys)
    (run,) = doc["runs"]
    rec = next(r for r in doc["recommendations"] if r["action"] == "switch_solver")
    assert rec["delta"] == {"solver": "auto"} and rec["runs"] == [run["id"]]
    assert rec["verification"]["status"] == "fixed", rec
    (row,) = [v for v in doc["verification"] if v["mitigation"] == "switch_solver"]
    assert row["after"]["digits"] >= row["before"]["digits"] + 2.0
    assert row["before"]["digits"] == pytest.approx(run["probes"]["end"]["digits"])


def test_a_backward_stable_solve_of_longley_is_left_alone(tmp_path, capsys):
    # QR keeps the 10.9 digits its error bound allows; Longley's certified coefficients
    # have norm 3.5e6 (the intercept), which is the answer, not an ill-conditioned blow-up
    doc = run_json(["run", "--task", "linear_regression", "--data", "nist:Longley",
                    "--solver", "qr", "--out", str(tmp_path), "--no-progress"], capsys)
    (run,) = doc["runs"]
    assert run["findings"] == [] and doc["recommendations"] == []
    assert run["probes"]["reference"]["weight_norm"] > 1e6
    main(["report", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "Run float64 qr: converged" in out and "lr=" not in out
