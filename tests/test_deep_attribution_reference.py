"""Attribution statistics against a straightforward per-module reference computation.

The attributor takes shortcuts (ReLU unit maxima for the output's and the input's absmax,
gradients kept by autograd-node pre-hooks, batched samples, float64 sums per chunk, rows
decoded later, decoding plans reused across steps); the reference below takes none, so a
shortcut that gets a number wrong fails here: float32, float16 and bfloat16 models, loss
scaling, NaN and inf (whole rows, and a single NaN unit), ReLU inputs changed in place
after the ReLU read them (on some steps only), a ReLU output changed in place, all-negative
ReLU inputs, a module called twice, an output that is the second output of its autograd
node, and the parameter snapshot taken by the attributor or by the caller.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from _helpers import sum_sq_norms
from torch import nn

from stability_lab.precision import policies as P
from stability_lab.run.attribution import SAMPLE, Attributor

# every test here runs on each reduction path (torch, and each copy of the C kernel)
pytestmark = pytest.mark.usefixtures("attribution_path")


class Second(nn.Module):
    """The second half of the last dimension: output 1 of a two-output autograd node."""

    def forward(self, x):
        return x.chunk(2, dim=-1)[1]


class Block(nn.Module):
    def __init__(self, d: int, negative: bool, poison: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(d, d)
        self.act2 = nn.ReLU()
        self.side = nn.ReLU()
        self.squash = nn.Tanh()
        self.second = Second()
        if negative:  # the ReLU input is negative everywhere: its absmax is -min
            with torch.no_grad():
                self.fc.bias.fill_(-1e3)
        # one NaN in one unit of one row of the ReLU input (not a whole row or column)
        mask = torch.ones(d)
        if poison:
            mask[d // 2] = math.nan
        self.register_buffer("mask", mask)

    def forward(self, x):
        h = self.fc(x)
        if self.mask.isnan().any():
            h = h * torch.where(torch.arange(len(h)).unsqueeze(1) == 1, self.mask, 1.0)
        r = self.act(h)  # the ReLU input stays as it is
        g = self.fc2(x)
        q = self.act2(g)
        g.mul_(2.0)  # changed in place after the ReLU read it
        aux = self.side(x)
        aux.sub_(1.0)  # a ReLU output made negative (the loss does not use it)
        s = self.squash(self.squash(r + q))  # a module called twice
        return torch.cat([s, self.second(s)], dim=-1)


def _model(dtype: torch.dtype, negative: bool, inplace: bool,
           poison: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict([
        ("inp", nn.Linear(12, 300)), ("relu", nn.ReLU(inplace=inplace)),
        ("blk", Block(300, negative, poison)), ("out", nn.Linear(450, 3)),
    ])).to(dtype)


def _same(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)


def _stats(t: torch.Tensor, thr: float) -> tuple[float, float, float]:
    """Exact absmax, and the below-normal and zero fractions of the strided sample."""
    absmax = float(t.double().abs().max())  # NaN if any value is NaN
    s = t.reshape(-1)[::max(1, t.numel() // SAMPLE)].double().abs()
    s = torch.nan_to_num(s, nan=0.0, posinf=math.inf)  # NaN counts as zero
    thr = float(torch.tensor(thr, dtype=torch.float64).to(t.dtype))  # as the tensor sees it
    n = s.numel()
    return absmax, int(((s > 0) & (s < thr)).sum()) / n, int((s == 0).sum()) / n


def _run(model: nn.Module, policy: P.Policy, x, y, scale: float, every_decode: int,
         caller_snapshot: bool = False):
    names = {m: (n or "<model>") for n, m in model.named_modules()}
    calls: list[tuple[str, torch.Tensor]] = []
    grads: dict[int, torch.Tensor] = {}

    def post(module, args, output):
        k = len(calls)
        calls.append((names[module], output))
        if output.requires_grad:  # the gradient of the value the module returned
            output.register_hook(lambda g: grads.setdefault(k, g.detach().clone()))

    handles = [m.register_forward_hook(post) for m in names]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    attr = Attributor(model, policy, 1)
    attr.DECODE_EVERY = every_decode
    attr.begin(1)
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x).float(), y)
    attr.end_forward()
    for h in handles:
        h.remove()
    acts = [t.detach().clone() for _, t in calls]  # the values after the forward
    (loss * scale).backward()
    before = {n: [p.detach().clone() for p in m.parameters(recurse=False)]
              for m, n in names.items()}
    pgrads = {n: [p.grad.detach().clone() for p in m.parameters(recurse=False)
                  if p.grad is not None] for m, n in names.items()}
    if caller_snapshot:  # as the training loop does
        attr._before = [p.detach().clone() for ps in attr.params.values() for p in ps]
    else:
        attr.before_update()
    opt.step()
    attr.end_step(grad_scale=scale)
    after = {n: [p.detach().clone() for p in m.parameters(recurse=False)]
             for m, n in names.items()}
    return attr, calls, acts, grads, before, pgrads, after


CASES = [
    # (policy, model dtype, NaN/inf inputs, all-negative ReLU input, in-place ReLU, scale,
    #  one NaN unit in a ReLU input)
    ("float32", torch.float32, False, False, False, 1.0, False),
    ("float32", torch.float32, False, True, True, 1024.0, False),
    ("float32", torch.float32, True, False, False, 1.0, False),
    ("float32", torch.float32, False, False, False, 1.0, True),
    ("float16", torch.float16, False, False, True, 1.0, False),
    ("float16", torch.float16, True, True, False, 256.0, False),
    ("float16", torch.float16, False, False, False, 1.0, True),
    ("bfloat16", torch.bfloat16, False, True, False, 1.0, False),
    ("bfloat16", torch.bfloat16, True, False, True, 1.0, False),
]


@pytest.mark.parametrize("every_decode,caller_snapshot", [(1, False), (4096, True)])
@pytest.mark.parametrize("policy_name,dtype,special,negative,inplace,scale,poison", CASES)
def test_statistics_equal_a_straightforward_reference(policy_name, dtype, special,
                                                      negative, inplace, scale, poison,
                                                      every_decode, caller_snapshot):
    policy = P.get_policy(policy_name)
    act_fmt, grad_fmt = policy.act_format, policy.grad_format
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 12, generator=gen)
    x[:, 0] = act_fmt.tiny / 4  # below normal in the policy's format
    x[:, 1] = 0.0
    if special:
        x[3, 2] = math.inf
        x[5, 4] = math.nan
    y = torch.randint(0, 3, (64,), generator=gen)
    model = _model(dtype, negative, inplace, poison)
    attr, calls, acts, grads, before, pgrads, after = _run(
        model, policy, x.to(dtype), y, scale, every_decode, caller_snapshot)
    arr = attr.arrays()
    assert attr.steps == [1]
    # activations: the values after the forward; a module called twice keeps its last
    # call's statistics, its gradient statistics those of its first call (the last to get
    # its gradient in the backward pass)
    want_act: dict[str, tuple] = {}
    for (name, _), t in zip(calls, acts):
        want_act[name] = _stats(t, act_fmt.tiny)
    want_grad: dict[str, tuple] = {}
    for k in reversed(range(len(calls))):
        if k in grads:
            want_grad[calls[k][0]] = _stats(grads[k], grad_fmt.tiny * scale)
    assert set(want_act) == set(arr) and want_grad
    for name, (amax, below, zero) in want_act.items():
        ser = arr[name]
        assert _same(ser["act_absmax"][0], amax), name
        assert _same(ser["act_headroom"][0], act_fmt.headroom_log2(amax)), name
        assert ser["act_below_normal"][0] == below, name
        assert ser["act_zero"][0] == zero, name
    for name, (gmax, below, zero) in want_grad.items():
        ser = arr[name]
        assert _same(ser["grad_absmax"][0], gmax / scale), name
        assert _same(ser["grad_headroom"][0], grad_fmt.headroom_log2(gmax)), name
        assert ser["grad_below_normal"][0] == below, name
        assert ser["grad_zero"][0] == zero, name
    assert "grad_absmax" not in arr["blk.side"]  # no gradient reaches it
    # dead units of the ReLU-kind modules (NaN counts as alive), from their last call
    for (name, _), t in zip(calls, acts):
        if name in ("relu", "blk.act", "blk.act2", "blk.side"):
            alive = int(t.reshape(-1, t.shape[-1]).ne(0).any(0).sum())
            assert arr[name]["dead_frac"][0] == 1.0 - alive / t.shape[-1], name
    if negative and not special:
        assert arr["blk.act"]["dead_frac"][0] == 1.0
        assert arr["blk.fc"]["act_absmax"][0] > 100
    if poison:  # one NaN unit in one row: the ReLU output's absmax is NaN
        assert math.isnan(arr["blk.act"]["act_absmax"][0])
        assert arr["blk.act"]["act_headroom"][0] == -math.inf
    # parameters: gradient norms in float64, update-to-weight ratios with the update
    # computed in the parameters' dtype promoted to at least float32
    for name, ps in before.items():
        if not ps:
            assert "grad_norm" not in arr.get(name, {})
            continue
        g2 = sum_sq_norms(pgrads[name])
        w2 = sum_sq_norms(after[name])
        wd = [torch.promote_types(p.dtype, torch.float32) for p in ps]
        u2 = sum_sq_norms(a.to(d) - b.to(d) for a, b, d in zip(after[name], ps, wd))
        got_g, got_u = arr[name]["grad_norm"][0], arr[name]["update_ratio"][0]
        want_u = math.sqrt(u2) / math.sqrt(w2) if w2 > 0 else math.nan
        if special or poison:  # NaN downstream of the NaN
            assert _same(got_g, math.sqrt(g2) / scale) or got_g == pytest.approx(
                math.sqrt(g2) / scale, rel=1e-12)
            assert _same(got_u, want_u) or got_u == pytest.approx(want_u, rel=1e-12)
        else:
            assert got_g == pytest.approx(math.sqrt(g2) / scale, rel=1e-12)
            assert got_u == pytest.approx(want_u, rel=1e-12)


def test_relu_shortcuts_are_not_taken_for_changed_tensors():
    """The fc2 output was doubled after its ReLU read it, the side ReLU output shifted:
    their absmax is the one of the changed values, not the one the ReLU saw."""
    policy = P.get_policy("float32")
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(32, 12, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    model = _model(torch.float32, False, False)
    attr, calls, acts, *_ = _run(model, policy, x, y, 1.0, 4096)
    arr = attr.arrays()
    by_name = {name: t for (name, _), t in zip(calls, acts)}
    fc2, q = by_name["blk.fc2"], by_name["blk.act2"]
    assert float(fc2.abs().max()) == arr["blk.fc2"]["act_absmax"][0]
    assert float(fc2.abs().max()) != float(q.max())  # the ReLU's maximum is stale
    side = by_name["blk.side"]
    assert float(side.min()) < 0  # no longer a ReLU output: the generic path
    assert arr["blk.side"]["act_absmax"][0] == float(side.abs().max())
    assert arr["blk.side"]["dead_frac"][0] == 0.0


def test_rows_decoded_every_few_steps_equal_rows_decoded_at_the_end():
    policy = P.get_policy("float32")
    results = []
    for every_decode in (1, 3, 4096):
        model = _model(torch.float32, False, False)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        attr = Attributor(model, policy, 2)
        attr.DECODE_EVERY = every_decode
        gen = torch.Generator().manual_seed(3)
        for step in range(1, 9):
            x, y = torch.randn(16, 12, generator=gen), torch.randint(0, 3, (16,), generator=gen)
            on = attr.wants(step)
            if on:
                attr.begin(step)
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            if on:
                attr.end_forward()
            loss.backward()
            if on:
                attr.before_update()
            opt.step()
            if on:
                attr.end_step()
        assert attr.steps == [1, 3, 5, 7]
        results.append(attr.series)
    assert all(_nan_equal(results[0], r) for r in results[1:])


def _nan_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[m].keys() == b[m].keys() and all(
            len(a[m][k]) == len(b[m][k]) and all(_same(u, v) for u, v in zip(a[m][k], b[m][k]))
            for k in a[m]) for m in a)


def test_hooks_are_global_only_during_the_forward_and_ignore_other_models():
    from torch.nn.modules import module as M

    policy = P.get_policy("float32")
    model = _model(torch.float32, False, False)
    other = nn.Linear(12, 12)
    attr = Attributor(model, policy, 1)
    before = (len(M._global_forward_hooks), len(M._global_forward_pre_hooks))
    x, y = torch.randn(8, 12), torch.randint(0, 3, (8,))
    attr.begin(1)
    loss = nn.functional.cross_entropy(model(other(x)), y)
    attr.end_forward()
    assert (len(M._global_forward_hooks), len(M._global_forward_pre_hooks)) == before
    loss.backward()
    attr.end_step()
    assert set(attr.arrays()) == {(n or "<model>") for n, _ in model.named_modules()}
    attr.begin(2)
    model(x)
    attr.abort()  # a dropped step leaves no hooks and no row
    assert (len(M._global_forward_hooks), len(M._global_forward_pre_hooks)) == before
    assert attr.steps == [1]
    model(x).sum().backward()  # nothing watches this step
    assert attr.steps == [1] and len(attr.arrays()["inp"]["act_absmax"]) == 1


class Toggle(nn.Module):
    """fc -> ReLU; on odd calls the fc output is doubled after the ReLU read it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 40)
        self.act = nn.ReLU()
        self.calls = 0

    def forward(self, x):
        h = self.fc(x)
        r = self.act(h)
        self.calls += 1
        if self.calls % 2:
            h.mul_(2.0)
        return r


def test_steps_with_the_same_shapes_but_other_shortcuts_decode_right():
    policy = P.get_policy("float32")
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict([("t", Toggle()), ("out", nn.Linear(40, 3))]))
    attr = Attributor(model, policy, 1)
    gen = torch.Generator().manual_seed(4)
    want = []
    for step in (1, 2, 3):
        x, y = torch.randn(16, 12, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        seen = {}
        h = model.t.fc.register_forward_hook(lambda m, a, o, seen=seen: seen.setdefault("fc", o))
        attr.begin(step)
        loss = nn.functional.cross_entropy(model(x), y)
        attr.end_forward()
        h.remove()
        want.append(float(seen["fc"].detach().abs().max()))
        loss.backward()
        attr.end_step()
        model.zero_grad()
    assert attr.arrays()["t.fc"]["act_absmax"].tolist() == want
