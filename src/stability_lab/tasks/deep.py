"""What the three deep-net tasks share: their step unit and validation. Each hands the
engine a :class:`~stability_lab.tasks.base.Problem` (model, data, loss); the engine
trains it in its single mode (:mod:`stability_lab.run.autograd`)."""

from __future__ import annotations

from stability_lab.errors import UsageError
from stability_lab.precision import get_policy
from stability_lab.spec import RunSpec
from stability_lab.tasks.base import Task


class DeepTask(Task):
    step_unit = "step"

    def validate(self, spec: RunSpec) -> None:
        get_policy(spec.policy or spec.precision)  # one-line UsageError when unknown
        if not (spec.lr > 0):
            raise UsageError(f"The 'lr' value must be positive. Got {spec.lr!r} instead.")
