"""Faults and input errors a new user meets: one line, a non-zero exit, no traceback,
an intact store (issue 12, parts 2-4)."""

import json
import sqlite3

import numpy as np
import pytest

from stability_lab.tasks import datasets
from stability_lab.cli import main


def run_cli(args, capsys):
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_line(err):
    lines = err.strip().splitlines()
    return len(lines) == 1 and "Traceback" not in err


def csv_text(rows, header="a,b,y", sep=","):
    return "\n".join([header.replace(",", sep)]
                     + [sep.join(str(v) for v in row) for row in rows]) + "\n"


def small_rows(n=40, seed=0, labels=("0", "1")):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 2))
    y = [labels[int(v)] for v in (X[:, 0] + 0.5 * X[:, 1] > 0)]
    return [(f"{a:.6f}", f"{b:.6f}", t) for (a, b), t in zip(X, y)]


# -- CSV input ------------------------------------------------------------------------
def test_bom_is_stripped(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + csv_text(small_rows(), header="y,a,b").encode())
    ds = datasets.load_csv(str(path), "y")
    assert ds.feature_names == ["a", "b"] and ds.target_name == "y" and ds.n == 40


def test_numeric_labels_compare_as_numbers(tmp_path):
    rows = small_rows(labels=("0", "1"))
    spelled = [(a, b, {"0": ["0", "0.0", "0e0"], "1": ["1", "1.0", "1.00"]}[t][i % 3])
               for i, (a, b, t) in enumerate(rows)]
    path = tmp_path / "labels.csv"
    path.write_text(csv_text(spelled))
    ds = datasets.load_csv(str(path), "y")
    assert ds.classes == ["0", "1"]
    assert list(ds.y) == [float(t) for _, _, t in rows]
    # text labels still work, numbers sort numerically (2 < 10)
    y, classes = datasets.encode_labels(["10", "2", "2.0", "b", "a"])
    assert classes == ["2", "10", "a", "b"] and list(y) == [1, 0, 0, 3, 2]


def test_numeric_labels_run_as_two_classes(tmp_path, capsys):
    rows = [(a, b, {"0": "0.0", "1": "1"}[t] if i % 2 else t)
            for i, (a, b, t) in enumerate(small_rows())]
    path = tmp_path / "d.csv"
    path.write_text(csv_text(rows))
    rc, out, err = run_cli(["--data", str(path), "--target", "y", "--epochs", "3",
                            "--out", str(tmp_path / "s"), "--json"], capsys)
    assert rc == 0, err
    assert json.loads(out)["runs"][0]["verdict"]


def test_duplicate_column_names_are_named(tmp_path, capsys):
    path = tmp_path / "dup.csv"
    path.write_text("a,y,b,y,a\n1,0,2,1,3\n2,1,3,0,4\n")
    rc, _, err = run_cli(["--data", str(path), "--target", "y", "--out",
                          str(tmp_path / "s")], capsys)
    assert rc == 2 and one_line(err)
    assert "duplicate column names" in err
    assert "'a' (columns 1, 5)" in err and "'y' (columns 2, 4)" in err
    assert not (tmp_path / "s").exists()


