"""What the scenarios share: running one and verifying its fixes; data and trace utilities.

A scenario on a lab task (:func:`spec_scenario`) runs its baseline RunSpec in a small
matched sweep, so the lab's own recommendation rules see it, adds the scenario's
evidence-driven recommendations, and verifies them all with
:func:`stability_lab.remedies.verify.verify_run` on the engine. A scenario whose runs
are computations of its own, or that prepares data for a lab task first
(:func:`config_scenario`), describes a run by a dict: a fix's delta updates the dict,
the matched float64 run is the dict with ``precision`` float64, and the same
``verify_run`` judges the re-runs.
"""

from __future__ import annotations

import copy
import csv
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from stability_lab.catalogue.registry import SCENARIOS, Repro
from stability_lab.diagnosis.record import RunResult
from stability_lab.remedies.rules import Recommendation
from stability_lab.remedies.verify import float64_reference, verify_run
from stability_lab.spec import RunSpec, Sweep
from stability_lab.trace import Trace


def spec_scenario(name: str, base: RunSpec, axes: list,
                  extra: Callable[[RunResult], list[Recommendation]] | None = None,
                  post: Callable[[Trace], None] | None = None,
                  reference: Callable[[RunSpec], RunSpec | None] = float64_reference,
                  ) -> Repro:
    """A scenario on a lab task: a small matched sweep for the rules, then verification.

    ``name`` is the scenario's (its description comes from the registry) and the target
    signature the fixes must remove; ``axes`` the sweep's, ``extra(first)`` the
    scenario's own recommendations for the baseline's first run (those whose action a
    rule already gave are dropped), ``post(trace)`` adds context a detector needs to
    every trace, ``reference`` names a spec's matched float64 run.
    """
    from stability_lab.lab import run_sweep
    from stability_lab.run import engine
    from stability_lab.tasks import get_task

    sweep = run_sweep(Sweep(base, axes))
    first = next(r for r in sweep.results if r.run_id == base.run_id)
    recs = [r for r in sweep.recommendations if first.run_id in r.runs]
    if extra is not None:
        have = {r.action for r in recs}
        recs += [r for r in extra(first) if r.action not in have]

    # the sweep's runs of a task that trains each spec alone (no lockstep cohort), the
    # baseline among them, are not run again: such a run is the same trace bit for bit
    # whatever else runs (same spec, same seed). A cohort's run is re-run with the fixes:
    # the BLAS blocking of its matrix products depends on the cohort's size
    # (tests/test_logistic.py::test_cohort_equals_one_at_a_time), so a baseline taken
    # from the sweep's cohort would differ in rounding from one run beside its fixes
    ran = {r.run_id: r.trace for r in sweep.results
           if not r.trace.error and not get_task(r.spec.task).supports_cohort}

    def run(specs: list[RunSpec]) -> list[Trace]:
        fresh = iter(engine.run_specs([s for s in specs if s.run_id not in ran]))
        traces = [copy.deepcopy(ran[s.run_id]) if s.run_id in ran else next(fresh)
                  for s in specs]
        if post is not None:
            for t in traces:
                post(t)
        return traces

    before, rows, results = verify_run(base, recs, run, reference=reference, target=name)
    return Repro(name, SCENARIOS[name].description, before, before.findings, recs, rows,
                 results)


def config_scenario(name: str, run: Callable[[dict], Trace], base: dict[str, Any],
                    recs: list[Recommendation]) -> Repro:
    """A scenario whose runs are configured by a dict: ``run(config)`` makes one run
    (``name`` as in :func:`spec_scenario`)."""

    def run_all(configs: list[dict]) -> list[Trace]:
        return [run(c) for c in configs]

    def reference(config: dict) -> dict | None:
        precision = config.get("precision")
        return {**config, "precision": "float64"} if precision not in (None, "float64") \
            else None

    before, rows, results = verify_run(base, recs, run_all, lambda c, d: {**c, **d},
                                       reference, target=name)
    return Repro(name, SCENARIOS[name].description, before, before.findings, recs, rows,
                 results)


def lr_bound(spec: RunSpec) -> float:
    """2/L of a logistic-regression spec's data variant and lambda: gradient descent with
    a smaller lr cannot diverge."""
    from stability_lab.tasks.logistic import LogisticRegression

    task = LogisticRegression()
    return task.lr_bound(spec, task.prepare(spec))


def catalogue_spec(name: str, config: dict[str, Any]) -> RunSpec:
    """The RunSpec that names a run of scenario ``name``'s own computation (task
    ``catalogue:NAME``): its identity and, through its params, its config."""
    params = {k: v for k, v in config.items() if k not in ("precision", "lr", "lam", "seed")}
    return RunSpec(task=f"catalogue:{name}", data=str(config.get("data", name)),
                   precision=str(config.get("precision", "float64")),
                   lr=float(config.get("lr", 0.0)), lam=float(config.get("lam", 0.0)),
                   seed=int(config.get("seed", 0)), epochs=int(config.get("epochs", 0)),
                   params=tuple(sorted((k, v) for k, v in params.items()
                                       if isinstance(v, (int, float, str, bool)))))


def catalogue_trace(name: str, config: dict[str, Any], metrics: dict[str, np.ndarray],
                    params: np.ndarray | None, probes: dict | None = None,
                    extras: dict | None = None, step_unit: str = "epoch") -> Trace:
    """The trace of a run of scenario ``name``'s own computation, in the format of
    ``config['precision']``."""
    from stability_lab.precision import FORMATS
    from stability_lab.trace import environment

    spec = catalogue_spec(name, config)
    fmt = FORMATS[spec.precision]
    return Trace(spec=spec, metrics=metrics, probes=probes or {}, meta=environment(),
                 step_unit=step_unit, extras={"format": {"name": fmt.name, "eps": fmt.eps,
                                                       "max": fmt.max, "tiny": fmt.tiny},
                                            **(extras or {})},
                 final_params=params)


def write_csv(path: Path, X: np.ndarray, y: np.ndarray, names: Sequence[str]) -> str:
    """Features and a ``target`` column as a CSV the lab's loader reads (values written
    with ``repr``, so they read back exactly); returns the path."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*names, "target"])
        for row, label in zip(X, y):
            w.writerow([repr(float(v)) for v in row] + [int(label)])
    return str(path)
