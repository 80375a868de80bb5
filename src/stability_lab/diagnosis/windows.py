"""The two windowing rules the verdict and the signature detectors share.

Both judge a run on its last steps, never on a single step: :func:`window` says how many
steps that is for a trace of a given length, and :func:`final_stretch` where the final
run of steps meeting a condition began (the onset the verdict and the detectors report).
They live here, below both, so that neither imports the other for them.
"""

from __future__ import annotations

import numpy as np


def window(n: int, cap: int = 10) -> int:
    """The judging window for ``n`` steps: half of them, between 2 and ``cap``."""
    return max(2, min(cap, n // 2 or 1))


def final_stretch(flags: np.ndarray) -> int:
    """0-based start of the last run of True values reaching the end (len if none)."""
    if flags.size == 0 or not flags[-1]:
        return len(flags)
    false = np.flatnonzero(~flags)
    return int(false[-1] + 1) if false.size else 0
