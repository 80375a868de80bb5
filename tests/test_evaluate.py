"""The labeled diagnosis corpus and ``stability-lab evaluate``.

CI runs the corpus's fast subset here: the test fails when the targets (verdict
accuracy >= 95%, action recall >= 90%, no false alarm on a healthy case) are missed on
it. The whole corpus is ``stability-lab evaluate`` (docs/diagnosis.md has its table).
"""

from __future__ import annotations

import json


from stability_lab.evaluate import DEFAULT_CORPUS, evaluate, load


def test_corpus_covers_what_issue_11_asks():
    scenarios = load(DEFAULT_CORPUS)
    names = {s["name"] for s in scenarios}
    assert len(scenarios) >= 40 and len(names) == len(scenarios)
    healthy = [s for s in scenarios if s["truth"].get("healthy")]
    assert len(healthy) >= 10
    assert any(s["data"] == {**s["data"], "labels": "random"} for s in healthy
               if isinstance(s.get("data"), dict))  # model wrong, computation fine
    assert {s.get("task", "logistic_regression") for s in scenarios} >= {
        "logistic_regression", "linear_regression", "mlp", "attention"}
    assert any(s.get("task", "").startswith("corpus:") for s in scenarios)  # a user model
    for k in range(1, 9):
        assert any(n.startswith(f"obs{k}_") or f"_obs{k}_" in n for n in names), k
    assert {s["split"] for s in scenarios} == {"dev", "held_out"}
    for s in scenarios:
        t = s["truth"]
        assert t["verdict"] and t.get("cause"), s["name"]


def test_fast_subset_meets_the_targets():
    rep = evaluate(fast=True)
    assert rep["all"]["scenarios"] >= 5
    assert rep["all"]["healthy"] >= 2
    assert rep["meets_targets"], json.dumps(rep["scores"], indent=1)


def test_missed_target_fails_the_command(tmp_path, capsys):
    from stability_lab.cli import main

    wrong = [{"name": "healthy_called_diverged", "split": "dev", "fast": True,
              "data": "synthetic:n=200,d=2,kappa=2,seed=0",
              "base": {"lr": "1", "lambda": "0.1", "epochs": "60"},
              "truth": {"verdict": ["diverged"], "healthy": False, "cause": "mislabeled"}}]
    (tmp_path / "scenarios.json").write_text(json.dumps(wrong))
    assert main(["evaluate", "--corpus", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "NOT met" in out and "(expected diverged)" in out
    assert main(["evaluate", "--corpus", str(tmp_path / "nowhere")]) == 2
