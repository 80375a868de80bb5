"""The cost models of a sweep: what it allocates (peak resident bytes) and how long it
computes (seconds), from the shape of the data and the specs grouped as the engine
groups them. :func:`logistic_cost` models logistic regression; :func:`linear_cost`,
coarsely, linear regression. Each fills in the :class:`~.estimate_result.Estimate` it is
given; :func:`stability_lab.estimate.estimate_sweep` chooses which.

Memory model (logistic regression; "8np" is one float64 copy of the n x p features,
k1 = p + 1 parameters, R the runs of a cohort chunk, E its epochs):

- the resident memory of this process once the libraries a sweep imports are imported
  (torch, SciPy, scikit-learn for built-in data;
  :func:`~.estimate_machine.resident_memory`), plus a fixed :data:`RUNTIME_SLACK`
  (modules imported lazily during a run, allocator slack);
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

Time model: calibration constants measured in this process by
:func:`~.estimate_machine.calibrate`, a micro-benchmark of well under a second, scaled by
the work of each step:

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
from typing import Any

from stability_lab.estimate_machine import Rates, calibrate
from stability_lab.estimate_result import Estimate
from stability_lab.estimate_shape import Shape

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

_BLOCK = 1 << 22  # entries of the probes' blocks (tasks.logistic, conditioning)


def logistic_cost(est: Estimate, specs, shape: Shape, cohorts: bool, rates: Rates | None,
                  calibrate_time: bool, workers: int | None = None,
                  remote: bool = False) -> Estimate:
    """Logistic regression: the memory and time model of the module docstring, filled
    into ``est``."""
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
    for _ in variants.values():
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


def linear_cost(est: Estimate, specs, shape: Shape, rates: Rates | None,
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
