"""The hooks of :class:`~stability_lab.watcher.Watcher` on the user's model and optimizers.

:class:`WatchHooks` is the watcher's base class: its methods are the hooks and what
they record while a step is in progress, on the state :class:`~stability_lab.watcher.Watcher`
sets up in its ``__init__`` (the micro-batches ``_micro``, the ``_pending`` numbers of the
optimizer hooks, the per-layer attributor):

- a forward pre-hook and a forward hook on the root module note each micro-batch's
  inputs, autocast state, GradScaler scale and output, and start and end the per-layer
  :class:`~stability_lab.run.attribution.Attributor` on attribution steps;
- global optimizer step hooks, filtered to the optimizers that own the model's
  parameters, read the gradients before the update and the update after it
  (:mod:`~stability_lab.watch_metrics`), and on a non-finite output or gradient name the
  module that created it (:mod:`~stability_lab.watch_creators`).

Integrations whose loop the hooks cannot see whole call :meth:`WatchHooks.begin_batch`,
:meth:`WatchHooks.end_forward` and :meth:`WatchHooks.before_update` themselves.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from stability_lab.watch_creators import MAX_CREATOR_REPLAYS, replay_with_checks
from stability_lab.run.transforms import global_norm
from stability_lab.watch_metrics import check_outputs, grad_stats
from stability_lab.watch_trace import policy_of

#: "auto" attribution: per-layer statistics on every this many recorded steps
AUTO_ATTRIBUTE_EVERY = 25


class WatchHooks:
    """The hooks of a :class:`~stability_lab.watcher.Watcher` (its base class)."""

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
        return policy_of(self.params, self._autocast, self.scaler is not None)

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
        out_amax, bad_out = check_outputs(torch, outs, recording)
        if recording:
            self._pending["out_amax"] = out_amax
        if recording or bad_out:
            gn, amax, nbad = grad_stats(torch, self.params)
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
                self._pending["update_norm"] = global_norm(torch, self._before)
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
        if self._attr_active:
            self._attributor.abort()
            self._attr_active = False
        step = self.step_no + 1
        events = replay_with_checks(self.torch, self.inner, self.params, self._micro, step,
                                    self.step_fn, lambda: _no_watch(self))
        self.creators.extend(events)
        first = next((e for e in events if e["kind"] == "created"), None)
        if first is not None:
            self._say(f"step {step}: non-finite value created in the {first['pass']} pass "
                      f"by {first['module']} ({first.get('type', '')}): {first['detail']}")

    # -- what the watcher says (here, and in its online diagnosis) ---------------------
    def _say(self, text: str) -> None:
        self.printed.append(text)
        if self.verbose and self.rank == 0:
            sys.stderr.write(f"stability-lab watch: {text}\n")


class _no_watch:
    """Within the block the watcher's hooks ignore the model's calls (replays)."""

    def __init__(self, w: WatchHooks):
        self.w = w

    def __enter__(self):
        self.saved = (self.w._micro, self.w._attr_active)
        self.w._micro = [{"out": None, "_replay": True}]
        self.w._attr_active = False

    def __exit__(self, *exc):
        self.w._micro, self.w._attr_active = self.saved
