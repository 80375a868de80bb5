"""The batched attribution statistics equal a straightforward per-module computation."""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import sum_sq_norms

from stability_lab.precision import policies as P
from stability_lab.run.attribution import SAMPLE, Attributor

# every test here runs on each reduction path (torch, and each copy of the C kernel)
pytestmark = pytest.mark.usefixtures("attribution_path")


def _model(inplace: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 300), torch.nn.ReLU(inplace=inplace),
                               torch.nn.Linear(300, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))


def _sample(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1)[::max(1, t.numel() // SAMPLE)]


def _step(model, attr: Attributor | None, x, y, scale: float = 1.0):
    """One SGD step; a reference copy of every module's output and output gradient."""
    outs, grads, handles = {}, {}, []
    names = {m: (n or "<model>") for n, m in model.named_modules()}

    def post(module, args, output):
        name = names[module]
        outs[name] = output
        output.register_hook(lambda g: grads.setdefault(name, g.detach().clone()))

    for m in names:
        handles.append(m.register_forward_hook(post))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if attr is not None:
        attr.begin(1)
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    if attr is not None:
        attr.end_forward()
    for h in handles:
        h.remove()
    acts = {k: v.detach().clone() for k, v in outs.items()}  # after any in-place change
    (loss * scale).backward()
    before = {n: [p.detach().clone() for p in m.parameters(recurse=False)]
              for m, n in names.items()}
    pgrads = {n: [p.grad.detach().clone() for p in m.parameters(recurse=False)]
              for m, n in names.items()}
    if attr is not None:
        attr.before_update()
    opt.step()
    if attr is not None:
        attr.end_step(grad_scale=scale)
    after = {n: [p.detach().clone() for p in m.parameters(recurse=False)]
             for m, n in names.items()}
    return acts, grads, before, pgrads, after


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("scale", [1.0, 1024.0])
def test_batched_statistics_equal_per_module_reference(inplace, scale):
    policy = P.get_policy("float32")
    fmt = policy.act_format
    x = torch.randn(64, 12)
    x[:, 0] = 1e-39  # subnormal inputs: below-normal fractions are not all zero
    y = torch.randint(0, 3, (64,))
    model = _model(inplace)
    attr = Attributor(model, policy, 1)
    acts, grads, before, pgrads, after = _step(model, attr, x, y, scale)
    arr = attr.arrays()
    assert attr.steps == [1]
    for name, t in acts.items():
        lo, hi = torch.aminmax(t)
        amax = float(torch.maximum(-lo, hi).double())
        ser = arr[name]
        assert ser["act_absmax"][0] == amax
        assert ser["act_headroom"][0] == fmt.headroom_log2(amax)
        s = _sample(t).abs()
        n = s.numel()
        assert ser["act_below_normal"][0] == int(((s > 0) & (s < fmt.tiny)).sum()) / n
        assert ser["act_zero"][0] == int((s == 0).sum()) / n
    for name, g in grads.items():
        lo, hi = torch.aminmax(g)
        gmax = float(torch.maximum(-lo, hi).double())
        ser = arr[name]
        assert ser["grad_absmax"][0] == gmax / scale
        assert ser["grad_headroom"][0] == fmt.headroom_log2(gmax)
        s = _sample(g).abs()
        n = s.numel()
        below = int(((s > 0) & (s < fmt.tiny * scale)).sum()) / n
        assert ser["grad_below_normal"][0] == below
        assert ser["grad_zero"][0] == int((s == 0).sum()) / n
    # the gradient of the first Linear is the one of its own output, also when the
    # ReLU after it overwrote that output in place
    lin_g = grads["0"]
    assert arr["0"]["grad_absmax"][0] == float(lin_g.abs().max().double()) / scale
    relu = acts["1"]
    alive = int(relu.ne(0).any(0).sum())
    assert arr["1"]["dead_frac"][0] == 1.0 - alive / relu.shape[-1]
    for name, ps in before.items():
        if not ps:
            assert "grad_norm" not in arr.get(name, {})
            continue
        g2 = sum_sq_norms(pgrads[name])
        w2 = sum_sq_norms(after[name])
        u2 = sum_sq_norms(a - b for a, b in zip(after[name], ps))
        assert arr[name]["grad_norm"][0] == pytest.approx(math.sqrt(g2) / scale, rel=1e-12)
        assert arr[name]["update_ratio"][0] == pytest.approx(math.sqrt(u2) / math.sqrt(w2),
                                                             rel=1e-12)


def test_rows_with_missing_statistics_are_nan_and_series_matches_arrays():
    policy = P.get_policy("float32")
    model = _model(False)
    attr = Attributor(model, policy, 1)
    x, y = torch.randn(8, 12), torch.randint(0, 3, (8,))
    _step(model, attr, x, y)
    # a step whose snapshot is missing: update ratios are nan, the rest is measured
    attr.begin(2)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    attr.end_forward()
    loss.backward()
    attr.end_step()
    arr = attr.arrays()
    assert attr.steps == [1, 2]
    assert math.isfinite(arr["0"]["update_ratio"][0]) and math.isnan(arr["0"]["update_ratio"][1])
    assert all(len(v) == 2 for ser in arr.values() for v in ser.values())
    assert attr.series["0"]["act_absmax"] == arr["0"]["act_absmax"].tolist()
