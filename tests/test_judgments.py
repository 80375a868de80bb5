"""The judgments of issue 11's observations: verdicts against the optimum, findings
without false alarms, recommendations closed by verification, advisories, one
diagnosis path. Each observation has a test named for it."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from stability_lab.diagnosis import decide, diagnose, reconcile
from stability_lab.diagnosis.findings import Finding, Verdict
from stability_lab.remedies.rules import Recommendation
from stability_lab.diagnosis.record import RunResult
from stability_lab.spec import RunSpec
from stability_lab.trace import Trace


def _trace(loss, unit="epoch", spec=None, **extras):
    loss = np.asarray(loss, dtype=np.float64)
    n = len(loss)
    metrics = {"loss": loss, "grad_norm": np.linspace(1.0, 0.5, n),
               "nonfinite_weights": np.zeros(n), "nonfinite_grads": np.zeros(n)}
    t = Trace(spec=spec or RunSpec(), metrics=metrics, step_unit=unit)
    t.extras.update(extras)
    return t


# -- observation 2: a failure called "still improving" -------------------------------
def _attention_like(seed=0):
    rng = np.random.default_rng(seed)
    head = [2.92, 9.59, 23.2, 21.6, 27.9, 68.9, 82.1, 51.8]
    middle = list(rng.uniform(30, 100, 150))
    tail = list(np.linspace(30, 6.45, 42))
    return head + middle + tail


def test_obs2_unrecovered_spike_is_a_failure_with_onset_and_chance_level():
    t = _trace(_attention_like(), unit="step", chance_loss=math.log(16),
               chance_accuracy=1 / 16, accuracy=0.06)
    v = decide(t)
    assert v.status == "diverged"
    assert v.onset == 2  # the climb past twice the best began at step 2
    assert "unrecovered spike" in v.detail
    assert "stuck at chance level" in v.detail
    assert v.evidence["peak"] > 60


def test_obs2_a_plateau_at_chance_level_says_so_whatever_the_verdict():
    """A classifier that ends on a plateau at log C (never having learned, or thrown
    there) keeps its verdict's word, since chance can be the best a model can do, but
    the detail and evidence say it learned nothing; a plateau well below chance and a
    trace with no chance level say nothing of the kind."""
    rng = np.random.default_rng(3)
    chance = math.log(10)
    start = np.concatenate([np.geomspace(1e6, 3.0, 30), np.full(170, chance)])
    flat = start * (1 + 1e-5 * rng.standard_normal(200))
    t = _trace(flat, unit="step", chance_loss=chance, chance_accuracy=0.1, accuracy=0.1)
    v = decide(t)
    assert v.status == "converged"  # the plateau's word, kept
    assert v.detail.endswith("stuck at chance level (loss 2.3 vs log(C) = 2.3, accuracy 10%)")
    assert v.evidence["stuck_at_chance"] is True
    # the same plateau, read without the chance level (no classifier): no such words
    assert "chance" not in decide(_trace(flat, unit="step")).detail
    # a plateau at a tenth of chance: learned
    low = _trace(flat / 10, unit="step", chance_loss=chance, chance_accuracy=0.1,
                 accuracy=0.9)
    assert "chance" not in decide(low).detail
    # at chance in loss but accurate (a confident wrong scale): not "learned nothing"
    odd = _trace(flat, unit="step", chance_loss=chance, chance_accuracy=0.1, accuracy=0.9)
    assert "chance" not in decide(odd).detail


def test_obs2_recovered_spike_and_noisy_descent_are_not_failures():
    rng = np.random.default_rng(1)
    base = 2.0 * np.exp(-np.arange(300) / 40) + 0.05
    noisy = base * (1 + 0.2 * rng.standard_normal(300))
    assert decide(_trace(noisy, unit="step")).status != "diverged"
    spiked = base.copy()
    spiked[100:110] = 5.0  # a spike that comes back
    assert decide(_trace(spiked, unit="step")).status != "diverged"
    # epoch traces: a loss that rises and comes back below where it was is fine too
    bump = np.concatenate([np.linspace(0.7, 0.3, 20), np.linspace(2.0, 0.2, 30),
                           np.full(20, 0.2)])
    assert decide(_trace(bump)).status != "diverged"


# -- observation 4: lower precision judged better than higher -------------------------
def _result(precision, status, gap):
    spec = RunSpec(precision=precision, lr=0.2, scale="standardized")
    t = _trace(np.linspace(0.7, 0.07, 50), spec=spec, optimum={"gap": gap})
    return RunResult(spec, t, Verdict(status, 40 if status == "converged" else None))


def test_obs4_lower_precision_never_more_converged_than_closer_wider_run():
    f64 = _result("float64", "not_converged", 0.004)
    bf16 = _result("bfloat16", "converged", 0.005)
    changed = reconcile([f64, bf16])
    assert changed == [bf16]
    assert bf16.verdict.status == "not_converged"
    assert "float64" in bf16.verdict.detail
    # a wider run farther from the optimum does not drag the narrow one down
    f64b = _result("float64", "not_converged", 0.01)
    bf16b = _result("bfloat16", "converged", 0.005)
    assert reconcile([f64b, bf16b]) == []


def test_obs4_verdicts_agree_with_the_float64_optimum():
    from stability_lab.lab import run_sweep
    from stability_lab.spec import Sweep

    base = RunSpec(data="synthetic:n=400,d=4,kappa=10,seed=0", lr=1.0, lam=0.1,
                   epochs=150, scale="standardized")
    res = run_sweep(Sweep(base, [("precision", ["float64", "float32", "bfloat16"])]))
    by = {r.spec.precision: r for r in res.results}
    for r in res.results:
        opt = r.trace.extras["optimum"]
        assert opt["attained"]
        if r.verdict.status == "converged":
            assert opt["gap"] <= opt["tol_gap"] and opt["grad_norm64"] <= opt["tol_grad"]
    assert by["float64"].verdict.status == "converged"
    assert by["float32"].verdict.status == "converged"
    # the narrow format's tolerance is wider, never its verdict better than float64's
    assert by["bfloat16"].trace.extras["optimum"]["tol_gap"] >= \
        by["float64"].trace.extras["optimum"]["tol_gap"]
    # a run stopped far from the optimum is not converged, whatever its plateau says
    short = run_sweep(Sweep(base.replace(lr=1e-4, epochs=20), []))
    assert short.results[0].verdict.status == "not_converged"
    assert "optimum" in short.results[0].verdict.detail


def _frozen(loss_tail_change=0.0, gap=0.017, n=200):
    """A bfloat16 epoch trace whose weights all froze at epoch 121 with a gradient norm
    of 0.07 of its start (inside bfloat16's sqrt(eps) = 0.088: 'small' by itself)."""
    loss = np.concatenate([np.linspace(0.69, 0.2138, 120), np.full(n - 120, 0.2138)])
    loss[-1] -= loss_tail_change * loss[-1]
    t = _trace(loss, spec=RunSpec(precision="bfloat16", lr=0.02, lam=0.1,
                                  scale="standardized"),
               optimum={"attained": True, "final_finite": True, "gap": gap, "tol_gap": 0.0037,
                        "grad_norm64": 0.1, "tol_grad": 0.13, "optimum_loss": 0.1967,
                        "final_loss64": 0.2138})
    t.metrics["grad_norm"] = np.concatenate([np.linspace(1.41, 0.101, 120),
                                             np.full(n - 120, 0.101)])
    t.metrics["frac_unchanged"] = np.concatenate([np.zeros(120), np.ones(n - 120)])
    return t


def test_obs4_a_run_frozen_away_from_the_optimum_is_stagnated():
    """Every weight frozen and the loss unchanged, 0.017 above the float64 optimum
    (tolerance 0.0037): stagnated, verdict and finding alike, whatever the gradient norm
    relative to its start says. The same freeze within the tolerance is no stagnation,
    and neither is a run whose loss still moves."""
    frozen = _frozen()
    v = decide(frozen)
    assert v.status == "stagnated" and v.onset == 121
    assert [f.signature for f in diagnose(frozen)[1]] == ["stagnation"]
    at_optimum = _frozen(gap=0.001)
    assert decide(at_optimum).status != "stagnated"
    assert "stagnation" not in [f.signature for f in diagnose(at_optimum)[1]]
    moving = _frozen(loss_tail_change=1e-3)
    assert decide(moving).status != "stagnated"


@pytest.mark.blas
def test_obs4_bfloat16_frozen_at_lr_0_02_is_stagnated_not_still_training():
    """breast_cancer standardized, lambda 0.1, bfloat16 at lr 0.02 for 1000 epochs: every
    weight stops changing near epoch 120, 0.017 above the float64 optimum; the lab said
    'not converged' before the optimum was read here. float32 at the same lr keeps
    going (not converged, no stagnation)."""
    from stability_lab.lab import run_sweep
    from stability_lab.spec import Sweep

    base = RunSpec(scale="standardized", lam=0.1, lr=0.02, epochs=1000)
    res = run_sweep(Sweep(base, [("precision", ["bfloat16", "float32"])]))
    by = {r.spec.precision: r for r in res.results}
    assert by["bfloat16"].verdict.status == "stagnated"
    assert "stagnation" in [f.signature for f in by["bfloat16"].findings]
    assert by["float32"].verdict.status == "not_converged"
    assert "stagnation" not in [f.signature for f in by["float32"].findings]
    # lr 0.02 is 0.034 of 2/L: the raise_lr rule advises half of 2/L for the bfloat16
    # run alone (float32 did not stagnate)
    from stability_lab.formatting import round_sig
    from stability_lab.remedies.recommend import RAISE_BELOW, raise_lr
    from stability_lab.remedies.rules import Context

    bound = by["bfloat16"].trace.probes["start"]["lr_bound"]
    assert 0.02 < RAISE_BELOW * bound
    (rec,) = [r for r in res.recommendations if r.action == "raise_lr"]
    assert rec.runs == (by["bfloat16"].run_id,)
    assert rec.delta == {"lr": round_sig(0.5 * bound)}
    assert rec.evidence["lr_bound"] == bound and "2/L" in rec.text
    # the same stagnated run at lr above a tenth of 2/L, or a run that did not
    # stagnate, gets no such advice
    b = by["bfloat16"]
    higher = RunResult(b.spec.replace(lr=0.2 * bound), b.trace, b.verdict, b.findings)
    assert raise_lr(Context([higher])) == []
    assert raise_lr(Context([by["float32"]])) == []


def test_a_run_without_a_float64_match_shows_no_digits_rather_than_ref():
    """The verification tables say 'ref' only for a float64 run (it is the reference);
    a deep-net run verified without a float64 twin shows '-'. Rows stored before the
    'reference' key existed keep reading 'ref'."""
    from stability_lab.remedies.verify import side
    from stability_lab.report.verification import _digits

    def result(**spec):
        s = RunSpec(**spec)
        return RunResult(s, Trace(s, metrics={"loss": np.ones(3)}), Verdict("converged"))

    mixed = side(result(task="mlp", data="digits", policy="mixed-fp16"), None)
    assert mixed["reference"] is False and _digits(mixed) == "-"
    for spec in (dict(task="mlp", data="digits", policy="float64"), dict(precision="float64")):
        ref = side(result(**spec), None)
        assert ref["reference"] is True and _digits(ref) == "ref"
    assert _digits(side(result(precision="float32"), 3.14159)) == "3.1"
    assert _digits({"digits": None}) == "ref"


# -- observation 5: deep-net false alarms and contradictions --------------------------
def test_obs5_far_headroom_projection_is_no_finding():
    from stability_lab.diagnosis.signatures.deep_net import detect_headroom_shrinking

    proj = {"module": "fc0", "kind": "act", "headroom_first": 1022.0,
            "headroom_last": 1020.0, "slope_per_step": -0.01, "r2": 0.9,
            "projected_step": 100000, "fitted_steps": [1, 100]}
    t = _trace(np.linspace(2, 0.1, 100), unit="step", attribution={"projections": [proj]})
    assert detect_headroom_shrinking(t) == []
    near = dict(proj, projected_step=150)
    t2 = _trace(np.linspace(2, 0.1, 100), unit="step", attribution={"projections": [near]})
    assert [f.signature for f in detect_headroom_shrinking(t2)] == ["headroom_shrinking"]


def test_obs5_policy_with_warning_finding_is_never_cheapest_within_tolerance():
    from stability_lab.diagnosis.policy_evaluation import sweep_report

    def run(policy, findings=(), loss=0.1):
        spec = RunSpec(task="mlp", policy=policy)
        t = _trace(np.linspace(2, loss, 100), unit="step", accuracy=0.95)
        return RunResult(spec, t, Verdict("converged", 80), list(findings))

    stag = Finding("stagnation", 50, "updates below half an ulp", {}, "error")
    under = Finding("gradient_underflow", 3, "2% flushed", {}, "warning")
    rep = sweep_report([run("float64"), run("float32"), run("float16", [stag]),
                        run("mixed-fp16-noscale", [under]), run("fp8", [under])])
    g = rep["groups"][0]
    assert g["cheapest_within_tolerance"] == "float32"
    assert "stagnation" in g["rejected"]["float16"]
    assert "gradient_underflow" in g["rejected"]["fp8"]


# -- observation 7: labels that do not match ------------------------------------------
def test_obs7_inf_loss_is_overflow_not_nan_creation_and_show_says_so(tmp_path, capsys):
    from stability_lab.cli import main
    from stability_lab.diagnosis.record import record_of
    from stability_lab.store import Store

    n = 3
    spec = RunSpec(precision="float16", lr=0.1)
    t = Trace(spec=spec, metrics={
        "loss": np.array([0.69, np.inf, np.inf]), "grad_norm": np.ones(n),
        "nonfinite_weights": np.zeros(n), "nonfinite_grads": np.zeros(n),
        "max_abs_logit": np.array([0.004, 0.0057, 0.0057])},
        probes={"start": {"hessian_max": 0.2}, "end": {"hessian_min": math.nan,
                                                        "hessian_max": math.nan,
                                                        "hessian_cond": math.nan}})
    v, findings = diagnose(t)
    sigs = {f.signature for f in findings}
    assert v.status == "overflow"
    assert "overflow" in sigs and "nan_creation" not in sigs
    res = RunResult(spec, t, v, findings)
    with Store(tmp_path) as st:
        st.save_run(record_of(res), t.metrics)
    assert main(["show", spec.run_id[:10], "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "status=overflow" in out and "status=ok" not in out
    assert "hessian_max=not computed" in out and "hessian_cond=inf" not in out


def test_obs7_underflowed_curvature_is_not_a_zero_hessian():
    from stability_lab.tasks.curvature import hessian_extremes

    A = np.hstack([np.ones((10, 1)) * 1e3, np.ones((10, 1))])
    h = hessian_extremes(A, np.array([1e3, 0.0]), 0.0)
    assert math.isnan(h["hessian_max"]) and "not computed" in h["hessian_note"]


# -- observation 8: verification drops deep-net findings ------------------------------
def test_obs8_rediagnosis_keeps_deep_net_findings():
    from stability_lab.remedies.verify import rediagnose

    n = 40
    t = _trace(np.linspace(2, 0.5, n), unit="step", attribution={})
    t.metrics["loss_scale"] = 2.0 ** (16 - np.arange(n))  # 2^0 at step 17
    t.metrics["skipped"] = np.ones(n)
    v, findings = diagnose(t)
    assert "loss_scale_collapse" in {x.signature for x in findings}
    res = RunResult(t.spec, t, v, findings)
    rediagnose(res)
    assert "loss_scale_collapse" in {x.signature for x in res.findings}


# -- observation 3: recommendations closed by verification ----------------------------
def _closing_result(rows, ladder=None):
    recs = [
        Recommendation("lower_lr", "lower lr to at most 4.3e-06", "lr above 2/L", {"lr": 4.3e-6},
                       ("a",), {"lr_bound": 4.8e-6, "scale": "raw"}),
        Recommendation("add_l2", "add L2 lambda >= 9.9", "near-singular", {"lambda": 9.9},
                       ("a",), {}),
    ]
    return SimpleNamespace(recommendations=recs, verification=rows, lr_ladder=ladder or {},
                           results=[], task_report=None)


def test_obs3_recommendation_line_lists_only_what_verification_confirmed():
    from stability_lab.report.terminal import recommendation_lines
    from stability_lab.remedies.verify import close_recommendations

    rows = [{"mitigation": "lower_lr", "outcome": "improved", "run_id": "a"},
            {"mitigation": "add_l2", "outcome": "not fixed", "run_id": "a"},
            {"mitigation": "add_l2", "outcome": "not fixed", "run_id": "b"}]
    ladder = {"lower_lr": {"raw": {"epochs": 2000, "largest_converged": 1e-5,
                                   "converged_at_largest": [3, 9], "largest_tried": 4e-4,
                                   "tried": {}}}}
    res = _closing_result(rows, ladder)
    close_recommendations(res, "verified", 3)
    lines = recommendation_lines(res)
    assert lines[0].startswith("Recommendation: lower lr")
    assert "add L2" not in lines[0]
    text = "\n".join(lines)
    assert "lower lr to 1e-05" in text and "2/L is 4.8e-06" in text
    assert "tried, did not help: add L2 lambda >= 9.9" in text


def test_obs3_no_lr_converges_leads_with_scaling_and_unverified_is_marked():
    from stability_lab.report.terminal import recommendation_lines
    from stability_lab.remedies.verify import close_recommendations

    res = _closing_result([])
    close_recommendations(res, "skipped", 900)
    assert "(not verified: add --verify)" in recommendation_lines(res)[0]

    rows = [{"mitigation": "lower_lr", "outcome": "improved", "run_id": "a"},
            {"mitigation": "scale_features", "outcome": "fixed", "run_id": "a"}]
    ladder = {"lower_lr": {"raw": {"epochs": 200, "largest_converged": None,
                                   "largest_tried": 4e-4, "tried": {}}}}
    res = _closing_result(rows, ladder)
    res.recommendations.insert(0, Recommendation("scale_features", "scale features", "cond",
                                                 {"scale": "standardized"}, ("a",), {}))
    res.recommendations.append(res.recommendations.pop(0))  # scaling listed last
    close_recommendations(res, "verified", 3)
    assert res.recommendations[0].action == "scale_features"
    text = "\n".join(recommendation_lines(res))
    assert "no lr tried (up to 0.0004) converged within 200 epochs" in text


def test_obs3_verification_runs_by_default_on_small_sweeps(tmp_path, capsys):
    from stability_lab.cli import main

    args = ["run", "--data", "synthetic:n=300,d=3,kappa=1e3,seed=0", "--sweep",
            "lr=0.5,2000", "--epochs", "30", "--out", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Verification" in out
    rec_line = next(line for line in out.splitlines() if line.startswith("Recommendation"))
    assert "not verified" not in rec_line
    assert main(args + ["--no-verify"]) == 0
    out = capsys.readouterr().out
    assert "Verification (" not in out
    rec_line = next(line for line in out.splitlines() if line.startswith("Recommendation"))
    assert "not verified: add --verify" in rec_line


# -- observation 6: silence on a near-singular design ---------------------------------
def _csv(path, dependent: bool, n=600):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 4))
    if dependent:
        X[:, 3] = X[:, 2] + 1e-7 * rng.standard_normal(n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(X[:, 0] - 0.5 * X[:, 1])))).astype(int)
    names = ["age", "income", "height_cm", "height_in_cm" if dependent else "weight"]
    with open(path, "w") as f:
        f.write(",".join(names + ["label"]) + "\n")
        for i in range(n):
            f.write(",".join(f"{v:.17g}" for v in X[i]) + f",{y[i]}\n")
    return str(path)


