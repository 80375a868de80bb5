"""The model's modules by name, and the tensors in what a module takes or returns.

Every attribution record names a module by its qualified name in
``model.named_modules()``; the root module, whose name there is empty, is :data:`ROOT`.
"""

from __future__ import annotations

from typing import Any

import torch

#: the name of the root module (``named_modules`` gives it the empty name)
ROOT = "<model>"


def qualified_names(model: torch.nn.Module) -> dict[torch.nn.Module, str]:
    """``{module: qualified name}`` over ``model.named_modules()``, the root as :data:`ROOT`."""
    return {m: (name or ROOT) for name, m in model.named_modules()}


def first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor in a module's output (a tensor, or nested lists, tuples and dicts
    of them), depth first; None where there is none."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        for v in value:
            t = first_tensor(v)
            if t is not None:
                return t
    if isinstance(value, dict):
        for v in value.values():
            t = first_tensor(v)
            if t is not None:
                return t
    return None


def all_tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in a value (a tensor, or nested lists, tuples and dicts of them)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in all_tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in all_tensors(v)]
    return []
