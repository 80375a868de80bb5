"""Scale: probes without any n x p x p intermediate (exact for small problems, stated
estimates for large ones), bounded cohort memory, mini-batch order."""

import math

import numpy as np
import pytest
from _helpers import traced_peak

from stability_lab.linalg import conditioning
from stability_lab.linalg.conditioning import design_spectrum, tsqr_r
from stability_lab.precision import FORMATS
from stability_lab.run import cohort
from stability_lab.tasks.curvature import Curvature, hessian_extremes


def dense_hessian(A, w, lam):
    """The textbook Hessian of the regularized log-loss (last coordinate unpenalized)."""
    z = A @ w
    c = 0.25 * (1 - np.tanh(0.5 * z) ** 2)
    P = np.eye(A.shape[1])
    P[-1, -1] = 0
    return A.T @ (A * c[:, None]) / len(A) + lam * P


@pytest.mark.parametrize("n,d", [(300, 12), (7, 40), (2, 60), (40, 39),
                                 # n k^2 over curvature._BLOCK_ENTRIES: one k x k product
                                 # per run and block, in one block and in two
                                 (3000, 40), (110_000, 40)])
@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_curvature_exact_against_dense(n, d, lam):
    rng = np.random.default_rng(n + d)
    X = rng.standard_normal((n, d)) * np.geomspace(1, 1e3, d)
    A = np.hstack([X, np.ones((n, 1))])
    curv = Curvature(X)
    assert curv.exact and curv.k == min(n + 1, d + 1)
    W = rng.standard_normal((3, d + 1)) * 0.01
    got = curv.hessians(W, np.full(3, lam))
    for w, h in zip(W, got):
        ev = np.linalg.eigvalsh(dense_hessian(A, w, lam))
        scale = ev[-1]
        assert h["hessian_max"] == pytest.approx(ev[-1], rel=1e-10)
        # the smallest is exact to rounding relative to the largest
        assert abs(h["hessian_min"] - ev[0]) <= 1e-10 * scale
    ev = np.linalg.eigvalsh(A.T @ A / (4 * n) + lam * np.diag([1.0] * d + [0.0]))
    assert curv.bound(lam) == pytest.approx(ev[-1], rel=1e-10)
    lo, hi = curv.gram_extremes()
    ev = np.linalg.eigvalsh(A.T @ A / n)
    assert hi == pytest.approx(ev[-1], rel=1e-10) and abs(lo - ev[0]) <= 1e-10 * ev[-1]


def test_hessian_extremes_nonfinite_weights_give_nan():
    X = np.random.default_rng(0).standard_normal((50, 4))
    out = Curvature(X).hessians(np.array([[np.nan] * 5, [0.0] * 5]), np.zeros(2))
    assert math.isnan(out[0]["hessian_max"]) and math.isfinite(out[1]["hessian_max"])


@pytest.mark.parametrize("n,d", [(400, 60), (30, 80)])
def test_curvature_lanczos_estimate_within_its_stated_error(n, d):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((n, d)) * np.linspace(1, 5, d)
    exact = Curvature(X)
    est = Curvature(X, exact_limit=10)
    assert not est.exact and exact.exact
    W = rng.standard_normal((2, d + 1)) * 0.1
    lams = np.array([0.0, 0.05])
    for a, b in zip(exact.hessians(W, lams), est.hessians(W, lams)):
        for end in ("max", "min"):
            err = b[f"hessian_{end}_error"]
            assert err < 1e-3 * a["hessian_max"]
            assert abs(b[f"hessian_{end}"] - a[f"hessian_{end}"]) <= err + 1e-9 * a["hessian_max"]
    # 2/L stays safe: the estimate of L is never below the true L
    for lam in (0.0, 0.05):
        assert est.bound(lam) >= exact.bound(lam) * (1 - 1e-12)
        assert est.bound(lam) == pytest.approx(exact.bound(lam), rel=1e-6)
    assert "estimate: Lanczos" in est.describe() and "exact" in exact.describe()


def test_hessian_extremes_of_a_given_design():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((80, 6))
    w = rng.standard_normal(6) * 0.3
    ev = np.linalg.eigvalsh(dense_hessian(A, w, 0.1))
    h = hessian_extremes(A, w, 0.1)
    assert h["hessian_max"] == pytest.approx(ev[-1], rel=1e-12)
    assert h["hessian_min"] == pytest.approx(ev[0], rel=1e-10)


