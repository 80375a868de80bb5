"""Small helpers shared by several test modules (imported as ``_helpers``; pytest puts
``tests/`` on ``sys.path``)."""

from __future__ import annotations

import platform
import shutil
import sysconfig
import tracemalloc
from collections.abc import Iterable


def c_compiler_here() -> bool:
    """Linux with Python's C compiler on PATH: where `pip install -e .` builds the
    optional C kernels (setup.py), so a missing kernel there is a failed build."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return platform.system() == "Linux" and bool(shutil.which(cc))


def sum_sq_norms(tensors: Iterable) -> float:
    """Sum of the tensors' squared 2-norms, each norm taken in float64 (the reference
    for a module's gradient, weight and update norms)."""
    import torch

    return sum(float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2 for t in tensors)


def traced_peak(fn) -> int:
    """Peak bytes NumPy and Python allocated while ``fn()`` ran (tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
