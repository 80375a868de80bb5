"""The task interface.

A task turns specs into traces. The engine calls, in order:

1. ``validate(spec)``: cheap checks that need no heavy import (raise UsageError).
2. ``prepare(spec)``: load and transform the data a spec sees (raise DataError);
   the engine caches the result per ``data_key(spec)``. A task whose variants (scale,
   precision) are built from the same raw data may also define ``dataset_key(spec)``
   and ``load_dataset(spec)``: the engine then loads each dataset once and calls
   ``prepare(spec, dataset=...)`` for every variant of it.
3. What the engine runs, one of three kinds (``Task.kind``):

   - ``"problem"``: ``problem(spec, prepared)`` returns a :class:`Problem` (model, data,
     loss) that the engine trains in its single mode (:mod:`stability_lab.run.autograd`);
   - ``"cohort"``: a linear model the engine trains many configurations of in lockstep
     with a leading config axis (:mod:`stability_lab.run.cohort`), specs grouped by
     ``cohort_key(spec)``; the task supplies the data (``prepare``) and the model's
     math (objective, initial weights, curvature, optimum);
   - ``"solve"``: ``solve(spec, prepared)`` computes the answer in closed form (least
     squares) and returns its trace; nothing iterates.
4. ``conditioning(prepared)``: float64 facts about the data variant (condition
   numbers) for the report; ``{}`` if the task has none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Hashable

from stability_lab.spec import RunSpec
from stability_lab.trace import Trace

if TYPE_CHECKING:
    import torch

Batch = tuple[Any, Any]


@dataclass
class Problem:
    """What a task that trains with autograd hands the engine: a model factory (called
    under ``torch.manual_seed(spec.seed)``, so matched runs start from the same
    weights), the batch of every step, the loss and an evaluation. The engine
    (:func:`stability_lab.run.autograd.train`) does everything else."""

    model_fn: Callable[[], "torch.nn.Module"]
    batch_at: Callable[[int], Batch]
    n_steps: int
    loss_fn: Callable[[Any, Any], "torch.Tensor"]
    #: (model, forward) -> {"accuracy": ..., "eval_loss": ...}; forward applies the policy
    eval_fn: Callable[["torch.nn.Module", Callable], dict[str, float]] | None = None
    #: model -> extra per-step metrics (read after the forward pass)
    step_metrics: Callable[["torch.nn.Module"], dict[str, float]] | None = None
    optimizer: str = "momentum"
    meta: dict[str, Any] = field(default_factory=dict)


def call_model(model: "torch.nn.Module", inputs: Any) -> Any:
    """Call a model on a batch's inputs: a dict as keywords, a tuple as arguments."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (list, tuple)):
        return model(*inputs)
    return model(inputs)


def check_loss(loss: Any) -> None:
    """A task's loss must be a scalar tensor (one-line error otherwise)."""
    import torch

    from stability_lab.errors import UsageError

    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise UsageError(
            f"The loss must be a scalar tensor; loss_fn returned {shape}. Reduce it, e.g. "
            "with .mean(), inside loss_fn."
        )


class Task:
    name: str = ""
    step_unit: str = "epoch"
    #: "problem", "cohort" or "solve": how the engine runs the task (module docstring)
    kind: str = "problem"

    @property
    def supports_cohort(self) -> bool:
        return self.kind == "cohort"

    def validate(self, spec: RunSpec) -> None:  # pragma: no cover - default is no checks
        return None

    def data_key(self, spec: RunSpec) -> Hashable:
        return (spec.data, spec.target)

    def prepare(self, spec: RunSpec) -> Any:
        raise NotImplementedError

    def cohort_key(self, spec: RunSpec) -> Hashable:
        return spec.run_id

    def problem(self, spec: RunSpec, prepared: Any) -> Problem:  # kind "problem"
        raise NotImplementedError

    def solve(self, spec: RunSpec, prepared: Any) -> Trace:  # kind "solve"
        raise NotImplementedError

    def conditioning(self, prepared: Any) -> dict[str, Any]:
        return {}
