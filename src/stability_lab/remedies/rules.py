"""The recommendation registry: what a recommendation is, what a rule reads, and the
one list of rules.

A rule is a function of a :class:`Context` (the diagnosed runs of a sweep, their
conditioning) that returns the :class:`Recommendation` s whose evidence holds. Rule
modules (:mod:`.recommend` for the general and linear-model rules, :mod:`.solver_rules`,
:mod:`.deep_rules`) register theirs with :func:`register_rule`;
:func:`stability_lab.remedies.recommend.recommend` runs them all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from stability_lab.diagnosis.findings import FAILED
from stability_lab.diagnosis.record import RunResult
from stability_lab.formatting import jsonable, round_sig


@dataclass(frozen=True)
class Recommendation:
    action: str
    text: str
    reason: str
    delta: dict[str, Any] = field(default_factory=dict)
    runs: tuple[str, ...] = ()
    evidence: dict[str, Any] = field(default_factory=dict)
    #: what re-running the failing runs with this action showed (set by
    #: :func:`stability_lab.remedies.verify.close_recommendations`): ``status`` is "fixed",
    #: "improved", "not_helping" or "not_verified", with the counts
    verification: dict[str, Any] | None = None

    @property
    def advised(self) -> bool:
        """Printed as advice: verified to fix or improve a run, or not verified yet."""
        return self.verification is None or self.verification.get("status") != "not_helping"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["runs"] = list(self.runs)
        return jsonable(d)


@dataclass
class Context:
    results: list[RunResult]
    #: data variant label -> conditioning facts (cond_XtX, ...)
    conditioning: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: cond(X^T X) after standardizing, per data source (for scale_features)
    standardized_cond: dict[str, float] = field(default_factory=dict)
    axes: list[str] = field(default_factory=list)
    #: (data, scale, precision) -> [smallest, largest] eigenvalue of X^T X / n of the
    #: features the runs saw (the intercept is not penalized, so not included)
    grams: dict[tuple, np.ndarray] = field(default_factory=dict)
    #: run id -> the first result with that id (built on first use)
    _by_id: dict[str, RunResult] | None = field(default=None, init=False, repr=False,
                                                compare=False)

    def matched(self, result: RunResult, **changes: Any) -> RunResult | None:
        """The run of this sweep that differs from ``result`` only by ``changes``."""
        if self._by_id is None:
            self._by_id = {}
            for other in self.results:
                self._by_id.setdefault(other.run_id, other)
        return self._by_id.get(result.spec.replace(**changes).run_id)


Rule = Callable[[Context], list[Recommendation]]
RULES: list[Rule] = []


def register_rule(rule: Rule) -> Rule:
    RULES.append(rule)
    return rule


def _unhealthy(r: RunResult) -> bool:
    return r.verdict.status in FAILED or r.verdict.status == "not_converged"


def _ids(results: list[RunResult]) -> tuple[str, ...]:
    return tuple(r.run_id for r in results)


def safe_lr(bound: float) -> float:
    """The lr recommended under a stability bound 2/L: 0.9 * 2/L, to 2 significant digits."""
    return round_sig(0.9 * bound)
