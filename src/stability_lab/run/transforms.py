"""The update of a training step as a chain of small transforms, in optax's style.

A :class:`Transform` is a pair of functions, ``init(params) -> state`` and
``update(grads, state, step) -> (grads, state)``; :func:`chain` composes them into one.
The engine builds the chain of a run from its spec and policy (:func:`for_spec`) and
both of its modes run it:

- the **batched** mode (a cohort of linear-model runs, :mod:`stability_lab.run.cohort`)
  holds the weights of R runs as the rows of one ``(R, p)`` tensor, so every transform
  acts per run (a norm per row, a clipping factor per row, a mask of the runs that take
  the step);
- the **single** mode (a model with autograd, :mod:`stability_lab.run.autograd`) holds one
  run's parameters as a list of tensors, whose gradients the transforms change in
  place.

The two layouts (:class:`Rows`, :class:`Tensors`) give the transforms the few array
operations they need, each written as the arithmetic that mode has always done: a
clipping factor is rounded to the format and multiplied row-wise in the batched mode,
and multiplied as a Python float in the single mode.

:class:`Step` carries what a transform reads (the step number, the unscaled gradient
norm the engine measured once, the loss) and what it reports for the monitors
(``info``: ``param_format``, ``loss_scale``, ``skipped``, ``clip_factor``, ``lr``). A run
that must not take this step (a loss scaler's skip, a run of the cohort that already
stopped) is off in ``Step.active``; the last transform applies the update to the active
runs only.

A run's chain has two stages (:class:`RunChain`, built by :func:`for_spec`):
``regularize`` completes the objective's gradient, whose norm the engine then measures
and records; ``update`` turns it into the applied step. In order:

============================  ============================================================
``add_l2(lam)``               (regularize) the L2 penalty's gradient ``lam * w`` (weights,
                              not biases)
``param_format(name, cast)``  (single mode) the precision policy's parameter format:
                              ``init`` casts the parameters to it (fp32 master weights
                              under a mixed policy); the batched mode's weights are
                              created in the run's format
``dynamic_loss_scale(s)``     unscale by the loss scale; skip a step whose gradient is
                              not finite and back the scale off (mixed-fp16 policies)
``clip_by_global_norm(c)``    scale the gradient so its global 2-norm is at most ``c``
``scale_by_schedule(lr, w)``  the step ``-lr_t g`` with ``lr_t`` the lr schedule: linear
                              warm-up over ``w`` steps, then constant
``apply_sgd()`` /             apply the step to the weights, in their format (the torch
``apply_optimizer(opt)``      optimizer: SGD, momentum or Adam, at ``lr_t``)
============================  ============================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np


class Transform(NamedTuple):
    """One step of the update: ``init(params) -> state``, ``update(grads, state, step)
    -> (grads, state)``."""

    name: str
    init: Callable[[Any], Any]
    update: Callable[[Any, Any, "Step"], tuple[Any, Any]]


@dataclass
class Step:
    """The step a chain is updating: what transforms read, and what they report."""

    #: 1-based step (epochs count as steps in the batched mode's full-batch runs)
    index: int
    #: the layout of the parameters and gradients (:class:`Rows` or :class:`Tensors`)
    layout: "Rows | Tensors"
    #: the parameters the update applies to (the (R, p) tensor, or the list of tensors)
    params: Any
    #: per run, the global 2-norm of the (unscaled) gradient, as the engine measured it
    grad_norm: np.ndarray
    #: per run, whether it takes this step
    active: np.ndarray
    #: the step's loss (one run; NaN when not known)
    loss: float = math.nan
    #: the factor the gradient is still multiplied by (the loss scale, until unscaled)
    grad_scale: float = 1.0
    #: what transforms report for the monitors, by metric name
    info: dict[str, Any] = field(default_factory=dict)


def chain(*transforms: Transform) -> Transform:
    """The transforms applied in order; the state is the tuple of their states."""

    def init(params):
        return tuple(t.init(params) for t in transforms)

    def update(grads, state, step: Step):
        new = []
        for t, s in zip(transforms, state):
            grads, s = t.update(grads, s, step)
            new.append(s)
        return grads, tuple(new)

    return Transform("chain(" + ", ".join(t.name for t in transforms) + ")", init, update)


def global_norm(torch, tensors) -> float:
    """The 2-norm of all the tensors together, accumulated in float64 (0 for none)."""
    if not tensors:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(
        torch._foreach_norm(tensors, 2, dtype=torch.float64))))


# -- layouts ------------------------------------------------------------------------------
class Rows:
    """The batched mode: the weights of R runs are the rows of one (R, p) tensor in the
    run's dtype; the last ``unpenalized`` columns (the intercept) take no L2 penalty."""

    def __init__(self, torch, dtype, p: int, unpenalized: int = 1) -> None:
        self.torch, self.dtype = torch, dtype
        self.penal = torch.ones(1, p, dtype=dtype)
        if unpenalized:
            self.penal[0, -unpenalized:] = 0

    def column(self, values: Sequence[float]):
        """Per-run values as an (R, 1) tensor of the dtype (rounded from float64)."""
        t = self.torch
        return t.tensor(list(values), dtype=t.float64).to(self.dtype).reshape(-1, 1)

    def norms(self, grads) -> np.ndarray:
        return grads.double().norm(dim=1).numpy()

    def add_scaled_params(self, grads, params, coef):
        return grads + coef * self.penal * params

    def scale(self, grads, factors: np.ndarray):
        """Each run's gradient times its factor, rounded to the dtype first; the
        product is skipped when no factor is below 1 (so nothing is rounded)."""
        if not np.any(factors < 1):
            return grads
        return grads * self.torch.from_numpy(factors).to(self.dtype).reshape(-1, 1)


