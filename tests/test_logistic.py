"""The logistic task: cohorts equal one-at-a-time runs, probes against float64
references, loss forms, clipping, mini-batches, error capture and interrupted sweeps."""

import numpy as np
import pytest

from stability_lab.run import engine
from stability_lab.lab import run_sweep
from stability_lab.spec import RunSpec, Sweep, expand
from stability_lab.store import Store
from stability_lab.linalg.conditioning import gram_condition as cond_gram
from stability_lab.tasks.logistic import LogisticRegression
from stability_lab.tasks.curvature import hessian_extremes
from stability_lab.run.engine import run_one


def specs_grid(**base):
    return expand(RunSpec(epochs=60, **base), [("lr", [0.01, 0.3, 3.0]),
                                               ("lambda", [0.0, 0.1]),
                                               ("clip", [None, 0.5]),
                                               ("seed", [0, 1])])


@pytest.mark.blas
@pytest.mark.parametrize("precision,scale", [("float64", "standardized"), ("float32", "raw"),
                                             ("bfloat16", "standardized"),
                                             ("float16", "raw")])
def test_cohort_equals_one_at_a_time(precision, scale):
    specs = specs_grid(precision=precision, scale=scale)
    together = engine.run_specs(specs, cohorts=True)
    alone = engine.run_specs(specs, cohorts=False)
    from stability_lab.diagnosis import decide

    rtol = {"float64": 1e-9, "float32": 1e-4, "bfloat16": 2e-2, "float16": 4e-3}[precision]
    for a, b in zip(together, alone):
        assert a.spec == b.spec
        va, vb = decide(a), decide(b)
        assert (va.status, va.onset) == (vb.status, vb.onset)
        assert a.n_steps == b.n_steps
        # Lockstep changes only the BLAS blocking of the matrix products, i.e. rounding.
        # Where lr is far above 2/L the dynamics are chaotic and amplify those rounding
        # differences step after step; there only the first epochs are compared.
        stable = a.spec.lr < a.probes["start"]["lr_bound"]
        steps = slice(None) if stable else slice(0, 3)
        for name in a.metrics:
            x, y = a.metrics[name][steps], b.metrics[name][steps]
            np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-12, equal_nan=True,
                                       err_msg=f"{name} lr={a.spec.lr}")


@pytest.mark.blas
def test_full_batch_gradient_matches_float64_reference():
    spec = RunSpec(precision="float64", scale="standardized", lr=0.5, lam=0.01, epochs=3)
    task = LogisticRegression()
    prep = task.prepare(spec)
    tr = run_one(task, spec, prep)
    X, y = prep.X64, prep.y64
    from stability_lab.tasks.logistic import initial_weights

    w = initial_weights(0, X.shape[1] + 1)
    A = np.hstack([X, np.ones((len(X), 1))])
    for epoch in range(3):
        z = A @ w
        loss = np.mean(np.logaddexp(0, z) - y * z) + 0.005 * w[:-1] @ w[:-1]
        g = A.T @ (1 / (1 + np.exp(-z)) - y) / len(X)
        g[:-1] += 0.01 * w[:-1]
        assert tr.metrics["loss"][epoch] == pytest.approx(loss, rel=1e-13)
        assert tr.metrics["grad_norm"][epoch] == pytest.approx(np.linalg.norm(g), rel=1e-12)
        w = w - 0.5 * g


@pytest.mark.blas
def test_probes_in_float64():
    spec = RunSpec(scale="raw", lam=0.1, epochs=2)
    task = LogisticRegression()
    prep = task.prepare(spec)
    tr = run_one(task, spec, prep)
    X = prep.X64
    s = np.linalg.svd(X, compute_uv=False)
    assert tr.probes["start"]["cond_XtX"] == pytest.approx((s[0] / s[-1]) ** 2, rel=1e-10)
    assert cond_gram(X) == pytest.approx(np.linalg.cond(X.T @ X), rel=1e-2)
    # Hessian extremes against a finite-difference Hessian of the loss
    A = np.hstack([X, np.ones((len(X), 1))]) / 100
    w = np.random.default_rng(0).standard_normal(A.shape[1]) * 0.1

    def grad(v):
        g = A.T @ (1 / (1 + np.exp(-(A @ v))) - 0) / len(A)
        g[:-1] += 0.1 * v[:-1]
        return g

    h = 1e-6
    H = np.array([(grad(w + h * e) - grad(w - h * e)) / (2 * h) for e in np.eye(len(w))])
    ev = np.linalg.eigvalsh((H + H.T) / 2)
    ext = hessian_extremes(A, w, 0.1)
    assert ext["hessian_max"] == pytest.approx(ev[-1], rel=1e-6)
    assert ext["hessian_min"] == pytest.approx(ev[0], rel=1e-5)


