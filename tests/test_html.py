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
