"""Sweeps on Dask distributed: cohorts run on workers, results come back to the client,
and only the client writes the store.

``stability-lab run ... --workers N`` starts a local cluster of N worker processes
(``dask.distributed.LocalCluster(processes=True)``, one task thread each);
``--scheduler tcp://HOST:PORT`` uses a cluster that is already running (``dask
scheduler`` on one machine, ``dask worker tcp://HOST:PORT`` on each of the others).

- The unit of work is one group of :func:`stability_lab.run.engine.cohort_groups`: a cohort
  (or a single run for tasks without cohorts). The task sent is the group's specs and
  the client's thread settings; each worker loads and prepares the data itself (once
  per worker process, cached), so nothing but specs goes out and traces come back. A
  CSV or a ``--task file.py`` must therefore be readable at the same path on every
  worker.
- Results stream back in the order they finish (``as_completed``); the client
  diagnoses each run and writes it to SQLite in its own transaction as its cohort
  finishes. Workers never touch the store.
- A cohort whose worker dies (``kill -9``, out of memory) or that raises on the worker
  is submitted once more; if that fails too, its runs are stored as errors saying so,
  and the sweep completes. A local cluster's scheduler is started with
  ``allowed-failures`` 0, so a death reaches the client at once and the client's one
  retry is the only one. (An external scheduler applies its own ``allowed-failures``,
  3 by default, before the client sees the failure.)
- A killed client loses nothing stored: the same command again reuses every finished
  run by its key (``RunSpec.run_id``) and sends only the rest.
- Bit for bit: a worker runs the same code as the local executor (``engine.run_group``)
  on data prepared by the same code, with the client's torch intra-op thread count and
  BLAS thread count applied first, so its numbers equal the local executor's for the
  same spec and thread settings (tested). Set the same ``OPENBLAS_CORETYPE`` on every
  machine: a different BLAS kernel changes the last bits.

Nothing here is imported by ``--help`` or by argument checking.
"""

from __future__ import annotations

import os
import traceback
import uuid
from typing import Any, Iterator, Sequence

from stability_lab.spec import RunSpec
from stability_lab.trace import Trace

#: tries per cohort: the first, and one retry
ATTEMPTS = 2


def thread_settings() -> dict[str, Any]:
    """This process's torch intra-op and BLAS thread counts (what workers copy)."""
    import torch

    out: dict[str, Any] = {"torch": torch.get_num_threads(), "blas": None}
    try:
        import threadpoolctl

        counts = [i["num_threads"] for i in threadpoolctl.threadpool_info()
                  if i["user_api"] == "blas"]
        out["blas"] = min(counts) if counts else None
    except ImportError:  # pragma: no cover (scikit-learn depends on it)
        pass
    return out


def apply_thread_settings(settings: dict[str, Any]) -> None:
    import torch

    if settings.get("torch") and torch.get_num_threads() != settings["torch"]:
        torch.set_num_threads(int(settings["torch"]))
    if settings.get("blas"):
        import threadpoolctl

        threadpoolctl.threadpool_limits(limits=int(settings["blas"]), user_api="blas")


_PREPARED: Any = None  # this worker process's data variants, loaded once


def run_group_on_worker(group: Sequence[RunSpec], settings: dict[str, Any]) -> list[Trace]:
    """The task a worker runs: one cohort, with the client's thread settings."""
    global _PREPARED
    from stability_lab.run import engine

    apply_thread_settings(settings)
    if _PREPARED is None:
        _PREPARED = engine.DataCache()
    return engine.run_group(list(group), _PREPARED)


class DaskExecutor:
    """Runs the engine's groups on a Dask cluster; see the module docstring.

    ``workers=N`` starts a local cluster of N processes; ``scheduler="tcp://HOST:PORT"``
    connects to a running one. Use as a context manager (or call :meth:`close`): a local
    cluster is torn down on exit.
    """

    def __init__(self, workers: int | None = None, scheduler: str | None = None,
                 attempts: int = ATTEMPTS):
        if (workers is None) == (scheduler is None):
            raise ValueError("pass exactly one of workers= and scheduler=")
        self.workers, self.scheduler, self.attempts = workers, scheduler, attempts
        self.cluster = None
        self.client: Any = None
        self.address: str | None = None

    def start(self) -> None:
        """Start the local cluster or connect (done by the first :meth:`run_groups`, so
        a sweep whose runs are all stored already starts nothing)."""
        if self.client is not None:
            return
        import dask
        from dask.distributed import Client, LocalCluster

        workers, scheduler = self.workers, self.scheduler
        if workers is not None:
            with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                                  "distributed.worker.daemon": False}):
                self.cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1,
                                            processes=True, host="127.0.0.1",
                                            dashboard_address="127.0.0.1:0", silence_logs=50,
                                            memory_limit=0)
            self.client = Client(self.cluster)
        else:
            self.client = Client(scheduler, timeout="20s")
        self.address = self.client.scheduler.address

    def __enter__(self) -> "DaskExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        try:
            if self.client is not None:
                self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()
            self.client = self.cluster = None

    def run_groups(self, specs: Sequence[RunSpec],
                   groups: Sequence[Sequence[int]]) -> Iterator[tuple[Sequence[int], list[Trace]]]:
        """Submit every group, yield (indices, traces) as each finishes."""
        from dask.distributed import as_completed

        if not groups:
            return
        self.start()
        settings = thread_settings()
        token = uuid.uuid4().hex[:8]
        pending: dict[Any, tuple[int, int]] = {}

        def submit(g: int, attempt: int):
            group = [specs[i] for i in groups[g]]
            fut = self.client.submit(run_group_on_worker, group, settings,
                                     key=f"cohort-{token}-{g}-{attempt}", pure=False,
                                     retries=0)
            pending[fut] = (g, attempt)
            return fut

        stream = as_completed([submit(g, 0) for g in range(len(groups))])
        for fut in stream:
            g, attempt = pending.pop(fut)
            idx = groups[g]
            try:
                traces = fut.result()
            except Exception as exc:  # the worker died or the task raised there
                if attempt + 1 < self.attempts:
                    stream.add(submit(g, attempt + 1))
                    fut.release()
                    continue
                traces = [_lost(specs[i], exc, attempt + 1) for i in idx]
            fut.release()
            yield idx, traces


def _lost(spec: RunSpec, exc: BaseException, tries: int) -> Trace:
    last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" ({os.path.basename(last.filename)}:{last.lineno})" if last else ""
    return Trace(spec=spec, error=(f"cohort failed on the cluster {tries} times: "
                                   f"{type(exc).__name__}: {exc}{where}"))


def check_scheduler_address(text: str) -> str:
    """``tcp://HOST:PORT`` (or ``tls://``), checked without importing dask."""
    from stability_lab.errors import UsageError

    value = str(text).strip()
    scheme, sep, rest = value.partition("://")
    host, colon, port = rest.rpartition(":")
    if not (sep and scheme in ("tcp", "tls", "inproc", "ucx", "ws", "wss") and colon and host
            and port.isdigit() and 0 < int(port) < 65536):
        raise UsageError(f"--scheduler {text!r} is not a scheduler address; expected "
                         "tcp://HOST:PORT, e.g. tcp://10.0.0.5:8786.")
    return value
