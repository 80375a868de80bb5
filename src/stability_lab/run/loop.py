"""The engine's training loop for models with autograd (the deep-net tasks and a
user's own model): one spec in, one trace out.

A :class:`~stability_lab.tasks.base.Problem` is what a task hands over: a model factory
(called under ``torch.manual_seed(spec.seed)``, so matched runs start from the same
weights), the batch of every step (the same batches for every policy), the loss, and an
evaluation. The loop applies the spec's precision policy (:mod:`.policies`: the
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
from stability_lab.formatting import round_sig
from stability_lab.spec import RunSpec
from stability_lab.trace import Trace, environment
from stability_lab.precision import policies as P
from stability_lab.run.attribution import (ROOT, Attributor, find_creators, first_tensor,
                                          headroom_projections)
from stability_lab.metrics import LOOP, metric_names
from stability_lab.run.scaler import DynamicLossScaler
from stability_lab.run.transforms import Step, Tensors, for_spec

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
        return _train(spec, problem)
    finally:
        torch.set_num_threads(saved)
        while _LIVE:  # a run that raised mid-step leaves its global hooks installed
            _LIVE.pop().abort()
        P.RECORDER = None
        P.FP8 = None


# the attributor of the run in progress (train removes its hooks however the run ends)
_LIVE: list[Attributor] = []


def _train(spec: RunSpec, problem: Problem) -> Trace:
    policy = policy_of(spec)
    torch.manual_seed(int(spec.seed))
    model = problem.model_fn()
    if policy.master:
        model = model.float()
    else:
        model = model.to(policy.dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(spec.param("optimizer") or problem.optimizer, params, spec.lr)
    scaler = DynamicLossScaler() if policy.loss_scaling else None
    every = int(spec.param("attribute_every") or 0)
    attributor = Attributor(model, policy, every) if every > 0 else None
    if attributor is not None:
        _LIVE.append(attributor)
    mode = P.PolicyMode(policy) if policy.emulated else None
    P.FP8 = P.Fp8State() if policy.compute == "fp8" else None
    P.UNDERFLOW.reset()

    policy_ctx = mode if mode is not None else contextlib.nullcontext()

    def forward(inputs):
        # floating inputs to the parameter dtype (float32 for the master-weight policies)
        inputs = P.cast_inputs(inputs, policy)
        with policy_ctx:
            return call_model(model, inputs)

    def loss_of(outputs, targets):
        with policy_ctx:
            return problem.loss_fn(outputs, targets)

    before = [torch.empty_like(p) for p in params]  # the weights before each update

    def snapshot():  # just before the optimizer's step
        with torch.no_grad():
            torch._foreach_copy_(before, params)
        if attributing:
            attributor.before_update()

    layout = Tensors(torch)
    steps = for_spec(spec, scaler=scaler, optimizer=opt, before_step=snapshot)
    reg_state = steps.regularize.init(params)
    state = steps.update.init(params)
    attributing = False
    names = metric_names(LOOP)
    rec: dict[str, list[float]] = {k: [] for k in names}
    extra: dict[str, list[float]] = {}
    creators: list[dict[str, Any]] = []
    replays = 0
    consecutive_skips = 0
    stopped = None
    t_run = time.perf_counter()
    model.train()
    for step in range(1, problem.n_steps + 1):
        inputs, targets = problem.batch_at(step - 1)
        t0 = time.perf_counter()
        fp8_snap = P.FP8.snapshot() if P.FP8 is not None else None
        if P.FP8 is not None:
            P.FP8.begin_step()
        P.UNDERFLOW.reset()
        attributing = attributor is not None and attributor.wants(step)
        if attributing:
            attributor.begin(step)
        opt.zero_grad(set_to_none=True)
        outputs = forward(inputs)
        loss = loss_of(outputs, targets)
        if attributing:
            attributor.end_forward()
        if step == 1:
            check_loss(loss)
        scale = scaler.scale if scaler is not None else 1.0
        (loss.float() * scale if scaler is not None else loss).backward()
        out_t = outputs if isinstance(outputs, torch.Tensor) else first_tensor(outputs)
        with torch.no_grad():
            having = [p for p in params if p.grad is not None]
            grads = [p.grad for p in having]
            info = Step(step, layout, having, np.array([math.nan]), np.array([True]),
                        grad_scale=scale)
            grads = steps.regularize.update(grads, reg_state, info)[0]
            gnorm_scaled = _norm(grads)
            loss_v = float(loss.detach().double())
            logit_max = float(out_t.detach().abs().max().double()) if out_t is not None \
                and out_t.numel() else math.nan
        grads_ok = math.isfinite(gnorm_scaled)
        n_bad_grads = 0 if grads_ok else int(sum(int((~torch.isfinite(g)).sum()) for g in grads))
        if (not grads_ok or not math.isfinite(loss_v)) and replays < MAX_REPLAYS:
            replays += 1
            if attributing:
                attributor.abort()
                attributing = False
            creators.extend(_replay(model, forward, loss_of, inputs, targets, scale, scaler,
                                    fp8_snap, step))
        underflow = (P.UNDERFLOW.flushed / P.UNDERFLOW.total if P.UNDERFLOW.total
                     else (math.nan if not policy.emulated else 0.0))
        gnorm = gnorm_scaled / scale
        info.grad_norm, info.loss = np.array([gnorm]), loss_v
        _, state = steps.update.update(grads, state, info)  # skips, unscales, clips, steps
        skipped = bool(info.info.get("skipped", False))
        if scaler is not None:
            consecutive_skips = consecutive_skips + 1 if skipped else 0
        if info.active[0]:
            with torch.no_grad():
                torch._foreach_sub_(before, params)  # before - after: the update, negated
                un = _norm(before)
        else:
            un = 0.0
        with torch.no_grad():
            wn = _norm([p.detach() for p in params])
            n_bad_w = 0 if math.isfinite(wn) else int(
                sum(int((~torch.isfinite(p)).sum()) for p in params))
        if attributing:
            attributor.end_step(grad_scale=scale)
        dt = time.perf_counter() - t0
        if problem.step_metrics is not None:
            for k, v in problem.step_metrics(model).items():
                extra.setdefault(k, [math.nan] * (step - 1)).append(float(v))
        if n_bad_w and grads_ok and not skipped and math.isfinite(loss_v):
            owner = _owner_of_nonfinite(model)
            creators.append({"step": step, "pass": "update", "module": owner, "kind": "created",
                             "detail": "finite gradients, the optimizer update made a weight "
                                       "non-finite", "type": "optimizer"})
        rec["loss"].append(loss_v)
        rec["grad_norm"].append(gnorm)
        rec["update_norm"].append(un)
        rec["weight_norm"].append(wn)
        rec["update_ratio"].append(un / wn if wn > 0 else math.nan)
        rec["nonfinite_weights"].append(n_bad_w)
        rec["nonfinite_grads"].append(0 if skipped else n_bad_grads)
        rec["overflowed_grads"].append(n_bad_grads)
        rec["max_abs_logit"].append(logit_max)
        rec["loss_scale"].append(scale if scaler is not None else math.nan)
        rec["skipped"].append(1.0 if skipped else 0.0)
        rec["grad_underflow_frac"].append(underflow)
        rec["step_time"].append(dt)
        if n_bad_w:
            stopped = f"non-finite weights after step {step}"
            break
        if consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
            stopped = (f"{consecutive_skips} consecutive steps skipped by the loss scaler "
                       f"(scale {scaler.scale:.3g})")
            break
    run_time = time.perf_counter() - t_run

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


def _norm(tensors: list[torch.Tensor]) -> float:
    if not tensors:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(
        torch._foreach_norm(tensors, 2, dtype=torch.float64))))


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


def _compact(values: np.ndarray, digits: int = 4) -> list[float | None]:
    out = []
    for v in values.tolist():
        out.append(round_sig(v, digits) if math.isfinite(v) else
                   (None if math.isnan(v) else v))
    return out


SERIES_KEYS = ("act_absmax", "act_headroom", "grad_absmax", "grad_headroom", "grad_norm",
               "update_ratio", "dead_frac")
MAX_SERIES_POINTS = 100


def attribution_summary(attributor: Attributor | None,
                        creators: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON-able attribution of a run: per-module summaries, creators, projections."""
    created = [e for e in creators if e["kind"] == "created"]
    out: dict[str, Any] = {"enabled": attributor is not None,
                           "every": attributor.every if attributor else 0,
                           "creators": created,
                           "passed": [e for e in creators if e["kind"] == "passed"][:20],
                           "events": len(creators)}
    if created:
        first = created[0]
        out["first_creator"] = {k: first[k] for k in ("step", "pass", "module", "detail")}
    if attributor is None or not attributor.steps:
        return out
    arrays = attributor.arrays()
    modules: dict[str, Any] = {}
    for name in attributor.order or list(arrays):
        if name in modules or name not in arrays:
            continue
        ser = arrays[name]
        d: dict[str, Any] = {"type": attributor.kinds.get(name, "")}

        def agg(key, how, ser=ser):
            v = ser.get(key)
            if v is None:
                return None
            f = v[np.isfinite(v)]
            if key.endswith("headroom") and v.size and np.isneginf(v).any():
                return -math.inf
            return float(how(f)) if f.size else None

        d["act_absmax_max"] = agg("act_absmax", np.max)
        d["act_headroom_min"] = agg("act_headroom", np.min)
        d["act_below_normal_max"] = agg("act_below_normal", np.max)
        d["act_zero_max"] = agg("act_zero", np.max)
        d["act_flush_max"] = agg("act_flush", np.max)
        d["grad_absmax_max"] = agg("grad_absmax", np.max)
        d["grad_headroom_min"] = agg("grad_headroom", np.min)
        d["grad_below_normal_max"] = agg("grad_below_normal", np.max)
        d["grad_flush_max"] = agg("grad_flush", np.max)
        d["grad_norm_last"] = agg("grad_norm", lambda f: f[-1])
        d["grad_norm_max"] = agg("grad_norm", np.max)
        d["update_ratio_median"] = agg("update_ratio", np.median)
        d["dead_frac_last"] = agg("dead_frac", lambda f: f[-1])
        modules[name] = {k: v for k, v in d.items() if v is not None}
    stride = max(1, math.ceil(len(attributor.steps) / MAX_SERIES_POINTS))
    series = {"steps": attributor.steps[::stride]}
    for name in modules:
        ser = arrays[name]
        series[name] = {k: _compact(ser[k][::stride]) for k in SERIES_KEYS if k in ser}
    out.update({
        "steps_measured": len(attributor.steps),
        "order": list(modules),
        "weighted_layers": attributor.weighted_layers(),
        "modules": modules,
        "projections": headroom_projections(attributor.steps, arrays),
        "series": series,
    })
    return out
