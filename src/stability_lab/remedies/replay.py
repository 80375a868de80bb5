"""Fixes verified by replay, for watched runs (``watch(..., replay=K)``).

:class:`Ring` keeps the last K checkpoints of a watched run, one every
``checkpoint_every`` optimizer steps (default 10): the model's and the optimizer's state, the
GradScaler's, the torch RNG state, and the micro-batches of every step since (the model's
inputs as the forward pre-hook saw them, the targets passed to ``w.step``, the autocast
state, the learning rate of each parameter group). In memory by default; with
``replay_storage="disk"`` the states go to ``OUT/checkpoints/<run>/`` as they are taken.

When the run failed, :func:`verify` restores the last checkpoint before the onset and
re-runs the same batches up to ``HORIZON`` steps past the onset: first as recorded (the
baseline must fail again, or nothing can be verified), then once per mitigation:

- ``loss_scaling``: dynamic loss scaling (``torch.amp.GradScaler``), when the run had
  none and used float16;
- ``upcast_module``: the culprit module (the creator of the first non-finite value) in
  float32, autocast off inside it;
- ``lower_lr``: every group's learning rate / 10;
- ``clip``: gradients clipped to the median of the first half of the finite gradient
  norms recorded (before the onset).

A mitigation *removes the failure* when no loss and no weight is non-finite over the
horizon (a GradScaler may skip up to ``SKIP_LIMIT`` of the steps while it calibrates)
and the last loss is finite. The model, optimizer and scaler are put back as they were
at the end of the run. The rows are stored with the run (``verifications`` table), and
the checkpoint before the onset is written to ``OUT/checkpoints/<run_id>.pt`` so that
``stability-lab replay RUN_ID`` can re-run them later (the model and the loss function
are pickled by reference: their classes must be importable then).
"""

from __future__ import annotations

import copy
import io
import math
from collections import deque
from pathlib import Path
from typing import Any

HORIZON = 20
SKIP_LIMIT = 0.2
MITIGATIONS = ("loss_scaling", "upcast_module", "lower_lr", "clip")


def _clone_state(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone_state(v) for v in obj)
    return copy.deepcopy(obj)


def _detach(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_detach(v) for v in obj)
    return obj


class Ring:
    """The last K checkpoints of a watched run and the batches since the oldest."""

    def __init__(self, watcher, k: int, storage: str) -> None:
        self.w = watcher
        self.k = k
        self.storage = storage
        self.checkpoints: deque = deque(maxlen=k)
        self.steps: list[dict[str, Any]] = []   # {step, micro, loss, lrs, skipped}
        self.dir: Path | None = None

    def maybe_checkpoint(self, steps_done: int) -> None:
        if steps_done % self.w.checkpoint_every:
            return
        if self.checkpoints and self.checkpoints[-1]["step"] == steps_done:
            return
        ck = snapshot(self.w.inner, self.w.optimizer_seen(), self.w.scaler)
        ck["step"] = steps_done
        if self.storage == "disk" and self.w.out is not None:
            import torch

            if self.dir is None:
                self.dir = self.w.out / "checkpoints" / f"live-{id(self.w):x}"
                self.dir.mkdir(parents=True, exist_ok=True)
            path = self.dir / f"ckpt-{steps_done}.pt"
            torch.save(ck, path)
            ck = {"step": steps_done, "path": str(path)}
        if len(self.checkpoints) == self.k and self.checkpoints[0].get("path"):
            Path(self.checkpoints[0]["path"]).unlink(missing_ok=True)
        self.checkpoints.append(ck)
        oldest = self.checkpoints[0]["step"]
        self.steps = [s for s in self.steps if s["step"] > oldest]

    def add_step(self, step: int, micro: list[dict[str, Any]], loss: float, lrs, skipped):
        if not self.checkpoints:
            return
        self.steps.append({"step": step, "loss": loss, "lrs": lrs, "skipped": skipped,
                           "micro": [{k: _detach(mb.get(k)) for k in
                                      ("args", "kwargs", "targets", "batch", "autocast")}
                                     for mb in micro]})

    def before(self, onset: int) -> dict[str, Any] | None:
        """The last checkpoint taken before step ``onset`` ran."""
        best = None
        for ck in self.checkpoints:
            if ck["step"] <= onset - 1:
                best = ck
        return best

    def load(self, ck: dict[str, Any]) -> dict[str, Any]:
        if "path" in ck:
            import torch

            return torch.load(ck["path"], weights_only=False)
        return ck


def snapshot(model, optimizer, scaler) -> dict[str, Any]:
    import torch

    return {"model": _clone_state(model.state_dict()),
            "optimizer": _clone_state(optimizer.state_dict()) if optimizer is not None
            else None,
            "scaler": _clone_state(scaler.state_dict()) if scaler is not None else None,
            "rng": torch.get_rng_state()}