@pytest.mark.parametrize("shape", [(3000, 7), (9, 2500)])
def test_blocked_qr_singular_values(monkeypatch, shape):
    monkeypatch.setattr(conditioning, "_BLOCK_ENTRIES", 1000)  # many blocks
    rng = np.random.default_rng(2)
    X = rng.standard_normal(shape) @ np.diag(np.geomspace(1, 1e-5, min(shape))) \
        if shape[0] > shape[1] else \
        np.diag(np.geomspace(1, 1e-5, shape[0])) @ rng.standard_normal(shape)
    s = np.linalg.svd(X, compute_uv=False)
    R = tsqr_r(X if shape[0] > shape[1] else X.T)
    assert R.shape == (min(shape), min(shape))
    spec = design_spectrum(X.astype(np.float32))
    s32 = np.linalg.svd(X.astype(np.float32).astype(np.float64), compute_uv=False)
    assert spec.exact
    assert spec.sigma_max == pytest.approx(s32[0], rel=1e-12)
    assert spec.sigma_min == pytest.approx(s32[-1], rel=1e-8)
    np.testing.assert_allclose(np.linalg.svd(R, compute_uv=False), s, rtol=1e-9)


def test_design_spectrum_estimate_for_large_min_dimension():
    X = np.random.default_rng(4).standard_normal((400, 120)) * np.geomspace(1, 30, 120)
    est = design_spectrum(X, exact_limit=50)
    ex = design_spectrum(X)
    assert not est.exact and ex.exact
    assert est.cond_gram == pytest.approx(ex.cond_gram, rel=max(2 * est.relative_error_bound,
                                                                 1e-9))



def test_probe_memory_is_linear_in_n_times_p():
    """4,000 x 100: an n x p x p array would be 330 MB, a p x p one 80 KB; the data
    is 3.2 MB. The probes' peak stays within a few copies of the data."""
    n, d = 4000, 100
    X = np.random.default_rng(5).standard_normal((n, d)).astype(np.float32)
    W = np.random.default_rng(6).standard_normal((4, d + 1)) * 0.01

    def probes():
        curv = Curvature(X)
        curv.hessians(W, np.zeros(4))
        curv.bound(0.0)
        design_spectrum(X)

    peak = traced_peak(probes)
    assert peak < 8 * n * (d + 1) * 8 + 40 * (d + 1) ** 2 * 8, peak


def test_wide_probe_memory_has_no_p_by_p():
    """2 x 6,000: a p x p array would be 288 MB; the probes work in 3 dimensions."""
    X = np.random.default_rng(7).standard_normal((2, 6000))
    W = np.random.default_rng(8).standard_normal((2, 6001)) * 0.01

    def probes():
        curv = Curvature(X)
        assert curv.k == 3
        curv.hessians(W, np.array([0.0, 0.1]))
        curv.bound(0.1)
        curv.gram_extremes()
        design_spectrum(X)

    assert traced_peak(probes) < 2_000_000


def test_wide_near_singular_advisory_has_no_p_by_p():
    """More columns than rows is an exact rank deficiency (its own finding): the
    near-singular advisory stops after O(n p) work (a 6,000 x 6,000 Gram is 288 MB)."""
    from types import SimpleNamespace

    from stability_lab.remedies.advisories import near_singular

    X = np.random.default_rng(7).standard_normal((2, 6000))
    y = np.array([0.0, 1.0])
    ds = SimpleNamespace(X=X, y=y, feature_names=[f"x{i}" for i in range(6000)], name="w")
    variant = SimpleNamespace(dataset=ds, scale="standardized", source="w", y64=y)
    out = []
    assert traced_peak(lambda: out.append(near_singular(variant, ["float32"]))) < 2_000_000
    assert out == [None]


def test_cohort_chunks_bound_memory(monkeypatch):
    """A cohort split into chunks of runs gives the numbers of the whole cohort."""
    from stability_lab.run import engine
    from stability_lab.spec import RunSpec, expand

    specs = expand(RunSpec(scale="standardized", epochs=8, precision="float64"),
                   [("lr", [0.01, 0.1, 1.0]), ("seed", [0, 1])])
    whole = engine.run_specs(specs)
    monkeypatch.setattr(cohort, "COHORT_BYTES", 8 * 8 * 569 * 2)  # 2 runs a chunk
    assert cohort.chunk_runs(569, FORMATS["float64"]) == 2
    calls = []
    real = cohort._run_chunk
    monkeypatch.setattr(cohort, "_run_chunk",
                        lambda torch, s, p: calls.append(len(s)) or real(torch, s, p))
    chunked = engine.run_specs(specs)
    assert calls == [2, 2, 2]
    for a, b in zip(whole, chunked):
        for k in a.metrics:
            np.testing.assert_allclose(a.metrics[k], b.metrics[k], rtol=1e-12, equal_nan=True)


def test_minibatch_order_is_fixed_by_the_seed():
    from stability_lab.run import engine
    from stability_lab.spec import RunSpec

    spec = RunSpec(scale="standardized", batch_size=50, epochs=3, lr=0.1)
    a, b = engine.run_specs([spec]), engine.run_specs([spec])
    np.testing.assert_array_equal(a[0].metrics["loss"], b[0].metrics["loss"])
    (c,) = engine.run_specs([spec.replace(seed=1)])
    (full,) = engine.run_specs([spec.replace(batch_size=None)])
    assert not np.array_equal(a[0].metrics["loss"], full.metrics["loss"])
    assert c.metrics["loss"][-1] != a[0].metrics["loss"][-1]


