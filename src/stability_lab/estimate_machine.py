"""This machine, for the estimate: the memory it has and the speed it computes at.

:func:`available_memory` and :func:`resident_memory` read the memory available and the
memory this process holds now; :func:`calibrate` measures :class:`Rates` (seconds per
unit of work: an epoch of the logistic cohort loop in each format, a GEMM, an SVD, an
eigvalsh, an element-wise pass) in a micro-benchmark of well under a second, once per
process. :mod:`stability_lab.estimate_cost` scales them by the work of a sweep.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence


# -- the machine -------------------------------------------------------------------------
def available_memory() -> int | None:
    """Bytes of memory available to a new allocation without swapping: ``MemAvailable``
    of ``/proc/meminfo`` on Linux, else free physical pages (``os.sysconf``); None when
    neither can be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def resident_memory() -> int:
    """This process's resident bytes now (``/proc/self/statm``), or its peak so far
    (``ru_maxrss``) where that file does not exist."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024)
    except (ImportError, OSError, ValueError):
        return 0


# -- calibration -------------------------------------------------------------------------
@dataclass
class Rates:
    """Seconds per unit of work. :func:`calibrate` measures them; the defaults (used
    when nothing is measured, e.g. by tests that need a fixed model) are round values of
    an ordinary CPU, not measurements."""

    #: (precision, loss, p) -> (seconds of an epoch's fixed cost, seconds per row x run)
    epoch: dict[tuple, tuple[float, float]] = field(default_factory=dict)
    default_epoch: tuple[float, float] = (5e-4, 2e-8)
    #: float64 matrix-product rate, flop/s
    gemm: float = 2e10
    #: seconds per k^3 of a symmetric eigenvalue problem (values only)
    eig: float = 1e-9
    #: seconds per n p k of an SVD (values only), k = min(n, p)
    svd: float = 2e-9
    #: seconds per element of an element-wise NumPy pass
    elem: float = 1e-9
    measured: bool = False

    def epoch_cost(self, precision: str, loss: str, p: int) -> tuple[float, float]:
        return self.epoch.get((precision, loss, p), self.default_epoch)


def _best_time(fn, repeats: int = 3, budget: float = 0.05) -> float:
    """The shortest of ``repeats`` timings after a warm-up call (what the machine can
    do; another process's load only lengthens a timing); fewer once they have taken
    ``budget`` seconds (a busy machine is measured once, not kept busier)."""
    fn()  # warm-up (first-call allocations, thread pools)
    times: list[float] = []
    while len(times) < repeats and sum(times) < budget:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


#: what calibrate() measured in this process: "machine" -> Rates, key -> epoch cost
_MEASURED: dict[Any, Any] = {}


def _epoch_kernel(torch, precision: str, loss: str, n: int, p: int, runs: int):
    """One epoch of the logistic cohort loop (its loss and gradient, norms, non-finite
    counts, largest logit, smallest gradient entry, update) on random data of the run's
    format: the work :func:`~stability_lab.run.cohort._run_chunk` does per epoch."""
    from stability_lab.precision import FORMATS
    from stability_lab.tasks.logistic import objective

    fmt = FORMATS[precision]
    dtype = fmt.torch_dtype()
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(n, p, generator=gen, dtype=torch.float32).to(dtype)
    y = (torch.rand(n, 1, generator=gen) > 0.5).to(dtype)
    W = (torch.randn(runs, p + 1, generator=gen, dtype=torch.float32) * 1e-3).to(dtype)
    lr = torch.full((runs, 1), 0.01, dtype=dtype)
    lam = torch.zeros(runs, 1, dtype=dtype)

    def epoch():
        with torch.no_grad():
            Z, loss_v, g = objective(torch, X, y, W, lam, fmt, loss)
            loss_v.numpy()
            Wd, gd = W.double(), g.double()
            gd.norm(dim=1).numpy()
            Wd.norm(dim=1).numpy()
            (~torch.isfinite(W)).sum(1).numpy()
            (~torch.isfinite(g)).sum(1).numpy()
            Z.abs().amax(0).double().numpy()
            ga = gd.abs()
            torch.where(ga > 0, ga, torch.full_like(ga, math.inf)).amin(1).numpy()
            Wn = W - lr * g
            delta = Wn.double() - Wd
            delta.norm(dim=1).numpy()
            ((lr * g).double() != 0).sum(1).numpy()

    return epoch


def calibrate(keys: Sequence[tuple[str, str, int]] = (), *, max_rows: int = 4096,
              max_runs: int = 64) -> Rates:
    """Measure :class:`Rates` here and now: a float64 GEMM (256 x 256), an eigvalsh
    (256 x 256), an SVD (2,048 x 32) and an element-wise pass (2^20 entries), each on
    one BLAS thread (an upper bound on the time of the sweep's larger problems, which
    use every thread), and, for each ``(precision, loss, p)`` key, one epoch of the
    logistic cohort loop at 1 row x 1 run and at up to ``max_rows`` rows x ``max_runs``
    runs, with the threads the runs use. Each is the shortest of up to 3 timings after
    a warm-up, measured once per process; together a fraction of a second on an idle
    machine. A busy machine runs the sweep slower than its estimate."""
    import numpy as np

    if "machine" not in _MEASURED:
        from threadpoolctl import threadpool_limits

        rng = np.random.default_rng(0)
        m = Rates(measured=True)
        A, B = rng.standard_normal((256, 256)), rng.standard_normal((256, 256))
        S = A + A.T
        T = rng.standard_normal((2048, 32))
        V = rng.standard_normal(1 << 20)
        # one BLAS thread: small kernels on several threads measure mostly their
        # synchronization (and on a busy machine its spinning), which extrapolated to
        # a 10,000 x 10,000 eigenproblem would be off by orders of magnitude
        with threadpool_limits(1, user_api="blas"):
            m.gemm = 2 * 256 ** 3 / max(_best_time(lambda: A @ B), 1e-9)
            m.eig = _best_time(lambda: np.linalg.eigvalsh(S)) / 256 ** 3
            m.svd = _best_time(lambda: np.linalg.svd(T, compute_uv=False)) / (2048 * 32 * 32)
            m.elem = _best_time(lambda: (V - 0.5) / 2.0) / (2 << 20)
        _MEASURED["machine"] = m
    m = _MEASURED["machine"]
    rates = Rates(gemm=m.gemm, eig=m.eig, svd=m.svd, elem=m.elem, measured=True)
    for key in dict.fromkeys(keys):
        if key not in _MEASURED:
            import torch

            precision, loss, p = key
            t0 = _best_time(_epoch_kernel(torch, precision, loss, 1, p, 1))
            runs = max_runs
            rows = int(max(1, min(max_rows, 4e6 // (runs * (p + 64)))))
            t1 = _best_time(_epoch_kernel(torch, precision, loss, rows, p, runs))
            _MEASURED[key] = (t0, max(t1 - t0, 0.1 * t1) / max(rows * runs - 1, 1))
        rates.epoch[key] = _MEASURED[key]
    return rates
