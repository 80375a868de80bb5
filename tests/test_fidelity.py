"""Fidelity of the lab's low-precision arithmetic to PyTorch's native ops.

The logistic engine's loss and gradient in every format are compared with what torch
computes for ``F.binary_cross_entropy_with_logits`` + L2 on tensors of that format
(autograd through torch's own matmul, mean and element-wise ops). Bounds, per format
with unit roundoff u: the loss agrees to 4u relative (torch rounds each of its few
element-wise ops, the lab rounds the fused loss once: a few ulps per element, averaged
by the mean); the gradient agrees to 8u in norm relative to the norm of the sum of
absolute terms |x_ij (p_i - y_i)| / n (the accuracy a rounded sum of those terms can
have). float64 and float32 are bit-equal or within those bounds too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from stability_lab.precision import FORMATS  # noqa: E402
from stability_lab.tasks import logistic  # noqa: E402

FORMAT_NAMES = ["float64", "float32", "bfloat16", "float16"]


def _problem(n=400, d=6, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * scale
    w = rng.standard_normal(d + 1) * 0.3
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ w[:d] + w[d])))).astype(np.float64)
    return X, y, w


def _lab(X, y, w, lam, fmt_name, loss_form="stable"):
    fmt = FORMATS[fmt_name]
    dt = fmt.torch_dtype()
    Xt = torch.from_numpy(X).to(dt)
    yt = torch.from_numpy(y).to(dt).reshape(-1, 1)
    W = torch.from_numpy(w[None, :]).to(dt)
    lam_t = torch.tensor([[lam]], dtype=torch.float64).to(dt)
    _, loss, g = logistic.objective(torch, Xt, yt, W, lam_t, fmt, loss_form)
    return float(loss[0]), g[0].double().numpy()


def _torch_native(X, y, w, lam, fmt_name):
    dt = FORMATS[fmt_name].torch_dtype()
    Xt = torch.from_numpy(X).to(dt)
    yt = torch.from_numpy(y).to(dt)
    wt = torch.from_numpy(w).to(dt).requires_grad_(True)
    d = X.shape[1]
    z = Xt @ wt[:d] + wt[d]
    loss = F.binary_cross_entropy_with_logits(z, yt)
    loss = loss.double() + 0.5 * lam * (wt[:d].double() ** 2).sum()
    loss.backward()
    return float(loss.detach()), wt.grad.double().numpy()


@pytest.mark.parametrize("fmt_name", FORMAT_NAMES)
@pytest.mark.parametrize("lam", [0.0, 0.1])
def test_logistic_loss_and_gradient_match_torch_native(fmt_name, lam):
    X, y, w = _problem()
    u = FORMATS[fmt_name].unit_roundoff
    lab_loss, lab_g = _lab(X, y, w, lam, fmt_name)
    ref_loss, ref_g = _torch_native(X, y, w, lam, fmt_name)
    assert abs(lab_loss - ref_loss) <= 4 * u * abs(ref_loss) + 1e-300
    # the accuracy a rounded sum of the gradient's terms can have
    p = 1 / (1 + np.exp(-(X @ w[:-1] + w[-1])))
    terms = np.abs(np.hstack([X, np.ones((len(y), 1))]) * (p - y)[:, None]).sum(0) / len(y)
    scale = np.linalg.norm(terms) + lam * np.linalg.norm(w[:-1])
    assert np.linalg.norm(lab_g - ref_g) <= 8 * u * scale


@pytest.mark.parametrize("fmt_name", FORMAT_NAMES)
def test_cross_entropy_matches_torch_native(fmt_name):
    from stability_lab import numerics

    dt = FORMATS[fmt_name].torch_dtype()
    u = FORMATS[fmt_name].unit_roundoff
    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.standard_normal((64, 10)) * 3).to(dt)
    target = torch.from_numpy(rng.integers(0, 10, 64))
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    la = numerics.cross_entropy(a, target)
    lb = F.cross_entropy(b, target)
    la.backward()
    lb.backward()
    assert abs(float(la.detach()) - float(lb.detach())) <= 4 * u * abs(float(lb.detach()))
    assert float((a.grad.double() - b.grad.double()).norm()) <= 8 * u * float(
        b.grad.double().abs().sum() / math.sqrt(64))


def test_obs1_float16_reductions_accumulate_like_torch():
    """Observation 1: the mean loss of 100,000 float16 samples is finite (torch's mean
    accumulates in float32); a float16 sum would overflow at 65504 and call it inf."""
    rng = np.random.default_rng(0)
    n = 100_000
    z = torch.from_numpy(rng.standard_normal((n, 1)) * 0.005).half()
    y = torch.from_numpy((rng.random((n, 1)) < 0.5).astype(np.float64)).half()
    loss, dz = logistic._loss_and_dz(torch, z, y, "stable", n)
    ref = F.binary_cross_entropy_with_logits(z[:, 0], y[:, 0])
    assert torch.isfinite(loss).all()
    assert loss.dtype == torch.float16
    assert float(loss[0]) == float(ref)  # torch's own float16 mean, bit for bit
    naive_loss, _ = logistic._loss_and_dz(torch, z, y, "naive", n)
    assert torch.isfinite(naive_loss).all()


def test_obs1_float16_run_on_100k_rows_trains_like_torch(tmp_path):
    """Observation 1 end to end: standardized Gaussian features, float16, lr 0.5: the
    loss falls (0.69 -> well below) instead of 'overflow at epoch 1'."""
    from stability_lab.spec import RunSpec
    from stability_lab.lab import run_sweep
    from stability_lab.spec import Sweep

    spec = RunSpec(task="logistic_regression", data="synthetic:n=100000,d=3,kappa=1,seed=0",
                   precision="float16", lr=0.5, epochs=15, scale="standardized")
    res = run_sweep(Sweep(spec, []))
    (r,) = res.results
    loss = r.trace.metric("loss")
    assert np.all(np.isfinite(loss))
    assert r.verdict.status not in ("overflow", "nan", "diverged")
    assert not any(f.signature in ("overflow", "nan_creation") for f in r.findings)
    assert "float32" in r.trace.meta["reduction"]
