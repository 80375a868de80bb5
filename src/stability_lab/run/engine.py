"""The engine: runs specs, one at a time or as lockstep cohorts, and returns traces.

Specs are grouped by task, then by the task's ``data_key`` (data loaded and
transformed once per variant), then, for cohort tasks, by ``cohort_key``: all specs of
a cohort run together with a leading config axis (:mod:`.cohort`). A task of kind
``"problem"`` hands over its model, data and loss, trained by :mod:`.loop`; a task of
kind ``"solve"`` computes its answer in closed form. A cohort that raises is re-run one
spec at a time so that only the guilty spec is lost; a spec that raises becomes a trace
with its error message, and the sweep goes on.
"""

from __future__ import annotations

import traceback
from typing import Any, Callable, Hashable, Sequence

from stability_lab.errors import LabError
from stability_lab.spec import RunSpec
from stability_lab.tasks import get_task
from stability_lab.trace import Trace

Progress = Callable[[int, int], None]


class DataCache:
    """Data variants prepared for a list of specs (validation happens here).

    A task with ``dataset_key(spec)`` and ``load_dataset(spec)`` has its raw data loaded
    once per dataset key and passed to ``prepare(spec, dataset=...)`` for each variant
    (scale x precision) built from it.
    """

    def __init__(self) -> None:
        self.tasks: dict[str, Any] = {}
        self.variants: dict[tuple[str, Hashable], Any] = {}
        self.datasets: dict[tuple[str, Hashable], Any] = {}

    def task(self, name: str):
        if name not in self.tasks:
            self.tasks[name] = get_task(name)
        return self.tasks[name]

    def get(self, spec: RunSpec):
        task = self.task(spec.task)
        key = (spec.task, task.data_key(spec))
        if key not in self.variants:
            if hasattr(task, "dataset_key"):
                dkey = (spec.task, task.dataset_key(spec))
                if dkey not in self.datasets:
                    self.datasets[dkey] = task.load_dataset(spec)
                self.variants[key] = task.prepare(spec, dataset=self.datasets[dkey])
            else:
                self.variants[key] = task.prepare(spec)
        return self.variants[key]


def prepare(specs: Sequence[RunSpec], prepared: DataCache | None = None) -> DataCache:
    """Validate every spec and load every data variant; raises LabError on bad input."""
    prepared = prepared or DataCache()
    for spec in specs:
        prepared.task(spec.task).validate(spec)
    for spec in specs:
        prepared.get(spec)
    return prepared


def cohort_groups(specs: Sequence[RunSpec], prepared: DataCache,
                  cohorts: bool = True) -> list[list[int]]:
    """Indices of the specs grouped into the units the engine runs: cohorts (same task,
    data variant and cohort key) or single specs, in first-seen order."""
    groups: dict[Hashable, list[int]] = {}
    for i, spec in enumerate(specs):
        task = prepared.task(spec.task)
        if cohorts and task.supports_cohort:
            key = (spec.task, "cohort", task.cohort_key(spec))
        else:
            key = (spec.task, "single", i)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def run_group(group: Sequence[RunSpec], prepared: DataCache) -> list[Trace]:
    """Run one group of :func:`cohort_groups` (the unit of work of every executor):
    a cohort in lockstep, re-run one spec at a time if it raises."""
    task = prepared.task(group[0].task)
    data = prepared.get(group[0])
    if len(group) > 1:
        from stability_lab.run.cohort import train_cohort

        try:
            return train_cohort(list(group), data)
        except LabError:
            raise
        except Exception:
            return [_run_one(task, s, data) for s in group]
    return [_run_one(task, group[0], data)]


def run_specs(specs: Sequence[RunSpec], prepared: DataCache | None = None,
              progress: Progress | None = None, cohorts: bool = True,
              sink: Callable[[int, Trace], None] | None = None,
              executor: Any = None) -> list[Trace]:
    """Run specs and return their traces in the same order.

    ``sink(i, trace)`` is called as soon as each group finishes, so a caller can store
    completed runs before the rest of the sweep has run. ``executor`` (e.g.
    :class:`stability_lab.run.executor.DaskExecutor`) runs the groups elsewhere and
    yields (group indices, traces) as they finish; None runs them here, in order.
    """
    prepared = prepare(specs, prepared)
    out: dict[int, Trace] = {}
    total = len(specs)
    groups = cohort_groups(specs, prepared, cohorts)
    if executor is None:
        finished = ((idx, run_group([specs[i] for i in idx], prepared)) for idx in groups)
    else:
        finished = executor.run_groups(specs, groups)
    for idx, traces in finished:
        for i, trace in zip(idx, traces):
            out[i] = trace
            if sink is not None:
                sink(i, trace)
        if progress:
            progress(len(out), total)
    return [out[i] for i in range(total)]


def run_one(task, spec: RunSpec, data) -> Trace:
    """One spec of ``task`` on its prepared data, by the task's kind (no error capture)."""
    if task.kind == "cohort":
        from stability_lab.run.cohort import train_cohort

        return train_cohort([spec], data)[0]
    if task.kind == "solve":
        return task.solve(spec, data)
    from stability_lab.run.autograd import train

    return train(spec, task.problem(spec, data))


def _run_one(task, spec: RunSpec, data) -> Trace:
    try:
        return run_one(task, spec, data)
    except LabError:
        raise
    except Exception as exc:  # the run is stored as an error and the sweep goes on
        last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" ({last.filename.rsplit('/', 1)[-1]}:{last.lineno})" if last else ""
        return Trace(spec=spec, error=f"{type(exc).__name__}: {exc}{where}",
                     step_unit=getattr(task, "step_unit", "epoch"))
