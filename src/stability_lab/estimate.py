"""Before a sweep: how long it will take and how much memory it will need.

:func:`estimate_sweep` expands the sweep into the specs :func:`~stability_lab.lab.run_sweep`
will run, groups them as the engine will (data sets by ``task.dataset_key``, data
variants by ``task.data_key``, lockstep cohorts by ``task.cohort_key``, chunks of
:func:`~stability_lab.run.cohort.chunk_runs` runs) and adds up what that code
allocates and computes, from the shape of the data alone (:func:`data_shape`: built-in
shapes, the parameters of synthetic data, a CSV's header and line count; nothing is
loaded). It returns an :class:`Estimate` with the seconds, the peak resident bytes, the
memory available (``MemAvailable`` of ``/proc/meminfo``) and a one-line text.

The parts, one module each (their public names are importable from here too):

- :mod:`stability_lab.estimate_shape`: the data's rows and columns without loading it;
- :mod:`stability_lab.estimate_machine`: the memory available and resident, and the
  :class:`Rates` that :func:`calibrate` measures on this machine;
- :mod:`stability_lab.estimate_cost`: the memory and time models (their terms are
  written out in its docstring), what is not counted;
- :mod:`stability_lab.estimate_result`: the :class:`Estimate` record, whether it fits in
  :data:`MARGIN` of the memory available, its one-line text.

Deep nets (mlp, attention, a user's model) have no cost model here: their estimate says
so and gives no numbers.
"""

from __future__ import annotations

from stability_lab.estimate_cost import (
    CHUNK_NR_ARRAYS,
    CSV_BYTES_PER_SECOND,
    CSV_LOAD_FACTOR,
    ITERATION_OVERHEAD,
    LBFGS_ITERATIONS,
    METRICS_PER_EPOCH,
    NEWTON_ITERATIONS,
    PER_RUN_BYTES,
    PER_RUN_SECONDS,
    RUNTIME_SLACK,
    linear_cost,
    logistic_cost,
)
from stability_lab.estimate_machine import Rates, available_memory, calibrate, resident_memory
from stability_lab.estimate_result import MARGIN, Estimate, format_bytes, format_seconds
from stability_lab.estimate_shape import BUILTIN_SHAPES, Shape, data_shape
from stability_lab.spec.tasks import TASKS

__all__ = [
    "BUILTIN_SHAPES", "CHUNK_NR_ARRAYS", "CSV_BYTES_PER_SECOND", "CSV_LOAD_FACTOR",
    "DEEP_TASKS", "ITERATION_OVERHEAD", "LBFGS_ITERATIONS", "MARGIN", "METRICS_PER_EPOCH",
    "NEWTON_ITERATIONS", "PER_RUN_BYTES", "PER_RUN_SECONDS", "RUNTIME_SLACK", "Estimate",
    "Rates", "Shape", "available_memory", "calibrate", "data_shape", "estimate_sweep",
    "format_bytes", "format_seconds", "resident_memory",
]

#: the registered deep-net tasks (a user's model is estimated apart)
DEEP_TASKS = tuple(n for n, e in TASKS.items() if e.family == "deep")


def _preload(task: str) -> None:
    """Import what the sweep's runs will import, so that the resident size measured
    counts it (importing is no work: the modules are needed anyway)."""
    import importlib

    # the built-in data sets (breast_cancer, digits) are read without scikit-learn
    names = ["numpy", "scipy.linalg", "scipy.optimize", "scipy.sparse.linalg", "sqlite3"]
    if task in ("logistic_regression",) or task in DEEP_TASKS or ":" in task:
        names.append("torch")
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
        _preload(task)
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
        return linear_cost(est, specs, shape, rates, calibrate_time)  # (cohorts: none)
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
    est = logistic_cost(est, specs, shape, cohorts, rates, calibrate_time, workers, remote)
    return est
