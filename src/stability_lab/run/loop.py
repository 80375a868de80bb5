"""The engine's one training loop, for both of its modes.

A step of any run is the same four moves, whatever trains:

1. **measure**: the loss and gradient at the current weights, on the step's batch (a
   model with autograd: forward and backward; a cohort of linear models: the full
   objective of every run at once, one product with the data), completed by the
   chain's ``regularize`` stage (the L2 term), measured and recorded; a run whose
   measurement failed (a cohort's non-finite run) stops here;
2. **update**: each gradient of the step (the measured one; a cohort with mini-batches:
   one per batch, in the seed's fixed order) goes through the chain of transforms
   (:mod:`stability_lab.run.transforms`: loss scaling, clipping, the lr schedule, the
   apply step), and its result is applied;
3. **finish**: the step's update metrics are recorded and the run says whether it goes
   on (non-finite weights, too many skipped steps, its last epoch).

The runner of each mode is a *stepper* with those methods:
:class:`stability_lab.run.autograd.SingleRun` (one run of a model with autograd) and
:class:`stability_lab.run.cohort.Cohort` (the batched mode: the runs of a cohort as the
rows of one weight tensor). Each holds its chain in an :class:`Updater`. The task
supplies data, model and loss; the monitors' metrics are declared in
:mod:`stability_lab.metrics`.
"""

from __future__ import annotations

from typing import Any, Iterator, Protocol

from stability_lab.run.transforms import RunChain, Step


class Updater:
    """A run's chain of transforms (:class:`~stability_lab.run.transforms.RunChain`)
    with its state: ``regularize`` completes a gradient, ``update`` turns it into the
    applied step."""

    def __init__(self, chain: RunChain, params: Any) -> None:
        self.chain = chain
        self.regularize_state = chain.regularize.init(params)
        self.state = chain.update.init(params)

    def regularize(self, grads: Any, step: Step) -> Any:
        grads, self.regularize_state = self.chain.regularize.update(
            grads, self.regularize_state, step)
        return grads

    def update(self, grads: Any, step: Step) -> Any:
        out, self.state = self.chain.update.update(grads, self.state, step)
        return out


class Stepper(Protocol):
    updater: Updater

    def measure(self, step: int) -> bool:
        """Loss and gradient at the current weights, recorded; False when no run of it
        goes on."""

    def updates(self, step: int) -> Iterator[tuple[Step, Any]]:
        """The gradients of the step's updates, each with its :class:`Step`."""

    def apply(self, result: Any, step: Step) -> None:
        """Take the chain's result (a cohort's new weights; nothing for the optimizer
        that stepped in place)."""

    def finish_step(self, step: int) -> bool:
        """Record the step's update metrics; False when no run of it goes on."""


def fit(stepper: Stepper, n_steps: int) -> int:
    """Step ``stepper`` at most ``n_steps`` times; returns the steps measured."""
    for k in range(1, n_steps + 1):
        if not stepper.measure(k):
            return k
        for step, grads in stepper.updates(k):
            stepper.apply(stepper.updater.update(grads, step), step)
        if not stepper.finish_step(k):
            return k
    return n_steps