def test_naive_loss_overflows_where_stable_does_not():
    base = RunSpec(precision="float32", scale="raw", lr=0.2, epochs=40)
    naive, stable = engine.run_specs([base.replace(loss="naive"), base.replace(loss="stable")])
    from stability_lab.diagnosis import decide

    vn, vs = decide(naive), decide(stable)
    assert vn.failed and vn.onset is not None and "loss=inf" in str(vn)
    assert np.isfinite(stable.metrics["loss"]).all()
    assert vs.status != vn.status or vs.onset != vn.onset


def test_squared_error_loss_is_autograds_and_vanishes_at_saturation():
    """--loss mse: the loss and dL/dz are torch autograd's on mean((sigmoid(z) - y)^2) / 2;
    a sample whose probability rounds to the wrong 0 or 1 gets a gradient of exactly 0,
    and its runs record the saturation metrics, without the log-loss's probes."""
    import torch

    from stability_lab.tasks.logistic import _loss_and_dz

    z = torch.tensor([[-3.0], [-0.2], [0.0], [1.5], [4.0]], dtype=torch.float64)
    y = torch.tensor([[0.0], [1.0], [1.0], [0.0], [1.0]], dtype=torch.float64)
    loss, dz = _loss_and_dz(torch, z, y, "mse", 5)
    zg = z.clone().requires_grad_(True)
    ref = 0.5 * ((torch.sigmoid(zg) - y) ** 2).mean()
    ref.backward()
    assert float(loss[0]) == pytest.approx(ref.item(), rel=1e-15)
    assert torch.allclose(dz, zg.grad, rtol=1e-14, atol=0)
    # float32: sigmoid(20) rounds to exactly 1, so a y = 0 sample there learns nothing
    _, dz32 = _loss_and_dz(torch, torch.tensor([[20.0]]), torch.tensor([[0.0]]), "mse", 1)
    assert float(dz32) == 0.0

    spec = RunSpec(precision="float32", scale="raw", loss="mse", lr=0.01, epochs=5)
    (tr,) = engine.run_specs([spec])
    assert tr.metrics["frac_saturated_wrong"][-1] > 0.5
    assert np.all(tr.metrics["frac_saturated"] >= tr.metrics["frac_saturated_wrong"])
    assert "optimum" not in tr.extras and "hessian_max" not in tr.probes["start"]
    (stable,) = engine.run_specs([spec.replace(loss="stable")])
    assert "frac_saturated" not in stable.metrics and "optimum" in stable.extras


def test_bfloat16_small_lr_stagnates():
    spec = RunSpec(precision="bfloat16", scale="standardized", lr=0.01, epochs=300)
    (tr,) = engine.run_specs([spec])
    from stability_lab.diagnosis import decide

    v = decide(tr)
    assert v.status == "stagnated"
    assert tr.metrics["frac_unchanged"][-1] >= 0.5
    (tr64,) = engine.run_specs([spec.replace(precision="float64")])
    assert tr64.metrics["frac_unchanged"][-1] == 0


def test_clipping_bounds_every_update():
    spec = RunSpec(precision="float64", scale="raw", lr=1e-3, clip=1.0, epochs=20)
    (tr,) = engine.run_specs([spec])
    assert np.all(tr.metrics["update_norm"] <= 1e-3 * 1.0 * (1 + 1e-12))
    assert np.any(tr.metrics["clip_factor"] < 1)


