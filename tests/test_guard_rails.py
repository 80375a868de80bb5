"""Guard rails: a sweep's time and memory estimated before it starts, a sweep that
cannot fit refused in one line (``--force`` overrides), and progress on stderr that is
a rich bar on a terminal and plain lines anywhere else."""

import io

import numpy as np
import pytest
from _helpers import traced_peak
from threadpoolctl import threadpool_limits

from stability_lab import estimate as est_mod
from stability_lab.cli import main
from stability_lab.estimate import RUNTIME_SLACK, Rates, data_shape, estimate_sweep
from stability_lab.progress import Progress
from stability_lab.spec import RunSpec, Sweep

#: a fixed time model: no calibration, the same numbers on every machine
FIXED = Rates()
GB = 1 << 30


def est(sweep, **kw):
    return estimate_sweep(sweep, rates=FIXED, available=64 * GB, base=100 << 20, **kw)


def run_cli(args, capsys):
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_line(err):
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


# -- the estimate ----------------------------------------------------------------------
def test_estimate_grows_linearly_with_runs_and_epochs():
    base = RunSpec(scale="standardized", epochs=100)

    def runs(k):
        return est(Sweep(base, [("lr", [1e-3 * (i + 1) for i in range(k)])]))

    a, b, c = runs(10), runs(20), runs(30)
    assert b.seconds > a.seconds and b.peak_bytes > a.peak_bytes
    assert (c.seconds - b.seconds) == pytest.approx(b.seconds - a.seconds, rel=1e-9)
    assert (c.parts["runs"] - b.parts["runs"]) == b.parts["runs"] - a.parts["runs"] > 0
    assert (c.peak_bytes - b.peak_bytes) == pytest.approx(b.peak_bytes - a.peak_bytes,
                                                          rel=0.05)

    def epochs(e):
        return est(Sweep(base.replace(epochs=e), [("lr", [0.01, 0.1])]))

    a, b, c = epochs(100), epochs(200), epochs(300)
    assert b.seconds > a.seconds and b.peak_bytes > a.peak_bytes
    assert (c.seconds - b.seconds) == pytest.approx(b.seconds - a.seconds, rel=1e-9)
    assert (c.parts["runs"] - b.parts["runs"]) == b.parts["runs"] - a.parts["runs"]
    # one run alone per cohort (--no-cohorts): every run costs the same
    one = [est(Sweep(base, [("lr", [1e-3 * (i + 1) for i in range(k)])]), cohorts=False)
           for k in (10, 20, 30)]
    assert (one[2].seconds - one[1].seconds) == pytest.approx(one[1].seconds - one[0].seconds,
                                                              rel=1e-9)


def test_estimate_text_names_what_was_asked():
    e = est(Sweep(RunSpec(), [("precision", ["float64", "float32", "bfloat16", "float16"]),
                              ("lr", [0.01, 0.2, 1.0]), ("lambda", [0.0, 1e-3, 0.1]),
                              ("scale", ["raw", "standardized"])]))
    text = e.text()
    assert text.startswith("estimate: 72 runs x 200 epochs on 569 x 30: ~")
    assert "peak ~" in text and "available)" in text and "\n" not in text
    assert e.fits


def test_data_shapes_without_loading(tmp_path):
    from stability_lab.tasks import datasets

    for name in ("breast_cancer", "digits"):
        ds = datasets.load(name)
        shape = data_shape("logistic_regression", name)
        assert (shape.rows, shape.cols) == ds.X.shape
    shape = data_shape("logistic_regression", "synthetic:n=300,d=7,kappa=10")
    assert (shape.rows, shape.cols) == (300, 7)
    path = tmp_path / "d.csv"
    path.write_text("a;b;c;y\n1;2;3;0\n4;5;6;1\n7;8;9;0")  # no newline at the end
    shape = data_shape("logistic_regression", str(path), "y")
    assert (shape.rows, shape.cols, shape.kind) == (3, 3, "csv")
    assert data_shape("logistic_regression", str(tmp_path / "missing.csv"), "y") is None


