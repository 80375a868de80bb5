"""Findings and verdicts: the named results of diagnosis.

A :class:`Finding` is a failure signature seen in a trace, with the step (epoch or
optimizer step, 1-based) at which it began and the numbers that prove it. A
:class:`Verdict` is the one-word outcome of a run with its onset, printed the way the
brief shows it: ``diverged (loss=inf at epoch 14)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from stability_lab.formatting import jsonable

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
        return jsonable(asdict(self))


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
        return jsonable(asdict(self))
