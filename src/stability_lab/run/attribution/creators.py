"""Creators of non-finite values: the module that made the first inf/NaN of a step.

When a step's loss or gradients are non-finite the step is *replayed*: parameters have
not been updated yet and the run is deterministic, so the same forward and backward are
run again with full checks. In the forward pass a module is a *creator* when all its
inputs (and its own parameters) are finite and its output is not; a module whose inputs
were already non-finite only *passed it on*. In the backward pass a module is a creator
when the gradient reaching its output is finite and the gradient it sends to its inputs
(or to its own parameters) is not (full backward hooks). Containers satisfy the same
test as the child that did it, so only the deepest module meeting it is named. The loss
function is checked as the pseudo-module ``loss_fn`` (finite outputs, non-finite loss;
finite loss, non-finite gradient of the outputs).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch

from stability_lab.run.attribution.modules import all_tensors, qualified_names


def _all_finite(ts: list[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in ts if t.is_floating_point())


def find_creators(model: torch.nn.Module, forward_backward: Callable[[], Any],
                  step: int) -> list[dict[str, Any]]:
    """Replay one step with full checks; the modules that created a non-finite value.

    ``forward_backward(output_hook)`` must run the step's forward pass, call
    ``output_hook(outputs, loss)`` with the model outputs and the loss, and run the
    backward pass. Returns events ``{"step", "pass", "module", "kind", "detail"}``:
    pass ``forward`` or ``backward``; creators first, then (``kind: "passed"``) the
    modules that only passed the value on, in the order they ran.
    """
    names = qualified_names(model)
    children = {name: {names[c] for c in m.modules() if c is not m} for m, name in names.items()}
    fwd: list[tuple[str, str, str]] = []  # (module, kind, detail)
    bwd: list[tuple[str, str, str]] = []
    handles = []

    def fhook(name):
        def hook(module, args, kwargs, output):
            outs = all_tensors(output)
            if _all_finite(outs):
                return
            ins = all_tensors(args) + all_tensors(kwargs)
            params_ok = _all_finite([p.detach() for p in module.parameters(recurse=False)])
            if _all_finite(ins):
                detail = ("finite inputs, non-finite output" if params_ok else
                          "non-finite parameters (set by an earlier update)")
                fwd.append((name, "created", detail))
            else:
                fwd.append((name, "passed", "non-finite input"))
        return hook

    go_finite: dict[str, bool] = {}

    def bhook(name):
        def hook(mod, grad_input, grad_output):
            go = [g for g in grad_output if g is not None]
            gi = [g for g in grad_input if g is not None]
            go_ok = _all_finite(go)
            go_finite[name] = go_ok
            if not go_ok:
                if not _all_finite(gi):
                    bwd.append((name, "passed", "non-finite gradient at its output"))
                return
            if not _all_finite(gi):
                bwd.append((name, "created", "finite gradient at its output, non-finite "
                                             "gradient at its input"))
        return hook

    for module, name in names.items():
        handles.append(module.register_forward_hook(fhook(name), with_kwargs=True))
        handles.append(module.register_full_backward_hook(bhook(name)))
    loss_fwd: list[tuple[str, str, str]] = []
    loss_bwd: list[tuple[str, str, str]] = []

    def output_hook(outputs, loss):
        outs = [t for t in all_tensors(outputs) if t.is_floating_point()]
        loss_finite = bool(torch.isfinite(loss.detach()).all())
        if _all_finite([t.detach() for t in outs]) and not loss_finite:
            loss_fwd.append(("loss_fn", "created", "finite model outputs, non-finite loss"))
        if loss_finite:
            for t in outs:
                if t.requires_grad:
                    t.register_hook(lambda g: loss_bwd.append(
                        ("loss_fn", "created",
                         "finite loss, non-finite gradient of the model outputs"))
                        if not bool(torch.isfinite(g).all()) else None)

    try:
        with warnings.catch_warnings():
            # "full backward hook is firing ... no inputs require gradients": expected for
            # the first layer; its parameter gradients are checked below instead
            warnings.simplefilter("ignore", UserWarning)
            forward_backward(output_hook)
    finally:
        for h in handles:
            h.remove()
    fwd.extend(loss_fwd)
    bwd[:0] = loss_bwd
    # weight gradients: a module whose own parameter gradients are non-finite while the
    # gradient reaching its output was finite created them (e.g. the first layer, whose
    # input needs no gradient)
    recorded = {n for n, _, _ in bwd}
    for module, name in names.items():
        own = [p.grad for p in module.parameters(recurse=False) if p.grad is not None]
        if own and not _all_finite(own) and go_finite.get(name, True) and name not in recorded:
            bwd.append((name, "created", "finite gradient at its output, non-finite "
                                         "gradient of its own parameters"))
    events: list[dict[str, Any]] = []
    for pass_, items in (("forward", fwd), ("backward", bwd)):
        created = [n for n, k, _ in items if k == "created"]
        for name, kind, detail in items:
            if kind == "created" and any(c in children.get(name, ()) for c in created):
                kind, detail = "contains", "its child created the value"
            events.append({"step": step, "pass": pass_, "module": name, "kind": kind,
                           "detail": detail, "type": _type_of(names, name)})
    return events


def _type_of(names: dict, name: str) -> str:
    if name == "loss_fn":
        return "loss"
    for m, n in names.items():
        if n == name:
            return type(m).__name__
    return ""
