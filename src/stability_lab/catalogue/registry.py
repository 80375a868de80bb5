"""The catalogue's registry: the scenarios by name, and what running one returns.

Each scenario module declares itself with :func:`scenario` (the name of the signature
it reproduces and a one-line description) on the function that builds its
:class:`Repro` in a work folder. Its playbook text (what you see, the cause, the fixes
cheapest first) is the one the signature's record declares
(:data:`stability_lab.diagnosis.signatures.SIGNATURES`): said once, beside the detector.

``RUNNERS`` holds, for the scenarios whose runs are computations of their own rather
than runs of a lab task (task ``catalogue:NAME``), the function that re-runs a stored
run from its config (``stability-lab portability``).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from stability_lab.diagnosis.findings import Finding
from stability_lab.diagnosis.signatures import SIGNATURES
from stability_lab.errors import UsageError
from stability_lab.formatting import jsonable
from stability_lab.diagnosis.record import RunResult
from stability_lab.remedies.rules import Recommendation
from stability_lab.trace import Trace


@dataclass
class Repro:
    """One scenario run: the baseline, its findings, the recommendations and the
    before/after rows of their verification (``results``: every run made, references
    included, for the store)."""

    signature: str
    description: str
    baseline: RunResult
    findings: list[Finding]
    recommendations: list[Recommendation]
    verification: list[dict[str, Any]]
    results: list[RunResult] = field(default_factory=list)

    @property
    def reproduced(self) -> bool:
        return any(f.signature == self.signature for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        rows = [{"mitigation": r["mitigation"], "delta": r["delta"], "before": r["before"],
                 "after": r["after"], "fixed": r["fixed"], "run_id": r["run_id"],
                 "fixed_run_id": r["fixed_run_id"]} for r in self.verification]
        return jsonable({
            "signature": self.signature,
            "description": self.description,
            "reproduced": self.reproduced,
            "baseline": {"id": self.baseline.run_id, "config": self.baseline.spec.to_dict(),
                         "verdict": self.baseline.verdict.to_dict()},
            "findings": [f.to_dict() for f in self.findings],
            "recommendations": [r.to_dict() for r in self.recommendations],
            "verification": rows,
        })


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    build: Callable[[Path], Repro]

    # the playbook text: the signature record's, said once beside its detector
    @property
    def symptom(self) -> str:
        return SIGNATURES[self.name].playbook.symptom

    @property
    def cause(self) -> str:
        return SIGNATURES[self.name].playbook.cause

    @property
    def fixes(self) -> tuple[str, ...]:
        """The fixes, cheapest first."""
        return SIGNATURES[self.name].playbook.fixes


#: the scenarios in playbook order (the order their modules are imported)
SCENARIOS: dict[str, Scenario] = {}

#: for a scenario whose runs are its own computation (task ``catalogue:NAME``): the
#: function that re-runs a stored run from its config, ``RUNNERS[NAME](config)``
RUNNERS: dict[str, Callable[[dict], Trace]] = {}


def scenario(name: str, description: str):
    """Declare the scenario reproducing signature ``name``: decorates the function that
    builds its Repro in a folder. Its playbook text is the signature record's."""

    def wrap(fn: Callable[[Path], Repro]) -> Callable[[Path], Repro]:
        if name not in SIGNATURES:
            raise ValueError(f"scenario {name!r}: no signature record of that name")
        SCENARIOS[name] = Scenario(name, description, fn)
        return fn

    return wrap


def names() -> list[str]:
    return list(SCENARIOS)


def get(name: str) -> Scenario:
    if name not in SCENARIOS:
        raise UsageError(
            f"Unknown signature {name!r}; expected one of: {', '.join(SCENARIOS)} "
            "(see 'stability-lab repro --list')."
        )
    return SCENARIOS[name]


def repro(name: str, workdir: str | Path | None = None) -> Repro:
    """Run one scenario; ``workdir`` holds generated data files (a temp dir if None)."""
    sc = get(name)
    if workdir is None:
        with tempfile.TemporaryDirectory() as tmp:
            return sc.build(Path(tmp))
    path = Path(workdir) / "catalogue-data"
    path.mkdir(parents=True, exist_ok=True)
    return sc.build(path)


def evidence_line(f: Finding) -> str:
    onset = "" if f.onset is None else f" (onset {f.onset})"
    return f"{f.signature}{onset}: {f.message}"