def test_obs6_near_singular_design_gets_an_advisory_naming_the_columns(tmp_path):
    from stability_lab.lab import run_sweep
    from stability_lab.spec import Sweep

    base = RunSpec(data=_csv(tmp_path / "dep.csv", True), target="label", lr=0.5, epochs=40)
    res = run_sweep(Sweep(base, []))
    (adv,) = res.advisories
    assert set(adv["columns"]) == {"height_cm", "height_in_cm"}
    assert adv["measured_digits"] < 3 and adv["digits_with_lambda"] >= 3
    assert "drop or merge" in adv["text"] and f"lambda >= {adv['lambda']:g}" in adv["text"]
    healthy = run_sweep(Sweep(base.replace(data=_csv(tmp_path / "ok.csv", False)), []))
    assert healthy.advisories == []


def test_near_singular_advisory_is_scale_invariant_up_to_float64s_maximum():
    """The advisory standardizes by exact powers of two, so the same design multiplied
    by 1e200 (columns near float64's maximum; X^T X overflows) names the same columns
    and the same condition number, and says that no L2 lambda helps instead of raising."""
    from types import SimpleNamespace

    from stability_lab.remedies.advisories import near_singular

    rng = np.random.default_rng(3)
    n = 400
    X = rng.standard_normal((n, 4))
    X[:, 3] = X[:, 2] + 1e-7 * rng.standard_normal(n)
    y = (rng.random(n) < 0.5).astype(float)

    def variant(M):
        ds = SimpleNamespace(X=M, y=y, feature_names=["a", "b", "c", "d"], name="t")
        return SimpleNamespace(dataset=ds, scale="raw", source="t", y64=y)

    ref = near_singular(variant(X), ["float64"])
    big = near_singular(variant(X * 1e200), ["float64"])
    assert ref is not None and big is not None
    assert set(ref["columns"]) == set(big["columns"]) == {"c", "d"}
    assert big["cond_XtX_standardized"] == pytest.approx(ref["cond_XtX_standardized"],
                                                         rel=1e-6)
    assert ref["lambda"] > 0 and big["lambda"] is None
    assert "no L2 lambda helps" in big["text"]


