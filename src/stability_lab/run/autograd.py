"""The engine's single mode: one run of a model with autograd (the deep-net tasks and a
user's own model), one spec in, one trace out, stepped by the engine's one loop
(:func:`stability_lab.run.loop.fit`).

A :class:`~stability_lab.tasks.base.Problem` is what a task hands over: a model factory
(called under ``torch.manual_seed(spec.seed)``, so matched runs start from the same
weights), the batch of every step (the same batches for every policy), the loss, and an
evaluation. The run applies the spec's precision policy (:mod:`.policies`: the
parameters' format, fp32 master weights, emulated compute) and runs each step's update
as the engine's chain of transforms (:mod:`stability_lab.run.transforms`: L2, dynamic
loss scaling with its skipping of non-finite steps, clipping, the lr schedule, then the
optimizer), and records per step:

``loss`` (the step's batch loss, unscaled), ``grad_norm`` (global 2-norm of the
unscaled gradients), ``update_norm``, ``weight_norm``, ``update_ratio``,
``nonfinite_weights``, ``nonfinite_grads`` (non-finite gradient values that reached
the optimizer: a step the loss scaler skipped counts 0 here and its count goes to
``overflowed_grads``), ``max_abs_logit`` (absmax of the model output), ``loss_scale``
and ``skipped`` (mixed-fp16), ``grad_underflow_frac`` (of the gradient values, activation
and parameter gradients, that were non-zero before a rounding to the gradient format
(emulated GEMM outputs, autocast casts), the fraction flushed to zero; NaN where the
arithmetic is native and the lab cannot see the rounding), ``step_time`` (seconds),
and any task metrics.

The run stops after the first step that leaves a non-finite weight, or after
``MAX_CONSECUTIVE_SKIPS`` steps in a row skipped by the loss scaler.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import numpy as np
import torch

from stability_lab.errors import UsageError
from stability_lab.tasks.base import Problem, call_model, check_loss
from stability_lab.spec import RunSpec
from stability_lab.trace import Trace, environment
from stability_lab.precision import policies as P
from stability_lab.run.attribution import ROOT, Attributor, find_creators, first_tensor
from stability_lab.run.attribution.summary import attribution_summary
from stability_lab.run.loop import Updater, fit
from stability_lab.metrics import LOOP, metric_names
from stability_lab.run.scaler import DynamicLossScaler
from stability_lab.run.transforms import Step, Tensors, for_spec, global_norm

MAX_CONSECUTIVE_SKIPS = 30
MAX_REPLAYS = 5

def policy_of(spec: RunSpec) -> P.Policy:
    """The spec's policy; without one, the pure policy of its ``precision``."""
    return P.get_policy(spec.policy or spec.precision)


def make_optimizer(name: str, params: list[torch.nn.Parameter], lr: float):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise UsageError(f"Unknown optimizer {name!r}; expected one of: sgd, momentum, adam.")


def threads() -> int:
    """Intra-op threads for a run: ``STABILITY_LAB_TORCH_THREADS``, default 1.

    The lab's models are small: one thread is as fast (and, on a shared machine, far
    faster than OpenMP threads that spin-wait for busy cores), and fixes the summation
    order, so the numbers do not depend on the machine's core count.
    """
    import os

    text = os.environ.get("STABILITY_LAB_TORCH_THREADS", "1")
    try:
        return max(1, int(text))
    except ValueError:
        raise UsageError(f"STABILITY_LAB_TORCH_THREADS must be a positive integer. Got {text!r}.") \
            from None


def train(spec: RunSpec, problem: Problem) -> Trace:
    n_threads = threads()
    saved = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        run = SingleRun(spec, problem)
        fit(run, problem.n_steps)
        return run.trace()
    finally:
        torch.set_num_threads(saved)
        while _LIVE:  # a run that raised mid-step leaves its global hooks installed
            _LIVE.pop().abort()
        P.RECORDER = None
        P.FP8 = None


# the attributor of the run in progress (train removes its hooks however the run ends)
_LIVE: list[Attributor] = []


