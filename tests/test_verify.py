"""--verify on a sweep: grouping, matched re-runs, storage, honest 'fixed'."""

import json

from stability_lab.cli import main
from stability_lab.lab import run_sweep
from stability_lab.report.verification import format_verification
from stability_lab.spec import RunSpec, Sweep
from stability_lab.store import Store
from stability_lab.lab import verify_and_store
from stability_lab.remedies.verify import plan, verify_sweep


def test_verify_sweep_rows_and_store(tmp_path):
    sweep = Sweep(RunSpec(data="synthetic:n=400,d=8,kappa=10,seed=0", scale="standardized",
                          lam=1.0), [("lr", [0.5, 4.0, 5.0])])
    result = run_sweep(sweep, out=tmp_path)
    assert [r.verdict.status for r in result.results][1:] == ["diverged", "diverged"]
    attempts, info = plan(result.results, result.recommendations)
    assert info["failing_runs"] == 2 and info["groups"] == 1  # one representative
    assert {a.before.run_id for a in attempts} == {result.results[1].run_id}
    assert attempts[0].group_size == 2
    every, info = plan(result.results, result.recommendations, exhaustive=True)
    assert info["exhaustive"] and {a.before.run_id for a in every} == {
        r.run_id for r in result.results[1:]}
    rows = verify_and_store(result, out=tmp_path)  # logistic runs in cohorts: every run
    assert rows and result.verification is rows
    lower = [r for r in rows if r["mitigation"] == "lower_lr"]
    assert len(lower) == 2 and all(r["fixed"] and r["outcome"] == "fixed" for r in lower)
    assert all(r["after"]["verdict"] == "converged" for r in lower)
    assert all(r["before"]["verdict"] == "diverged" for r in lower)
    for r in rows:  # same seed, only the delta changed
        with Store(tmp_path) as st:
            after = st.load_run(r["fixed_run_id"])
            before = st.load_run(r["run_id"])
        assert after is not None and after["spec"]["seed"] == before["spec"]["seed"]
        assert before["verifications"]
    text = format_verification(rows)
    assert "lower_lr" in text and "yes" in text


def test_unfixed_mitigation_is_reported(tmp_path):
    # float16 on raw features overflows; lowering lr does not stop the gradient overflow
    sweep = Sweep(RunSpec(precision="float16", lr=0.2, lam=0.1, epochs=60), [])
    result = run_sweep(sweep)
    rows = verify_sweep(result)
    by = {r["mitigation"]: r for r in rows}
    assert by["lower_lr"]["fixed"] is False and by["lower_lr"]["outcome"] != "fixed"
    assert by["scale_features"]["after"]["verdict"] != "overflow"