class Tensors:
    """The single mode: one run's parameters as a list of tensors, whose gradients are
    changed in place (``torch._foreach_mul_``) by Python-float factors."""

    def __init__(self, torch) -> None:
        self.torch = torch

    def norms(self, grads) -> np.ndarray:
        return np.array([global_norm(self.torch, grads)])

    def add_scaled_params(self, grads, params, coef):
        with self.torch.no_grad():
            for g, p in zip(grads, params):
                if p.ndim > 1:  # weights, not biases or norm gains
                    g.add_(p.detach(), alpha=float(coef))
        return grads

    def scale(self, grads, factors: np.ndarray):
        if float(factors[0]) != 1.0:
            with self.torch.no_grad():
                self.torch._foreach_mul_(grads, float(factors[0]))
        return grads


# -- the transforms -------------------------------------------------------------------------
def _stateless(name: str, fn: Callable[[Any, "Step"], Any]) -> Transform:
    return Transform(name, lambda params: None, lambda g, s, step: (fn(g, step), s))


def param_format(name: str, cast: Callable[[Any], None]) -> Transform:
    """The precision policy's parameter format, held by the chain. ``init`` casts the
    parameters to it with ``cast`` (the single mode: the model to float32 under a
    mixed policy, whose forward pass computes in the narrow format while the optimizer
    steps float32 master weights; to the policy's own format otherwise); every update
    is then applied in that format by the apply step. Reports ``param_format``. (The
    batched mode creates its weights in the run's format, the dtype of :class:`Rows`.)"""

    def init(params):
        cast(params)
        return name

    def update(grads, state, step: Step):
        step.info["param_format"] = state
        return grads, state

    return Transform("param_format", init, update)


def add_l2(lam: Sequence[float]) -> Transform:
    """The gradient of (lambda/2)||w||^2 added per run (weights only; times
    ``Step.grad_scale`` on a still-scaled gradient). In the batched mode every run gets
    ``g + lambda_r w_r`` with lambda rounded to the format (``g + 0 w = g`` for finite
    weights); a single run with lambda 0 is left alone."""
    lam = list(lam)

    def init(params):
        return None  # the batched mode's (R, 1) lambdas, made on the first step

    def update(grads, state, step: Step):
        layout = step.layout
        if isinstance(layout, Rows):
            coef = state = layout.column(lam) if state is None else state
        elif lam[0] == 0:
            return grads, state
        else:
            coef = lam[0] * step.grad_scale
        return layout.add_scaled_params(grads, step.params, coef), state

    return Transform("add_l2", init, update)


def dynamic_loss_scale(scaler) -> Transform:
    """Loss scaling's second half (the engine multiplied the loss by ``scaler.scale``
    before the backward pass): a step whose scaled gradient or loss is not finite is
    skipped (``Step.active`` off) and the scale backed off; otherwise the gradient is
    divided by the scale the backward used. Reports ``loss_scale`` and ``skipped``.
    ``Step.grad_norm`` is the unscaled norm, measured once by the engine."""

    def init(params):
        return scaler

    def update(grads, state, step: Step):
        scale = state.scale
        bad = not (np.all(np.isfinite(step.grad_norm)) and math.isfinite(step.loss))
        skipped = state.update(bad)
        step.info["loss_scale"] = scale
        step.info["skipped"] = skipped
        if skipped:
            step.active = np.zeros_like(step.active)
            return grads, state
        return step.layout.scale(grads, np.array([1.0 / scale])) if scale != 1.0 \
            else grads, state

    return Transform("dynamic_loss_scale", init, update)


