"""The :class:`Signature` record: all the lab says about one failure signature, said once.

A record is declared beside its detector (one file per signature or per family of
signatures) and listed once in :mod:`.registry`. It carries:

- ``name`` and a one-line ``description``;
- ``detect``: the detector, a pure function of a :class:`~stability_lab.trace.Trace`
  returning :class:`~stability_lab.diagnosis.findings.Finding` s of this signature only
  (1-based onset, the numbers that prove it); it never runs training and never raises on
  a trace that lacks its evidence;
- ``applies_to``: the traces it runs on, a key of :data:`APPLIES_TO`;
- ``playbook``: what the user sees, the cause and the fixes (cheapest first): the text of
  the signature's section of ``docs/playbook.md``;
- ``mitigations``: the names of the registered recommendation rules
  (:data:`stability_lab.remedies.recommend.RULES`) whose action fixes it; or, where no
  rule can, ``no_mitigation`` says why;
- ``scenario``: the catalogue scenario that reproduces it (``stability-lab repro NAME``);
  or, where there is none yet, ``no_scenario`` says why;
- ``fires_on`` and ``silent_on``: builders of a minimal hand-made trace on which the
  detector fires, and of a healthy one on which it stays silent.

:file:`tests/test_signature_contract.py` holds every record to these promises, so adding
a record is what tests it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from stability_lab.diagnosis.findings import Finding
from stability_lab.trace import Trace

Detector = Callable[[Trace], list[Finding]]


def every_trace(trace: Trace) -> bool:
    """Every run's trace: the detector reads what it needs and is silent without it."""
    return True


def deep_net_trace(trace: Trace) -> bool:
    """A deep-net model's trace, from the lab's training loop or from the watcher: both
    record the per-layer attribution summary (``extras['attribution']``, empty when
    attribution is off), which the deep-net detectors read."""
    return "attribution" in trace.extras


#: the classes of traces a signature can apply to, by the name its record gives
APPLIES_TO: dict[str, Callable[[Trace], bool]] = {
    "all": every_trace,
    "deep_net": deep_net_trace,
}


@dataclass(frozen=True)
class Playbook:
    """A signature's section of the playbook, in the user's words."""

    #: what the user sees in the run
    symptom: str
    #: why it happens, with the numbers of the mechanism
    cause: str
    #: the fixes, cheapest first
    fixes: tuple[str, ...]


@dataclass(frozen=True)
class Signature:
    name: str
    description: str
    detect: Detector
    applies_to: str
    playbook: Playbook
    mitigations: tuple[str, ...]
    scenario: str | None
    fires_on: Callable[[], Trace]
    silent_on: Callable[[], Trace]
    no_mitigation: str = ""
    no_scenario: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"signature name {self.name!r} is not snake_case")
        if self.applies_to not in APPLIES_TO:
            raise ValueError(f"{self.name}: applies_to {self.applies_to!r} is not one of "
                             f"{', '.join(APPLIES_TO)}")
        if bool(self.mitigations) == bool(self.no_mitigation):
            raise ValueError(f"{self.name}: give either mitigations or no_mitigation (why)")
        if (self.scenario is None) == (not self.no_scenario):
            raise ValueError(f"{self.name}: give either a scenario or no_scenario (why)")
        if not self.playbook.fixes:
            raise ValueError(f"{self.name}: the playbook lists no fix")

    def applies(self, trace: Trace) -> bool:
        """Whether the detector runs on this trace."""
        return APPLIES_TO[self.applies_to](trace)
