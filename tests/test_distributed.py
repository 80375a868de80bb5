"""Sweeps on Dask distributed: a real scheduler and workers on 127.0.0.1, killed workers
and clients, results bit for bit those of the local executor, and no dask import at
--help or argument checking."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

from stability_lab.run import engine  # noqa: E402
from stability_lab.cli import main  # noqa: E402
from stability_lab.lab import run_sweep  # noqa: E402
from stability_lab.spec import RunSpec, Sweep  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DASK = str(Path(sys.executable).with_name("dask"))

NO_DASK = """
import sys
from stability_lab.cli import main
try:
    main({args!r})
except SystemExit:
    pass
print("DASK" if any(m == "dask" or m.startswith(("dask.", "distributed")) for m in sys.modules)
      else "NODASK")
"""


@pytest.mark.parametrize("args", [["run", "--help"], ["--workers", "0"],
                                  ["--scheduler", "localhost"],
                                  ["--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"]])
def test_help_and_executor_checks_do_not_import_dask(args):
    proc = subprocess.run([sys.executable, "-c", NO_DASK.format(args=args)],
                          capture_output=True, text=True, cwd=REPO / "tests", timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "NODASK", proc.stdout + proc.stderr
    if args != ["run", "--help"]:
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def _metrics(store_dir):
    conn = sqlite3.connect(Path(store_dir) / "lab.sqlite")
    rows = conn.execute('SELECT run_id, name, "values" FROM metrics').fetchall()
    runs = conn.execute("SELECT id, verdict, onset, status, probes FROM runs").fetchall()
    conn.close()
    return ({(r, n): v for r, n, v in rows}, {r[0]: r[1:] for r in runs})


@pytest.mark.slow  # the cluster's workers run the sweep; the kill tests compare bit for bit too
def test_scheduler_default_sweep_gives_the_local_results(cluster, tmp_path, capsys):
    """The brief's default sweep (72 runs in cohorts of every format; 60 epochs, and no
    verification, which runs on the client either way) on a cluster of 2 worker
    processes (``--scheduler``; ``--workers N``, the local cluster, is the killed-worker
    test's): the same verdicts and recommendations, and every stored metric and probe
    bit for bit those of the local run."""
    cluster.ensure_workers(2)
    docs = {}
    for name, extra in (("local", []), ("dask", ["--scheduler", cluster.address])):
        rc = main(["--sweep", "precision,lr,lambda", "--epochs", "60", "--no-verify",
                   "--out", str(tmp_path / name), "--json", *extra])
        assert rc == 0
        docs[name] = json.loads(capsys.readouterr().out)
    local, dask = docs["local"], docs["dask"]
    assert len(local["runs"]) == len(dask["runs"]) == 72
    assert [(r["id"], r["verdict"], r["onset_epoch"]) for r in local["runs"]] == \
        [(r["id"], r["verdict"], r["onset_epoch"]) for r in dask["runs"]]
    assert local["recommendations"] == dask["recommendations"]
    # a comparison worth making: converged, failed and unfinished runs alike
    assert len({r["verdict"] for r in local["runs"]}) >= 3, local["runs"]
    m_local, r_local = _metrics(tmp_path / "local")
    m_dask, r_dask = _metrics(tmp_path / "dask")
    assert m_local == m_dask  # the JSON text of every metric array: bit for bit
    assert r_local == r_dask


class Cluster:
    """``dask scheduler`` and ``dask worker`` processes on 127.0.0.1 only."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.file = tmp / "scheduler.json"
        env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
        self.procs: list[subprocess.Popen] = []
        self.scheduler = self._start([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0",
                                      "--no-dashboard", "--scheduler-file", str(self.file)],
                                     env, "scheduler")
        deadline = time.monotonic() + 60
        while not self.file.exists():
            if time.monotonic() > deadline or self.scheduler.poll() is not None:
                raise RuntimeError("dask scheduler did not start: "
                                   + (tmp / "scheduler.log").read_text())
            time.sleep(0.1)
        time.sleep(0.2)  # the file is written whole before it is renamed? wait a moment
        self.address = json.loads(self.file.read_text())["address"]
        assert self.address.startswith("tcp://127.0.0.1:")
        self.workers: list[subprocess.Popen] = []

    def _start(self, cmd, env, name):
        log = open(self.tmp / f"{name}.log", "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def ensure_workers(self, n: int = 2) -> None:
        from dask.distributed import Client

        self.workers = [w for w in self.workers if w.poll() is None]
        while len(self.workers) < n:
            k = len(self.procs)
            self.workers.append(self._start(
                [DASK, "worker", self.address, "--nthreads", "1", "--no-nanny",
                 "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{k}"],
                dict(os.environ), f"worker{k}"))
        with Client(self.address, timeout="30s") as client:
            client.wait_for_workers(n, timeout=120)

    def close(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("dask"))
    try:
        yield c
    finally:
        c.close()


def small_sweep(epochs=150):
    return Sweep(RunSpec(epochs=epochs), [("precision", ["float64", "float32", "bfloat16",
                                                         "float16"]),
                                          ("scale", ["raw", "standardized"]),
                                          ("lr", [0.01, 0.2, 1.0])])


def test_a_worker_killed_mid_sweep_loses_only_its_cohorts(cluster, tmp_path):
    from stability_lab.run.executor import DaskExecutor

    cluster.ensure_workers(2)
    sweep = small_sweep()
    killed = []

    def progress(done, total):
        if done and not killed:  # the first cohort is stored: kill a worker now
            victim = cluster.workers[0]
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait(timeout=30)
            killed.append(victim.pid)

    with DaskExecutor(scheduler=cluster.address) as ex:
        result = run_sweep(sweep, out=tmp_path / "s", progress=progress, executor=ex)
    assert killed
    assert len(result.results) == 24 and not [r for r in result.results if r.trace.error]
    local = engine.run_specs(sweep.specs)
    for r, t in zip(result.results, local):
        assert r.spec == t.spec
        for k in t.metrics:
            np.testing.assert_array_equal(r.trace.metrics[k], t.metrics[k], err_msg=k)
        # NaN probes (a curvature not computed) compare equal through their text
        assert json.dumps(r.trace.probes, sort_keys=True) == json.dumps(t.probes, sort_keys=True)
    conn = sqlite3.connect(tmp_path / "s" / "lab.sqlite")
    assert conn.execute("SELECT COUNT(*) FROM runs WHERE status='ok'").fetchone()[0] == 24
    conn.close()


@pytest.mark.slow  # a client process started twice; test_logistic covers local resumption
def test_a_killed_client_resumes_from_the_store(cluster, tmp_path):
    cluster.ensure_workers(2)
    out = tmp_path / "s"
    cmd = [sys.executable, "stability_lab.py", "--sweep", "precision,lr", "--epochs", "150",
           "--scheduler", cluster.address, "--out", str(out), "--json", "--no-progress",
           "--no-verify"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    db = out / "lab.sqlite"
    deadline = time.monotonic() + 240
    stored = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                try:
                    with sqlite3.connect(db, timeout=1) as conn:
                        stored = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
                except sqlite3.OperationalError:
                    stored = 0
                if stored:
                    break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert stored, "no run was stored before the deadline"
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert len(doc["runs"]) == 24 and not [r for r in doc["runs"] if r["error"]]
    assert sum(r["reused"] for r in doc["runs"]) >= stored


KILLER = """
import os, signal
import torch


def build():
    try:
        from distributed import get_worker
        get_worker()
        on_worker = True
    except Exception:
        on_worker = False
    if on_worker and torch.initial_seed() == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # this cohort kills every worker it runs on
    model = torch.nn.Linear(3, 1)
    x = torch.randn(16, 3)
    y = x.sum(1, keepdim=True)
    return model, [(x, y)], torch.nn.functional.mse_loss
"""


def test_a_cohort_that_kills_its_worker_twice_is_stored_as_an_error(tmp_path, capsys):
    """``--workers 2`` from the command line: a local cluster, whose nannies restart dead
    workers. The cohort is tried twice, then its run is stored as an error naming the
    cause; the sweep completes."""
    model = tmp_path / "killer.py"
    model.write_text(KILLER)
    rc = main(["--task", f"{model}:build", "--sweep", "seed=0,1,2", "--epochs", "3",
               "--lr", "0.01", "--workers", "2", "--out", str(tmp_path / "s"), "--json",
               "--no-progress"])
    assert rc == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    errors = {r["config"]["seed"]: r["error"] for r in runs}
    assert errors[0] is None and errors[2] is None
    assert errors[1].startswith("cohort failed on the cluster 2 times: KilledWorker")
    conn = sqlite3.connect(tmp_path / "s" / "lab.sqlite")
    status = dict(conn.execute("SELECT json_extract(spec, '$.seed'), status FROM runs"))
    conn.close()
    assert status == {0: "ok", 1: "error", 2: "ok"}
