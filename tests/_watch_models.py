"""Tiny models for the watcher's tests (importable, so replay can pickle them)."""

from __future__ import annotations

import torch


class Net(torch.nn.Module):
    """inp -> ReLU -> amp -> LayerNorm -> head. ``amp`` starts with weights x300, so an
    outlier batch (inputs x1000) makes its float16 output overflow under autocast, while
    ``inp``'s output stays inside float16's range: ``amp`` is the creator, and running it
    in float32 fixes the run (LayerNorm runs in float32 under autocast)."""

    def __init__(self, gain: float = 300.0):
        super().__init__()
        self.inp = torch.nn.Linear(8, 32)
        self.act = torch.nn.ReLU()
        self.amp = torch.nn.Linear(32, 32)
        self.norm = torch.nn.LayerNorm(32)
        self.head = torch.nn.Linear(32, 4)
        with torch.no_grad():
            self.amp.weight.mul_(gain)

    def forward(self, x):
        return self.head(self.norm(self.amp(self.act(self.inp(x)))))


def batches(n: int, outlier_at: int | None = None, seed: int = 1, size: int = 32):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        x = torch.randn(size, 8, generator=g)
        y = torch.randint(0, 4, (size,), generator=g)
        if i == outlier_at:
            x = x * 1000
        out.append((x, y))
    return out


def cross_entropy(outputs, targets):
    return torch.nn.functional.cross_entropy(outputs.float(), targets)
