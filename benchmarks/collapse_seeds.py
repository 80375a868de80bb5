"""Which seeds of the digits mlp collapse to chance level, per lr: the figures behind the
``collapse_to_chance`` scenario's choice of lr 1 (docs/extending.md).

    python benchmarks/collapse_seeds.py [--lr 0.6,1.0,1.5] [--seeds 12] [--pinned]

Each run is the scenario's: task mlp on digits, float64, 200 steps, one seed; a "C" marks
a run on which the lab's ``collapse_to_chance`` detector fires. ``--pinned`` re-runs this
script in the playbook's pinned numerical environment (OpenBLAS Nehalem, one thread,
MKL CNR, torch's portable ATen kernels; ``stability-lab playbook`` uses it), where the
figures must hold too. Prints the settings it ran under.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from _settings import settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lr", default="0.6,1.0,1.5", help="comma-separated learning rates")
    ap.add_argument("--seeds", type=int, default=12, help="seeds 0 .. N-1")
    ap.add_argument("--pinned", action="store_true",
                    help="run in the playbook's pinned numerical environment")
    args = ap.parse_args()
    if args.pinned and "STABILITY_LAB_PLAYBOOK_PINNED" not in os.environ:
        from stability_lab.cli.commands.playbook import pinned_env

        argv = [sys.executable, __file__, "--lr", args.lr, "--seeds", str(args.seeds)]
        sys.exit(subprocess.run(argv, env=pinned_env()).returncode)

    from stability_lab.diagnosis import diagnose
    from stability_lab.run.engine import run_one
    from stability_lab.spec import RunSpec
    from stability_lab.tasks import get_task

    task = get_task("mlp")
    pinned = "STABILITY_LAB_PLAYBOOK_PINNED" in os.environ
    print(f"digits mlp, float64, 200 steps, seeds 0..{args.seeds - 1}; "
          f"{'pinned' if pinned else 'default'} environment")
    for lr in (float(x) for x in args.lr.split(",")):
        marks, losses = [], []
        for seed in range(args.seeds):
            spec = RunSpec(task="mlp", data="digits", policy="float64", epochs=200, lr=lr,
                           seed=seed)
            trace = run_one(task, spec, task.prepare(spec))
            _, findings = diagnose(trace)
            marks.append("C" if any(f.signature == "collapse_to_chance" for f in findings)
                         else ".")
            losses.append(f"{float(trace.metrics['loss'][-1]):.3f}")
        print(f"lr {lr:g}: {marks.count('C')} of {args.seeds} collapse  {''.join(marks)}  "
              f"final losses {' '.join(losses)}")
    print(settings())


if __name__ == "__main__":
    main()
