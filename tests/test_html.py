"""The HTML report: verdict lines, recommendations and plots in one self-contained file."""

import base64
import re

from stability_lab.cli import main


def test_html_report(tmp_path, capsys):
    page = tmp_path / "report.html"
    rc = main(["--sweep", "precision=float64,float16", "--sweep", "lr=0.01,1",
               "--epochs", "30", "--html", str(page), "--out", str(tmp_path / "s")])
    assert rc == 0, capsys.readouterr().err
    html = page.read_text()
    assert html.count("<li") >= 8  # 8 run lines, then recommendations
    assert "Condition number(X^T X): 2.2e12" in html
    assert "scale features" in html
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(images) == 2  # loss and gradient norm
    assert all(base64.b64decode(img).startswith(b"\x89PNG") for img in images)


def test_html_into_missing_folder_is_a_usage_error(tmp_path, capsys):
    rc = main(["--html", str(tmp_path / "nope" / "r.html"), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc == 2 and "does not exist" in err
    assert not (tmp_path / "s").exists()


def _result(tmp_path, argv):
    from stability_lab.commands.run import build_sweep
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