def restore(model, optimizer, scaler, ck: dict[str, Any]) -> None:
    import torch

    model.load_state_dict(ck["model"])
    if optimizer is not None and ck.get("optimizer") is not None:
        optimizer.load_state_dict(_clone_state(ck["optimizer"]))
    if scaler is not None and ck.get("scaler") is not None:
        scaler.load_state_dict(ck["scaler"])
    torch.set_rng_state(ck["rng"])


# -- one replay -------------------------------------------------------------------
class _Upcast:
    """Run ``module`` in float32 with autocast off inside it (removable)."""

    def __init__(self, model, name: str) -> None:
        import torch

        self.module = dict(model.named_modules()).get("" if name == "<model>" else name)
        if self.module is None:
            raise KeyError(name)
        self.dtypes = {id(p): p.dtype for p in self.module.parameters()}
        self.module.float()
        self.handles = []
        self.ctx: list[Any] = []
        self.autocast_on = False

        def pre(mod, args, kwargs):
            self.autocast_on = torch.is_autocast_enabled("cpu")
            c = torch.autocast("cpu", enabled=False)
            c.__enter__()
            self.ctx.append(c)
            cast = lambda t: t.float() if isinstance(t, torch.Tensor) and \
                t.is_floating_point() else t  # noqa: E731
            return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

        def post(mod, args, output):
            self.ctx.pop().__exit__(None, None, None)
            low = next(iter(self.dtypes.values()), torch.float32)
            if not self.autocast_on and isinstance(output, torch.Tensor) and \
                    low != torch.float32:
                return output.to(low)
            return None

        self.handles.append(self.module.register_forward_pre_hook(pre, with_kwargs=True))
        self.handles.append(self.module.register_forward_hook(post))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        for p in self.module.parameters():
            p.data = p.data.to(self.dtypes.get(id(p), p.dtype))


def loss_of(output, mb, loss_fn, step_fn, model):
    import torch

    if step_fn is not None:
        return step_fn(model, mb.get("batch"))
    if loss_fn is not None:
        return loss_fn(output, mb.get("targets"))
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, dict):
        loss = output.get("loss")
    if loss is None and isinstance(output, torch.Tensor) and output.numel() == 1:
        loss = output
    return loss


def run_steps(model, optimizer, scaler, steps, mitigation: str | None, *, culprit=None,
              clip=None, loss_fn=None, step_fn=None) -> dict[str, Any]:
    """Re-run ``steps`` (ring entries) from the restored state; what happened."""
    import torch

    own_scaler = scaler
    if mitigation == "loss_scaling" and scaler is None:
        own_scaler = torch.amp.GradScaler("cpu")
    up = _Upcast(model, culprit) if mitigation == "upcast_module" else None
    if up is not None and optimizer is not None:  # state follows the new dtype on load
        optimizer.load_state_dict(optimizer.state_dict())
    params = [p for g in optimizer.param_groups for p in g["params"]]
    losses, bad_loss, bad_weights, skipped = [], 0, None, 0
    try:
        for s in steps:
            if s.get("lrs"):
                for g, lr in zip(optimizer.param_groups, s["lrs"]):
                    g["lr"] = lr * (0.1 if mitigation == "lower_lr" else 1.0)
            optimizer.zero_grad(set_to_none=True)
            n = len(s["micro"])
            total = 0.0
            for mb in s["micro"]:
                on, dt = mb.get("autocast") or (False, None)
                with torch.autocast("cpu", dtype=dt or torch.bfloat16, enabled=on):
                    output = None if step_fn is not None else \
                        model(*(mb.get("args") or ()), **(mb.get("kwargs") or {}))
                    loss = loss_of(output, mb, loss_fn, step_fn, model)
                if loss is None:
                    raise ValueError("replay needs the loss: pass loss_fn= to watch (and "
                                     "targets= to w.step) when the model does not return it")
                if isinstance(loss, dict):
                    loss = loss["loss"]
                loss = loss / n if n > 1 else loss
                total += float(loss.detach().double())
                (own_scaler.scale(loss) if own_scaler is not None else loss).backward()
            losses.append(total)
            if not math.isfinite(total):
                bad_loss += 1
            if own_scaler is not None:
                if clip is not None:
                    own_scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, clip)
                before = own_scaler.get_scale()
                own_scaler.step(optimizer)
                own_scaler.update()
                skipped += int(own_scaler.get_scale() < before)
            else:
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, clip)
                optimizer.step()
            if bad_weights is None and not all(bool(torch.isfinite(p).all()) for p in params):
                bad_weights = s["step"]
                break
    finally:
        optimizer.zero_grad(set_to_none=True)
        if up is not None:
            up.remove()
    n = max(len(losses), 1)
    failed = (bad_weights is not None or not losses or not math.isfinite(losses[-1])
              or (bad_loss - skipped) > 0 or skipped / n > SKIP_LIMIT)
    first_bad = next((s["step"] for s, v in zip(steps, losses) if not math.isfinite(v)), None)
    return {"failed": failed, "steps": len(losses), "final_loss": losses[-1] if losses
            else math.nan, "nonfinite_losses": bad_loss, "skipped": skipped,
            "first_nonfinite_step": first_bad, "nonfinite_weights_at": bad_weights}


