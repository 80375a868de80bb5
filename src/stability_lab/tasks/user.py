"""A user's own model: ``--task path/to/file.py:build`` or ``--task package.module:build``.

``build()`` takes no arguments and returns ``(model, batches, loss_fn)``: a
``torch.nn.Module``, an iterable of ``(inputs, targets)`` batches (inputs a tensor, a
tuple of tensors passed positionally, or a dict passed by keyword), and
``loss_fn(outputs, targets)`` returning a scalar tensor. ``build`` is called once per
run under ``torch.manual_seed(seed)``, so a deterministic ``build`` gives every policy
of a sweep the same initial weights and batches. One epoch is one pass over the
batches; an optional ``accuracy(outputs, targets)`` attribute on ``loss_fn`` is not
needed: the end probe is the mean loss over the batches.

``z_loss`` (``--z-loss Z``) adds ``Z * logsumexp(outputs, dim=-1)^2`` (mean over the
other dimensions) to the training loss, as for the lab's own tasks: the model's outputs
must then be a floating tensor of logits with the classes in the last dimension (checked
on the first batch). The reported ``eval_loss`` is the user's loss alone.

Loading the file happens in ``prepare``; every way it can go wrong (missing file or
function, ``build`` raising, the wrong return shape, a loss that is not a scalar) is a
one-line :class:`~stability_lab.errors.UsageError`.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any, Callable

from stability_lab.tasks.deep import DeepTask
from stability_lab.tasks.mlp import z_loss
from stability_lab.errors import UsageError
from stability_lab.spec import RunSpec


def split_target(name: str) -> tuple[str, str]:
    where, _, func = name.rpartition(":")
    if not where or not func:
        raise UsageError(f"A user model is given as path/to/file.py:build or "
                         f"package.module:build; got {name!r}.")
    return where, func


def load_build(name: str) -> Callable[[], Any]:
    """The ``build`` function named by ``file.py:build`` or ``package.module:build``."""
    where, func = split_target(name)
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where)
        if not path.is_file():
            raise UsageError(f"User model file {where!r} does not exist; pass an existing "
                             "path/to/file.py:build.")
        mod_name = f"stability_lab_user_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise UsageError(f"Cannot import {where!r} as Python; pass a .py file.")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise UsageError(f"Importing {where!r} raised {type(exc).__name__}: "
                             f"{_first_line(exc)}; fix the file and run again.") from None
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            raise UsageError(f"Cannot import module {where!r} ({_first_line(exc)}); put its "
                             "package on PYTHONPATH or pass path/to/file.py:build.") from None
        except Exception as exc:
            raise UsageError(f"Importing {where!r} raised {type(exc).__name__}: "
                             f"{_first_line(exc)}; fix the module and run again.") from None
    build = getattr(module, func, None)
    if build is None or not callable(build):
        raise UsageError(f"{where!r} has no function {func!r}; define {func}() returning "
                         "(model, batches, loss_fn).")
    return build


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def call_build(build: Callable[[], Any], name: str) -> tuple[Any, list, Callable]:
    """Call ``build()`` and check what it returned; batches are materialized."""
    import torch

    try:
        out = build()
    except Exception as exc:
        raise UsageError(f"{name}() raised {type(exc).__name__}: {_first_line(exc)}; "
                         "fix build() and run again.") from None
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        got = f"a {type(out).__name__}" + (f" of length {len(out)}"
                                           if isinstance(out, (tuple, list)) else "")
        raise UsageError(f"{name}() must return (model, batches, loss_fn); it returned {got}.")
    model, batches, loss_fn = out
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{name}() must return a torch.nn.Module first; got "
                         f"{type(model).__name__}.")
    if not callable(loss_fn):
        raise UsageError(f"{name}() must return a callable loss_fn(outputs, targets) third; "
                         f"got {type(loss_fn).__name__}.")
    try:
        batches = list(batches)
    except TypeError:
        raise UsageError(f"{name}() must return an iterable of (inputs, targets) batches "
                         f"second; got {type(batches).__name__}.") from None
    if not batches:
        raise UsageError(f"{name}() returned no batches; give at least one (inputs, targets).")
    for i, b in enumerate(batches):
        if not isinstance(b, (tuple, list)) or len(b) != 2:
            raise UsageError(f"Batch {i} from {name}() must be an (inputs, targets) pair; got "
                             f"{type(b).__name__}" + (f" of length {len(b)}"
                                                      if isinstance(b, (tuple, list)) else "")
                             + ".")
    if not any(p.requires_grad for p in model.parameters()):
        raise UsageError(f"The model from {name}() has no trainable parameters.")
    return model, batches, loss_fn


class UserTask(DeepTask):
    name = "user"

    def __init__(self, target: str = "") -> None:
        self.target = target

    def validate(self, spec: RunSpec) -> None:
        super().validate(spec)
        split_target(spec.task)

    def data_key(self, spec: RunSpec):
        return (spec.task,)

    def prepare(self, spec: RunSpec):
        import torch

        from stability_lab.tasks.base import call_model, check_loss

        build = load_build(spec.task)
        name = spec.task.rpartition(":")[2]
        torch.manual_seed(int(spec.seed))
        model, batches, loss_fn = call_build(build, name)
        inputs, targets = batches[0]
        try:
            outputs = call_model(model, inputs)
            loss = loss_fn(outputs, targets)
        except Exception as exc:
            raise UsageError(f"The first batch from {name}() fails in float32: "
                             f"{type(exc).__name__}: {_first_line(exc)}.") from None
        check_loss(loss)
        if not loss.requires_grad:
            raise UsageError(f"The loss from {name}()'s loss_fn does not depend on the model's "
                             "parameters (no gradient); return a loss computed from outputs.")
        if spec.param("z_loss") and not (isinstance(outputs, torch.Tensor)
                                         and outputs.is_floating_point()
                                         and outputs.dim() >= 2 and outputs.shape[-1] >= 2):
            got = (f"a tensor of shape {tuple(outputs.shape)}" if isinstance(outputs, torch.Tensor)
                   else type(outputs).__name__)
            raise UsageError(f"--z-loss needs {name}()'s model to output logits with the "
                             f"classes in the last dimension (N, C >= 2); it outputs {got}. "
                             "Leave --z-loss out for this model.")
        return {"build": build, "name": name, "n_batches": len(batches)}

    def problem(self, spec: RunSpec, prepared):
        from stability_lab.tasks.base import Problem

        state: dict[str, Any] = {}

        def model_fn():
            model, batches, loss_fn = call_build(prepared["build"], prepared["name"])
            state["batches"], state["loss_fn"] = batches, loss_fn
            return model

        def batch_at(i: int):
            b = state["batches"]
            return b[i % len(b)]

        z = float(spec.param("z_loss") or 0.0)

        def loss_fn(outputs, targets):
            loss = state["loss_fn"](outputs, targets)
            return loss + z_loss(outputs, z) if z else loss

        def eval_fn(model, forward):
            total = 0.0
            for inputs, targets in state["batches"]:
                out = forward(inputs)
                total += float(state["loss_fn"](_float(out), targets).double())
            return {"eval_loss": total / len(state["batches"])}

        return Problem(model_fn, batch_at, spec.epochs * prepared["n_batches"], loss_fn,
                       eval_fn, optimizer="momentum",
                       meta={"data": f"user batches from {spec.task}",
                             "batches_per_epoch": prepared["n_batches"]})


def _float(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.float()
    if isinstance(value, (list, tuple)):
        return type(value)(_float(v) for v in value)
    return value

