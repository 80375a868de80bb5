"""End-to-end time of the default command, torch import included.

    python benchmarks/bench_default_command.py [--repeat 3]

Runs ``python stability_lab.py --task logistic_regression --sweep precision,lr,lambda``
in a fresh process (fresh store each time) and prints the median wall time, plus the
time of ``stability-lab --help`` (which must not import torch) and of a bare
``import torch`` for comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    py = sys.executable
    runs, helps, imports = [], [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as out:
            runs.append(wall([py, "stability_lab.py", "--task", "logistic_regression",
                              "--sweep", "precision,lr,lambda", "--out", out]))
        helps.append(wall([py, "stability_lab.py", "--help"]))
        imports.append(wall([py, "-c", "import torch"]))
    print(f"cpus {os.cpu_count()}, OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"default command (72 runs): median {statistics.median(runs):.2f} s  {runs}")
    print(f"--help:                    median {statistics.median(helps):.2f} s")
    print(f"python -c 'import torch':  median {statistics.median(imports):.2f} s")


if __name__ == "__main__":
    main()