class SingleRun:
    """One autograd run as the engine's loop steps it: :meth:`measure` runs the step's
    forward and backward passes on its batch and measures the gradient, :meth:`updates`
    hands that gradient to the chain of transforms (skip, unscale, clip, schedule, the
    optimizer's step), :meth:`finish_step` records the step's row of metrics and says
    whether the run goes on."""

    def __init__(self, spec: RunSpec, problem: Problem) -> None:
        self.spec, self.problem = spec, problem
        self.policy = policy = policy_of(spec)
        torch.manual_seed(int(spec.seed))
        self.model = model = problem.model_fn()
        self.params = params = [p for p in model.parameters() if p.requires_grad]
        self.opt = opt = make_optimizer(spec.param("optimizer") or problem.optimizer, params,
                                        spec.lr)
        self.scaler = DynamicLossScaler() if policy.loss_scaling else None

        def cast(params) -> None:  # in place: the optimizer keeps the same parameters
            if policy.master:
                model.float()
            else:
                model.to(policy.dtype)

        self.updater = Updater(for_spec(spec, scaler=self.scaler, optimizer=opt,
                                        before_step=self._snapshot,
                                        formats=(policy.param_dtype, cast)), params)
        every = int(spec.param("attribute_every") or 0)
        self.attributor = Attributor(model, policy, every) if every > 0 else None
        if self.attributor is not None:
            _LIVE.append(self.attributor)
        mode = P.PolicyMode(policy) if policy.emulated else None
        P.FP8 = P.Fp8State() if policy.compute == "fp8" else None
        P.UNDERFLOW.reset()
        self.policy_ctx = mode if mode is not None else contextlib.nullcontext()
        self.before = [torch.empty_like(p) for p in params]  # the weights before each update
        self.layout = Tensors(torch)
        self.attributing = False
        self.rec: dict[str, list[float]] = {k: [] for k in metric_names(LOOP)}
        self.extra: dict[str, list[float]] = {}
        self.creators: list[dict[str, Any]] = []
        self.replays = 0
        self.consecutive_skips = 0
        self.stopped: str | None = None
        self.n_bad_w = 0
        self.t_run = time.perf_counter()
        model.train()

    def forward(self, inputs):
        # floating inputs to the parameter dtype (float32 for the master-weight policies)
        inputs = P.cast_inputs(inputs, self.policy)
        with self.policy_ctx:
            return call_model(self.model, inputs)

    def loss_of(self, outputs, targets):
        with self.policy_ctx:
            return self.problem.loss_fn(outputs, targets)

    def _snapshot(self) -> None:  # just before the optimizer's step
        with torch.no_grad():
            torch._foreach_copy_(self.before, self.params)
        if self.attributing:
            self.attributor.before_update()

    # -- the loop's protocol ---------------------------------------------------------------
    def measure(self, step: int) -> bool:
        attributor, scaler = self.attributor, self.scaler
        inputs, targets = self.problem.batch_at(step - 1)
        self.t0 = time.perf_counter()
        fp8_snap = P.FP8.snapshot() if P.FP8 is not None else None
        if P.FP8 is not None:
            P.FP8.begin_step()
        P.UNDERFLOW.reset()
        self.attributing = attributor is not None and attributor.wants(step)
        if self.attributing:
            attributor.begin(step)
        self.opt.zero_grad(set_to_none=True)
        outputs = self.forward(inputs)
        loss = self.loss_of(outputs, targets)
        if self.attributing:
            attributor.end_forward()
        if step == 1:
            check_loss(loss)
        self.scale = scale = scaler.scale if scaler is not None else 1.0
        (loss.float() * scale if scaler is not None else loss).backward()
        out_t = outputs if isinstance(outputs, torch.Tensor) else first_tensor(outputs)
        with torch.no_grad():
            having = [p for p in self.params if p.grad is not None]
            grads = [p.grad for p in having]
            info = Step(step, self.layout, having, np.array([math.nan]), np.array([True]),
                        grad_scale=scale)
            self.grads = grads = self.updater.regularize(grads, info)
            gnorm_scaled = global_norm(torch, grads)
            self.loss_v = loss_v = float(loss.detach().double())
            self.logit_max = float(out_t.detach().abs().max().double()) \
                if out_t is not None and out_t.numel() else math.nan
        self.grads_ok = grads_ok = math.isfinite(gnorm_scaled)
        self.n_bad_grads = 0 if grads_ok else int(
            sum(int((~torch.isfinite(g)).sum()) for g in grads))
        if (not grads_ok or not math.isfinite(loss_v)) and self.replays < MAX_REPLAYS:
            self.replays += 1
            if self.attributing:
                attributor.abort()
                self.attributing = False
            self.creators.extend(_replay(self.model, self.forward, self.loss_of, inputs,
                                         targets, scale, scaler, fp8_snap, step))
        self.underflow = (P.UNDERFLOW.flushed / P.UNDERFLOW.total if P.UNDERFLOW.total
                          else (math.nan if not self.policy.emulated else 0.0))
        self.gnorm = gnorm_scaled / scale
        info.grad_norm, info.loss = np.array([self.gnorm]), loss_v
        self.info = info
        return True  # a run with autograd takes its step whatever it measured

    def updates(self, step: int):
        yield self.info, self.grads

    def apply(self, result, info: Step) -> None:
        """The optimizer stepped the parameters in place (the chain's last transform)."""

    def finish_step(self, step: int) -> bool:
        rec, info, scaler = self.rec, self.info, self.scaler
        skipped = bool(info.info.get("skipped", False))
        if scaler is not None:
            self.consecutive_skips = self.consecutive_skips + 1 if skipped else 0
        if info.active[0]:
            with torch.no_grad():
                torch._foreach_sub_(self.before, self.params)  # before - after, the update
                un = global_norm(torch, self.before)
        else:
            un = 0.0
        with torch.no_grad():
            wn = global_norm(torch, [p.detach() for p in self.params])
            self.n_bad_w = n_bad_w = 0 if math.isfinite(wn) else int(
                sum(int((~torch.isfinite(p)).sum()) for p in self.params))
        if self.attributing:
            self.attributor.end_step(grad_scale=self.scale)
        dt = time.perf_counter() - self.t0
        if self.problem.step_metrics is not None:
            for k, v in self.problem.step_metrics(self.model).items():
                self.extra.setdefault(k, [math.nan] * (step - 1)).append(float(v))
        if n_bad_w and self.grads_ok and not skipped and math.isfinite(self.loss_v):
            owner = _owner_of_nonfinite(self.model)
            self.creators.append({"step": step, "pass": "update", "module": owner,
                                  "kind": "created", "detail": "finite gradients, the "
                                  "optimizer update made a weight non-finite",
                                  "type": "optimizer"})
        rec["loss"].append(self.loss_v)
        rec["grad_norm"].append(self.gnorm)
        rec["update_norm"].append(un)
        rec["weight_norm"].append(wn)
        rec["update_ratio"].append(un / wn if wn > 0 else math.nan)
        rec["nonfinite_weights"].append(n_bad_w)
        rec["nonfinite_grads"].append(0 if skipped else self.n_bad_grads)
        rec["overflowed_grads"].append(self.n_bad_grads)
        rec["max_abs_logit"].append(self.logit_max)
        rec["loss_scale"].append(self.scale if scaler is not None else math.nan)
        rec["skipped"].append(1.0 if skipped else 0.0)
        rec["grad_underflow_frac"].append(self.underflow)
        rec["step_time"].append(dt)
        if n_bad_w:
            self.stopped = f"non-finite weights after step {step}"
            return False
        if self.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
            self.stopped = (f"{self.consecutive_skips} consecutive steps skipped by the loss "
                            f"scaler (scale {scaler.scale:.3g})")
            return False
        return True

    # -- the trace ----------------------------------------------------------------------
    def trace(self) -> Trace:
        spec, problem, policy, model = self.spec, self.problem, self.policy, self.model
        rec, extra, scaler, attributor = self.rec, self.extra, self.scaler, self.attributor
        creators, stopped, n_bad_w, forward = (self.creators, self.stopped, self.n_bad_w,
                                               self.forward)
        run_time = time.perf_counter() - self.t_run

        metrics = {k: np.asarray(v, dtype=np.float64) for k, v in rec.items()}
        n = len(rec["loss"])
        for k, v in extra.items():
            metrics[k] = np.asarray((v + [math.nan] * n)[:n], dtype=np.float64)
        if scaler is None:
            del metrics["loss_scale"]
        end: dict[str, Any] = {}
        if problem.eval_fn is not None and n and n_bad_w == 0:
            model.eval()
            with torch.no_grad():
                end = {k: float(v) for k, v in problem.eval_fn(model, forward).items()}
        meta = environment()
        meta.update({"policy": policy.name, "semantics": policy.semantics(), **problem.meta})
        trace = Trace(spec=spec, metrics=metrics, probes={"end": end}, meta=meta, step_unit="step")
        steady = np.asarray(rec["step_time"][1:] or rec["step_time"], dtype=np.float64)
        trace.extras.update({
            "policy": policy.name,
            "semantics": policy.semantics(),
            "accuracy": end.get("accuracy"),
            "eval_loss": end.get("eval_loss"),
            "step_time_median_s": float(np.median(steady)) if steady.size else math.nan,
            "run_time_s": run_time,
            "stopped": stopped,
            "steps_run": n,
            "steps_planned": problem.n_steps,
            # name: the format of the parameters the optimizer updates (the signatures judge
            # update stagnation and weight headroom in it: float32 under fp32 master weights)
            "format": {"name": policy.param_dtype,
                       "activations": policy.act_format.name, "gradients": policy.grad_format.name,
                       "outputs": policy.output,
                       "max": policy.act_format.max, "tiny": policy.act_format.tiny},
        })
        classes = problem.meta.get("classes")
        if classes:
            # a classifier that learned nothing sits at log(C) with accuracy 1/C
            trace.extras["chance_loss"] = math.log(int(classes))
            trace.extras["chance_accuracy"] = 1.0 / int(classes)
        if scaler is not None:
            used = metrics["loss_scale"]  # empty for a run of zero steps
            trace.extras["loss_scaler"] = {"skipped_steps": scaler.state.skipped,
                                           "final_scale": scaler.scale,
                                           "min_scale": float(np.nanmin(used)) if n else math.nan,
                                           "max_scale": float(np.nanmax(used)) if n else math.nan}
        if P.FP8 is not None:
            trace.extras["fp8"] = {"saturated_values": P.FP8.saturated,
                                   "amax_history": P.AMAX_HISTORY, "margin": P.FP8_MARGIN}
        trace.extras["attribution"] = attribution_summary(attributor, creators)
        return trace