def test_minibatches_are_matched_across_lr():
    specs = expand(RunSpec(scale="standardized", batch_size=64, epochs=5),
                   [("lr", [0.01, 0.1])])
    a = engine.run_specs(specs, cohorts=True)
    b = engine.run_specs(specs, cohorts=False)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.metrics["loss"], y.metrics["loss"], rtol=1e-12)
    assert a[0].metrics["loss"][-1] != a[1].metrics["loss"][-1]


def test_a_run_that_raises_is_stored_and_the_sweep_goes_on(tmp_path, monkeypatch):
    from stability_lab.run import cohort

    real = cohort._run_chunk

    def flaky(torch, specs, prep):
        if any(s.lr == 0.123 for s in specs):
            raise RuntimeError("injected failure")
        return real(torch, specs, prep)

    monkeypatch.setattr(cohort, "_run_chunk", flaky)
    sweep = Sweep(RunSpec(epochs=5, scale="standardized"), [("lr", [0.01, 0.123, 0.2])])
    result = run_sweep(sweep, out=tmp_path)
    statuses = [r.verdict.status for r in result.results]
    assert statuses[1] == "error" and statuses[0] != "error" and statuses[2] != "error"
    with Store(tmp_path) as store:
        rec = store.load_run(result.results[1].run_id)
        assert rec["status"] == "error" and "injected failure" in rec["error"]
        assert store.load_run(result.results[2].run_id)["status"] == "ok"


def test_interrupted_sweep_keeps_completed_runs(tmp_path, monkeypatch):
    from stability_lab.run import cohort

    real = cohort._run_chunk
    calls = {"n": 0}

    def interrupting(torch, specs, prep):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(torch, specs, prep)

    monkeypatch.setattr(cohort, "_run_chunk", interrupting)
    sweep = Sweep(RunSpec(epochs=5), [("precision", ["float64", "float32"]),
                                      ("lr", [0.01, 0.1])])
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, out=tmp_path)
    with Store(tmp_path) as store:
        done = store.run_ids()
    assert len(done) == 2  # the float64 cohort, whole
    monkeypatch.setattr(cohort, "_run_chunk", real)
    result = run_sweep(sweep, out=tmp_path)
    assert sum(r.reused for r in result.results) == 2
    assert len(result.results) == 4


def test_the_float64_optimum_stops_when_newton_can_no_longer_see_progress(monkeypatch):
    # near the optimum the Newton decrement falls below f's rounding: the Armijo line
    # search then halves its step 30-40 times per iteration for nothing (a 100,000 x 50
    # variant took 2,917 loss evaluations and 35 s); the iteration stops there instead
    from stability_lab.run import engine
    from stability_lab.spec import RunSpec
    from stability_lab.tasks import optimum

    calls = []
    real = optimum._f_and_grad

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    spec = RunSpec(data="synthetic:n=30000,d=50,kappa=1e3,seed=0", precision="float64",
                   lam=5e-5, scale="standardized")
    prep = engine.DataCache().get(spec)
    monkeypatch.setattr(optimum, "_f_and_grad", counted)
    opt = optimum.optimum(prep, 5e-5)
    assert opt["attained"] and opt["iterations"] <= 8
    assert len(calls) <= opt["iterations"] + 2  # full Newton steps, no futile halvings


def test_breast_cancer_is_scikit_learns_bit_for_bit_without_importing_it():
    """The default data, read from the file scikit-learn ships, equals
    load_breast_cancer() bit for bit, and loading it imports no scikit-learn (a fresh
    process: this one may have imported it already)."""
    import subprocess
    import sys

    from sklearn.datasets import load_breast_cancer

    from stability_lab.tasks import datasets

    ds, ref = datasets.load("breast_cancer"), load_breast_cancer()
    assert ds.X.dtype == np.float64 and ds.X.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(ds.X, ref.data)
    np.testing.assert_array_equal(ds.y, ref.target)
    assert ds.feature_names == list(ref.feature_names)
    assert ds.classes == list(ref.target_names)
    probe = ("import sys; from stability_lab.tasks import datasets; "
             "d = datasets.load('breast_cancer'); "
             "print(d.X.shape, sorted(m for m in sys.modules if m.startswith('sklearn')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.strip() == "(569, 30) []"
