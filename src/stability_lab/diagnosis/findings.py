"""Findings and verdicts: the named results of diagnosis.

A :class:`Finding` is a failure signature seen in a trace, with the step (epoch or
optimizer step, 1-based) at which it began and the numbers that prove it. A
:class:`Verdict` is the one-word outcome of a run with its onset, printed the way the
brief shows it: ``diverged (loss=inf at epoch 14)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

VERDICTS = (
    "converged",
    "not_converged",
    "diverged",
    "overflow",
    "nan",
    "oscillating",
    "stagnated",
    "error",
)
FAILED = ("diverged", "overflow", "nan", "oscillating", "stagnated", "error")


@dataclass(frozen=True)
class Finding:
    signature: str
    onset: int | None
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    #: "error" (the run is lost), "warning" (results suspect), "info"
    severity: str = "warning"
    #: where in a model, for deep nets (qualified module name); None for the whole run
    location: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class Verdict:
    status: str
    onset: int | None = None
    detail: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status in FAILED

    def __str__(self) -> str:
        word = self.status.replace("_", " ")
        return f"{word} ({self.detail})" if self.detail else word

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


def _jsonable(value: Any) -> Any:
    """Plain JSON types; non-finite floats become the strings 'inf', '-inf', 'nan'."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, (np.floating, float)):
        f = float(value)
        if math.isnan(f):
            return "nan"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return f
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return value


jsonable = _jsonable
