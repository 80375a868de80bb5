"""Overhead of per-layer attribution on the digits MLP's training step.

Variants, interleaved and repeated (median of per-step times over repeats):

- ``plain``: forward, cross-entropy, backward, SGD-momentum step (float32);
- ``attr-1``: the same with :class:`~stability_lab.run.attribution.Attributor` on every
  step (hooks attached, stats reduced, update ratios); the rows are decoded into
  per-module values when read, after the run: that time is printed apart, per step;
- ``attr-1/torch``: the same with the step's reductions done by torch instead of the C
  kernel (``attribution.kernel_path.REDUCE = "torch"``, the path used where the kernel
  is not built);
- ``attr-10``: attribution every 10th step (hooks attached only on those steps);
- ``anomaly``: plain step under ``torch.autograd.set_detect_anomaly(True)``.

Usage: ``python benchmarks/bench_attribution.py [--batch 1437] [--steps 200] [--repeats 7]
[--threads 1] [--depth 3] [--width 64] [--kernel avx512f|avx2+fma|generic] [--phases]``
"""

from __future__ import annotations

import argparse
import statistics
import time

from _settings import settings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1437)  # the mlp task: full batch
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--phases", action="store_true",
                    help="then time each phase of the plain and the attr-1 step (one more "
                         "run of each) and the kernel call")
    ap.add_argument("--kernel", default=None,
                    help="the C kernel's copy to use (default: the best this CPU runs)")
    args = ap.parse_args()
    # --kernel is checked before the heavy imports: the kernel module needs no torch
    try:
        from stability_lab.run import _attrkernel
    except ImportError:
        ks: tuple[str, ...] = ()
    else:
        ks = tuple(_attrkernel.targets())
    if args.kernel is not None and args.kernel not in ks:
        ap.error(f"--kernel: expected one of {', '.join(ks) or '(none built)'}, "
                 f"got {args.kernel!r}")

    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    from stability_lab.precision import policies as P
    from stability_lab.run.attribution import Attributor, kernel_path
    from stability_lab.spec import RunSpec
    from stability_lab.tasks.mlp import build_mlp

    if args.kernel is not None:
        kernel_path.KERNEL_TARGET = args.kernel
    torch.set_num_threads(args.threads)
    X, y = load_digits(return_X_y=True)
    X = torch.as_tensor(X / 16.0, dtype=torch.float32)
    y = torch.as_tensor(y)
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.steps):
        idx = torch.randint(0, len(y), (args.batch,), generator=gen)
        batches.append((X[idx], y[idx]))
    spec = RunSpec(task="mlp").replace(depth=args.depth, width=args.width)
    policy = P.get_policy("float32")

    decode: list[float] = []  # attr-1: seconds per attribution step to decode the rows

    def variant(every: int | None, anomaly: bool = False, reduce: str = "kernel") -> float:
        kernel_path.REDUCE = reduce
        torch.manual_seed(0)
        model = build_mlp(spec)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        attr = Attributor(model, policy, every) if every else None
        times = []
        with torch.autograd.set_detect_anomaly(anomaly, check_nan=anomaly):
            for step, (xb, yb) in enumerate(batches, start=1):
                t0 = time.perf_counter()
                on = attr is not None and attr.wants(step)
                if on:
                    attr.begin(step)
                opt.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(model(xb), yb)
                if on:
                    attr.end_forward()
                loss.backward()
                if on:
                    attr.before_update()
                opt.step()
                if on:
                    attr.end_step()
                float(loss.detach())
                times.append(time.perf_counter() - t0)
        if every == 1 and reduce == "kernel":  # rows decoded when read: timed apart
            t0 = time.perf_counter()
            attr.arrays()
            decode.append((time.perf_counter() - t0) / len(attr.steps))
        return float(np.median(times[5:]))  # drop warm-up steps

    names = {"plain": (None, False, "kernel"), "attr-1": (1, False, "kernel"),
             "attr-1/torch": (1, False, "torch"), "attr-10": (10, False, "kernel"),
             "anomaly": (None, True, "kernel")}
    if not ks:
        print("note: the C kernel is not built here; attr-1 and attr-10 use torch too")
    results: dict[str, list[float]] = {k: [] for k in names}
    for _ in range(args.repeats):
        for name, (every, anomaly, reduce) in names.items():
            results[name].append(variant(every, anomaly, reduce))
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"MLP 64-{'-'.join([str(args.width)] * args.depth)}-10, batch {args.batch}, "
          f"{args.steps} steps x {args.repeats} repeats (median step time)")
    print(settings())
    print(f"attribution C kernel: {(args.kernel or ks[0]) if ks else 'not built'}"
          + (f" (copies here: {', '.join(ks)})" if ks else ""))
    print(f"{'variant':<13} {'step us':>9} {'ratio':>7}")
    for name in names:
        print(f"{name:<13} {1e6 * med[name]:>9.1f} {med[name] / med['plain']:>7.3f}")
    dec = statistics.median(decode)
    print(f"attr-1 rows decoded after the run (Attributor.arrays): "
          f"{1e6 * dec:.1f} us per attribution step, not in the step; counted in: "
          f"{(med['attr-1'] + dec) / med['plain']:.3f}")
    if args.phases:
        kernel_path.REDUCE = "kernel"
        plain, attr1 = phases(batches, spec, policy, None), phases(batches, spec, policy, 1)
        print("phases of the step (median us over the steps of one more run of each):")
        print(f"{'phase':<15} {'plain':>8} {'attr-1':>8} {'added':>8}")
        for k, v in attr1.items():
            p = plain.get(k, 0.0)
            print(f"{k:<15} {p:>8.1f} {v:>8.1f} {v - p:>8.1f}")


def phases(batches, spec, policy, every: int | None) -> dict[str, float]:
    """Median time per phase of the step (microseconds), and of the kernel call."""
    import numpy as np
    import torch

    from stability_lab.run.attribution import Attributor, kernel_path
    from stability_lab.tasks.mlp import build_mlp

    torch.manual_seed(0)
    model = build_mlp(spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    attr = Attributor(model, policy, every) if every else None
    names = ("begin", "forward", "end_forward", "backward", "before_update", "optimizer",
             "end_step")
    times: dict[str, list[float]] = {k: [] for k in names}
    kernel: list[float] = []
    extension = kernel_path._attrkernel  # the C kernel's module (None: not built)
    real = extension.attr_reduce if extension is not None else None

    def timed(*args):
        t0 = time.perf_counter()
        real(*args)
        kernel.append(time.perf_counter() - t0)

    if real is not None:
        extension.attr_reduce = timed
    try:
        for step, (xb, yb) in enumerate(batches, start=1):
            t = [time.perf_counter()]
            if attr:
                attr.begin(step)
            t.append(time.perf_counter())
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            t.append(time.perf_counter())
            if attr:
                attr.end_forward()
            t.append(time.perf_counter())
            loss.backward()
            t.append(time.perf_counter())
            if attr:
                attr.before_update()
            t.append(time.perf_counter())
            opt.step()
            t.append(time.perf_counter())
            if attr:
                attr.end_step()
            t.append(time.perf_counter())
            float(loss.detach())
            for k, a, b in zip(names, t, t[1:]):
                times[k].append(b - a)
    finally:
        if real is not None:
            extension.attr_reduce = real
    out = {k: 1e6 * float(np.median(v[5:])) for k, v in times.items()}
    if kernel:
        out["(kernel call)"] = 1e6 * float(np.median(kernel[5:]))
    return out


if __name__ == "__main__":
    main()