def clip_by_global_norm(clip: Sequence[float | None]) -> Transform:
    """Per run, scale the gradient by ``clip / ||g||`` when its global norm is above
    ``clip`` (None: no clipping). A non-finite norm is not clipped: clipping cannot make
    an overflowed gradient finite, and the run's failure must show. Reports
    ``clip_factor`` per run."""
    limit = np.array([math.inf if c is None else float(c) for c in clip])

    def update(grads, state, step: Step):
        gn = step.grad_norm
        with np.errstate(divide="ignore", invalid="ignore"):
            factors = np.where(np.isfinite(gn) & (gn > limit), limit / gn, 1.0)
        step.info["clip_factor"] = factors
        if not step.active.any():
            return grads, state
        return step.layout.scale(grads, factors), state

    return Transform("clip_by_global_norm", lambda params: None, update)


def lr_at(lr: float, warmup: int, step: int) -> float:
    """The schedule: ``lr * step / warmup`` over the first ``warmup`` steps (1-based),
    then ``lr``."""
    if warmup and step < warmup:
        return lr * step / warmup
    return lr


def scale_by_schedule(lr: Sequence[float], warmup: Sequence[int]) -> Transform:
    """The update ``lr_t * g`` per run (the engine subtracts it), with ``lr_t`` from
    :func:`lr_at`. In the batched mode the per-run lr is rounded to the format (the
    weights' dtype) before the product, as a tensor of lrs would be (kept while the rates
    stay the same). Reports ``lr``, and in the batched mode ``lr_rows``, that tensor."""
    lr, warmup = list(lr), [int(w or 0) for w in warmup]

    def update(grads, state, step: Step):
        rates = tuple(lr_at(a, w, step.index) for a, w in zip(lr, warmup))
        step.info["lr"] = np.array(rates)
        if isinstance(step.layout, Rows):
            if state is None or state[0] != rates:
                state = (rates, step.layout.column(rates))
            step.info["lr_rows"] = state[1]
            return state[1] * grads, state
        return grads, state  # the single mode's optimizer takes lr_t (apply_optimizer)

    return Transform("scale_by_schedule", lambda params: None, update)


def apply_sgd() -> Transform:
    """The batched mode's last transform: ``W - update`` for the active runs, ``W``
    for the others. Its output is the new weights tensor."""

    def update(updates, state, step: Step):
        torch = step.layout.torch
        W = step.params
        Wn = W - updates
        mask = torch.from_numpy(np.asarray(step.active)).reshape(-1, 1)
        return torch.where(mask, Wn, W), state

    return Transform("apply_sgd", lambda params: None, update)


def apply_optimizer(optimizer, before_step: Callable[[], None] | None = None) -> Transform:
    """The single mode's last transform: the torch optimizer (SGD, momentum or Adam)
    steps the parameters in place from their ``.grad``, at the schedule's lr, unless
    the step is skipped; ``before_step`` runs just before (the engine's snapshot of the
    weights, for the update's norm). Its state is the optimizer's."""

    def update(grads, state, step: Step):
        if not step.active.any():
            return grads, state
        rate = step.info.get("lr")
        if rate is not None:
            for group in state.param_groups:
                group["lr"] = float(rate[0])
        if before_step is not None:
            before_step()
        state.step()
        return grads, state

    return Transform("apply_optimizer", lambda params: optimizer, update)


class RunChain(NamedTuple):
    """A run's update in two stages: ``regularize`` completes the objective's gradient
    (the L2 term), whose norm the engine then measures and the monitors record;
    ``update`` turns it into the step and applies it."""

    regularize: Transform
    update: Transform


def for_spec(spec, *, batched_specs: Sequence[Any] | None = None, scaler=None,
             optimizer=None, before_step: Callable[[], None] | None = None,
             formats: tuple[str, Callable[[Any], None]] | None = None) -> RunChain:
    """The chain of a run: the spec's L2; then the policy's parameter format
    (``formats``: its name and the cast, single mode), its loss scaling (``scaler``),
    the spec's clipping and lr schedule, and the apply step of the mode: ``apply_sgd``
    for a cohort (``batched_specs``: its specs, one row each), ``apply_optimizer`` for
    one run with a torch optimizer."""
    specs = list(batched_specs) if batched_specs is not None else [spec]
    parts = [] if formats is None else [param_format(*formats)]
    if scaler is not None:
        parts.append(dynamic_loss_scale(scaler))
    parts.append(clip_by_global_norm([s.clip for s in specs]))
    parts.append(scale_by_schedule([s.lr for s in specs],
                                   [s.param("warmup") or 0 for s in specs]))
    parts.append(apply_sgd() if batched_specs is not None
                 else apply_optimizer(optimizer, before_step))
    return RunChain(add_l2([s.lam for s in specs]), chain(*parts))