# -- defaults that show both sides ---------------------------------------------------
def test_deep_task_without_sweep_runs_a_reference_beside_a_failure():
    from stability_lab.cli import build_parser
    from stability_lab.cli.commands.run import build_sweep

    for task, axis in (("mlp", "policy"), ("attention", "qk_layernorm")):
        args = build_parser().parse_args(["run", "--task", task])
        sweep, note = build_sweep(args)
        assert [name for name, _ in sweep.axes] == [axis] and note
        assert len(sweep.specs) == 2
        # a user's own choice wins: no default sweep then
        args = build_parser().parse_args(["run", "--task", task, "--policy", "float16"])
        sweep, note = build_sweep(args)
        assert sweep.axes == [] and note is None


def test_obs8_mlp_default_shows_a_converged_reference_beside_a_failure(tmp_path, capsys):
    """`run --task mlp` with no sweep: the float32 reference converges with no finding;
    mixed-fp16 on the same inputs (scaled to 1e5) is NaN at step 1, created by the first
    layer in the forward pass, and the answer says one of two runs fails."""
    from stability_lab.cli import main

    assert main(["run", "--task", "mlp", "--no-verify", "--no-progress", "--json",
                 "--out", str(tmp_path)]) == 0
    runs = {r["config"]["policy"]: r for r in json.loads(capsys.readouterr().out)["runs"]}
    ref, bad = runs["float32"], runs["mixed-fp16"]
    assert ref["verdict"] == "converged" and ref["findings"] == []
    assert bad["verdict"] == "nan" and bad["onset_epoch"] == 1
    creator = bad["attribution"]["first_creator"]
    assert (creator["module"], creator["pass"]) == ("fc0", "forward")
    assert main(["run", "--task", "mlp", "--no-verify", "--no-progress",
                 "--out", str(tmp_path)]) == 0  # the same runs, reused
    assert "1 of 2 runs fail (nan 1)" in capsys.readouterr().out


