"""The task interface.

A task turns specs into traces. The engine calls, in order:

1. ``validate(spec)``: cheap checks that need no heavy import (raise UsageError).
2. ``prepare(spec)``: load and transform the data a spec sees (raise DataError);
   the engine caches the result per ``data_key(spec)``. A task whose variants (scale,
   precision) are built from the same raw data may also define ``dataset_key(spec)``
   and ``load_dataset(spec)``: the engine then loads each dataset once and calls
   ``prepare(spec, dataset=...)`` for every variant of it.
3. ``run(spec, prepared)`` for one spec, or ``run_cohort(specs, prepared)`` for specs
   that share ``cohort_key(spec)`` when ``supports_cohort`` is true: linear models
   run many configurations in lockstep with a leading config axis.
4. ``conditioning(prepared)``: float64 facts about the data variant (condition
   numbers) for the report; ``{}`` if the task has none.
"""

from __future__ import annotations

from typing import Any, Hashable, Sequence

from stability_lab.spec import RunSpec
from stability_lab.trace import Trace


class Task:
    name: str = ""
    step_unit: str = "epoch"
    supports_cohort: bool = False

    def validate(self, spec: RunSpec) -> None:  # pragma: no cover - default is no checks
        return None

    def data_key(self, spec: RunSpec) -> Hashable:
        return (spec.data, spec.target)

    def prepare(self, spec: RunSpec) -> Any:
        raise NotImplementedError

    def cohort_key(self, spec: RunSpec) -> Hashable:
        return spec.run_id

    def run(self, spec: RunSpec, prepared: Any) -> Trace:
        raise NotImplementedError

    def run_cohort(self, specs: Sequence[RunSpec], prepared: Any) -> list[Trace]:
        return [self.run(spec, prepared) for spec in specs]

    def conditioning(self, prepared: Any) -> dict[str, Any]:
        return {}
