"""Naming the module that created a watched step's first inf/NaN.

When a micro-batch's output, or a step's gradients, are not finite, the watcher replays
the step's micro-batches before the weights change (the optimizer pre-hook runs before
the update) with :func:`~stability_lab.run.attribution.find_creators`
(:func:`replay_with_checks`), so the module that created the first inf/NaN is named by
its qualified name, in the forward or the backward pass, with the format it computed in
(autocast included). The replay uses the root module's recorded output gradient, so no
loss function is needed; the gradients and the RNG state are restored after it.
"""

from __future__ import annotations

from typing import Any, Callable

#: creator replays per run (each costs one forward and backward with checks)
MAX_CREATOR_REPLAYS = 3


def replay_with_checks(torch, model, params: list, micro: list[dict[str, Any]], step: int,
                       step_fn: Callable | None, quiet: Callable) -> list[dict[str, Any]]:
    """Replay the micro-batches ``micro`` of optimizer step ``step`` through ``model``
    (the eager root module) with checks; the events of the first micro-batch whose replay
    finds a creator (else of the last). ``step_fn(model, batch)``: the integration's own
    step, for micro-batches recorded by ``begin_batch``; ``quiet()``: a context within
    which the watcher's hooks ignore the model's calls."""
    from stability_lab.run.attribution import ROOT, find_creators, qualified_names

    saved = [None if p.grad is None else p.grad.clone() for p in params]
    rng = torch.get_rng_state()
    events: list[dict[str, Any]] = []
    for mb in micro:
        def fb(output_hook, mb=mb):
            for p in params:
                p.grad = None
            if mb.get("rng") is not None:
                torch.set_rng_state(mb["rng"])
            if step_fn is not None and "batch" in mb and "args" not in mb:
                loss = step_fn(model, mb["batch"])
                output_hook(loss, loss)
                loss.backward()
                return
            on, dt = mb["autocast"]
            with torch.autocast("cpu", dtype=dt or torch.bfloat16, enabled=on):
                output = call_model(model, mb["args"], mb["kwargs"])
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
            with quiet():
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
    for p, g in zip(params, saved):
        p.grad = g
    torch.set_rng_state(rng)
    return events


def call_model(model, args, kwargs):
    """``model(*args, **kwargs)`` as the loop called it."""
    return model(*args, **(kwargs or {}))
