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
(``run/autograd.py``); the verdict, the signatures (deep-net ones included) and the phases
are the lab's own (``diagnosis.diagnose``, the one signature registry), run online
every ``DIAGNOSE_EVERY`` recorded steps and at once when something is non-finite; a new
finding prints one line with its onset and module. At :meth:`Watcher.close` the run is
stored (task ``watched``) in the SQLite store under ``out``.

Fixes verified by replay: with ``replay=K`` a ring of the last K checkpoints (model,
optimizer, scaler, RNG states and the micro-batches since each) is kept; at close, when
the run failed, the watcher restores the last checkpoint before the onset and re-runs
the same batches once per candidate mitigation (see :mod:`stability_lab.remedies.replay`).

This module holds :func:`watch` and the :class:`Watcher`: its arguments, the end of each
step (:meth:`Watcher.step`) and of the run (:meth:`Watcher.close`). The rest is in
sibling modules, one subject each: :mod:`~stability_lab.watch_hooks` (the hooks on the
model and the optimizers: the Watcher's base class), :mod:`~stability_lab.watch_metrics`
(what is measured of a step), :mod:`~stability_lab.watch_creators` (the replay that
names the creator module), :mod:`~stability_lab.watch_trace` (the recorded run as a
Trace), :mod:`~stability_lab.watch_online` (the online diagnosis) and
:mod:`~stability_lab.watch_report` (the end of the run: diagnosis, replay, store).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from stability_lab.errors import UsageError
from stability_lab.watch_creators import MAX_CREATOR_REPLAYS
from stability_lab.watch_hooks import AUTO_ATTRIBUTE_EVERY, WatchHooks
from stability_lab.watch_metrics import METRICS, step_row
from stability_lab.watch_online import DIAGNOSE_EVERY, diagnosis_due, say_new_findings
from stability_lab.watch_report import WatchReport, finish
from stability_lab.watch_trace import watched_trace

__all__ = ["AUTO_ATTRIBUTE_EVERY", "CHECKPOINT_EVERY", "DIAGNOSE_EVERY",
           "MAX_CREATOR_REPLAYS", "METRICS", "Watcher", "unwrap", "watch"]

#: steps between two replay checkpoints (the ring holds the last K of them)
CHECKPOINT_EVERY = 10


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


class Watcher(WatchHooks):
    """A watched training loop: the hooks (:class:`~.watch_hooks.WatchHooks`) record each
    step; :meth:`step` closes it; :meth:`close` judges, replays and stores the run."""

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
        from stability_lab.run import autograd  # noqa: F401
        from stability_lab.diagnosis import diagnose, phases, signatures  # noqa: F401
        self._install()

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
            row = step_row(torch, self.params, self._micro, self._pending, loss_v, skipped,
                           self._t0)
            for k in METRICS:
                self.rec[k].append(float(row[k]))
            self.steps.append(self.step_no)
            bad = ((not math.isfinite(loss_v)) or row["nonfinite_weights"]
                   or row["nonfinite_grads"] or skipped)
            first_bad = bad and not self._bad_seen
            self._bad_seen = self._bad_seen or bool(bad)
            if bad and self._failed_at is None and not skipped:
                self._failed_at = self.step_no
            if diagnosis_due(first_bad, len(self.steps) - self._diag_at, self._diag_cost,
                             row["step_time"]):
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
    def build_trace(self):
        """The run recorded so far as a Trace (:func:`~.watch_trace.watched_trace`)."""
        policy = self._policy or self._policy_of()
        return watched_trace(self, policy, self._started, self._attributor)

    @property
    def _started(self) -> float:
        if not hasattr(self, "_start_time"):
            self._start_time = time.time()
        return self._start_time

    def _online_diagnosis(self) -> None:
        say_new_findings(self.build_trace(), self.steps, self.findings_seen, self._say)

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


def _dist_rank() -> tuple[int, int]:
    torch = sys.modules.get("torch")
    d = getattr(torch, "distributed", None)
    if d is not None and d.is_available() and d.is_initialized():
        return d.get_rank(), d.get_world_size()
    return 0, 1

