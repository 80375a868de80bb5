"""End-to-end time of the default command, torch import included.

    python benchmarks/bench_default_command.py [--repeat 3]

Runs ``python stability_lab.py --task logistic_regression --sweep precision,lr,lambda``
in a fresh process (fresh store each time) and prints the median wall time and the
number of runs it printed; the same with ``--verify`` (every failing run re-run with each
fix) and the number of re-runs its table lists; the time of ``stability-lab --help``
(which must not import torch) and of a bare ``import torch`` for comparison.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _settings import settings

REPO = Path(__file__).resolve().parents[1]


def wall(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    py = sys.executable
    job = [py, "stability_lab.py", "--task", "logistic_regression",
           "--sweep", "precision,lr,lambda"]
    runs, verifies, helps, imports = [], [], [], []
    n_runs = n_reruns = 0
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as out:
            t, text = wall(job + ["--out", out])
            runs.append(t)
            n_runs = sum(line.startswith("Run ") for line in text.splitlines())
        with tempfile.TemporaryDirectory() as out:
            t, text = wall(job + ["--verify", "--out", out])
            verifies.append(t)
            found = re.search(r"of (\d+) re-runs", text)  # "K of N re-runs fixed the failure"
            n_reruns = int(found.group(1)) if found else 0
        helps.append(wall([py, "stability_lab.py", "--help"])[0])
        imports.append(wall([py, "-c", "import torch"])[0])
    print(settings())
    print(f"default command ({n_runs} runs):  median {statistics.median(runs):.2f} s  "
          f"{[round(t, 2) for t in runs]}")
    print(f"with --verify ({n_reruns} re-runs): median {statistics.median(verifies):.2f} s  "
          f"{[round(t, 2) for t in verifies]}")
    print(f"--help:                     median {statistics.median(helps):.2f} s")
    print(f"python -c 'import torch':   median {statistics.median(imports):.2f} s")


if __name__ == "__main__":
    main()
