"""What an estimate says: the :class:`Estimate` record of a sweep's wall time and peak
memory, whether it fits in :data:`MARGIN` of the memory available (the guard the
``run`` command applies before anything is written), and its one-line text in decimal
units (:func:`format_bytes`, :func:`format_seconds`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: refuse when the sweep needs more than this fraction of the memory available
MARGIN = 0.8


@dataclass
class Estimate:
    """What a sweep will take: :attr:`seconds` of wall time and :attr:`peak_bytes` of
    resident memory (None where the task has no cost model), before any run starts."""

    task: str
    runs: int
    epochs: tuple[int, int]  # smallest and largest epochs (solves: (1, 1))
    rows: int | None
    cols: int | None
    seconds: float | None
    #: the process's peak resident bytes, what it holds now included
    peak_bytes: int | None
    #: resident bytes now (the libraries imported), part of peak_bytes
    base_bytes: int
    available_bytes: int | None
    #: "" or why the numbers are coarse or missing
    note: str = ""
    #: the terms of the memory model, bytes
    parts: dict[str, int] = field(default_factory=dict)
    #: the time model's seconds: "prepare" (loading, probes of the data), "runs", "after"
    #: (conditioning and advisories once every run is done)
    time_parts: dict[str, float] = field(default_factory=dict)
    step_unit: str = "epoch"

    @property
    def extra_bytes(self) -> int | None:
        """Memory the sweep still has to allocate (its peak less what is resident)."""
        return None if self.peak_bytes is None else max(self.peak_bytes - self.base_bytes, 0)

    @property
    def fits(self) -> bool:
        """Whether the sweep fits in :data:`MARGIN` of the memory available (True when
        either is unknown: nothing is refused on a guess)."""
        if self.extra_bytes is None or self.available_bytes is None:
            return True
        return self.extra_bytes <= MARGIN * self.available_bytes

    def what(self) -> str:
        """``72 runs x 200 epochs on 569 x 30``: what was asked."""
        lo, hi = self.epochs
        if self.step_unit == "solve":
            runs = f"{self.runs:,} solve{'s' if self.runs != 1 else ''}"
        else:
            steps = f"{lo}" if lo == hi else f"{lo}-{hi}"
            runs = f"{self.runs:,} run{'s' if self.runs != 1 else ''} x {steps} {self.step_unit}s"
        if self.rows is None:
            return f"{runs} of {self.task}"
        return f"{runs} on {self.rows:,} x {self.cols:,}"

    def text(self) -> str:
        """One line: ``estimate: 72 runs x 200 epochs on 569 x 30: ~12 s, peak ~380 MB
        (of 20.1 GB available)``."""
        head = f"estimate: {self.what()}"
        if self.peak_bytes is None:
            return f"{head}: {self.note or 'no estimate for this task'}"
        avail = ("" if self.available_bytes is None
                 else f" (of {format_bytes(self.available_bytes)} available)")
        secs = "" if self.seconds is None else f"~{format_seconds(self.seconds)}, "
        note = f"; {self.note}" if self.note else ""
        return f"{head}: {secs}peak ~{format_bytes(self.peak_bytes)}{avail}{note}"

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "runs": self.runs, "epochs": list(self.epochs),
                "rows": self.rows, "cols": self.cols, "seconds": self.seconds,
                "peak_bytes": self.peak_bytes, "base_bytes": self.base_bytes,
                "available_bytes": self.available_bytes, "fits": self.fits,
                "note": self.note, "parts": dict(self.parts),
                "time_parts": dict(self.time_parts), "text": self.text()}


def format_bytes(b: float) -> str:
    """Decimal units: 180 MB, 2.4 GB."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= size:
            v = b / size
            return f"{v:.1f} {unit}" if v < 10 else f"{v:.0f} {unit}"
    return f"{int(b)} B"


def format_seconds(s: float) -> str:
    """12 s, 3.5 min, 2.1 h."""
    if s < 1:
        return "1 s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min" if s < 600 else f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"
