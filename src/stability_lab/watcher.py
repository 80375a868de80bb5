"""``stability_lab.watch``: attach the lab to a training loop the user already has.

::

    w = stability_lab.watch(model, optimizer, out="lab-runs", every=1, replay=4)
    with w:
        for x, y in loader:
            loss = loss_fn(model(x), y); loss.backward(); optimizer.step()
            optimizer.zero_grad(); w.step(loss)
    print(w.report())

How it sees the run, without changing the user's loop:

- a forward pre-hook and a forward hook on the model (the root module only) note each
  micro-batch's inputs, the autocast state, the GradScaler's scale and the output (and, on
  attribution steps, start and end the per-layer
  :class:`~stability_lab.run.attribution.Attributor`);
- global optimizer step hooks (``torch.optim.optimizer.register_optimizer_step_pre_hook``,
  filtered to optimizers that own the model's parameters) read the gradients before the
  update (norm, absmax, non-finite count) and the update after it;
- :meth:`Watcher.step` closes a step: the loss (averaged over the micro-batches of a
  gradient-accumulation step), the weights, the learning rate. A call without an optimizer
  step in between is a micro-batch of an accumulation step, unless the GradScaler's scale
  fell (a step the scaler skipped).

When a micro-batch's output, or a step's gradients, are not finite, the micro-batches of
that step are replayed before the weights change (the optimizer pre-hook runs before the
update) with :func:`~stability_lab.run.attribution.find_creators`, so the module that
created the first inf/NaN is named by its qualified name, in the forward or the backward
pass. The replay uses the root module's recorded output gradient, so no loss function is
needed.

Every recorded step is a row of a :class:`~.trace.Trace` with the deep loop's metric names
(``run/loop.py``); the verdict, the signatures (deep-net ones included) and the phases
are the lab's own (``diagnosis.diagnose``, the one signature registry), run online
every ``DIAGNOSE_EVERY`` recorded steps and at once when something is non-finite; a new
finding prints one line with its onset and module. At :meth:`Watcher.close` the run is
stored (task ``watched``) in the SQLite store under ``out``.

Fixes verified by replay: with ``replay=K`` a ring of the last K checkpoints (model,
optimizer, scaler, RNG states and the micro-batches since each) is kept; at close, when
the run failed, the watcher restores the last checkpoint before the onset and re-runs
the same batches once per candidate mitigation (see :mod:`stability_lab.remedies.replay`).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from stability_lab.errors import UsageError
from stability_lab.metrics import WATCH, metric_names
from stability_lab.watch_report import WatchReport, finish

#: recorded steps between two online diagnoses, at least (and at the first non-finite
#: step); more when a diagnosis costs more than 1% of that many steps' time
DIAGNOSE_EVERY = 25
#: "auto" attribution: per-layer statistics on every this many recorded steps
AUTO_ATTRIBUTE_EVERY = 25
#: steps between two replay checkpoints (the ring holds the last K of them)
CHECKPOINT_EVERY = 10
#: creator replays per run (each costs one forward and backward with checks)
MAX_CREATOR_REPLAYS = 3

#: what the watcher records per step (the one metric table: stability_lab.metrics)
METRICS = metric_names(WATCH)


def watch(model, optimizer=None, *, out: str | Path | None = "lab-runs",
          name: str | None = None, every: int = 1, attribute: Any = "auto", scaler=None,
          replay: int = 0, replay_storage: str = "memory", loss_fn: Callable | None = None,
          checkpoint_every: int = CHECKPOINT_EVERY, verbose: bool = True) -> "Watcher":
    """A :class:`Watcher` on ``model`` (see the module docstring and docs/watch.md).

    ``every``: record the metrics on every k-th optimizer step. ``attribute``: per-layer
    statistics: ``"auto"`` (every ``AUTO_ATTRIBUTE_EVERY``-th recorded step), ``True``
    (every recorded step), an int k (every k-th recorded step) or ``False`` (none, and no
    creator replay). ``scaler``: the ``torch.amp.GradScaler`` the loop uses (its scale is
    recorded, its skipped steps counted). ``replay``: K checkpoints kept for verifying
    fixes (0: none), one every ``checkpoint_every`` optimizer steps; ``replay_storage``:
    ``"memory"`` or ``"disk"`` (under ``out``).
    ``loss_fn(outputs, targets)``: how the loop computes its loss, needed by replay when the
    model's output is not the loss itself (pass the targets with ``w.step(loss, targets=y)``).
    ``out=None`` keeps the run in memory only (no store).
    """
    return Watcher(model, optimizer, out=out, name=name, every=every, attribute=attribute,
                   scaler=scaler, replay=replay, replay_storage=replay_storage,
                   loss_fn=loss_fn, checkpoint_every=checkpoint_every, verbose=verbose)


def _check_args(every, attribute, replay, replay_storage):
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise UsageError(f"watch: 'every' must be a positive integer; got {every!r}.")
    if not (attribute in ("auto", True, False) or (isinstance(attribute, int)
                                                     and attribute >= 1)):
        raise UsageError(f"watch: 'attribute' must be 'auto', True, False or a positive "
                         f"integer; got {attribute!r}.")
    if isinstance(replay, bool) or not isinstance(replay, int) or replay < 0:
        raise UsageError(f"watch: 'replay' must be a non-negative integer (checkpoints "
                         f"kept); got {replay!r}.")
    if replay_storage not in ("memory", "disk"):
        raise UsageError(f"watch: 'replay_storage' must be 'memory' or 'disk'; got "
                         f"{replay_storage!r}.")


def unwrap(model):
    """The module whose submodules run eagerly: DDP's ``.module``, torch.compile's
    ``._orig_mod`` (hooks and replays go there)."""
    for _ in range(4):
        inner = getattr(model, "_orig_mod", None) or (
            getattr(model, "module", None) if type(model).__name__ in (
                "DistributedDataParallel", "DataParallel") else None)
        if inner is None:
            return model
        model = inner
    return model


class Watcher:
    def __init__(self, model, optimizer=None, *, out="lab-runs", name=None, every=1,
                 attribute="auto", scaler=None, replay=0, replay_storage="memory",
                 loss_fn=None, checkpoint_every=CHECKPOINT_EVERY, verbose=True):
        import torch

        if not isinstance(model, torch.nn.Module):
            raise UsageError(f"watch: 'model' must be a torch.nn.Module; got "
                             f"{type(model).__name__}.")
        _check_args(every, attribute, replay, replay_storage)
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) \
                or checkpoint_every < 1:
            raise UsageError(f"watch: 'checkpoint_every' must be a positive integer; got "
                             f"{checkpoint_every!r}.")
        self.checkpoint_every = checkpoint_every
        self.torch = torch
        self.model = model
        self.inner = unwrap(model)
        self.compiled = hasattr(model, "_orig_mod")
        self.optimizer = optimizer
        self.scaler = scaler
        self.out = None if out is None else Path(out)
        self.name = name or type(self.inner).__name__
        self.every = every
        self.attribute = attribute
        self.replay_k = replay
        self.replay_storage = replay_storage
        self.loss_fn = loss_fn
        #: (model, batch) -> loss, for replay: set by integrations whose step is theirs
        self.step_fn: Callable | None = None
        self._seen_opt = optimizer
        #: True: the optimizer pre-hook does not read the gradients; the integration
        #: calls before_update() (Lightning runs forward+backward inside step(closure))
        self.manual_pre = False
        self.verbose = verbose
        self.rank, self.world = _dist_rank()
        self.params = [p for p in self.inner.parameters() if p.requires_grad]
        self._param_ids = {id(p) for p in self.params}
        self.rec: dict[str, list[float]] = {k: [] for k in METRICS}
        self.steps: list[int] = []          # optimizer-step number of each recorded row
        self.step_no = 0                    # optimizer steps so far (skipped ones too)
        self.creators: list[dict[str, Any]] = []
        self.findings_seen: set[tuple] = set()
        self.printed: list[str] = []
        self._handles: list[Any] = []
        self._micro: list[dict[str, Any]] = []   # micro-batches of the current step
        self._losses: list[float] = []
        self._opt_steps = 0                 # optimizer steps since the last w.step
        self._pending: dict[str, float] = {}
        self._before: list | None = None
        self._t0 = time.perf_counter()
        self._creator_replays = 0
        self._failed_at: int | None = None
        self._bad_seen = False
        self._diag_cost = 0.0   # seconds the last online diagnosis took
        self._diag_at = 0       # recorded steps at the last one
        self._attributor = None
        self._attr_active = False
        self._policy = None
        self._autocast: tuple[bool, Any] = (False, None)
        self._last_scale = float(scaler.get_scale()) if scaler is not None else math.nan
        self._closed = False
        self._report: WatchReport | None = None
        self.run_id: str | None = None
        self.trace = None
        self.result = None
        from stability_lab.remedies.replay import Ring

        self.ring = Ring(self, replay, replay_storage) if replay else None
        # import what the online diagnosis needs now, not inside the user's loop
        from stability_lab.run import loop  # noqa: F401
        from stability_lab.diagnosis import diagnose, phases, signatures  # noqa: F401
        self._install()

    # -- hooks ---------------------------------------------------------------------
    def _install(self) -> None:
        root = self.inner
        self._handles.append(root.register_forward_pre_hook(self._fwd_pre, with_kwargs=True))
        self._handles.append(root.register_forward_hook(self._fwd_post))
        from torch.optim import optimizer as topt

        self._handles.append(topt.register_optimizer_step_pre_hook(self._opt_pre))
        self._handles.append(topt.register_optimizer_step_post_hook(self._opt_post))

    def _owns(self, optimizer) -> bool:
        if self.optimizer is not None:
            return optimizer is self.optimizer or getattr(optimizer, "optimizer", None) \
                is self.optimizer
        for g in optimizer.param_groups:
            for p in g["params"]:
                return id(p) in self._param_ids
        return False

    def _recording(self) -> bool:
        """Is the step in progress one whose metrics are recorded?"""
        return self.step_no % self.every == 0 or self._failed_at is not None

    def _attributing(self) -> bool:
        a = self.attribute
        if a is False or self.compiled:
            return False
        k = AUTO_ATTRIBUTE_EVERY if a == "auto" else (1 if a is True else int(a))
        return self._recording() and (self.step_no // self.every) % k == 0

    def begin_batch(self, batch: Any) -> None:
        """A micro-batch starts (integrations whose step does not call the root module's
        forward, e.g. Lightning's ``training_step`` calling a submodule): the batch is
        kept for replays, which re-run ``self.step_fn(model, batch)``."""
        self._new_micro(batch=batch)

    def end_forward(self) -> None:
        """The forward pass of the first micro-batch is over (integrations call this
        when the root module's forward hook cannot: Lightning's ``on_before_backward``)."""
        if self._attr_active and len(self._micro) == 1 and not self._micro[0].get("fwd"):
            self._micro[0]["fwd"] = True
            self._attributor.end_forward()

    def _new_micro(self, **fields: Any) -> None:
        torch = self.torch
        on = torch.is_autocast_enabled("cpu")
        self._autocast = (on, torch.get_autocast_dtype("cpu") if on else None)
        if not self._micro:
            # the first micro-batch of an optimizer step
            if self._attributing() and not self._attr_active:
                self._start_attribution()
            if self.ring is not None:
                self.ring.maybe_checkpoint(self.step_no)
        self._micro.append({
            "autocast": self._autocast,
            "rng": torch.get_rng_state() if self.attribute is not False else None,
            "scale": float(self.scaler.get_scale()) if self.scaler is not None else None,
            **fields})

    def _fwd_pre(self, module, args, kwargs):
        if not self.torch.is_grad_enabled() or not module.training:
            return None
        last = self._micro[-1] if self._micro else None
        if last is not None and "batch" in last and "args" not in last and "out" not in last:
            last.update(args=args, kwargs=kwargs)  # the batch begin_batch announced
            return None
        self._new_micro(args=args, kwargs=kwargs)
        return None

    def _fwd_post(self, module, args, output):
        if not self._micro or "out" in self._micro[-1]:
            return None
        from stability_lab.run.attribution import first_tensor

        out = output if isinstance(output, self.torch.Tensor) else first_tensor(output)
        if out is None and hasattr(output, "logits"):
            out = output.logits
        mb = self._micro[-1]
        mb["out"] = out
        loss = getattr(output, "loss", None)  # Hugging Face outputs carry their loss
        if isinstance(loss, self.torch.Tensor) and loss.numel() == 1:
            mb["loss"] = loss
        if out is not None and out.requires_grad:
            # the hook holds only a small slot, never ``mb``: mb holds ``out``, and a
            # hook closing over it would make a cycle (out -> hook -> mb -> out) that
            # keeps each step's autograd graph alive until the cyclic GC runs (measured:
            # +0.2-0.3 ms a step on the benchmark's mlp)
            slot = mb["out_grad_slot"] = []
            out.register_hook(slot.append)
        if self._attr_active and len(self._micro) == 1 and not mb.get("fwd"):
            mb["fwd"] = True
            self._attributor.end_forward()
        return None

    def _policy_of(self):
        from stability_lab.precision import policies as P

        pdt = str(self.params[0].dtype).replace("torch.", "") if self.params else "float32"
        on, adt = self._autocast
        if on:
            out = str(adt).replace("torch.", "")
            return P.Policy(f"autocast-{out}", pdt, pdt, out, master=True, autocast=True,
                            loss_scaling=self.scaler is not None)
        return P.Policy(pdt, pdt, pdt, pdt)

    def _start_attribution(self) -> None:
        from stability_lab.run.attribution import Attributor

        if self._attributor is None:
            self._policy = self._policy or self._policy_of()
            self._attributor = Attributor(self.inner, self._policy, 1)
        self._attributor.begin(self.step_no + 1)
        self._attr_active = True

    def optimizer_seen(self):
        """The optimizer given, or the one whose steps the hooks saw."""
        return self.optimizer if self.optimizer is not None else self._seen_opt

    def _opt_pre(self, optimizer, args, kwargs):
        if not self._owns(optimizer):
            return
        self._seen_opt = self._seen_opt or optimizer
        if self.manual_pre:  # an integration calls before_update() when grads are ready
            return
        self.before_update(optimizer)

    def before_update(self, optimizer) -> None:
        """The gradients of the step are ready and the weights not yet updated.

        Called from the optimizer's step pre-hook, or by integrations whose optimizer
        step runs the forward and backward inside a closure (Lightning:
        ``on_before_optimizer_step``)."""
        torch = self.torch
        self._seen_opt = self._seen_opt or optimizer
        self._policy = self._policy or self._policy_of()
        recording = self._recording()
        outs = [mb["out"].detach() for mb in self._micro
                if mb.get("out") is not None and mb["out"].numel()]
        if recording:  # the outputs' absmax (NaN propagates): the metric and the check
            amaxes = [float(o.abs().max()) for o in outs]
            out_amax = max(amaxes) if amaxes and not any(a != a for a in amaxes) \
                else math.nan
            self._pending["out_amax"] = out_amax
            bad_out = bool(amaxes) and not math.isfinite(out_amax)
        else:  # one pass, no temporary: a sum is finite when every value is (an
            # overflowing sum of finite values is confirmed by the exact check)
            bad_out = not all(math.isfinite(float(o.sum())) for o in outs)
            if bad_out:
                bad_out = not all(bool(torch.isfinite(o).all()) for o in outs)
        if recording or bad_out:
            grads = [p.grad for p in self.params if p.grad is not None]
            if grads:
                both = torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float64)
                                   + torch._foreach_norm(grads, math.inf,
                                                         dtype=torch.float64))
                k = len(grads)
                gn = float(torch.linalg.vector_norm(both[:k]))
                amax = float(both[k:].max())
            else:
                gn = amax = 0.0
            nbad = 0 if math.isfinite(gn) else int(sum(int((~torch.isfinite(g)).sum())
                                                         for g in grads))
            self._pending.update(grad_norm=gn, grad_absmax=amax, nonfinite_grads=nbad,
                                 overflowed_grads=nbad)
            if (nbad or bad_out) and self.attribute is not False:
                self._find_creators()
        if recording:
            if self._attr_active:
                self._attributor.before_update()
            if self._before is None:
                self._before = [torch.empty_like(p) for p in self.params]
            with torch.no_grad():
                torch._foreach_copy_(self._before, [p.detach() for p in self.params])
            self._pending["lr"] = float(optimizer.param_groups[0].get("lr", math.nan))
        if self.ring is not None:
            self._pending["lrs"] = [g.get("lr") for g in optimizer.param_groups]

    def _opt_post(self, optimizer, args, kwargs):
        if not self._owns(optimizer):
            return
        torch = self.torch
        self._opt_steps += 1
        if self._recording() and self._before is not None:
            with torch.no_grad():
                torch._foreach_sub_(self._before, [p.detach() for p in self.params])
                self._pending["update_norm"] = _norm(torch, self._before)
        if self._attr_active:
            # (a GradScaler has unscaled the gradients before the optimizer step)
            self._attributor.end_step(grad_scale=1.0)
            self._attr_active = False

    # -- creators ------------------------------------------------------------------
    def _find_creators(self) -> None:
        """Replay this step's micro-batches with checks (weights not yet updated)."""
        if self._creator_replays >= MAX_CREATOR_REPLAYS or not self._micro or any(
                c["kind"] == "created" for c in self.creators) or self.world > 1:
            # (under DDP a backward pass would fire the reducer's all-reduce on one rank)
            return
        self._creator_replays += 1
        torch = self.torch
        from stability_lab.run.attribution import ROOT, find_creators, qualified_names

        if self._attr_active:
            self._attributor.abort()
            self._attr_active = False
        step = self.step_no + 1
        saved = [None if p.grad is None else p.grad.clone() for p in self.params]
        rng = torch.get_rng_state()
        events: list[dict[str, Any]] = []
        model = self.inner
        for mb in self._micro:
            def fb(output_hook, mb=mb):
                for p in self.params:
                    p.grad = None
                if mb.get("rng") is not None:
                    torch.set_rng_state(mb["rng"])
                if self.step_fn is not None and "batch" in mb and "args" not in mb:
                    loss = self.step_fn(model, mb["batch"])
                    output_hook(loss, loss)
                    loss.backward()
                    return
                on, dt = mb["autocast"]
                with torch.autocast("cpu", dtype=dt or torch.bfloat16, enabled=on):
                    output = _call(model, mb["args"], mb["kwargs"])
                from stability_lab.run.attribution import first_tensor

                out = output if isinstance(output, torch.Tensor) else first_tensor(output)
                if out is None and hasattr(output, "logits"):
                    out = output.logits
                g = (mb.get("out_grad_slot") or [None])[-1]
                if g is None:
                    g = torch.ones_like(out)
                pseudo = (out.float() * g.float()).sum()
                output_hook(output, pseudo)
                pseudo.backward()

            dtypes: dict[Any, Any] = {}

            def note_dtype(mod, args, output, dtypes=dtypes):
                if isinstance(output, torch.Tensor):
                    dtypes.setdefault(mod, output.dtype)

            handle = torch.nn.modules.module.register_module_forward_hook(note_dtype)
            try:
                with _no_watch(self):
                    events = find_creators(model, fb, step)
            except RuntimeError as exc:
                events = [{"step": step, "pass": "replay", "module": ROOT, "kind": "unknown",
                           "detail": "replay with checks failed: "
                                     f"{str(exc).splitlines()[0][:160]}", "type": ""}]
            finally:
                handle.remove()
            names = qualified_names(model)
            by_name = {names[m]: str(d).replace("torch.", "") for m, d in dtypes.items()
                       if m in names}
            for e in events:  # the format the module computed in (autocast included)
                if e["module"] in by_name:
                    e["dtype"] = by_name[e["module"]]
            if any(e["kind"] == "created" for e in events):
                break
        for p, g in zip(self.params, saved):
            p.grad = g
        torch.set_rng_state(rng)
        self.creators.extend(events)
        first = next((e for e in events if e["kind"] == "created"), None)
        if first is not None:
            self._say(f"step {step}: non-finite value created in the {first['pass']} pass "
                      f"by {first['module']} ({first.get('type', '')}): {first['detail']}")

    # -- the user's call -----------------------------------------------------------
    def step(self, loss: Any = None, *, targets: Any = None, batch: Any = None) -> None:
        """Close one step (or one micro-batch of a gradient-accumulation step).

        ``loss``: the step's loss (a tensor or a number). ``targets``: what ``loss_fn``
        needs besides the model outputs (for replay). ``batch``: the raw batch, for
        integrations whose replay re-runs their own step function.
        """
        torch = self.torch
        if self._closed:
            raise UsageError("watch: step() after close(); create a new watcher.")
        if loss is None:  # the loss the model returned (Hugging Face), per micro-batch
            self._losses.extend(float(mb["loss"].detach().double()) for mb in self._micro
                                if mb.get("loss") is not None and not mb.get("counted"))
            for mb in self._micro:
                mb["counted"] = True
        else:
            lv = loss.item() if isinstance(loss, torch.Tensor) else float(loss)
            self._losses.append(lv)
        if self._micro:
            self._micro[-1]["targets"] = targets
            self._micro[-1]["batch"] = batch
        scale_now = float(self.scaler.get_scale()) if self.scaler is not None else math.nan
        skipped = (self.scaler is not None and self._opt_steps == 0
                   and scale_now < self._last_scale)
        if self._opt_steps == 0 and not skipped:
            return  # a micro-batch of a gradient-accumulation step
        self._close_step(skipped, scale_now)

    def _close_step(self, skipped: bool, scale_now: float) -> None:
        torch = self.torch
        self.step_no += 1
        recording = (self.step_no - 1) % self.every == 0 or self._failed_at is not None
        loss_v = float(np.mean(self._losses)) if self._losses else math.nan
        if skipped and self._attr_active:
            self._attributor.abort()
            self._attr_active = False
        if skipped and not self.creators and self.attribute is not False and self._micro:
            self.step_no -= 1
            self._find_creators()  # the weights did not change: still the step's weights
            self.step_no += 1
        if self.ring is not None:
            self.ring.add_step(self.step_no, self._micro, loss_v, self._pending.get("lrs"),
                               skipped)
        if recording or not math.isfinite(loss_v):
            p = self._pending
            with torch.no_grad():
                wn = _norm(torch, [q.detach() for q in self.params])
            nbad_w = 0 if math.isfinite(wn) else int(sum(int((~torch.isfinite(q)).sum())
                                                        for q in self.params))
            outs = [mb.get("out") for mb in self._micro if mb.get("out") is not None]
            amax = p.get("out_amax", math.nan)
            fmt_out = _fmax(torch, outs[0].dtype) if outs else math.nan
            grad_fmt = _fmax(torch, self.params[0].dtype) if self.params else math.nan
            gam = p.get("grad_absmax", math.nan)
            un = p.get("update_norm", 0.0 if skipped else math.nan)
            used_scale = self._micro[0].get("scale") if self._micro else None
            row = {
                "loss": loss_v, "grad_norm": math.inf if skipped else p.get("grad_norm",
                                                                            math.nan),
                "update_norm": un, "weight_norm": wn,
                "update_ratio": un / wn if wn > 0 and math.isfinite(un) else math.nan,
                "nonfinite_weights": nbad_w,
                "nonfinite_grads": 0 if skipped else p.get("nonfinite_grads", 0),
                "overflowed_grads": p.get("overflowed_grads", 1 if skipped else 0),
                "max_abs_logit": amax,
                "logit_headroom": _headroom(fmt_out, amax),
                "grad_absmax": gam, "grad_headroom": _headroom(grad_fmt, gam),
                "loss_scale": used_scale if used_scale is not None else math.nan,
                "skipped": 1.0 if skipped else 0.0, "lr": p.get("lr", math.nan),
                "step_time": time.perf_counter() - self._t0,
            }
            for k in METRICS:
                self.rec[k].append(float(row[k]))
            self.steps.append(self.step_no)
            bad = (not math.isfinite(loss_v)) or nbad_w or row["nonfinite_grads"] or skipped
            first_bad = bad and not self._bad_seen
            self._bad_seen = self._bad_seen or bool(bad)
            if bad and self._failed_at is None and not skipped:
                self._failed_at = self.step_no
            # online diagnosis at the first bad step, and every DIAGNOSE_EVERY recorded
            # steps or rarer: at most ~1% of the loop's time (its cost is measured)
            gap = max(DIAGNOSE_EVERY, math.ceil(100 * self._diag_cost /
                                                max(row["step_time"], 1e-6)))
            if first_bad or len(self.steps) - self._diag_at >= gap:
                t = time.perf_counter()
                self._online_diagnosis()
                self._diag_cost = time.perf_counter() - t
                self._diag_at = len(self.steps)
        self._last_scale = scale_now
        self._losses.clear()
        self._micro = []
        self._pending = {}
        self._opt_steps = 0
        self._t0 = time.perf_counter()

    # -- diagnosis -----------------------------------------------------------------
    def _say(self, text: str) -> None:
        self.printed.append(text)
        if self.verbose and self.rank == 0:
            sys.stderr.write(f"stability-lab watch: {text}\n")

    def build_trace(self):
        from stability_lab.run.loop import attribution_summary
        from stability_lab.spec import RunSpec
        from stability_lab.trace import Trace, environment

        torch = self.torch
        policy = self._policy or self._policy_of()
        n = len(self.steps)
        metrics = {k: np.asarray(v, dtype=np.float64) for k, v in self.rec.items()}
        if self.scaler is None:
            del metrics["loss_scale"]
        lr0 = next((v for v in self.rec["lr"] if math.isfinite(v)), math.nan)
        spec = RunSpec(task="watched", data=self.name, precision=policy.param_dtype,
                       policy=None, lr=lr0 if math.isfinite(lr0) else 0.0, epochs=n,
                       seed=0, params=tuple(sorted({
                           "model": type(self.inner).__name__,
                           "every": self.every, "started": round(self._started, 3),
                           "autocast": policy.output if policy.autocast else "off",
                           "world_size": self.world}.items())))
        meta = environment()
        meta.update({"policy": policy.name, "compiled": self.compiled,
                     "watched_steps": self.step_no})
        trace = Trace(spec=spec, metrics=metrics, probes={"end": {}}, meta=meta,
                      step_unit="step")
        attr = attribution_summary(self._attributor, self.creators)
        trace.extras.update({
            "policy": policy.name,
            "semantics": (f"native torch: parameters {policy.param_dtype}"
                          + (f", autocast {policy.output}" if policy.autocast else "")
                          + (", GradScaler" if self.scaler is not None else "")),
            "format": {"name": policy.param_dtype, "activations": policy.act_format.name,
                       "gradients": policy.grad_format.name, "outputs": policy.output,
                       "max": policy.act_format.max, "tiny": policy.act_format.tiny},
            "steps_run": n, "steps_planned": n, "watched": {
                "creator_dtype": next((c.get("dtype") for c in self.creators
                                       if c["kind"] == "created"), None),
                "optimizer_steps": self.step_no, "recorded_steps": self.steps,
                "every": self.every, "compiled": self.compiled, "world_size": self.world,
                "torch": torch.__version__},
            "attribution": attr,
        })
        if self.scaler is not None and n:
            used = metrics["loss_scale"]
            trace.extras["loss_scaler"] = {
                "skipped_steps": int(np.nansum(metrics["skipped"])),
                "final_scale": float(self.scaler.get_scale()),
                "min_scale": float(np.nanmin(used)), "max_scale": float(np.nanmax(used))}
        return trace

    @property
    def _started(self) -> float:
        if not hasattr(self, "_start_time"):
            self._start_time = time.time()
        return self._start_time

    def _online_diagnosis(self) -> None:
        from stability_lab.diagnosis import diagnose

        trace = self.build_trace()
        verdict, findings = diagnose(trace)
        for f in findings:
            key = (f.signature, f.location)
            if key in self.findings_seen:
                continue
            self.findings_seen.add(key)
            onset = self.steps[f.onset - 1] if f.onset and f.onset <= len(self.steps) \
                else f.onset
            where = f.location or _culprit(trace) or "the whole model"
            self._say(f"{f.signature} at step {onset} in {where}: {f.message}")

    # -- closing -------------------------------------------------------------------
    def close(self) -> WatchReport:
        """Remove the hooks, diagnose, verify fixes by replay, store the run."""
        if self._closed:
            return self.report()
        self._started  # noqa: B018 (fix the start time before it is read)
        self._closed = True
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._attr_active:
            self._attributor.abort()
            self._attr_active = False
        if self._micro or self._losses:  # a last step the loop did not close
            if self._opt_steps:
                self._close_step(False, self._last_scale)
        self._report = finish(self)
        return self._report

    def report(self) -> WatchReport:
        if self._report is None:
            return self.close()
        return self._report

    def __enter__(self) -> "Watcher":
        self._started  # noqa: B018
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # the loop raised: keep what was measured, do not replay
            self.replay_k = 0
            self.ring = None
            self.close()

    def __del__(self):  # a watcher dropped without close: remove its hooks
        for h in getattr(self, "_handles", []):
            try:
                h.remove()
            except Exception:  # noqa: BLE001 (interpreter shutdown)
                pass


class _no_watch:
    """Within the block the watcher's hooks ignore the model's calls (replays)."""

    def __init__(self, w: Watcher):
        self.w = w

    def __enter__(self):
        self.saved = (self.w._micro, self.w._attr_active)
        self.w._micro = [{"out": None, "_replay": True}]
        self.w._attr_active = False

    def __exit__(self, *exc):
        self.w._micro, self.w._attr_active = self.saved


def _call(model, args, kwargs):
    return model(*args, **(kwargs or {}))


def _norm(torch, tensors) -> float:
    if not tensors:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(
        torch._foreach_norm(tensors, 2, dtype=torch.float64))))


def _fmax(torch, dtype) -> float:
    try:
        return float(torch.finfo(dtype).max)
    except TypeError:
        return math.nan


def _headroom(fmax: float, amax: float) -> float:
    """log2(fmax / absmax): powers of two left before the format overflows."""
    if not (amax > 0) or not math.isfinite(fmax):
        return math.nan if not amax == 0 else math.inf
    if not math.isfinite(amax):
        return -math.inf
    return math.log2(fmax / amax)


def _culprit(trace) -> str | None:
    first = (trace.extras.get("attribution") or {}).get("first_creator")
    return first["module"] if first else None


def _dist_rank() -> tuple[int, int]:
    torch = sys.modules.get("torch")
    d = getattr(torch, "distributed", None)
    if d is not None and d.is_available() and d.is_initialized():
        return d.get_rank(), d.get_world_size()
    return 0, 1