def test_obs8_attention_default_is_the_tested_overflow_and_its_fix():
    """`run --task attention` with no sweep runs exactly the two runs that
    tests/test_deep.py::test_attention_logit_growth_overflows_fp16_and_qk_layernorm_fixes_it
    trains and judges on every kernel (mixed-fp16, Adam at lr 0.3, 200 steps, seed 0):
    qk-layernorm off fails (NaN by step ~17, created by blocks.0.attn), on converges."""
    from stability_lab.cli import build_parser
    from stability_lab.cli.commands.run import build_sweep

    sweep, _ = build_sweep(build_parser().parse_args(["run", "--task", "attention"]))
    got = [(s.policy, s.lr, s.epochs, s.seed, s.param("qk_layernorm")) for s in sweep.specs]
    assert got == [("mixed-fp16", 0.3, 200, 0, True), ("mixed-fp16", 0.3, 200, 0, False)]


# -- rounding noise is not an oscillation; silent digit loss inside a sweep -----------
def test_rounding_noise_on_a_flat_float32_loss_is_not_oscillation():
    """A float32 loss near its floor alternates in its last bits (a swing of a few ulps,
    as the float32 silent_digit_loss re-run showed on another CPU): not oscillating.
    The same sign pattern at a visible amplitude is."""
    spec = RunSpec(precision="float32", lr=0.2, scale="standardized")
    flat = 0.1967 + np.concatenate([np.linspace(0.5, 0.0, 380), np.zeros(20)])
    ulp = float(np.spacing(np.float32(0.1967)))
    noisy = flat.copy()
    noisy[-20:] += ulp * np.tile([0.0, 3.0, 1.0, 2.0], 5)  # swings of 3 ulps
    assert decide(_trace(noisy, spec=spec)).status != "oscillating"
    swing = flat.copy()
    swing[-20:] += 0.01 * np.tile([0.0, 1.0], 10)  # 5% swings: a real oscillation
    assert decide(_trace(swing, spec=spec)).status == "oscillating"


