"""`stability-lab portability`: re-runs of a stored run under other OpenBLAS kernels,
thread counts and row orders, through the real subprocess path.

Two kernels (OpenBLAS's own pick and Nehalem, which every x86-64 CPU runs and which is
never the default pick of a current one) and one thread keep these tests short; the full
sweep of kernels and threads is the same code with longer lists.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from stability_lab import portability as P
from stability_lab.cli import main
from stability_lab.lab import run_sweep
from stability_lab.spec import RunSpec, Sweep

pytestmark = pytest.mark.blas

KEYS = {"kernel", "threads", "order", "verdict", "digits", "final_loss"}


def _portability(capsys, run_id, out, *extra):
    assert main(["portability", run_id, "--out", out, "--json", "--kernels", "unset,Nehalem",
                 "--threads", "1", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_help_and_argument_checks_do_not_import_torch():
    code = ("import sys, stability_lab.cli.commands.portability, stability_lab.portability; "
            "from stability_lab.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_bad_run_id_is_one_line_exit_2(tmp_path, capsys):
    out = str(tmp_path / "runs")
    assert main(["portability", "nope", "--out", out]) == 2  # no store at all
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No run store" in err
    run_sweep(Sweep(RunSpec(scale="standardized", lr=0.5, epochs=5)), out=out)
    assert main(["portability", "zzzz", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No run 'zzzz'" in err and "Traceback" not in err
    assert main(["portability", "zzzz", "--out", out, "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err


def test_probe_reports_the_kernel_really_selected():
    usable, rejected = P.probe_kernels(("", "Nehalem", "NoSuchKernel"))
    selected = [k.selected for k in usable]
    assert "Nehalem" in selected
    # an unknown name falls back to the default pick: kept once, as an alias
    default = next(k for k in usable if k.requested == "")
    assert "NoSuchKernel" in default.aliases
    assert len(selected) == len(set(selected)) == 2 and not rejected


def test_default_sweep_run_under_two_kernels_and_a_permutation(tmp_path, capsys):
    # a run of the default sweep (README: float64 lr=0.01 lambda=0 scale=raw diverges)
    out = str(tmp_path / "runs")
    res = run_sweep(Sweep(RunSpec(precision="float64", lr=0.01, lam=0.0, scale="raw")),
                    out=out)
    r = res.results[0]
    assert r.verdict.status == "diverged"
    doc = _portability(capsys, r.run_id[:8], out)
    assert doc["run_id"] == r.run_id
    assert {k["selected"] for k in doc["kernels"]} >= {"Nehalem"}
    assert len(doc["variants"]) == 4  # 2 kernels x 1 thread x 2 row orders
    assert {v["order"] for v in doc["variants"]} == {"original", "permuted"}
    for v in doc["variants"]:
        assert KEYS <= set(v)
        assert set(v["digits"]) == {"loss_vs_run", "coef_vs_run", "loss_vs_float64",
                                    "coef_vs_float64"}
        assert v["verdict"] == "diverged" and v["threads"] == 1
    assert doc["verdict_changes"] == []
    cond = doc["conditioning"]
    assert cond["name"] == "cond_XtX" and cond["cond_u"] == pytest.approx(
        cond["value"] * 2.0 ** -53)
    # the stored order under OpenBLAS's own pick reproduces the stored run
    own = next(v for v in doc["variants"] if v["kernel"] == doc["kernels"][0]["selected"]
               and v["order"] == "original")
    assert own["digits"]["loss_vs_run"] >= 12
    text = P.format_portability(doc)
    assert "Nehalem" in text and "the verdict is the same in every variant" in text


@pytest.fixture(scope="module")
def incident(tmp_path_factory):
    """The one-hot incident, stored by `repro`: (store folder, the repro's JSON)."""
    import contextlib
    import io

    out = str(tmp_path_factory.mktemp("onehot") / "runs")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["repro", "ill_conditioned_blowup", "--out", out, "--json"]) == 0
    return out, json.loads(buf.getvalue())


def test_onehot_incident_blows_up_on_every_kernel_and_fixes_are_identical(incident, capsys):
    out, repro = incident
    doc = _portability(capsys, repro["baseline"]["id"], out, "--no-permute")
    assert len(doc["variants"]) == 2
    for v in doc["variants"]:
        # the blow-up: pinv divides by singular values that are rounding noise ~eps s_max,
        # so weights ~1e12-1e14 on every kernel; how many of the 50 scoring rows overflow
        # exp depends on the noise (0 to 33 seen across kernels and row orders)
        assert v["max_abs_coef"] > 1e10
        assert 0 <= v["probes_end"]["score_overflow"] <= v["probes_end"]["score_rows"] == 50
    rows = {r["mitigation"]: r for r in repro["verification"]}
    fix = _portability(capsys, rows["drop_reference"]["fixed_run_id"], out)
    assert len(fix["variants"]) == 4
    for v in fix["variants"]:
        assert v["max_abs_coef"] < 10 and v["probes_end"]["score_overflow"] == 0
        # full column rank, kappa ~ 10: every kernel and row order agrees to >= 13 digits
        assert v["digits"]["coef_vs_run"] >= 13
    assert fix["verdict_changes"] == []


def test_digits_helper():
    assert P._digits(1.0, 1.0) == 15.0
    assert P._digits(1.0 + 1e-6, 1.0) == pytest.approx(6.0, abs=0.01)
    assert P._digits([1.0, 2.0], [1.0, 2.0 + 2e-9]) == pytest.approx(9.05, abs=0.05)
    assert P._digits(None, 1.0) is None
    assert P._digits([np.inf], [1.0]) == 0.0
    assert P.thread_counts(16) == [1, 2, 16] and P.thread_counts(1) == [1]