def _owner_of_nonfinite(model: torch.nn.Module) -> str:
    for name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            if not bool(torch.isfinite(p).all()):
                return name or ROOT
    return ROOT


def _replay(model, forward, loss_of, inputs, targets, scale, scaler, fp8_snap,
            step) -> list[dict[str, Any]]:
    """Re-run the step with full checks (weights are not updated yet; the run is
    deterministic) and return the creator events; the step's gradients are restored."""
    params = [p for p in model.parameters()]
    saved = [None if p.grad is None else p.grad.clone() for p in params]
    live_snap = P.FP8.snapshot() if P.FP8 is not None else None
    if P.FP8 is not None:
        P.FP8.restore(fp8_snap)
        P.FP8.begin_step()
    under = (P.UNDERFLOW.flushed, P.UNDERFLOW.total)

    def forward_backward(output_hook):
        for p in params:
            p.grad = None
        outputs = forward(inputs)
        loss = loss_of(outputs, targets)
        output_hook(outputs, loss)
        (loss.float() * scale if scaler is not None else loss).backward()

    try:
        events = find_creators(model, forward_backward, step)
    except RuntimeError as exc:  # e.g. in-place ops that full backward hooks refuse
        events = [{"step": step, "pass": "replay", "module": ROOT, "kind": "unknown",
                   "detail": f"replay with checks failed: {str(exc).splitlines()[0][:160]}",
                   "type": ""}]
    finally:
        for p, g in zip(params, saved):
            p.grad = g
        if P.FP8 is not None:
            P.FP8.restore(live_snap)
        P.UNDERFLOW.flushed, P.UNDERFLOW.total = under
    return events


