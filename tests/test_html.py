"""The HTML report: one self-contained file whose data names every run it draws."""

import json
import re

from stability_lab.cli import main


def page_data(html: str) -> dict:
    blob = re.search(r"<script id='lab-data' type='application/json'>(.*?)</script>", html,
                     re.S).group(1)
    return json.loads(blob.replace("<\\/", "</"))


def test_html_report(tmp_path, capsys):
    page = tmp_path / "report.html"
    rc = main(["--sweep", "precision=float64,float16", "--sweep", "lr=0.01,1",
               "--epochs", "30", "--html", str(page), "--out", str(tmp_path / "s")])
    assert rc == 0, capsys.readouterr().err
    html = page.read_text()
    # self-contained: no resource from anywhere else
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert "<script>" in html and "labReport" in html
    d = page_data(html)
    assert d["condition"].startswith("Condition number(X^T X): 2.2e12")
    assert d["header"][0].startswith("Model or computation? The computation:")
    assert d["recommendation"][0].startswith("Recommendation: ") and \
        "scale features" in d["recommendation"][0]
    # the map: lr x precision, one panel per scale, every cell a run of the sweep
    m = d["map"]
    assert (m["x"], m["y"], m["panel_axes"]) == ("lr", "precision", ["scale"])
    cells = [c for p in m["panels"] for row in p["cells"] for c in row]
    assert len(cells) == 8 and {c["run_id"] for c in cells} == set(d["order"])
    raw = m["panels"][0]
    assert raw["title"] == "scale=raw" and raw["bounds"][0]["lr_bound"] < 1e-5
    # every run is named, with its metrics, findings and phases for the detail view
    assert len(d["runs"]) == 8
    for run in d["runs"].values():
        assert run["id"] in d["order"] and run["label"]
        assert len(run["metrics"]["loss"]) >= 1 and "phases" in run and "findings" in run
    assert d["curves"] == {"panel_axes": ["precision", "scale"], "colour": "lr", "dash": []}


def test_html_into_missing_folder_is_a_usage_error(tmp_path, capsys):
    rc = main(["--html", str(tmp_path / "nope" / "r.html"), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc == 2 and "does not exist" in err
    assert not (tmp_path / "s").exists()


def _result(tmp_path, argv):
    from stability_lab.cli.commands.run import build_sweep
    from stability_lab.cli import build_parser
    from stability_lab.lab import run_sweep

    args = build_parser().parse_args(["run", *argv, "--out", str(tmp_path / "s")])
    sweep, _note = build_sweep(args)
    return run_sweep(sweep, out=args.out, command="test")


def test_panels_follow_the_axis_the_sweep_varies(tmp_path):
    """A policy sweep (precision stays at its default) gets a panel per policy, a solver
    sweep one per solver, a precision sweep one per precision."""
    from stability_lab.report.html import panels

    deep = _result(tmp_path, ["--task", "mlp", "--sweep", "policy=float32,bfloat16,float16",
                              "--epochs", "1"])
    assert list(panels(deep.results)) == ["policy=float32", "policy=bfloat16",
                                          "policy=float16"]
    lin = _result(tmp_path, ["--task", "linear_regression", "--sweep", "solver=qr,normal"])
    assert sorted(panels(lin.results)) == ["solver=normal", "solver=qr"]
    logi = _result(tmp_path, ["--sweep", "precision=float64,float32", "--epochs", "3",
                              "--scale", "raw"])
    assert list(panels(logi.results)) == ["precision=float64", "precision=float32"]


def test_default_sized_page_stays_under_5_mb():
    """72 runs x 200 epochs (the default command's shape) with every metric the logistic
    task records, filled with full-precision random values (the worst case for the page's
    5-significant-digit numbers): the page stays well under 5 MB."""
    from types import SimpleNamespace

    import numpy as np

    from stability_lab.diagnosis.findings import Finding, Verdict
    from stability_lab.diagnosis.record import RunResult
    from stability_lab.report.html import render
    from stability_lab.spec import RunSpec, Sweep
    from stability_lab.trace import Trace

    names = ["loss", "grad_norm", "update_norm", "weight_norm", "update_ratio",
             "nonfinite_weights", "nonfinite_grads", "max_abs_logit", "headroom_log2",
             "frac_unchanged", "lr_eff", "grad_max"]
    rng = np.random.default_rng(0)
    sweep = Sweep(RunSpec(), [("precision", ["float64", "float32", "bfloat16", "float16"]),
                              ("lr", [0.01, 0.2, 1.0]), ("lambda", [0.0, 0.001, 0.1]),
                              ("scale", ["raw", "standardized"])])
    results = []
    for spec in sweep.specs:
        trace = Trace(spec, {n: rng.random(200) * 10.0 ** rng.integers(-8, 8) for n in names},
                      {"start": {"lr_bound": 4.8e-6, "cond_XtX": 2.2e12, "L": 4.2e5}})
        results.append(RunResult(spec, trace, Verdict("diverged", 2, "loss growing"),
                                 [Finding("divergence", 2, "loss grows " * 10)]))
    res = SimpleNamespace(sweep=sweep, results=results, recommendations=[], verification=[],
                          task_report=None, store_path=None, sweep_id=1)
    size = len(render(res).encode())
    assert size < 5e6, size
