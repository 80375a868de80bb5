"""Before a sweep: how long it will take and how much memory it will need.

:func:`estimate_sweep` expands the sweep into the specs :func:`~stability_lab.lab.run_sweep`
will run, groups them as the engine will (data sets by ``task.dataset_key``, data
variants by ``task.data_key``, lockstep cohorts by ``task.cohort_key``, chunks of
:func:`~stability_lab.run.cohort.chunk_runs` runs) and adds up what that code
allocates and computes, from the shape of the data alone (:func:`data_shape`: built-in
shapes, the parameters of synthetic data, a CSV's header and line count; nothing is
loaded). It returns an :class:`Estimate` with the seconds, the peak resident bytes, the
memory available (``MemAvailable`` of ``/proc/meminfo``) and a one-line text.

Memory model (logistic regression; "8np" is one float64 copy of the n x p features,
k1 = p + 1 parameters, R the runs of a cohort chunk, E its epochs):

- the resident memory of this process once the libraries a sweep imports are imported
  (torch, SciPy, scikit-learn for built-in data; :func:`resident_memory`), plus a fixed
  :data:`RUNTIME_SLACK` (modules imported lazily during a run, allocator slack);
- retained data: each data set (8np + 8n; the CSV reader peaks at about 1.4 x 8np);
  each data variant's features in its storage type (none for raw float64, 8np for other
  float64 variants, 4np for float32 and 16-bit ones), its curvature view (the design
  [X, 1] kept whole when it has at most 2^22 entries; for wide data the n x (n+1)
  reduced design), and the float64 design [X, 1] the optimum keeps (8 n k1);
- retained per run: the 12 per-epoch metrics (96 bytes an epoch), the final parameters
  (8 k1) and :data:`PER_RUN_BYTES` of dictionaries, verdict and findings;
- the largest transient of: loading (3 x 8np for synthetic data), preparing a variant
  (standardizing: 3 x 8np; the design's SVD: 2 float64 copies, or blocks of 32 MiB when
  it has more than 2^22 entries; a Gram matrix of 3 x 8k^2 for min(n, p) > 2000; the
  wide curvature's QR: 3 x 8 n k1), one cohort chunk (:data:`CHUNK_NR_ARRAYS` (n x R)
  arrays in the run's format, 16 (R x k1) float64 arrays, the metrics' 12 x E x R
  float64 and the curvature probes' blocks), the optimum's Newton step (8 n k1 + 3 x
  8 k1^2), and the near-singular-design advisory, which standardizes the features,
  takes their SVD and the eigenvalues of their p x p Gram matrix: 4 x 8np + 8n min(n, p),
  or 6 x 8np + 8p^2, or 4 x 8np + 3 x 8p^2 (the term that makes a 2 x 9,999 sweep need
  gigabytes), or, when it refits (n p <= 2e7, p <= 400), 7 x 8np.

Time model: calibration constants measured in this process by :func:`calibrate`, a
micro-benchmark of well under a second, scaled by the work of each step:

- an epoch of a cohort chunk: the real per-epoch torch code (the loss and gradient of
  :func:`~stability_lab.tasks.logistic.objective` and the per-epoch bookkeeping) timed in
  each format and loss form of the sweep at the data's p, for one row and one run (the
  fixed cost of an epoch) and for 64 runs on up to 4,096 rows (fewer as p grows: at
  most 4e6 / (64 (p + 64))), and taken as linear in rows x runs in between and beyond;
  mini-batches add one such step per batch;
- NumPy/LAPACK work (the probes' SVDs and eigenvalues, the optimum's Newton or L-BFGS
  iterations, the advisory): flop counts divided by the measured float64 GEMM rate, and
  O(n p k) or O(k^3) counts times the measured seconds of a small SVD and eigvalsh
  (timed on one BLAS thread);
  the iteration counts of the optimum are typical counts (:data:`NEWTON_ITERATIONS`,
  :data:`LBFGS_ITERATIONS`), not bounds;
- per run, :data:`PER_RUN_SECONDS` for diagnosis and the store write.

Not counted: verification re-runs after the sweep (how many depends on which runs
fail), the HTML report, and a remote cluster's memory (``--scheduler``); local workers
(``--workers N``) are counted, each as a copy of this process's libraries, data and a
cohort chunk, their time as the runs' time divided by N. Runs the store already holds
are estimated as if they ran.
Deep nets (mlp, attention, a user's model) have no cost model here: their estimate says
so and gives no numbers. Linear regression gets a coarse one (its solvers as a few
O(n p^2) passes over a few copies of the design).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from stability_lab.spec.tasks import TASKS

#: refuse when the sweep needs more than this fraction of the memory available
MARGIN = 0.8
#: resident bytes a run adds beyond its arrays: lazily imported modules (the store,
#: SciPy's solvers), torch's and the allocator's pools (ru_maxrss minus the traced peak
#: and the resident size before the run, on small sweeps of the built-in data)
RUNTIME_SLACK = 48 << 20
#: bytes a finished run keeps besides its metrics and parameters: its spec, probes,
#: meta and extras dictionaries, verdict and findings (tracemalloc over 500-run sweeps)
PER_RUN_BYTES = 8 << 10
#: metrics recorded per epoch (logistic regression), float64 each
METRICS_PER_EPOCH = 12
#: (n x runs) arrays alive at once in a cohort chunk's epoch (logits, loss terms,
#: exponentials, gradient, masks): what ``cohort.COHORT_BYTES`` budgets (about 8),
#: with the 16-bit formats' float32 copies
CHUNK_NR_ARRAYS = 10
#: seconds per run for diagnosis, the store's transaction and Python bookkeeping (a
#: profile of 200- and 500-run sweeps of the built-in data: about 2 ms of diagnosis and
#: 1.5 ms of SQLite commit a run, on an idle machine)
PER_RUN_SECONDS = 0.005
#: typical iterations of the float64 optimum (cached per data variant and lambda): Newton
#: took 5 to 45 (its cap, 100, twice) on the built-in and synthetic data's variants;
#: L-BFGS (p > 400) 1 to 24 on a 2 x 9,999 CSV, and the margin is for tall data
NEWTON_ITERATIONS = 30
LBFGS_ITERATIONS = 100
#: seconds of Python and SciPy overhead per optimum iteration
ITERATION_OVERHEAD = 3e-4
#: the CSV reader's speed per pass (it makes two: features, then labels), bytes per
#: second (datasets.load of a 22 MB, 100,000 x 20 CSV: 13.8 MB/s for both passes)
CSV_BYTES_PER_SECOND = 25e6
#: the CSV reader's peak over the features it returns (tracemalloc, 100,000 x 20)
CSV_LOAD_FACTOR = 1.4
#: the shapes of the built-in data sets (rows, feature columns)
BUILTIN_SHAPES = {"breast_cancer": (569, 30), "digits": (1797, 64)}
#: the registered deep-net tasks (a user's model is estimated apart)
DEEP_TASKS = tuple(n for n, e in TASKS.items() if e.family == "deep")

_BLOCK = 1 << 22  # entries of the probes' blocks (tasks.logistic, conditioning)


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


# -- the data, without loading it --------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    rows: int
    cols: int
    #: "builtin", "synthetic", "csv" or "nist"
    kind: str
    #: bytes of the file read (CSV), else 0
    file_bytes: int = 0


def data_shape(task: str, source: str, target: str | None = None) -> Shape | None:
    """Rows and feature columns of a ``--data`` value without loading it: the built-in
    shapes, a synthetic source's ``n`` and ``d``, a NIST problem's design, a CSV's header
    (its columns less the target) and its line count. None when it cannot be told (a
    missing or unreadable file: the loader says why when the sweep starts)."""
    source = str(source).strip()
    try:
        if source in BUILTIN_SHAPES:
            n, p = BUILTIN_SHAPES[source]
            return Shape(n, p + (1 if task == "linear_regression" else 0), "builtin")
        if source.startswith("synthetic"):
            from stability_lab.tasks.datasets import parse_synthetic

            params = parse_synthetic(source)
            return Shape(int(params["n"]), int(params["d"]), "synthetic")
        if source.startswith("nist:"):
            from stability_lab.linalg.nist import load_problem

            rows, cols = load_problem(source.partition(":")[2]).design().shape
            return Shape(int(rows), int(cols), "nist")
        return _csv_shape(source, task)
    except Exception:  # any fault is the loader's to report, with its own message
        return None


def _csv_shape(path: str, task: str) -> Shape | None:
    import csv

    from stability_lab.tasks.datasets import sniff_delimiter

    size = os.path.getsize(path)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        head = fh.read(65536)
    delim = sniff_delimiter(head)
    header = next(csv.reader(head.splitlines()[:1], delimiter=delim), [])
    if len(header) < 2:
        return None
    lines, last = 0, b"\n"
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    lines += last != b"\n"
    cols = len(header) - 1 + (1 if task == "linear_regression" else 0)  # intercept
    return Shape(max(lines - 1, 0), cols, "csv", size)


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


# -- the estimate ------------------------------------------------------------------------
@dataclass
class Estimate:
    """What a sweep will take: :attr:`seconds` of wall time and :attr:`peak_bytes` of
    resident memory (None where the task has no cost model), before any run starts."""

    task: str
    runs: int
    epochs: tuple[int, int]  # smallest and largest epochs (solves: (1, 1))
    rows: int | None
    cols: int | None
    seconds: float | None
    #: the process's peak resident bytes, what it holds now included
    peak_bytes: int | None
    #: resident bytes now (the libraries imported), part of peak_bytes
    base_bytes: int
    available_bytes: int | None
    #: "" or why the numbers are coarse or missing
    note: str = ""
    #: the terms of the memory model, bytes
    parts: dict[str, int] = field(default_factory=dict)
    #: the time model's seconds: "prepare" (loading, probes of the data), "runs", "after"
    #: (conditioning and advisories once every run is done)
    time_parts: dict[str, float] = field(default_factory=dict)
    step_unit: str = "epoch"

    @property
    def extra_bytes(self) -> int | None:
        """Memory the sweep still has to allocate (its peak less what is resident)."""
        return None if self.peak_bytes is None else max(self.peak_bytes - self.base_bytes, 0)

    @property
    def fits(self) -> bool:
        """Whether the sweep fits in :data:`MARGIN` of the memory available (True when
        either is unknown: nothing is refused on a guess)."""
        if self.extra_bytes is None or self.available_bytes is None:
            return True
        return self.extra_bytes <= MARGIN * self.available_bytes

    def what(self) -> str:
        """``72 runs x 200 epochs on 569 x 30``: what was asked."""
        lo, hi = self.epochs
        if self.step_unit == "solve":
            runs = f"{self.runs:,} solve{'s' if self.runs != 1 else ''}"
        else:
            steps = f"{lo}" if lo == hi else f"{lo}-{hi}"
            runs = f"{self.runs:,} run{'s' if self.runs != 1 else ''} x {steps} {self.step_unit}s"
        if self.rows is None:
            return f"{runs} of {self.task}"
        return f"{runs} on {self.rows:,} x {self.cols:,}"

    def text(self) -> str:
        """One line: ``estimate: 72 runs x 200 epochs on 569 x 30: ~12 s, peak ~380 MB
        (of 20.1 GB available)``."""
        head = f"estimate: {self.what()}"
        if self.peak_bytes is None:
            return f"{head}: {self.note or 'no estimate for this task'}"
        avail = ("" if self.available_bytes is None
                 else f" (of {format_bytes(self.available_bytes)} available)")
        secs = "" if self.seconds is None else f"~{format_seconds(self.seconds)}, "
        note = f"; {self.note}" if self.note else ""
        return f"{head}: {secs}peak ~{format_bytes(self.peak_bytes)}{avail}{note}"

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "runs": self.runs, "epochs": list(self.epochs),
                "rows": self.rows, "cols": self.cols, "seconds": self.seconds,
                "peak_bytes": self.peak_bytes, "base_bytes": self.base_bytes,
                "available_bytes": self.available_bytes, "fits": self.fits,
                "note": self.note, "parts": dict(self.parts),
                "time_parts": dict(self.time_parts), "text": self.text()}


def format_bytes(b: float) -> str:
    """Decimal units: 180 MB, 2.4 GB."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= size:
            v = b / size
            return f"{v:.1f} {unit}" if v < 10 else f"{v:.0f} {unit}"
    return f"{int(b)} B"