def test_directory_as_data_has_its_own_message(tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    for arg in (str(folder), str(folder) + "/"):
        rc, _, err = run_cli(["--data", arg, "--target", "y", "--out",
                              str(tmp_path / "s")], capsys)
        assert rc == 2 and one_line(err), err
        assert "is a folder, not a CSV file" in err


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_delimiter_is_sniffed(sep, tmp_path):
    rows = small_rows()
    path = tmp_path / "semi.csv"
    path.write_text(csv_text(rows, sep=sep))
    ds = datasets.load_csv(str(path), "y")
    comma = tmp_path / "comma.csv"
    comma.write_text(csv_text(rows))
    ref = datasets.load_csv(str(comma), "y")
    assert ds.feature_names == ["a", "b"]
    np.testing.assert_array_equal(ds.X, ref.X)
    np.testing.assert_array_equal(ds.y, ref.y)


def test_semicolon_with_decimal_commas_gets_a_hint(tmp_path, capsys):
    path = tmp_path / "eu.csv"
    path.write_text("a;b;y\n1,5;2,0;0\n2,5;3,0;1\n")
    rc, _, err = run_cli(["--data", str(path), "--target", "y", "--out",
                          str(tmp_path / "s")], capsys)
    assert rc == 2 and one_line(err)
    assert "'1,5'" in err and "decimal comma" in err


def test_sniffer_keeps_comma_when_unsure():
    assert datasets.sniff_delimiter("a,b,y\n1,2,0\n") == ","
    assert datasets.sniff_delimiter("a;b;y\n1;2;0\n3;4") == ";"
    assert datasets.sniff_delimiter('"x;1",b,y\n1,2,0\n') == ","
    assert datasets.sniff_delimiter("single\n1\n2\n") == ","


# -- show RUN_ID ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    assert main(["--sweep", "lr=0.01,0.1,1", "--epochs", "3", "--scale", "standardized",
                 "--out", str(out), "--json", "--no-progress"]) == 0
    con = sqlite3.connect(out / "lab.sqlite")
    ids = [r[0] for r in con.execute("SELECT id FROM runs ORDER BY id")]
    con.close()
    return out, ids


def test_show_exact_id_and_unique_prefix(small_store, capsys):
    out, ids = small_store
    capsys.readouterr()
    for arg in (ids[0], ids[0][:8]):
        rc, text, err = run_cli(["show", arg, "--out", str(out)], capsys)
        assert rc == 0, err
        assert text.startswith(f"Run {ids[0]}")


@pytest.mark.parametrize("pattern", ["%", "_", "%%", "_" * 12])
def test_show_wildcards_are_not_wildcards(pattern, small_store, capsys):
    out, _ = small_store
    capsys.readouterr()
    rc, _, err = run_cli(["show", pattern, "--out", str(out)], capsys)
    assert rc == 2 and one_line(err) and f"No run {pattern!r}" in err


def test_show_ambiguous_prefix_lists_the_count(small_store, capsys):
    out, ids = small_store
    capsys.readouterr()
    rc, _, err = run_cli(["show", "", "--out", str(out)], capsys)
    assert rc == 2 and one_line(err)
    # a second run sharing the first 6 characters of an id
    con = sqlite3.connect(out / "lab.sqlite")
    con.execute("INSERT INTO runs (id, created, task, spec, status) "
                "SELECT ?, created, task, spec, status FROM runs WHERE id = ?",
                (ids[0][:6] + "zzzzzz", ids[0]))
    con.commit()
    con.close()
    rc, _, err = run_cli(["show", ids[0][:6], "--out", str(out)], capsys)
    assert rc == 2 and one_line(err)
    assert f"prefix {ids[0][:6]!r} matches 2 runs" in err and "more characters" in err
    rc, text, err = run_cli(["show", ids[0][:7], "--out", str(out)], capsys)
    assert rc == 0 and text.startswith(f"Run {ids[0]}"), err


# -- faults of the store and of output paths ----------------------------------------
SMALL = ["--sweep", "lr=0.01,0.1", "--epochs", "3", "--scale", "standardized", "--no-progress"]


def integrity(out):
    con = sqlite3.connect(out / "lab.sqlite")
    try:
        (check,) = con.execute("PRAGMA integrity_check").fetchone()
        runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
        sweeps = con.execute("SELECT count(*) FROM sweeps").fetchone()[0]
    finally:
        con.close()
    return check, runs, sweeps


@pytest.fixture
def stored(tmp_path, capsys):
    """A store holding one finished sweep of two runs."""
    out = tmp_path / "runs"
    assert main(SMALL + ["--out", str(out)]) == 0
    capsys.readouterr()
    assert integrity(out) == ("ok", 2, 1)
    return out


