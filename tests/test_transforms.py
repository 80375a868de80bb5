"""The engine's update as a chain of transforms (stability_lab.run.transforms): each
transform against a hand computation, the two layouts agreeing, and the chain as the
engine's two modes run it (the lr schedule and L2 seen in real runs)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stability_lab.run import transforms as T
from stability_lab.run.engine import run_one
from stability_lab.run.scaler import DynamicLossScaler
from stability_lab.spec import RunSpec
from stability_lab.tasks import get_task


def _step(layout, params, grads, active=None, **kw):
    norms = layout.norms(grads)
    active = np.ones(len(norms), dtype=bool) if active is None else active
    return T.Step(1, layout, params, norms, active, **kw)


def test_chain_applies_in_order_and_keeps_each_state():
    seen = []

    def tagged(name):
        def update(g, s, step):
            seen.append(name)
            return g * 2, s + 1
        return T.Transform(name, lambda p: 0, update)

    c = T.chain(tagged("a"), tagged("b"))
    state = c.init(None)
    assert state == (0, 0)
    out, state = c.update(torch.ones(1), state, None)
    assert seen == ["a", "b"] and state == (1, 1) and float(out) == 4.0
    assert c.name == "chain(a, b)"


def test_clip_scales_each_run_to_its_limit_and_leaves_nonfinite_norms_alone():
    rows = T.Rows(torch, torch.float64, 3)
    g = torch.tensor([[3.0, 4.0, 0.0], [0.3, 0.4, 0.0], [math.inf, 0.0, 0.0]])
    step = _step(rows, torch.zeros(3, 3), g)
    clip = T.clip_by_global_norm([1.0, 1.0, 1.0])
    out, _ = clip.update(g, None, step)
    assert np.allclose(step.info["clip_factor"], [0.2, 1.0, 1.0])
    assert torch.allclose(out[0], torch.tensor([0.6, 0.8, 0.0], dtype=torch.float64))
    assert torch.equal(out[1], g[1])  # under the limit: untouched
    assert math.isinf(float(out[2, 0]))  # an overflowed gradient is not hidden by clipping
    # the single layout: the same factor, as a Python float, in place
    grads = [torch.tensor([3.0, 4.0]), torch.tensor([0.0])]
    single = T.Tensors(torch)
    step1 = _step(single, None, grads)
    T.clip_by_global_norm([1.0]).update(grads, None, step1)
    assert step1.info["clip_factor"][0] == pytest.approx(0.2)
    assert torch.allclose(grads[0], torch.tensor([0.6, 0.8]))


def test_no_clip_limit_means_factor_one():
    rows = T.Rows(torch, torch.float32, 2)
    g = torch.tensor([[1e30, 1e30]])
    step = _step(rows, torch.zeros(1, 2), g)
    out, _ = T.clip_by_global_norm([None]).update(g, None, step)
    assert step.info["clip_factor"].tolist() == [1.0] and out is g


def test_dynamic_loss_scale_unscales_by_the_scale_used_and_skips_nonfinite_steps():
    scaler = DynamicLossScaler(init_scale=1024.0, growth_interval=2)
    t = T.dynamic_loss_scale(scaler)
    state = t.init(None)
    single = T.Tensors(torch)
    grads = [torch.tensor([1024.0, 2048.0])]
    step = _step(single, None, grads, loss=0.5)
    step.grad_norm = step.grad_norm / 1024.0  # the engine passes the unscaled norm
    grads, state = t.update(grads, state, step)
    assert grads[0].tolist() == [1.0, 2.0] and step.info == {"loss_scale": 1024.0,
                                                              "skipped": False}
    bad = [torch.tensor([math.inf, 1.0])]
    step = _step(single, None, bad, loss=0.5)
    out, state = t.update(bad, state, step)
    assert step.info["skipped"] is True and not step.active.any()
    assert math.isinf(float(out[0][0])) and scaler.scale == 512.0  # backed off, not applied
    # a NaN loss with finite gradients also skips
    step = _step(single, None, [torch.ones(2)], loss=math.nan)
    t.update([torch.ones(2)], state, step)
    assert step.info["skipped"] is True and scaler.scale == 256.0


@pytest.mark.parametrize("warmup, expected", [(0, [0.5, 0.5, 0.5]), (4, [0.125, 0.25, 0.375]),
                                              (1, [0.5, 0.5, 0.5])])
def test_lr_schedule_warms_up_linearly_then_holds(warmup, expected):
    assert [T.lr_at(0.5, warmup, k) for k in (1, 2, 3)] == expected
    assert T.lr_at(0.5, warmup, 10) == 0.5


def test_l2_adds_lambda_w_to_weights_only_as_autograd_would():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()
    x, lam = torch.randn(8, 4, dtype=torch.float64), 0.3

    def loss_fn(with_penalty):
        out = model(x).pow(2).mean()
        return out + 0.5 * lam * model.weight.pow(2).sum() if with_penalty else out

    model.zero_grad()
    loss_fn(True).backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss_fn(False).backward()
    params = list(model.parameters())
    grads = [p.grad for p in params]
    step = T.Step(1, T.Tensors(torch), params, np.array([math.nan]), np.array([True]))
    got, _ = T.add_l2([lam]).update(grads, None, step)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=0, atol=1e-15)
    # on a still-scaled gradient the penalty is scaled too
    model.zero_grad()
    (loss_fn(False) * 8).backward()
    step.grad_scale = 8.0
    got, _ = T.add_l2([lam]).update([p.grad for p in params], None, step)
    assert torch.allclose(got[0] / 8, want[0], rtol=0, atol=1e-15)


def test_l2_rows_match_the_logistic_objectives_gradient():
    from stability_lab.precision import FORMATS
    from stability_lab.tasks.logistic import data_objective, objective

    gen = torch.Generator().manual_seed(1)
    X = torch.randn(20, 3, generator=gen, dtype=torch.float64)
    y = (torch.rand(20, 1, generator=gen) > 0.5).double()
    W = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    rows = T.Rows(torch, torch.float64, 4)
    lam = rows.column([0.0, 0.5])
    fmt = FORMATS["float64"]
    _, _, g_full = objective(torch, X, y, W, lam, fmt)
    _, _, g_data = data_objective(torch, X, y, W, fmt)
    step = T.Step(1, rows, W, np.full(2, np.nan), np.ones(2, dtype=bool))
    g, _ = T.add_l2([0.0, 0.5]).update(g_data, None, step)
    assert torch.equal(g, g_full)
    assert torch.equal(g[0], g_data[0])  # lambda 0: the data's gradient
    assert float(g[1, -1]) == float(g_data[1, -1])  # the intercept is not penalized


def test_apply_sgd_moves_active_runs_only():
    rows = T.Rows(torch, torch.float64, 2)
    W = torch.ones(2, 2, dtype=torch.float64)
    step = T.Step(1, rows, W, np.zeros(2), np.array([True, False]))
    Wn, _ = T.apply_sgd().update(torch.full((2, 2), 0.25, dtype=torch.float64), None, step)
    assert Wn[0].tolist() == [0.75, 0.75] and Wn[1].tolist() == [1.0, 1.0]


def test_cohort_warmup_takes_lr_over_k_on_its_first_step():
    """A float64 logistic run: the first step's update norm is lr_t times the
    gradient norm, with lr_t = lr/K under a warm-up of K steps and lr without."""
    task = get_task("logistic_regression")
    spec = RunSpec(scale="standardized", lr=0.5, epochs=6)
    data = task.prepare(spec)
    plain = run_one(task, spec, data)
    warm = run_one(task, spec.replace(params=(("warmup", 4),)), data)
    for tr, rates in ((plain, [0.5] * 5), (warm, [0.125, 0.25, 0.375, 0.5, 0.5])):
        g, u = tr.metrics["grad_norm"], tr.metrics["update_norm"]
        assert np.allclose(u[:5], np.array(rates) * g[:5], rtol=1e-12)
    assert warm.metrics["loss"][1] > plain.metrics["loss"][1]  # smaller first step


def test_deep_runs_take_lambda_and_warmup():
    """The mlp with plain SGD: L2 enters the gradient (before, lambda was ignored by the
    deep loop); the warm-up scales the first update by 1/K."""
    task = get_task("mlp")
    base = RunSpec(task="mlp", policy="float32", precision="float32", lr=0.1, epochs=5,
                   params=(("optimizer", "sgd"),))
    data = task.prepare(base)
    plain = run_one(task, base, data)
    l2 = run_one(task, base.replace(lam=0.5), data)
    assert l2.metrics["loss"][0] == plain.metrics["loss"][0]  # same weights at step 1
    assert l2.metrics["grad_norm"][0] != plain.metrics["grad_norm"][0]
    assert l2.metrics["weight_norm"][-1] < plain.metrics["weight_norm"][-1]
    warm = run_one(task, base.replace(params=(("optimizer", "sgd"), ("warmup", 10))), data)
    ratio = warm.metrics["update_norm"][0] / plain.metrics["update_norm"][0]
    assert ratio == pytest.approx(0.1, rel=1e-5)


def test_param_format_casts_at_init_and_the_optimizer_keeps_its_parameters():
    model = torch.nn.Linear(3, 2)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    t = T.param_format("bfloat16", lambda ps: model.to(torch.bfloat16))
    state = t.init(params)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(a is b for a, b in zip(model.parameters(), opt.param_groups[0]["params"]))
    step = T.Step(1, T.Tensors(torch), params, np.zeros(1), np.ones(1, dtype=bool))
    t.update([], state, step)
    assert step.info["param_format"] == "bfloat16"


@pytest.mark.parametrize("policy, dtype", [("mixed-bf16", torch.float32),
                                           ("bfloat16", torch.bfloat16),
                                           ("mixed-fp16", torch.float32)])
def test_single_mode_parameters_are_in_the_policys_format(policy, dtype):
    """fp32 master weights under a mixed policy, the policy's format under a pure one:
    what the chain's param_format set, and what the optimizer steps."""
    from stability_lab.run.autograd import SingleRun, train

    task = get_task("mlp")
    spec = RunSpec(task="mlp", policy=policy, precision="float32", lr=0.1, epochs=2)
    problem = task.problem(spec, task.prepare(spec))
    run = SingleRun(spec, problem)
    assert {p.dtype for p in run.model.parameters()} == {dtype}
    assert all(p.dtype == dtype for g in run.opt.param_groups for p in g["params"])
    trace = train(spec, problem)
    assert trace.extras["format"]["name"] == str(dtype).replace("torch.", "")
