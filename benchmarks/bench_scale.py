"""Scale targets, a scaling table in n, and a sweep on 1 and 2 Dask workers.

    python benchmarks/bench_scale.py [--only targets,scaling,dask] [--keep DIR]

Every case is the command a user would type, run in a fresh process
(``python -m stability_lab run ... --no-progress``); the table gives its wall time and
the peak resident memory of that process (``os.wait4``'s ``ru_maxrss``), next to the
issue's targets. Data files are generated first (not timed) in a temporary folder.
Cases (issue 13):

- 1,000,000 x 50 float32, 12 runs x 50 epochs (synthetic data, kappa 1e3)
- 500 x 10,000 CSV (more columns than rows), 2 runs x 30 epochs, float32
- 2 x 9,999 CSV, the default sweep (precision, lr, lambda: 72 runs)
- 100,000 x 100 CSV (92 MB), 12 runs (200 epochs, float64)
- scaling: n = 1e4, 1e5, 1e6 (d = 50, 12 runs x 50 epochs, float32)
- dask: 5,000 runs (4 precisions x 2 scales x 25 lr x 25 lambda: 8 cohorts) with
  --workers 1 and --workers 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _settings import settings


def write_csv(path: Path, n: int, d: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * np.geomspace(1, 100, d)
    y = (X @ rng.standard_normal(d) > 0).astype(int)
    with open(path, "w") as fh:
        fh.write(",".join([f"x{i}" for i in range(d)] + ["label"]) + "\n")
        for start in range(0, n, 10_000):
            block = np.column_stack([X[start:start + 10_000],
                                     y[start:start + 10_000]]).astype(object)
            block[:, -1] = block[:, -1].astype(int)
            np.savetxt(fh, block, delimiter=",", fmt=["%.9g"] * d + ["%d"])


def run(args: list[str], out: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MiB, exit code) of one command in a fresh process."""
    cmd = [sys.executable, "-m", "stability_lab", "run", *args, "--out", str(out),
           "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    rc = os.waitstatus_to_exitcode(status)
    if rc:
        print(f"  FAILED ({rc}): {' '.join(args)}\n  {err.strip()[-500:]}")
    return wall, usage.ru_maxrss / 1024, rc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="targets,scaling,dask")
    ap.add_argument("--keep", default=None, help="folder for the data and stores (kept)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    import torch  # noqa: F401  (its threads are printed)

    print(settings())
    print("each case: a fresh process; wall time and its peak RSS (ru_maxrss)")
    rows = []

    def case(name, target, cli):
        out = work / f"store_{len(rows)}"
        shutil.rmtree(out, ignore_errors=True)
        wall, rss, rc = run(cli, out)
        rows.append((name, wall, rss, target, rc))
        print(f"{name:58s} {wall:8.1f} s {rss:8.0f} MiB   target {target}", flush=True)
        return wall, rss

    if "targets" in only:
        for n, d in ((500, 10_000), (2, 9_999), (100_000, 100)):
            path = work / f"data_{n}x{d}.csv"
            if not path.exists():
                write_csv(path, n, d)
        case("1,000,000 x 50 float32, 12 runs x 50 epochs", "< 60 s, < 2 GB",
             ["--data", "synthetic:n=1000000,d=50,kappa=1e3,seed=0", "--precision",
              "float32", "--epochs", "50", "--sweep", "lr=0.01,0.1,1", "--sweep",
              "lambda=0,1e-3"])
        case("500 x 10,000 CSV float32, 2 runs x 30 epochs", "< 60 s, < 2.5 GB",
             ["--data", str(work / "data_500x10000.csv"), "--target", "label",
              "--precision", "float32", "--epochs", "30", "--sweep", "lr=0.01"])
        case("2 x 9,999 CSV, default sweep (72 runs)", "< 10 s, < 1 GB",
             ["--data", str(work / "data_2x9999.csv"), "--target", "label", "--sweep",
              "precision,lr,lambda"])
        case("100,000 x 100 CSV (float64), 12 runs x 200 epochs", "< 15 s, < 1 GB",
             ["--data", str(work / "data_100000x100.csv"), "--target", "label",
              "--sweep", "lr=0.01,0.1,1", "--sweep", "lambda=0,1e-3"])
    if "scaling" in only:
        print("\nscaling in n (d = 50, 12 runs x 50 epochs, float32, synthetic):")
        base = None
        for n in (10_000, 100_000, 1_000_000):
            wall, _ = case(f"n = {n:,}", "linear in n",
                           ["--data", f"synthetic:n={n},d=50,kappa=1e3,seed=0",
                            "--precision", "float32", "--epochs", "50", "--sweep",
                            "lr=0.01,0.1,1", "--sweep", "lambda=0,1e-3"])
            base = base or (n, wall)
            print(f"    time / time(n=1e4) = {wall / base[1]:.2f} for n / 1e4 = "
                  f"{n / base[0]:.0f}")
    if "dask" in only:
        print("\n5,000-run sweep (8 cohorts of 625) on a local Dask cluster:")
        lrs = ",".join(f"{x:.3g}" for x in np.geomspace(1e-4, 3, 25))
        lams = ",".join(["0"] + [f"{x:.3g}" for x in np.geomspace(1e-5, 1, 24)])
        sweep = ["--sweep", "precision", "--sweep", "scale", "--sweep", f"lr={lrs}",
                 "--sweep", f"lambda={lams}"]
        local = case("local executor", "", sweep)
        one = case("--workers 1", "", sweep + ["--workers", "1"])
        two = case("--workers 2", "", sweep + ["--workers", "2"])
        print(f"    speed-up of 2 workers over 1: {one[0] / two[0]:.2f}x; "
              f"local / 1 worker: {local[0] / one[0]:.2f}")
    print(f"\ndata and stores in {work}" if args.keep else "")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