def format_seconds(s: float) -> str:
    """12 s, 3.5 min, 2.1 h."""
    if s < 1:
        return "1 s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min" if s < 600 else f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _preload(task: str, source: str) -> None:
    """Import what the sweep's runs will import, so that the resident size measured
    counts it (importing is no work: the modules are needed anyway)."""
    import importlib

    names = ["numpy", "scipy.linalg", "scipy.optimize", "scipy.sparse.linalg", "sqlite3"]
    if task in ("logistic_regression",) or task in DEEP_TASKS or ":" in task:
        names.append("torch")
    if str(source).strip() in BUILTIN_SHAPES or task in DEEP_TASKS:
        names.append("sklearn.datasets")
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def estimate_sweep(sweep, *, cohorts: bool = True, rates: Rates | None = None,
                   calibrate_time: bool = True, available: int | None = None,
                   base: int | None = None, workers: int | None = None,
                   remote: bool = False) -> Estimate:
    """Estimate a sweep's wall time and peak memory before any run starts.

    ``rates`` fixes the time model (else :func:`calibrate` measures it, or, with
    ``calibrate_time=False``, no time is estimated: the memory model needs no
    measurement). ``available`` and ``base`` override the memory available and the
    resident bytes now (both read from the system by default). ``workers``: the sweep's
    cohorts run on that many local worker processes (``--workers N``), each holding
    the data and a cohort chunk beside this process's share; ``remote``: on a cluster
    elsewhere (``--scheduler``), whose memory is not this machine's."""
    base_spec = sweep.base
    task = base_spec.task
    specs = sweep.specs
    epochs = [int(s.epochs) for s in specs]
    ep = (min(epochs), max(epochs))
    if base is None:
        _preload(task, base_spec.data)
        base = resident_memory()
    if available is None:
        available = available_memory()
    if task == "linear_regression":
        shape = data_shape(task, base_spec.data, base_spec.target)
        est = Estimate(task, len(specs), (1, 1), None, None, None, None, base, available,
                       step_unit="solve")
        if shape is None:
            est.note = "data size unknown until it is read; not estimated"
            return est
        return _linear(est, specs, shape, rates, calibrate_time)  # (cohorts: none)
    if task != "logistic_regression":
        kind = task if task in DEEP_TASKS else "your model"
        return Estimate(task, len(specs), ep, None, None, None, None, base, available,
                        note=f"time and memory not estimated for {kind} (deep nets have "
                             "no cost model here); memory is not checked")
    shape = data_shape(task, base_spec.data, base_spec.target)
    est = Estimate(task, len(specs), ep, None, None, None, None, base, available)
    if shape is None:
        est.note = "data size unknown until it is read; not estimated"
        return est
    est = _logistic(est, specs, shape, cohorts, rates, calibrate_time, workers, remote)
    return est