def candidates(trace, culprit: str | None, had_scaler: bool) -> list[dict[str, Any]]:
    """The mitigations worth trying on this failed run, each with its reason."""
    import numpy as np

    fmt = (trace.extras.get("format") or {})
    created_in = (trace.extras.get("watched") or {}).get("creator_dtype")
    low = {fmt.get("activations"), fmt.get("name"), created_in} & {"float16", "bfloat16"}
    out = []
    if "float16" in low and not had_scaler:
        out.append({"mitigation": "loss_scaling", "text": "use dynamic loss scaling "
                    "(torch.amp.GradScaler)", "reason": "float16 gradients without a "
                    "loss scaler"})
    if culprit and culprit not in ("loss_fn",) and low:
        out.append({"mitigation": "upcast_module", "module": culprit,
                    "text": f"run {culprit} in float32 (autocast off inside it)",
                    "reason": f"{culprit} created the first non-finite value in "
                              f"{'/'.join(sorted(low))}"})
    lr = trace.metric("lr")
    lr0 = next((float(v) for v in lr if np.isfinite(v)), None)
    out.append({"mitigation": "lower_lr", "text": "lower the learning rate 10x"
                + (f" (to {lr0 / 10:g})" if lr0 else ""), "reason": "a smaller step "
                "keeps the iterates where the arithmetic is stable"})
    g = trace.metric("grad_norm")
    fin = g[np.isfinite(g) & (g > 0)]
    if fin.size:
        clip = float(np.median(fin[: max(1, fin.size // 2)]))
        out.append({"mitigation": "clip", "clip": clip, "text": f"clip gradients to norm "
                    f"{clip:.3g}", "reason": "the median of the first half of the finite "
                    "gradient norms (before the onset)"})
    return out


def verify(model, optimizer, scaler, ring_ck: dict[str, Any], steps: list, trace,
           onset: int, culprit: str | None, loss_fn=None, step_fn=None) -> dict[str, Any]:
    """Baseline + one replay per candidate from checkpoint ``ring_ck``; rows."""
    steps = [s for s in steps if ring_ck["step"] < s["step"] <= onset + HORIZON]
    if not steps:
        return {"rows": [], "note": "no recorded batches between the checkpoint and the "
                                    "onset"}
    final = snapshot(model, optimizer, scaler)
    rows = []
    try:
        restore(model, optimizer, scaler, ring_ck)
        base = run_steps(model, optimizer, scaler, steps, None, loss_fn=loss_fn,
                         step_fn=step_fn)
        rows.append({"mitigation": "none (as recorded)", **base})
        cands = candidates(trace, culprit, scaler is not None)
        if base["failed"]:
            for c in cands:
                restore(model, optimizer, scaler, ring_ck)
                try:
                    r = run_steps(model, optimizer, scaler, steps, c["mitigation"],
                                  culprit=c.get("module"), clip=c.get("clip"),
                                  loss_fn=loss_fn, step_fn=step_fn)
                except (KeyError, RuntimeError) as exc:
                    r = {"failed": True, "error": str(exc).splitlines()[0][:160]}
                rows.append({**c, **r, "fixed": not r["failed"]})
    finally:
        restore(model, optimizer, scaler, final)
    note = None if base["failed"] else ("the failure did not reproduce on replay from "
                                        f"step {ring_ck['step']}: nothing verified")
    return {"checkpoint_step": ring_ck["step"], "steps": [steps[0]["step"],
                                                          steps[-1]["step"]],
            "reproduced": base["failed"], "rows": rows, "note": note}


def format_rows(rep: dict[str, Any]) -> str:
    lines = [f"Replay from the checkpoint after step {rep.get('checkpoint_step')}, steps "
             f"{rep['steps'][0]}-{rep['steps'][1]}"
             + ("" if rep.get("reproduced") else " (failure NOT reproduced)") + ":"]
    for r in rep["rows"]:
        state = "fails" if r.get("failed") else "no failure"
        if "fixed" in r:
            state = "FIXED" if r["fixed"] else "not fixed"
        extra = f"final loss {r.get('final_loss', math.nan):.4g}" if "final_loss" in r else \
            r.get("error", "")
        lines.append(f"  {r.get('text', r['mitigation'])}: {state} ({extra})")
    return "\n".join(lines)


def save_for_cli(path: Path, model, optimizer, scaler, ck, steps, trace_onset, culprit,
                 loss_fn, step_fn) -> None:
    """What ``stability-lab replay`` needs, in one file (pickled by reference)."""
    import torch

    buf = io.BytesIO()
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
    torch.save({"model": model, "optimizer_class": type(optimizer),
                "optimizer_defaults": optimizer.defaults, "groups": groups,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "checkpoint": ck, "steps": steps, "onset": trace_onset, "culprit": culprit,
                "loss_fn": loss_fn, "step_fn": step_fn}, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