def test_out_is_an_existing_file(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine\n")
    rc, _, err = run_cli(SMALL + ["--out", str(target)], capsys)
    assert rc == 2 and one_line(err) and "is a file, not a folder" in err
    assert target.read_text() == "mine\n"
    rc, _, err = run_cli(SMALL + ["--out", str(target / "sub")], capsys)
    assert rc == 2 and one_line(err) and "which is a file, not a folder" in err
    rc, _, err = run_cli(["show", "abc", "--out", str(target)], capsys)
    assert rc == 2 and one_line(err) and "is a file, not a folder" in err


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_damaged_store_for_show_and_run(kind, stored, capsys):
    db = stored / "lab.sqlite"
    con = sqlite3.connect(db)
    run_id = con.execute("SELECT id FROM runs LIMIT 1").fetchone()[0]
    con.close()
    data = db.read_bytes()
    if kind == "garbage":
        db.write_bytes(b"this is not a database\n" * 400)
    else:
        db.write_bytes(data[: len(data) // 2])
    before = db.read_bytes()
    for args in (["show", run_id, "--out", str(stored)], SMALL + ["--out", str(stored)],
                 SMALL + ["--out", str(stored), "--rerun"]):
        rc, _, err = run_cli(args, capsys)
        assert rc == 3 and one_line(err), (args, err)
        assert "damaged" in err and "move it aside" in err
    assert db.read_bytes() == before  # the lab did not write into a damaged store


def test_locked_store_waits_then_reports(stored, capsys, monkeypatch):
    monkeypatch.setenv("STABILITY_LAB_LOCK_TIMEOUT", "0.2")
    holder = sqlite3.connect(stored / "lab.sqlite")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        rc, _, err = run_cli(SMALL + ["--out", str(stored), "--rerun"], capsys)
        assert rc == 3 and one_line(err)
        assert "is locked by another process (waited 0.2 s)" in err
        rc, _, err = run_cli(["show", "0", "--out", str(stored)], capsys)
        assert rc == 3 and one_line(err) and "locked" in err
    finally:
        holder.rollback()
        holder.close()
    assert integrity(stored) == ("ok", 2, 1)


def test_full_disk_keeps_finished_runs(stored, capsys, monkeypatch):
    """SQLite's max_page_count makes the database full exactly as a full disk does
    (SQLITE_FULL): the run being written rolls back, finished runs stay."""
    from stability_lab import store as store_mod

    real = store_mod.Store._connect

    def tight(self, create):
        real(self, create)
        (pages,) = self.conn.execute("PRAGMA page_count").fetchone()
        self.conn.execute(f"PRAGMA max_page_count = {pages + 1}")

    monkeypatch.setattr(store_mod.Store, "_connect", tight)
    rc, _, err = run_cli(["--sweep", "lr=0.01,0.02,0.05", "--epochs", "40",
                          "--scale", "standardized", "--no-progress", "--out", str(stored)],
                         capsys)
    assert rc == 3 and one_line(err), err
    assert "is full" in err and "finished so far are kept" in err
    check, runs, _ = integrity(stored)
    assert check == "ok" and runs >= 2


def _mount(*args):
    import shutil
    import subprocess

    if shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 512 KiB tmpfs (root and mount permitted), else the test is skipped."""
    import subprocess

    point = tmp_path / "mnt"
    point.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=512k", "tmpfs", str(point)):
        pytest.skip("cannot mount a tmpfs here (needs root); test_full_disk_keeps_finished_"
                    "runs covers SQLITE_FULL, test_unwritable_* the read-only paths")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_real_full_disk(small_tmpfs, capsys):
    (small_tmpfs / "filler").write_bytes(b"\0" * (512 * 1024 - 48 * 1024))
    out = small_tmpfs / "runs"
    rc, _, err = run_cli(["--sweep", "lr=0.01,0.02,0.05,0.1", "--epochs", "100",
                          "--scale", "standardized", "--no-progress", "--out", str(out)],
                         capsys)
    assert rc == 3 and one_line(err), err
    assert "full" in err
    if (out / "lab.sqlite").exists():
        assert integrity(out)[0] == "ok"


def test_read_only_file_system(small_tmpfs, stored, capsys):
    import shutil

    out = small_tmpfs / "runs"
    shutil.copytree(stored, out)
    assert _mount("-o", "remount,ro", str(small_tmpfs))
    for args in (SMALL + ["--out", str(out), "--rerun"],
                 SMALL + ["--out", str(small_tmpfs / "new")],
                 SMALL + ["--out", str(stored), "--html", str(small_tmpfs / "r.html")]):
        rc, _, err = run_cli(args, capsys)
        assert rc == 3 and one_line(err), (args, err)
        assert "read-only" in err
    # show reads a store on a read-only file system
    con = sqlite3.connect(f"{(out / 'lab.sqlite').as_uri()}?mode=ro", uri=True)
    run_id = con.execute("SELECT id FROM runs LIMIT 1").fetchone()[0]
    con.close()
    rc, text, err = run_cli(["show", run_id, "--out", str(out)], capsys)
    assert rc == 0 and text.startswith(f"Run {run_id}"), err


def test_unwritable_folder_is_found_before_work(tmp_path, capsys, monkeypatch):
    """Root ignores permission bits, so the probe write is made to fail the way a
    read-only mount fails it (EROFS); the check is a real write, not os.access."""
    import errno
    import tempfile

    from stability_lab.run import engine

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", kwargs.get("dir"))

    def no_work(*args, **kwargs):
        raise AssertionError("data was loaded before the output paths were checked")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    monkeypatch.setattr(engine, "prepare", no_work)
    rc, _, err = run_cli(SMALL + ["--out", str(tmp_path / "s")], capsys)
    assert rc == 3 and one_line(err)
    assert "Cannot write --out" in err and "read-only" in err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("kind", ["folder", "trailing slash", "missing folder", "through a file"])
def test_html_path_checked_before_the_sweep(kind, stored, tmp_path, capsys, monkeypatch):
    from stability_lab.run import engine

    (tmp_path / "afile").write_text("x")
    html = {"folder": str(tmp_path), "trailing slash": str(tmp_path / "new") + "/",
            "missing folder": str(tmp_path / "nope" / "r.html"),
            "through a file": str(tmp_path / "afile" / "r.html")}[kind]

    def no_work(*args, **kwargs):
        raise AssertionError("the sweep started before --html was checked")

    monkeypatch.setattr(engine, "run_specs", no_work)
    monkeypatch.setattr(engine, "prepare", no_work)
    rc, _, err = run_cli(SMALL + ["--out", str(stored), "--rerun", "--html", html], capsys)
    assert rc == 2 and one_line(err), err
    assert "--html" in err
    assert integrity(stored) == ("ok", 2, 1)


FLAKY_BUILD = '''
import torch
from torch import nn

CALLS = []


def build():
    CALLS.append(1)
    if len(CALLS) > 1:
        raise RuntimeError("the second call fails")
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(32, 4, generator=gen)
    y = (X[:, 0] > 0).long()
    return nn.Linear(4, 2), [(X, y)], nn.functional.cross_entropy
'''


def test_build_failing_on_its_second_call_leaves_no_sweep_row(stored, tmp_path, capsys):
    model = tmp_path / "flaky.py"
    model.write_text(FLAKY_BUILD)
    for out in (stored, tmp_path / "fresh"):
        rc, _, err = run_cli(["--task", f"{model}:build", "--epochs", "1", "--no-progress",
                              "--out", str(out)], capsys)
        assert rc == 2 and one_line(err), err
        assert "build() raised RuntimeError: the second call fails" in err
    assert integrity(stored) == ("ok", 2, 1)  # the earlier sweep, and no new row
    assert not (tmp_path / "fresh").exists()


# -- the lab's probes on huge finite data ----------------------------------------------
def _huge_csv(tmp_path, kind):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((60, 3))
    y = (X[:, 0] > 0).astype(int)
    if kind == "1e200":
        X[:, 1] *= 1e200
    else:
        X[:, 2] = 1e308
    path = tmp_path / f"{kind}.csv"
    path.write_text("a,b,c,y\n" + "".join(
        ",".join(repr(float(v)) for v in row) + f",{t}\n" for row, t in zip(X, y)))
    return path


@pytest.mark.parametrize("kind", ["1e200", "const 1e308"])
def test_huge_finite_values_are_judged_not_crashed(kind, tmp_path, capsys):
    path = _huge_csv(tmp_path, kind)
    rc, out, err = run_cli(["--data", str(path), "--target", "y", "--epochs", "5",
                            "--sweep", "lr=0.01,0.1", "--sweep", "scale",
                            "--out", str(tmp_path / "s"), "--json", "--no-progress"], capsys)
    assert rc == 0, err
    doc = json.loads(out)
    for run in doc["runs"]:
        assert run["error"] is None and run["verdict"]  # judged, not stored as an error
    raw = [r for r in doc["runs"] if r["config"]["scale"] == "raw"]
    cond = raw[0]["probes"]["start"]["cond_XtX"]
    assert cond == float("inf") or cond is None or cond == "inf" or cond > 1e300
    facts = next(v for k, v in doc["conditioning"].items() if "scale=raw" in k)
    assert facts["cond_XtX"] in (None, "inf", float("inf")) or facts["cond_XtX"] > 1e300


def test_scaled_eigenvalues_match_and_never_raise():
    from stability_lab.linalg.conditioning import gram_condition, sym_eigvalsh

    rng = np.random.default_rng(0)
    B = rng.standard_normal((5, 5))
    S = B @ B.T
    np.testing.assert_array_equal(sym_eigvalsh(S), np.linalg.eigvalsh(S))  # unchanged
    ref = np.linalg.eigvalsh(S)
    for c in (2.0 ** 900, 2.0 ** -900):  # exact scalings far out of range
        np.testing.assert_allclose(sym_eigvalsh(S * c) / c, ref, rtol=1e-13, atol=0)
    big = np.full((3, 3), 1e308)
    with np.errstate(all="raise"):
        ev = sym_eigvalsh(big)
    assert ev[-1] == pytest.approx(3e308, rel=1e-12) or ev[-1] == np.inf
    assert np.isnan(sym_eigvalsh(np.array([[np.inf, 0], [0, 1.0]]))).all()
    X = rng.standard_normal((40, 3))
    ref = gram_condition(X)
    assert gram_condition(X * 2.0 ** 700) == pytest.approx(ref, rel=1e-12)
    X[:, 1] *= 1e200
    assert gram_condition(X) == np.inf


# -- reuse only what is the same -------------------------------------------------------
def test_builtin_run_ids_are_unchanged():
    """Built-in data hashes the spec alone: stores written before content hashing keep
    their ids (values computed before the change)."""
    from stability_lab.spec import RunSpec

    assert RunSpec().run_id == "35bec133174a"
    assert RunSpec(precision="float16", lr=0.2, scale="standardized").run_id == "7ad9aeffd87c"
    assert RunSpec(task="mlp", data="digits", policy="mixed-fp16").run_id == "afec912acbac"


def test_edited_csv_is_recomputed(tmp_path, capsys):
    rows = small_rows()
    path = tmp_path / "d.csv"
    path.write_text(csv_text(rows))
    args = ["--data", str(path), "--target", "y", "--epochs", "3", "--sweep", "lr=0.01,0.1",
            "--scale", "standardized", "--out", str(tmp_path / "s"), "--no-progress"]
    rc, first, err = run_cli(args, capsys)
    assert rc == 0, err
    assert "reused" not in first
    rc, again, err = run_cli(args, capsys)
    assert rc == 0 and "(2 reused: same spec and data; --rerun recomputes)" in again
    # the same size and modification second: only the content differs
    edited = csv_text([(a, b, "1" if t == "0" else "0") for a, b, t in rows])
    assert len(edited) == len(csv_text(rows))
    path.write_text(edited)
    rc, out, err = run_cli(args + ["--json"], capsys)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["sweep"]["reused"] == 0 and not any(r["reused"] for r in doc["runs"])
    con = sqlite3.connect(tmp_path / "s" / "lab.sqlite")
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 4
    meta = json.loads(con.execute("SELECT meta FROM runs WHERE id=?",
                                  (doc["runs"][0]["id"],)).fetchone()[0])
    con.close()
    import hashlib

    assert meta["data_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_edited_model_file_is_recomputed(tmp_path):
    from stability_lab.spec import RunSpec

    model = tmp_path / "m.py"
    model.write_text("def build():\n    return 1\n")
    spec = RunSpec(task=f"{model}:build", data="user")
    before = spec.run_id
    assert RunSpec(task=f"{model}:build", data="user").run_id == before
    model.write_text("def build():\n    return 2\n")
    assert RunSpec(task=f"{model}:build", data="user").run_id != before


def test_help_says_task_file_runs_its_code(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "RUNS ITS CODE" in text and "file.py:build" in text