def _logistic(est: Estimate, specs, shape: Shape, cohorts: bool, rates: Rates | None,
              calibrate_time: bool, workers: int | None = None,
              remote: bool = False) -> Estimate:
    from stability_lab.precision import FORMATS
    from stability_lab.run.cohort import chunk_runs
    from stability_lab.tasks.logistic import LogisticRegression
    from stability_lab.tasks.curvature import EXACT_HESSIAN_LIMIT

    task = LogisticRegression()
    n, p = shape.rows, shape.cols
    est.rows, est.cols = n, p
    k1 = p + 1
    f64 = 8.0 * n * p
    wide = n < k1
    k = n + 1 if wide else k1  # the curvature probes' dimension
    kmin = min(n, p)

    datasets: set = set()
    variants: dict[Any, tuple[str, str]] = {}  # data_key -> (scale, precision)
    groups: dict[Any, list] = {}
    lambdas: dict[Any, set] = {}
    for i, s in enumerate(specs):
        datasets.add(task.dataset_key(s))
        dk = task.data_key(s)
        variants.setdefault(dk, (s.scale, s.precision))
        lambdas.setdefault(dk, set()).add(float(s.lam))
        key = task.cohort_key(s) if cohorts else ("single", i)
        groups.setdefault(key, []).append(s)

    # -- memory ----------------------------------------------------------------------
    def storage(scale: str, precision: str) -> float:
        if precision == "float64":
            return 0.0 if scale == "raw" else f64
        return f64 / 2

    curv = 8.0 * n * (n + 1) if wide else (8.0 * n * k1 if n * k1 <= _BLOCK else 0.0)
    data = len(datasets) * (f64 + 8.0 * n)
    kept = sum(storage(sc, pr) + curv for sc, pr in variants.values())
    designs = len(variants) * 8.0 * n * k1
    # _context prepares the standardized float64 variant of each data set if it is missing
    std_extra = (0.0 if any(v == ("standardized", "float64") for v in variants.values())
                 else len(datasets) * (f64 + curv))
    per_run = sum(PER_RUN_BYTES + 8.0 * METRICS_PER_EPOCH * e + 8.0 * k1
                  for e in (s.epochs for s in specs))

    load = {"csv": CSV_LOAD_FACTOR * f64, "synthetic": 3.0 * f64}.get(shape.kind, f64)
    spectrum = 2.0 * f64 if n * p <= _BLOCK else 3.0 * 8.0 * _BLOCK
    if kmin > 2000:
        spectrum += 3.0 * 8.0 * kmin * kmin
    prep = max(3.0 * f64 if any(sc != "raw" for sc, _ in variants.values()) else 0.0,
               1.5 * f64 if any(pr in ("float16", "bfloat16") for _, pr in variants.values())
               else 0.0,
               spectrum, 3.0 * 8.0 * n * k1 if wide else min(8.0 * n * k1, 8.0 * _BLOCK))

    chunk = 0.0
    for group in groups.values():
        fmt = FORMATS[group[0].precision]
        size = chunk_runs(n, fmt)
        R = min(size, len(group))
        E = max(s.epochs for s in group)
        item = 8 if fmt.name == "float64" else 4
        hess_runs = min(R, max(1, _BLOCK // max(n, 1)))
        hess = 3.0 * 8.0 * n * hess_runs + (
            8.0 * min(n * k * k, _BLOCK) + 2.0 * 8.0 * k * k * R if k <= 64
            else 3.0 * 8.0 * k * k)
        c = (CHUNK_NR_ARRAYS * n * R * item + 16.0 * 8.0 * R * k1
             + 8.0 * METRICS_PER_EPOCH * E * R + hess)
        chunk = max(chunk, c)
    newton = (8.0 * n * k1 + 3.0 * 8.0 * k1 * k1) if k1 <= 400 else 8.0 * (n + 64 * k1)
    optimum = newton + (f64 if any(pr != "float64" for _, pr in variants.values()) else 0.0)
    refit = n * p <= 20_000_000 and p <= 400
    std_scales = any(sc != "raw" for sc, _ in variants.values())
    # with p >= n columns the design is exactly rank-deficient (rank_deficiency's
    # finding) and the advisory stops after the SVD: no p x p Gram matrix
    gram = 1.0 if p < n else 0.0
    advisory = (f64 if std_scales else 0.0) + max(
        4.0 * f64 + 8.0 * n * kmin,  # the SVD of the standardized features
        gram * (6.0 * f64 + 8.0 * p * p),  # forming their p x p Gram matrix
        gram * (4.0 * f64 + 3.0 * 8.0 * p * p),  # its eigenvalues
        7.0 * f64 if refit else 0.0)

    phase_prepare = data + kept + max(load, prep)
    phase_runs = data + kept + designs + per_run + max(chunk, optimum)
    phase_after = data + kept + std_extra + designs + per_run + max(advisory, prep)
    if remote or workers:
        # the cohorts run in other processes; this one prepares, stores and analyses
        phase_runs = data + kept + per_run
    extra = max(phase_prepare, phase_runs, phase_after) + RUNTIME_SLACK
    if workers:
        # each local worker: its interpreter and libraries (as much as this process
        # holds now), the data variants shipped to it, its cohort chunk and designs
        extra += workers * (est.base_bytes + RUNTIME_SLACK + data + kept + designs
                            + max(chunk, optimum))
        est.note = f"{workers} local workers included"
    elif remote:
        est.note = "the cluster's memory not included"
    est.peak_bytes = int(est.base_bytes + extra)
    est.parts = {k_: int(v) for k_, v in {
        "resident": est.base_bytes, "slack": RUNTIME_SLACK, "data": data,
        "variants": kept + std_extra, "designs": designs, "runs": per_run, "load": load,
        "prepare": prep, "chunk": chunk, "optimum": optimum, "advisory": advisory}.items()}

    # -- time ------------------------------------------------------------------------
    if rates is None and not calibrate_time:
        return est
    if rates is None:
        keys = [(s.precision, s.loss, p) for s in (g[0] for g in groups.values())]
        rates = calibrate(keys)
    before = runs = after = 0.0  # loading and preparing; the runs; the analysis after
    if shape.kind == "csv":
        before += 2 * shape.file_bytes / CSV_BYTES_PER_SECOND
    elif shape.kind == "synthetic":
        before += len(datasets) * (rates.svd * n * p * p + 2.0 * n * p * p / rates.gemm)
    for sc, pr in variants.values():
        before += rates.svd * n * p * kmin + 10 * rates.elem * n * p  # spectrum, scaling
        if wide:
            before += rates.svd * k1 * n * n
        # conditioning (after the runs): the Gram matrix and its extremes
        after += 2.0 * n * k * k / rates.gemm + rates.eig * k ** 3
    exact = k <= EXACT_HESSIAN_LIMIT
    for group in groups.values():
        fmt = FORMATS[group[0].precision]
        a, b = rates.epoch_cost(group[0].precision, group[0].loss, p)
        size = chunk_runs(n, fmt)
        batch = group[0].batch_size
        for i in range(0, len(group), size):
            part = group[i:i + size]
            R, E = len(part), max(s.epochs for s in part)
            per_epoch = a + b * n * R
            if batch:
                per_epoch += math.ceil(n / batch) * (a + b * min(batch, n) * R)
            runs += E * per_epoch
            # curvature probes at the start and at the end
            if k <= 64:
                probe = 2.0 * n * k * k * R / rates.gemm + R * rates.eig * k ** 3
            elif exact:
                probe = R * (2.0 * n * k * k / rates.gemm + rates.eig * k ** 3)
            else:
                probe = R * 200 * 4.0 * n * k / rates.gemm
            runs += 2 * (probe + 2.0 * n * k1 * R / rates.gemm)
    newton_it = 2.0 * n * k1 * k1 / rates.gemm + k1 ** 3 / rates.gemm + 20.0 * n * k1 / rates.gemm
    lbfgs_it = 8.0 * n * k1 / rates.gemm + 60.0 * k1 / rates.gemm
    opt_one = (NEWTON_ITERATIONS * (newton_it + ITERATION_OVERHEAD) if k1 <= 400
               else LBFGS_ITERATIONS * (lbfgs_it + ITERATION_OVERHEAD))
    runs += sum(len(lams) for lams in lambdas.values()) * opt_one
    runs += len(specs) * (PER_RUN_SECONDS + 12.0 * n * k1 / rates.gemm)
    # the near-singular advisory, once per (data, scale): SVD with vectors, p x p Gram
    # and its eigenvalues, and the refits
    for _ in {sc for sc, _ in variants.values()}:
        after += 3 * rates.svd * n * p * kmin
        if p < n:
            after += 2.0 * n * p * p / rates.gemm + rates.eig * p ** 3
        if refit:
            after += 4 * opt_one
    if workers:
        runs /= workers  # cohorts in parallel (as many as there are cohorts at most)
    est.seconds = before + runs + after
    est.time_parts = {"prepare": before, "runs": runs, "after": after}
    return est


def _linear(est: Estimate, specs, shape: Shape, rates: Rates | None,
            calibrate_time: bool) -> Estimate:
    """Linear least squares, coarsely: each solve as a few O(n p^2) passes over a few
    float64 copies of the design (QR, SVD, normal equations, refinement)."""
    n, p = shape.rows, shape.cols
    est.rows, est.cols = n, p
    f64 = 8.0 * n * p
    variants = {(s.param("kappa"), s.scale) for s in specs}
    data = len(variants) * (2 * f64 + 16.0 * n)
    solve = 6.0 * f64 + 3.0 * 8.0 * p * p
    runs = len(specs) * (PER_RUN_BYTES + 8.0 * p)
    extra = data + runs + max(solve, CSV_LOAD_FACTOR * f64 if shape.kind == "csv" else 0.0)
    est.peak_bytes = int(est.base_bytes + extra + RUNTIME_SLACK)
    est.note = "coarse (linear solvers)"
    est.parts = {"resident": est.base_bytes, "data": int(data), "solve": int(solve),
                 "runs": int(runs), "slack": RUNTIME_SLACK}
    if rates is None and not calibrate_time:
        return est
    rates = rates or calibrate()
    k = min(n, p)
    secs = len(specs) * (10 * rates.svd * n * p * k + 20.0 * n * p / rates.gemm
                         + PER_RUN_SECONDS)
    if shape.kind == "csv":
        secs += 2 * shape.file_bytes / CSV_BYTES_PER_SECOND
    est.seconds = secs
    return est
