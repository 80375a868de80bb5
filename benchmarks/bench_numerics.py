"""Benchmark stability_lab.numerics.logsumexp / log_softmax against scipy and torch.

    python benchmarks/bench_numerics.py [--repeats 7]

Cases: 1e7 float64 elements (1-D) and a 10000 x 1000 float32 matrix along the last dim.
For each: this module on the NumPy array, scipy.special on the NumPy array, this module
on the torch tensor (same memory, torch.from_numpy) and torch's native op on the tensor.
float32 rows go through the C kernel when it is built (the default); the float32 case
also times this module with the kernel switched off (``use_kernel("numpy")``), the path
of an install without a C compiler.
Prints the median of ``--repeats`` timed runs after one warm-up (the implementations
timed in turn, round by round), ratios, and the BLAS / thread configuration. Not part
of the test-suite; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy
import scipy.special
import torch

from _settings import settings

from stability_lab import numerics
from stability_lab.numerics import _core


def median_ms(impls: dict, repeats: int) -> dict[str, float]:
    """Median time of each callable; the repeats are interleaved (one call of each per
    round), so that drift in the machine's speed hits all of them alike."""
    for fn in impls.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in impls}
    for _ in range(repeats):
        for name, fn in impls.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(v)) * 1e3 for name, v in times.items()}


def config() -> str:
    return "\n".join([
        settings(),
        ("float32 log-sum-exp kernel: "
         + (f"C, {_core.kernel_targets()[0]} copy (this CPU runs: "
            f"{', '.join(_core.kernel_targets())})" if _core.kernel_targets()
            else "NumPy (the C kernel is not built)")),
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cases = {
        "1e7 float64 (1-D)": rng.standard_normal(10_000_000),
        "10000x1000 float32, dim=-1": rng.standard_normal((10_000, 1_000)).astype(np.float32),
    }
    print(config())
    print(f"\nmedian of {args.repeats} interleaved runs after 1 warm-up, milliseconds")
    for label, a in cases.items():
        t = torch.from_numpy(a)
        rows = {
            "logsumexp": {
                "numerics (ndarray)": lambda a=a: numerics.logsumexp(a, -1),
                "scipy.special.logsumexp": lambda a=a: scipy.special.logsumexp(a, axis=-1),
                "numerics (tensor)": lambda t=t: numerics.logsumexp(t, -1),
                "torch.logsumexp": lambda t=t: torch.logsumexp(t, -1),
            },
            "log_softmax": {
                "numerics (ndarray)": lambda a=a: numerics.log_softmax(a, -1),
                "scipy.special.log_softmax": lambda a=a: scipy.special.log_softmax(a, axis=-1),
                "numerics (tensor)": lambda t=t: numerics.log_softmax(t, -1),
                "torch.log_softmax": lambda t=t: torch.log_softmax(t, -1),
            },
        }
        if a.dtype == np.float32 and _core.kernel_targets():
            # the other paths of an install on another CPU, or without a compiler
            for op, fn in (("logsumexp", numerics.logsumexp),
                           ("log_softmax", numerics.log_softmax)):
                for path in (*_core.kernel_targets()[1:], "numpy"):
                    def other(a=a, fn=fn, path=path):
                        with _core.use_kernel(path):
                            return fn(a, -1)
                    name = "NumPy kernel" if path == "numpy" else f"{path} copy"
                    rows[op][f"numerics (ndarray), {name}"] = other
        print(f"\n== {label}")
        for op, impls in rows.items():
            res = median_ms(impls, args.repeats)
            names = list(res)
            ref_scipy, ref_torch = res[names[1]], res[names[3]]
            for name, ms in res.items():
                print(f"  {op:<12} {name:<38} {ms:8.2f} ms   "
                      f"x{ms / ref_torch:5.2f} vs torch   x{ms / ref_scipy:5.2f} vs scipy")
            print(f"  {op:<12} scipy / numerics(ndarray) = {ref_scipy / res[names[0]]:.2f}; "
                  f"numerics(tensor) / torch = {res[names[2]] / ref_torch:.2f}")


if __name__ == "__main__":
    main()
