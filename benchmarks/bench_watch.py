"""Overhead of stability_lab.watch on a training step, against the same plain step.

Two models: the digits-sized MLP (64 -> 64 -> 64 -> 64 -> 10, ReLU, batch 1437 like the
mlp task) and a pre-LayerNorm transformer block (d=64, 4 heads, sequence 32, batch 16).
Per model, variants measured interleaved (plain, watched, plain, watched, ... in each
repeat, so a load change on a shared machine hits every variant alike); each variant's
time is the median over repeats of the mean step time of ``--steps`` steps:

- ``plain``: forward, loss, backward, optimizer step, zero_grad (float32, SGD momentum);
- ``metrics-1``: ``watch(..., every=1, attribute=False)``, metrics on every step;
- ``metrics-10``: ``every=10, attribute=False``;
- ``attr-1``: ``every=1, attribute=True``: per-layer statistics on every step.

The watcher stores nothing here (``out=None``) and the run is healthy (no replay). Ratios
are each variant's median over the plain median, and the median of the per-repeat
ratios (each watched measurement over the plain one just before it), same run.

Clocks: the CPU time of the measuring thread (``time.thread_time``; torch runs its ops on
the calling thread with ``--threads 1``), which a shared machine's other processes
inflate less than wall time, and wall time. Both are printed.

Usage: ``python benchmarks/bench_watch.py [--steps 100] [--repeats 7] [--threads 1]``
"""

from __future__ import annotations

import argparse
import statistics
import time

from _settings import settings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    import stability_lab

    torch.set_num_threads(args.threads)
    print(settings())
    print(f"steps per measurement {args.steps}, repeats {args.repeats} (interleaved)")

    def mlp():
        torch.manual_seed(0)
        layers = [torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                  torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                  torch.nn.Linear(64, 10)]
        x, y = torch.randn(1437, 64), torch.randint(0, 10, (1437,))
        return torch.nn.Sequential(*layers), x, y, torch.nn.functional.cross_entropy

    class Block(torch.nn.Module):
        def __init__(self, d=64, h=4):
            super().__init__()
            self.ln1 = torch.nn.LayerNorm(d)
            self.attn = torch.nn.MultiheadAttention(d, h, batch_first=True)
            self.ln2 = torch.nn.LayerNorm(d)
            self.mlp = torch.nn.Sequential(torch.nn.Linear(d, 4 * d), torch.nn.GELU(),
                                           torch.nn.Linear(4 * d, d))
            self.head = torch.nn.Linear(d, 10)

        def forward(self, x):
            a = self.ln1(x)
            x = x + self.attn(a, a, a, need_weights=False)[0]
            x = x + self.mlp(self.ln2(x))
            return self.head(x.mean(1))

    def block():
        torch.manual_seed(0)
        x, y = torch.randn(16, 32, 64), torch.randint(0, 10, (16,))
        return Block(), x, y, torch.nn.functional.cross_entropy

    variants = {"plain": None, "metrics-1": dict(every=1, attribute=False),
                "metrics-10": dict(every=10, attribute=False),
                "attr-1": dict(every=1, attribute=True)}

    def run(make, kw) -> tuple[float, float]:
        model, x, y, lf = make()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        w = None if kw is None else stability_lab.watch(model, opt, out=None,
                                                        verbose=False, **kw)
        for _ in range(3):  # warm-up (also the watcher's first-step setup)
            loss = lf(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            if w is not None:
                w.step(loss)
        t0, c0 = time.perf_counter(), time.thread_time()
        for _ in range(args.steps):
            loss = lf(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            if w is not None:
                w.step(loss)
        dt = (time.perf_counter() - t0) / args.steps
        dc = (time.thread_time() - c0) / args.steps
        if w is not None:
            w.close()
        return dc, dt

    for label, make in (("mlp (64-64-64-64-10, batch 1437)", mlp),
                        ("transformer block (d=64, 4 heads, seq 32, batch 16)", block)):
        cpu: dict[str, list[float]] = {k: [] for k in variants}
        wall: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.repeats):
            for k, kw in variants.items():
                c, t = run(make, kw)
                cpu[k].append(c)
                wall[k].append(t)
        print(f"\n== {label}")
        print(f"{'variant':<12}{'cpu ms/step':>12}{'ratio':>8}{'paired':>8}"
              f"{'wall ms/step':>14}{'ratio':>8}{'paired':>8}")
        for k in variants:
            cells = []
            for times in (cpu, wall):
                med, base = statistics.median(times[k]), statistics.median(times["plain"])
                paired = statistics.median(t / p for t, p in zip(times[k], times["plain"]))
                cells.append((med, med / base, paired))
            (c1, c2, c3), (w1, w2, w3) = cells
            print(f"{k:<12}{c1 * 1e3:>12.3f}{c2:>8.3f}{c3:>8.3f}"
                  f"{w1 * 1e3:>14.3f}{w2:>8.3f}{w3:>8.3f}")

if __name__ == "__main__":
    main()