def test_sweep_attaches_the_matched_float64_run_to_converged_narrow_runs(tmp_path, capsys):
    """silent_digit_loss fires in an ordinary sweep (not only in verification): the
    converged bfloat16 run is compared with its matched float64 run; float32, which
    keeps its digits, and float64 itself carry no finding."""
    from stability_lab.cli import main

    argv = ["run", "--sweep", "precision=bfloat16,float32,float64", "--scale",
            "standardized", "--lr", "0.2", "--lambda", "0.1", "--epochs", "600",
            "--out", str(tmp_path), "--no-progress", "--no-verify"]
    assert main(argv + ["--json"]) == 0
    import json

    runs = {r["config"]["precision"]: r for r in json.loads(capsys.readouterr().out)["runs"]}
    assert {k: r["verdict"] for k, r in runs.items()} == dict.fromkeys(runs, "converged")
    sigs = {k: [f["signature"] for f in r["findings"]] for k, r in runs.items()}
    assert sigs == {"bfloat16": ["silent_digit_loss"], "float32": [], "float64": []}
    ev = runs["bfloat16"]["findings"][0]["evidence"]
    assert ev["digits"] < ev["threshold"] <= 2.4
    assert main(argv) == 0  # the text names it on the run's line and in the answer
    out = capsys.readouterr().out
    assert "carry numerical warnings (silent digit loss 1)" in out
    line = next(x for x in out.splitlines() if x.startswith("Run bfloat16"))
    assert "warning: silent_digit_loss" in line


def test_obs2_a_deep_run_thrown_to_chance_is_named_on_its_run_line(tmp_path, capsys):
    """The digits mlp at init scale 16 in float32: its logits start near 1e16, the first
    steps kill its ReLUs, and it ends on the class frequencies (loss log 10, accuracy
    10%). The run line says so and names the run by its policy (not the unused
    precision), the answer counts it, and the answer prints no policy evaluation for a
    single policy."""
    from stability_lab.cli import main

    argv = ["run", "--task", "mlp", "--policy", "float32", "--lr", "0.1",
            "--init-scale", "16", "--no-verify", "--no-progress", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("Run "))
    assert line.startswith("Run float32 lr=0.1 lambda=0: ")
    assert "stuck at chance level (loss 2.3 vs log(C) = 2.3, accuracy 10%)" in line
    assert "1 of them stuck at chance level" in out
    assert "policy within tolerance" not in out and "No policy stayed" not in out
