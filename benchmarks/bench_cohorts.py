"""Cohorts vs one at a time: a 1,000-run sweep, side by side in one run.

    python benchmarks/bench_cohorts.py [--runs 1000] [--epochs 200]

Sweep: lr x lambda x seed on the default data (breast_cancer, raw features),
float32, full-batch gradient descent. The same specs are run once as lockstep cohorts
and once one spec at a time (each a cohort of one), after an untimed warm-up of both
paths. Prints wall times (median of ``--repeat`` runs), the ratio, the agreement of
verdicts, and the thread/BLAS settings.
Nothing is stored (engine only), so the store's I/O is not part of either time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from _settings import settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000, help="10 lr x 10 lambda x runs/100 seeds")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    import torch  # noqa: F401  (imported here so that its threads are printed)

    from stability_lab import engine
    from stability_lab.diagnosis import decide
    from stability_lab.spec import RunSpec, expand

    seeds = max(1, args.runs // 100)
    lrs = list(np.geomspace(1e-6, 1e-1, 10))
    lams = [0.0] + list(np.geomspace(1e-4, 1.0, 9))
    base = RunSpec(precision="float32", epochs=args.epochs)
    specs = expand(base, [("lr", [float(x) for x in lrs]), ("lambda", [float(x) for x in lams]),
                          ("seed", list(range(seeds)))])
    prepared = engine.prepare(specs)
    print(f"{len(specs)} runs, {args.epochs} epochs, float32, breast_cancer raw (569 x 30)")
    print(settings())

    def timed(cohorts: bool):
        times, traces = [], None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            traces = engine.run_specs(specs, prepared, cohorts=cohorts)
            times.append(time.perf_counter() - t0)
        return statistics.median(times), traces

    # warm-up, untimed: torch's first kernels and allocations would otherwise be charged
    # to whichever path runs first
    engine.run_specs(specs[:20], prepared, cohorts=True)
    engine.run_specs(specs[:20], prepared, cohorts=False)
    t_cohort, a = timed(True)
    t_single, b = timed(False)
    same = sum(decide(x).status == decide(y).status for x, y in zip(a, b))
    steps = sum(t.n_steps for t in a)
    print(f"cohorts:        {t_cohort:8.2f} s  ({steps / t_cohort:,.0f} run-epochs/s)")
    print(f"one at a time:  {t_single:8.2f} s  ({steps / t_single:,.0f} run-epochs/s)")
    print(f"speed-up:       {t_single / t_cohort:8.1f}x")
    print(f"same verdict:   {same}/{len(specs)}")


if __name__ == "__main__":
    main()
