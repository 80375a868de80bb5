"""The worked examples of docs/extending.md, run: the code the page shows is the code
that works (a new task trained by the engine, a new policy applied by its loop)."""

from __future__ import annotations

import math
import pathlib
import re
import sys

import pytest

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def _block(first_line: str) -> str:
    found = [b for b in _blocks() if b.startswith(first_line)]
    assert len(found) == 1, f"docs/extending.md: no single block starting {first_line!r}"
    return found[0]


def test_the_task_example_is_one_file_and_one_entry_and_runs(tmp_path, monkeypatch):
    from stability_lab.spec import RunSpec
    from stability_lab.spec import tasks as registry

    (tmp_path / "doc_sine_task.py").write_text(_block("# file: tasks/sine.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = eval(_block("TaskEntry(").strip().rstrip(","), {"TaskEntry": registry.TaskEntry})
    assert entry.name == "sine" and entry.target == "stability_lab.tasks.sine:SineTask"
    entry = registry.TaskEntry(entry.name, "doc_sine_task:SineTask", entry.default_data,
                               entry.family)
    monkeypatch.setitem(registry.TASKS, entry.name, entry)
    try:
        from stability_lab.run.engine import run_specs

        specs = [RunSpec(task="sine", data="sine", policy=p, lr=0.01, epochs=40)
                 for p in ("float32", "bfloat16")]
        traces = run_specs(specs)
    finally:
        sys.modules.pop("doc_sine_task", None)
    for trace in traces:
        assert trace.error is None, trace.error
        loss = trace.metrics["loss"]
        assert len(loss) == 40 and loss[-1] < 0.5 * loss[0]  # it learns
    # matched runs: the same initial weights, so the same first loss to the format's
    # rounding of the forward pass
    assert math.isclose(traces[0].metrics["loss"][0], traces[1].metrics["loss"][0],
                        rel_tol=0.05)


def test_the_policy_example_is_one_entry_and_trains(monkeypatch):
    from stability_lab import precision
    from stability_lab.run.engine import run_specs
    from stability_lab.spec import RunSpec

    policy = eval(_block("Policy(").strip().rstrip(","), {"Policy": precision.Policy})
    monkeypatch.setitem(precision._TABLE, policy.name, policy)
    assert "bfloat16 GEMMs with tensor-core semantics" in policy.semantics()
    spec = RunSpec(task="mlp", data="digits", policy=policy.name, lr=0.01, epochs=1,
                   params=(("depth", 1), ("width", 8)))
    (trace,) = run_specs([spec])
    assert trace.error is None, trace.error
    assert trace.extras["policy"] == policy.name and trace.extras["format"]["name"] == "float32"
    assert trace.meta["semantics"] == policy.semantics()


@pytest.mark.parametrize("registry", ["spec/tasks.py", "precision/__init__.py",
                                      "diagnosis/signatures/registry.py"])
def test_the_page_names_registries_that_exist(registry):
    assert registry in DOC.read_text()
    assert (pathlib.Path(__file__).resolve().parents[1] / "src" / "stability_lab"
            / registry).exists()


def test_the_solver_example_is_one_file_and_one_entry_and_solves(tmp_path, monkeypatch):
    from types import MappingProxyType

    import numpy as np

    from stability_lab.linalg import Solver, solvers
    from stability_lab.linalg.nist import load_problem

    (tmp_path / "doc_qr_pivoted.py").write_text(_block("# file: linalg/qr_pivoted.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    record = eval(_block('Solver("qr_pivoted"').strip().rstrip(","),
                  {"Solver": Solver, "MappingProxyType": MappingProxyType})
    assert record.function == "stability_lab.linalg.qr_pivoted:solve_qr_pivoted"
    record = Solver(**{**record.__dict__, "function": "doc_qr_pivoted:solve_qr_pivoted"})
    monkeypatch.setitem(solvers._BY_NAME, record.name, record)
    try:
        # NIST's Longley: a backward-stable QR keeps about 16 - log10 cond(X) digits
        problem = load_problem("Longley")
        X, y = problem.design(), problem.y
        sol = solvers.solve(X, y, solver="qr_pivoted", reference=problem.certified)
    finally:
        sys.modules.pop("doc_qr_pivoted", None)
    assert sol.diagnostics.lre_min > 7.5
    assert np.allclose(sol.coef, problem.certified, rtol=1e-6)


def test_the_signature_example_is_its_file_and_its_entry():
    """The page shows collapse_to_chance's detector and record as they are in its file,
    and its registry entry as it is in ENTRIES; the registered record fires on its
    failing trace and not on its healthy one (its contract test checks the rest)."""
    from stability_lab.diagnosis.signatures import SIGNATURES

    folder = DOC.parents[1] / "src" / "stability_lab" / "diagnosis" / "signatures"
    source = (folder / "collapse_to_chance.py").read_text()
    detector = _block("# file: diagnosis/signatures/collapse_to_chance.py")
    assert detector.split("\n", 1)[1] in source
    assert _block("COLLAPSE_TO_CHANCE = Signature(") in source
    entry = _block("collapse_to_chance.COLLAPSE_TO_CHANCE,").strip()
    assert f"\n    {entry}\n" in (folder / "registry.py").read_text()
    record = SIGNATURES["collapse_to_chance"]
    assert record.detect(record.fires_on()) and not record.detect(record.silent_on())