def test_cli_verify_json(tmp_path, capsys):
    rc = main(["run", "--task", "logistic_regression", "--data",
               "synthetic:n=400,d=8,kappa=10,seed=0", "--scale", "standardized",
               "--lambda", "1", "--sweep", "lr=0.5,5", "--verify", "--json",
               "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verification"]
    row = doc["verification"][0]
    assert {"mitigation", "before", "after", "fixed"} <= set(row)


def test_all_rebounds_lr_for_rescaled_data(tmp_path):
    # raw features: 2/L is ~5e-6; once "all" standardizes them the bound is ~0.6, and
    # the combined fix must not keep the raw-data lr
    sweep = Sweep(RunSpec(lr=1.0, lam=0.1, epochs=200), [])
    result = run_sweep(sweep)
    rows = verify_sweep(result)
    both = next(r for r in rows if r["mitigation"] == "all")
    assert both["delta"]["scale"] == "standardized"
    assert 0.1 < both["delta"]["lr"] < 1.0
    assert both["after"]["verdict"] == "converged" and both["fixed"]


def test_a_working_run_with_warnings_is_verified_and_fixed_when_its_findings_go():
    # a run that did not fail but carries a warning finding, listed by a recommendation,
    # is re-run; a re-run without the finding, no less converged, counts as fixed
    from stability_lab.diagnosis.findings import Finding
    from stability_lab.diagnosis.verdict import Verdict
    from stability_lab.remedies.rules import Recommendation
    from stability_lab.diagnosis.record import RunResult
    from stability_lab.trace import Trace
    from stability_lab.remedies.verify import is_fixed

    import numpy as np

    def result(policy, status, sigs):
        spec = RunSpec(task="mlp", policy=policy)
        trace = Trace(spec=spec, metrics={"loss": np.array([1.0, 0.5])})
        return RunResult(spec, trace, Verdict(status, None, ""),
                         [Finding(s, 1, s, {}, "warning") for s in sigs])

    quiet = result("float32", "converged", [])
    warned = result("mixed-fp16-noscale", "not_converged", ["gradient_underflow"])
    untouched = result("float16", "not_converged", [])
    rec = Recommendation("use_loss_scaling", "use loss scaling", "",
                         {"policy": "mixed-fp16"}, (warned.run_id, untouched.run_id))
    attempts, info = plan([quiet, warned, untouched], [rec], exhaustive=True)
    assert {a.before.run_id for a in attempts} == {warned.run_id, untouched.run_id}
    gone = result("mixed-fp16", "not_converged", [])
    still = result("mixed-fp16", "not_converged", ["gradient_underflow"])
    failed = result("mixed-fp16", "diverged", [])
    assert is_fixed(warned, gone) and not is_fixed(warned, still)
    assert not is_fixed(warned, failed)
    # a run without findings that did not converge is fixed only by converging
    assert not is_fixed(untouched, gone)
    assert is_fixed(untouched, result("mixed-fp16", "converged", []))
    # a converged run with a warning is re-run too
    conv = result("mixed-fp16-noscale", "converged", ["gradient_underflow"])
    rec2 = Recommendation("use_loss_scaling", "", "", {"policy": "mixed-fp16"},
                          (conv.run_id,))
    attempts, _ = plan([quiet, conv], [rec2], exhaustive=True)
    assert [a.before.run_id for a in attempts] == [conv.run_id]


def test_verify_run_tries_each_fix_alone_then_all_with_float64_digits():
    """One run, a given list of fixes (the catalogue's driver): each fix alone, then all
    together with lr re-bounded for the rescaled data, every non-float64 run measured
    against its float64 twin, judged by the target signature."""
    from stability_lab.remedies.rules import Recommendation, safe_lr
    from stability_lab.remedies.verify import verify_run
    from stability_lab.tasks.logistic import LogisticRegression

    base = RunSpec(precision="float16", lr=0.2, lam=0.1)
    recs = [Recommendation("scale_features", "standardize", "", {"scale": "standardized"}),
            Recommendation("lower_lr", "lower lr", "", {"lr": 4e-6})]
    before, rows, results = verify_run(base, recs, target="overflow")
    assert before.spec == base and before.failed
    assert "overflow" in {f.signature for f in before.findings}
    assert [r["mitigation"] for r in rows] == ["scale_features", "lower_lr", "all"]
    task = LogisticRegression()
    scaled = base.replace(scale="standardized")
    assert rows[2]["delta"] == {"scale": "standardized",
                                "lr": min(0.2, safe_lr(task.lr_bound(scaled,
                                                                     task.prepare(scaled))))}
    assert len(results) == 8  # four runs and their four float64 twins
    assert all(r["before"]["digits"] is not None and r["after"]["digits"] is not None
               for r in rows)
    assert rows[0]["fixed"] and not rows[1]["fixed"]
    assert all(r["label"] == "baseline" and r["run_id"] == base.run_id for r in rows)


def test_a_rerun_stuck_at_chance_level_neither_fixes_nor_improves():
    """A NaN run whose re-run no longer fails but ends at chance level learned nothing:
    'not fixed', with or without a target signature; the same re-run above chance is
    'improved' (no longer failing, not yet converged)."""
    from stability_lab.diagnosis.findings import Finding, Verdict
    from stability_lab.diagnosis.record import RunResult
    from stability_lab.remedies.verify import is_fixed, outcome
    from stability_lab.trace import Trace

    spec = RunSpec(task="attention", policy="mixed-fp16", lr=0.3)
    before = RunResult(spec, Trace(spec=spec), Verdict("nan", 17, "loss=nan at step 17"),
                       [Finding("nan_creation", 17, "", {}, "error")])
    for stuck, expected in ((True, "not fixed"), (False, "improved")):
        evidence = {"stuck_at_chance": True} if stuck else {}
        after = RunResult(spec, Trace(spec=spec),
                          Verdict("not_converged", None, "loss 2.768", evidence))
        fixed = is_fixed(before, after)
        assert not fixed and outcome(before, after, fixed) == expected
        assert not is_fixed(before, after, target="nan_creation")
    converged_at_chance = RunResult(spec, Trace(spec=spec), Verdict(
        "converged", 150, "stuck at chance level", {"stuck_at_chance": True}))
    assert not is_fixed(before, converged_at_chance)
    assert not is_fixed(before, converged_at_chance, target="nan_creation")
