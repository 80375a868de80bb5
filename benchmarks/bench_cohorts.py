"""Cohorts vs one at a time vs a hand-written torch loop: a 1,000-run sweep, side by side.

    python benchmarks/bench_cohorts.py [--runs 1000] [--epochs 200]

Sweep: lr x lambda x seed on the default data (breast_cancer, raw features),
float32, full-batch gradient descent. The same specs are run once as lockstep cohorts
and once one spec at a time (each a cohort of one), after an untimed warm-up of both
paths. A hand-written batched torch loop takes the same full-batch steps for all runs
at once and records the same loss and gradient norm (what a person would write without
the lab). Prints wall times (median of ``--repeat`` runs), the ratios, the agreement of
verdicts and of the hand loop's numbers, and the thread/BLAS settings.
Nothing is stored (engine only), so the store's I/O is not part of either time.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
from _settings import settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000, help="10 lr x 10 lambda x runs/100 seeds")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--no-single", action="store_true",
                    help="skip the one-at-a-time path (cohorts against the hand loop only)")
    args = ap.parse_args()

    import torch  # noqa: F401  (imported here so that its threads are printed)

    from stability_lab.run import engine
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
    t_cohort, a = timed(True)
    if args.no_single:
        t_single, b = math.nan, a
    else:
        engine.run_specs(specs[:20], prepared, cohorts=False)
        t_single, b = timed(False)
    same = sum(decide(x).status == decide(y).status for x, y in zip(a, b))
    steps = sum(t.n_steps for t in a)
    t_hand, (loss, gnorm) = timed_hand(specs, prepared, args.repeat)
    # the hand loop takes every step of every run; the lab stops a run where it fails
    agree = [np.allclose(t.metrics["loss"], loss[:t.n_steps, r], rtol=1e-4, equal_nan=True)
             and np.allclose(t.metrics["grad_norm"], gnorm[:t.n_steps, r], rtol=1e-4,
                             equal_nan=True)
             for r, t in enumerate(a) if t.spec.lr < t.probes["start"]["lr_bound"]]
    print(f"cohorts:        {t_cohort:8.2f} s  ({steps / t_cohort:,.0f} run-epochs/s)")
    print(f"one at a time:  {t_single:8.2f} s  ({steps / t_single:,.0f} run-epochs/s)")
    print(f"hand-written batched torch loop (same steps, loss and gradient norm recorded): "
          f"{t_hand:8.2f} s")
    print(f"speed-up:       {t_single / t_cohort:8.1f}x")
    print(f"lab / hand loop: {t_cohort / t_hand:7.2f}x  (target <= 1.5x)")
    print(f"same verdict:   {same}/{len(specs)}")
    print(f"hand loop's loss and gradient norm equal the lab's (rtol 1e-4) on "
          f"{sum(agree)}/{len(agree)} runs below 2/L")


def hand_loop(torch, X, y, W, lr, lam, epochs):
    """Full-batch gradient descent for all runs at once, recording loss and gradient
    norm per epoch: what a person would write by hand with torch."""
    n, d = X.shape
    penal = torch.ones(1, d + 1, dtype=X.dtype)
    penal[0, -1] = 0
    loss_rec = torch.empty(epochs, W.shape[0], dtype=torch.float64)
    gn_rec = torch.empty(epochs, W.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for e in range(epochs):
            Z = torch.addmm(W[:, d], X, W[:, :d].T)
            loss = (torch.nn.functional.softplus(Z) - y * Z).mean(0)
            dz = (torch.sigmoid(Z) - y) / n
            g = torch.cat([dz.T @ X, dz.sum(0).unsqueeze(1)], dim=1) + lam * penal * W
            loss_rec[e] = loss.double() + 0.5 * lam.double().reshape(-1) * (
                W[:, :d].double() ** 2).sum(1)
            gn_rec[e] = g.double().norm(dim=1)
            W = W - lr * g
    return loss_rec.numpy(), gn_rec.numpy()


def timed_hand(specs, prepared, repeat):
    import torch

    from stability_lab.tasks.logistic import initial_weights

    prep = prepared.get(specs[0])
    X = torch.from_numpy(prep.X).float()
    y = torch.from_numpy(prep.y64).float().reshape(-1, 1)
    p = X.shape[1] + 1
    W0 = torch.from_numpy(np.stack([initial_weights(s.seed, p) for s in specs])).float()
    lr = torch.tensor([s.lr for s in specs]).float().reshape(-1, 1)
    lam = torch.tensor([s.lam for s in specs]).float().reshape(-1, 1)
    epochs = max(s.epochs for s in specs)
    hand_loop(torch, X, y, W0[:20], lr[:20], lam[:20], 5)  # warm-up, untimed
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = hand_loop(torch, X, y, W0, lr, lam, epochs)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


if __name__ == "__main__":
    main()