def test_deep_tasks_say_they_are_not_estimated():
    e = estimate_sweep(Sweep(RunSpec(task="mlp", data="digits"), [("lr", [0.1, 1.0])]),
                       rates=FIXED, available=1, base=0)
    assert e.peak_bytes is None and e.seconds is None and e.fits
    assert "not estimated" in e.text() and "mlp" in e.text()


def test_available_memory_is_read():
    avail = est_mod.available_memory()
    assert avail is None or avail > 0
    assert est_mod.resident_memory() > 0


@pytest.fixture(scope="module")
def warm():
    """Import everything a sweep imports before anything is traced:
    tracemalloc would count the modules' own allocations otherwise."""
    from stability_lab.lab import run_sweep

    est_mod._preload("logistic_regression")
    run_sweep(Sweep(RunSpec(epochs=1), [("scale", ["raw", "standardized"])]))



def _wide_csv(path, n, p, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    y = np.arange(n) % 2
    with open(path, "w") as fh:
        fh.write(",".join(f"x{i}" for i in range(p)) + ",y\n")
        for row, label in zip(X, y):
            fh.write(",".join(f"{v:.5f}" for v in row) + f",{label}\n")


def test_wide_memory_estimate_matches_a_real_run(tmp_path, warm):
    """2 rows: more columns than rows, so the near-singular advisory stops after the
    SVD (no p x p Gram matrix: the 2 x 9,999 sweep once needed gigabytes for it). The
    estimate of what a small real run allocates (its NumPy arrays, traced) is within 4x
    of it; with fewer columns than rows the Gram term (3 x 8 p^2) is counted."""
    from stability_lab.lab import run_sweep

    path = tmp_path / "wide.csv"
    _wide_csv(path, 2, 600)
    sweep = Sweep(RunSpec(data=str(path), target="y", epochs=5),
                  [("lr", [0.01, 0.1]), ("scale", ["raw", "standardized"])])
    e = est(sweep)
    predicted = e.peak_bytes - e.base_bytes - RUNTIME_SLACK
    with threadpool_limits(1):  # LAPACK's threads only spin on a busy machine
        measured = traced_peak(lambda: run_sweep(sweep))
    assert measured / 4 < predicted < 4 * measured, (predicted, measured)
    # the 2 x 9,999 case: nothing grows with p^2 (issue: < 1 GB)
    big = tmp_path / "big.csv"
    big.write_text(",".join(f"x{i}" for i in range(9999)) + ",y\n"
                   + "\n".join(",".join(["0.5"] * 9999) + f",{i}" for i in range(2)) + "\n")
    e = est(Sweep(RunSpec(data=str(big), target="y"), [("lr", [0.01, 0.2, 1.0])]))
    assert (e.rows, e.cols) == (2, 9999)
    assert e.parts["advisory"] < 100 * 8 * 2 * 9999
    assert e.peak_bytes < 1e9
    # fewer columns than rows: the advisory's Gram matrix and eigvalsh's copies
    tall = tmp_path / "tall.csv"
    _wide_csv(tall, 1500, 1000)
    e = est(Sweep(RunSpec(data=str(tall), target="y"), [("lr", [0.01, 0.2])]))
    assert e.parts["advisory"] >= 3 * 8 * 1000 ** 2


def test_many_rows_memory_estimate_matches_a_real_run(warm):
    """100,000 rows x 5: data, its variants, the float64 designs and the advisory's
    standardized copies and SVD, each O(n p). Within 4x of a small real run's traced
    peak (the cohort's torch tensors, one run wide here, are not traced)."""
    from stability_lab.lab import run_sweep

    sweep = Sweep(RunSpec(data="synthetic:n=100000,d=5,kappa=10,seed=0", epochs=3,
                          lr=0.1), [("scale", ["raw", "standardized"])])
    e = est(sweep)
    predicted = e.peak_bytes - e.base_bytes - RUNTIME_SLACK
    measured = traced_peak(lambda: run_sweep(sweep))
    assert measured / 4 < predicted < 4 * measured, (predicted, measured)
    assert predicted > 10 * 8 * 100_000 * 5  # many copies of the 4 MB design, not a few


# -- refusal and --force ---------------------------------------------------------------
SMALL = ["--sweep", "lr=0.01,0.1", "--epochs", "3", "--scale", "standardized", "--no-verify"]


def test_a_sweep_that_cannot_fit_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(est_mod, "available_memory", lambda: 1 << 20)  # 1 MiB free
    out = tmp_path / "store"
    for extra in ([], ["--no-progress"], ["--json"]):
        rc, stdout, err = run_cli(SMALL + extra + ["--out", str(out)], capsys)
        assert rc == 2 and one_line(err), err
        assert "does not fit in memory" in err and "estimate: 2 runs x 3 epochs" in err
        assert "--force" in err and "reduce the sweep" in err
        assert stdout == ""
        assert not out.exists()


def test_force_runs_anyway(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(est_mod, "available_memory", lambda: 1 << 20)
    out = tmp_path / "store"
    rc, stdout, err = run_cli(SMALL + ["--force", "--quiet", "--out", str(out)], capsys)
    assert rc == 0, err
    assert (out / "lab.sqlite").exists() and stdout
    assert err.startswith("estimate: 2 runs x 3 epochs on 569 x 30")


def test_force_appears_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "--force" in capsys.readouterr().out


# -- progress --------------------------------------------------------------------------
def test_progress_when_not_a_terminal_is_plain(tmp_path, capsys):
    rc, _, err = run_cli(SMALL + ["--quiet", "--out", str(tmp_path / "s")], capsys)
    assert rc == 0, err
    lines = err.splitlines()
    assert lines[0].startswith("estimate: 2 runs x 3 epochs on 569 x 30: ~")
    assert lines[-1].startswith("progress: 2/2 runs, ")
    assert "\r" not in err and "\x1b" not in err


def test_no_progress_writes_nothing_on_stderr(tmp_path, capsys):
    rc, _, err = run_cli(SMALL + ["--quiet", "--no-progress", "--out", str(tmp_path / "s")],
                         capsys)
    assert rc == 0 and err == ""


def test_progress_helper_plain_and_terminal():
    buf = io.StringIO()
    p = Progress(unit="runs", headline="estimate: 3 runs", stream=buf, tty=False,
                 finishing="next: the analysis")
    for done in range(0, 21):
        p(done, 20)
    p(20, 20)
    p.close()
    lines = buf.getvalue().splitlines()
    assert lines[0] == "estimate: 3 runs"
    assert len(lines) == 11 and lines[-1].startswith("progress: 20/20 runs")  # each tenth
    assert lines[-1].endswith("; next: the analysis") and "ETA" in lines[1]
    assert "\r" not in buf.getvalue() and "\x1b" not in buf.getvalue()
    quiet = io.StringIO()
    p = Progress(stream=quiet, tty=False, plain=False)
    p(1, 2, "a")
    p.close()
    assert quiet.getvalue() == ""
    term = io.StringIO()
    with Progress(unit="runs", headline="estimate: 3 runs", estimate_seconds=9.0,
                  stream=term, tty=True) as p:
        p(0, 3)
        p(3, 3)
    assert "estimate: 3 runs" in term.getvalue() and "3/3" in term.getvalue()


def test_nothing_on_stderr_before_the_work_starts(tmp_path, capsys):
    """A data error found when the data is loaded stays the only line on stderr: the
    estimate line is printed when the work starts, not before."""
    path = tmp_path / "d.csv"
    path.write_text("a,b,y\n1,red,0\n2,3,1\n")
    rc, _, err = run_cli(["--data", str(path), "--target", "y", "--out",
                          str(tmp_path / "s")], capsys)
    assert rc == 2 and one_line(err) and "non-numeric value 'red'" in err
