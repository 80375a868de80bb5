"""stability-lab: is the model wrong, or is the computation unstable?

A failure harness for ML pipelines: matched sweeps over precision, learning rate,
regularization, scaling, conditioning, solver, clipping and seed; stability metrics;
named failure signatures with onset; recommendations with numbers, verified by
re-running with the same seed; stable numerical primitives beside naive twins.

Importing this package does not import torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

from stability_lab.errors import DataError, LabError, UsageError
from stability_lab.spec import RunSpec, Sweep

__all__ = ["__version__", "RunSpec", "Sweep", "run_sweep", "watch", "LabError",
           "UsageError", "DataError"]


def watch(model, optimizer=None, **kwargs):
    """Attach the lab to your own training loop (torch imported here, not at import):
    see :func:`stability_lab.watcher.watch` and docs/watch.md."""
    from stability_lab.watcher import watch as _watch

    return _watch(model, optimizer, **kwargs)


def __getattr__(name: str):
    if name == "run_sweep":
        from stability_lab.lab import run_sweep

        return run_sweep
    raise AttributeError(f"module 'stability_lab' has no attribute {name!r}")
