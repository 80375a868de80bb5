"""What a least-squares solve returns, and the measure of its accuracy.

:class:`LinearSolution` holds the coefficients and a :class:`SolveDiagnostics` record
(condition numbers, numerical rank and the cutoff that decided it, predicted digits
lost and, when a reference was given, the digits that actually agree with it).

Accuracy against a reference is the log relative error (LRE), the number of agreeing
significant digits: ``LRE = -log10(|b - c| / |c|)``, or ``-log10 |b|`` when ``c == 0``,
capped at 15 (McCullough, "Assessing the reliability of statistical software", Am.
Stat. 1998), computed per coefficient by :func:`lre`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from stability_lab.formatting import jsonable

__all__ = ["LRE_CAP", "LinearSolution", "SolveDiagnostics", "lre"]

#: the most digits an LRE reports: the precision of NIST's certified values
LRE_CAP = 15.0


@dataclass
class SolveDiagnostics:
    """What a solve did and how far its digits can be trusted.

    ``condition_number`` is the 2-norm condition number ``s_max/s_min`` of X;
    ``condition_number_equilibrated`` that of X with columns scaled to unit 2-norm
    (the one that governs column-scaling-invariant solvers). ``predicted_digits_lost``
    is ``log10`` of the first-order error bound of the solver: ``log10(k + k^2 tan t)``
    for backward-stable orthogonal methods, ``2 log10 k`` for normal equations, with
    ``k`` the governing condition number and ``tan t = ||r|| / (||X|| ||b||)``
    (Higham thm. 20.3). ``lre`` is per-coefficient agreement with a reference.
    """

    solver: str
    precision: str
    n_samples: int
    n_features: int
    status: str = "ok"
    message: str = ""
    condition_number: float = math.nan
    condition_number_equilibrated: float = math.nan
    condition_method: str = ""
    numerical_rank: int | None = None
    rank_deficiency: int | None = None
    rank_cutoff: float | None = None
    rank_cutoff_absolute: float | None = None
    predicted_digits_lost: float = math.nan
    predicted_digits: float = math.nan
    residual_norm: float = math.nan
    residual_sd: float = math.nan
    iterations: int | None = None
    converged: bool | None = None
    refinement_steps: int | None = None
    factor_precision: str | None = None
    rank_decided_by: str = "solver"
    path: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    lre: list[float] | None = None
    lre_min: float | None = None
    warnings: list[str] = field(default_factory=list)
    time_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite floats become strings ``"inf"``, ``"nan"``)."""
        return jsonable(asdict(self))


@dataclass
class LinearSolution:
    """Coefficients of a least-squares solve and its :class:`SolveDiagnostics`."""

    coef: np.ndarray
    diagnostics: SolveDiagnostics

    @property
    def ok(self) -> bool:
        return self.diagnostics.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "coef": jsonable([float(c) for c in np.asarray(self.coef, dtype=np.float64)]),
            "diagnostics": self.diagnostics.to_dict(),
        }


def lre(estimate: Any, certified: Any, cap: float = LRE_CAP) -> np.ndarray:
    """Log relative error: the number of significant digits ``estimate`` shares with
    ``certified``, elementwise.

    ``LRE = -log10(|b - c| / |c|)``, or ``-log10(|b|)`` where ``c == 0``; clipped to
    ``[0, cap]`` (cap 15, the precision of the NIST certified values); a non-finite
    estimate scores 0 (McCullough 1998; NIST StRD).
    """
    b = np.atleast_1d(np.asarray(estimate, dtype=np.float64))
    c = np.atleast_1d(np.asarray(certified, dtype=np.float64))
    out = np.zeros(np.broadcast(b, c).shape)
    b, c = np.broadcast_arrays(b, c)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        err = np.where(c != 0, np.abs(b - c) / np.abs(np.where(c != 0, c, 1.0)), np.abs(b))
        val = np.where(err == 0, cap, -np.log10(err))
    val = np.where(np.isfinite(b), val, 0.0)
    out[...] = np.clip(val, 0.0, cap) + 0.0  # + 0.0 turns -0.0 into 0.0
    return out