def test_curvature_of_huge_finite_data_is_scaled_exactly():
    """Features near 2^450: the probes work on A / c (c a power of two) and scale back."""
    rng = np.random.default_rng(9)
    X = rng.standard_normal((60, 4))
    big = Curvature(X * 2.0 ** 450, append_ones=False)
    ref = Curvature(X, append_ones=False)
    assert big.c > 1 and ref.c == 1
    assert big.bound(0.0) == pytest.approx(ref.bound(0.0) * 2.0 ** 900, rel=1e-12)
    w = rng.standard_normal((1, 4)) * 2.0 ** -450
    hb = big.hessians(w, np.zeros(1))[0]
    hr = ref.hessians(w * 2.0 ** 450, np.zeros(1))[0]
    assert hb["hessian_max"] == pytest.approx(hr["hessian_max"] * 2.0 ** 900, rel=1e-10)
    assert design_spectrum(X * 2.0 ** 700).cond_gram == pytest.approx(
        design_spectrum(X).cond_gram, rel=1e-12)


CSVS = {
    "plain": "a,b,y\n1,2.5,yes\n3,-4e3,no\n5,6,yes\n",
    "bom_semicolon": "\ufeffa;b;y\n1;2.5;1\n3;-4;0.0\n5;6;1.0\n",
    "quoted": '"a","b","y"\n1,2,"cat"\n3,4,"dog"\n5,6,"cat"\n',
    "spaces": "a, b, y\n 1, 2, 0\n3 ,4 ,1\n",
    "tab_numeric_labels": "y\ta\tb\n0\t1\t2\n1\t3\t4\n1.0\t5\t6\n",
}


@pytest.mark.parametrize("name", sorted(CSVS))
def test_fast_csv_reader_equals_the_validating_reader(name, tmp_path, monkeypatch):
    from stability_lab.tasks import datasets

    path = tmp_path / f"{name}.csv"
    path.write_text(CSVS[name], encoding="utf-8")
    fast = datasets._load_csv_fast(path, "y")
    assert fast is not None
    monkeypatch.setattr(datasets, "_load_csv_fast", lambda p, t: None)
    slow = datasets.load_csv(str(path), "y")
    np.testing.assert_array_equal(fast.X, slow.X)
    np.testing.assert_array_equal(fast.y, slow.y)
    assert (fast.feature_names, fast.classes, fast.name) == \
        (slow.feature_names, slow.classes, slow.name)


@pytest.mark.parametrize("text", ["a,b,y\n1,x,0\n2,3,1\n", "a,b,y\n1,nan,0\n2,3,1\n",
                                  "a,b,y\n1,2\n2,3,1\n", "a,a,y\n1,2,0\n2,3,1\n",
                                  "a,b,y\n1,2,0\n2,3,0\n", "a,b,y\n1,2,\n2,3,1\n"])
def test_fast_csv_reader_leaves_faults_to_the_validating_reader(text, tmp_path):
    from stability_lab.tasks import datasets

    path = tmp_path / "bad.csv"
    path.write_text(text)
    assert datasets._load_csv_fast(path, "y") is None


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_torch_fused_loss_matches_the_numerics_kernel(dtype):
    """The cohort loop's torch kernel against numerics.log_loss_and_grad: within an ulp
    or two everywhere (of the subnormal spacing in the subnormal band), equal on
    infinities and NaN."""
    import torch

    from stability_lab import numerics
    from stability_lab.tasks.logistic import _fused_hard_labels

    dt = getattr(torch, dtype)
    rng = np.random.default_rng(10)
    z = np.concatenate([rng.standard_normal(2000) * 10, np.linspace(-800, 800, 4001),
                        [np.inf, -np.inf, np.nan, 0.0, -0.0, 90.0, -95.0, 100.0, 720.0]])
    Z = torch.from_numpy(z).to(dt).reshape(-1, 1).repeat(1, 2)
    Y = torch.tensor([[0.0], [1.0]]).repeat((len(z) + 1) // 2, 1)[:len(z)].to(dt)
    loss, grad = _fused_hard_labels(torch, Z, Y)
    ref_loss, ref_grad = numerics.log_loss_and_grad(Z, Y)
    assert loss.dtype == dt and grad.dtype == dt
    eps = float(torch.finfo(dt).eps)
    for a, b in ((loss, ref_loss), (grad, ref_grad)):
        a, b = a.double().numpy(), b.double().numpy()
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        ok = ~np.isnan(a)
        # 4 ulps: relative for normal values, of the subnormal spacing below them
        sub = float(torch.finfo(dt).smallest_normal) * eps
        np.testing.assert_allclose(a[ok], b[ok], rtol=4 * eps, atol=4 * sub)
        np.testing.assert_array_equal(np.isinf(a), np.isinf(b))
