"""The attribution step's C kernel (``run/_attrkernel.c``): built, exact, and guarded.

The statistics it feeds are compared with a straightforward reference on every copy of
the kernel in ``test_deep_attribution_reference.py`` and ``test_deep_attribution_speed.py``
(fixture ``attribution_path``). Here: the kernel's loops alone against torch on every
float16 and bfloat16 bit pattern and on float32/float64 values with NaN, infinities,
signed zeros and subnormals; whole training runs on both paths; the fallback to torch;
and job tables the kernel refuses.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _helpers import c_compiler_here

from stability_lab.run.attribution import Attributor, kernel_path
from stability_lab.run.attribution.kernel_path import JOB
from stability_lab.run.engine import run_one

KERNEL = kernel_path._attrkernel  # the extension module (None: not built)
TARGETS = list(kernel_path.kernel_targets())
K_MINMAX, K_SAMPLE, K_UNITMAX, K_UNITANY, K_PARAM = 1, 2, 4, 8, 16
CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def test_kernel_is_built_where_a_compiler_is():
    """`pip install -e .` builds it; without it the attribution step is slower
    (docs/deep.md), so a silently failed build must not pass unnoticed."""
    if not c_compiler_here():
        pytest.skip("no C compiler here: the kernel is optional (setup.py)")
    assert KERNEL is not None, (
        "the C kernel is not built: run `pip install -e .` in the repository root")
    assert TARGETS[-1] == "generic"
    assert KERNEL.job_size() == JOB.size


def _job(kind, t, *, a=0, b=-1, c=-1, rows=0, width=0, stride=0, nsample=0,
         o=(0, 0, 0, 0), thr=0.0, numel=None) -> bytes:
    return JOB.pack(kind, CODES[t.dtype], a, b, c, t.numel() if numel is None else numel,
                       rows, width, stride, nsample, *o, thr)


def _patterns(dtype: torch.dtype) -> torch.Tensor:
    """Every 16-bit pattern of float16 or bfloat16."""
    return torch.arange(-2 ** 15, 2 ** 15, dtype=torch.int32).to(torch.int16).view(dtype)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_half_pattern_widens_exactly(target, dtype):
    """Unit maxima over one row are the values themselves: all 65536 patterns
    (subnormals, infinities, NaNs, both zeros) widen as torch widens them."""
    t = _patterns(dtype)
    out = np.zeros(t.numel())
    KERNEL.attr_reduce([t.data_ptr()], _job(K_UNITMAX, t, rows=1, width=t.numel()),
                              out, target)
    ref = t.double().numpy()
    assert np.array_equal(out, ref, equal_nan=True)
    assert np.array_equal(np.signbit(out[~np.isnan(ref)]), np.signbit(ref[~np.isnan(ref)]))


def _values(dtype: torch.dtype, nan: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(37, 53, generator=gen, dtype=torch.float64)
    x = x * torch.exp2(torch.randint(-30, 30, x.shape, generator=gen).double())
    x = x.to(dtype)
    tiny = torch.finfo(dtype).tiny
    x.view(-1)[:8] = torch.tensor([0.0, -0.0, tiny, -tiny, tiny / 4, math.inf, -math.inf,
                                   -tiny / 8], dtype=dtype)
    x[5, :] = 0.0  # a dead unit row, and dead columns below
    x[:, 7] = 0.0
    x[:, 11] = -x[:, 11].abs()
    if nan:
        x[20, 30] = math.nan
    return x


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("nan", [False, True])
def test_loops_equal_torch(target, dtype, nan):
    x = _values(dtype, nan)
    rows, width = x.shape
    n = x.numel()
    stride = 3
    m = -(-n // stride)
    thr = float(torch.tensor(torch.finfo(dtype).tiny * 8, dtype=torch.float64).to(dtype))
    jobs = (_job(K_UNITMAX, x, rows=rows, width=width, o=(0, 0, 0, 0))
            + _job(K_UNITANY, x, rows=rows, width=width, o=(width, 0, 0, 0))
            + _job(K_MINMAX, x, o=(2 * width, 2 * width + 1, 0, 0))
            + _job(K_SAMPLE, x, stride=stride, nsample=m, thr=thr,
                   o=(0, 0, 2 * width + 2, 2 * width + 3)))
    out = np.zeros(2 * width + 4)
    KERNEL.attr_reduce([x.data_ptr()], jobs, out, target)
    assert np.array_equal(out[:width], x.amax(0).double().numpy(), equal_nan=True)
    assert np.array_equal(out[width:2 * width], x.ne(0).any(0).double().numpy())
    lo, hi = out[2 * width:2 * width + 2]
    assert _same(lo, float(x.amin())) and _same(hi, float(x.amax()))
    s = x.reshape(-1)[::stride].abs()
    assert out[2 * width + 2] == int((s > 0).sum())
    assert out[2 * width + 3] == int((s >= thr).sum())


def _same(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype,snap", [(torch.float32, torch.float32),
                                        (torch.float16, torch.float32),
                                        (torch.bfloat16, torch.float32),
                                        (torch.float64, torch.float64)])
def test_parameter_sums_of_squares(target, dtype, snap):
    """Sums of g^2, w^2 and (before - w)^2 with the difference in the snapshot's dtype,
    added to what is in ``out`` (a module's parameters add up)."""
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(300, generator=gen, dtype=torch.float64).to(dtype)
    g = torch.randn(300, generator=gen, dtype=torch.float64).to(dtype)
    before = (w.to(snap) + torch.randn(300, generator=gen, dtype=torch.float64).to(snap) * 1e-3)
    jobs = JOB.pack(K_PARAM, CODES[dtype], 0, 1, 2, 300, CODES[snap], 0, 0, 0, 0, 1, 2,
                       0, 0.0)
    out = np.array([1.0, 2.0, 3.0])
    KERNEL.attr_reduce([g.data_ptr(), w.data_ptr(), before.data_ptr()], jobs, out,
                              target)
    u = (before - w.to(snap)).double()
    ref = [1 + float((g.double() ** 2).sum()), 2 + float((w.double() ** 2).sum()),
           3 + float((u ** 2).sum())]
    np.testing.assert_allclose(out, ref, rtol=1e-13, atol=0)


def _job_error(jobs: bytes, out=None, ptrs=None, target=None):
    x = torch.zeros(10)
    with pytest.raises(ValueError) as e:
        KERNEL.attr_reduce(ptrs if ptrs is not None else [x.data_ptr()], jobs,
                                  out if out is not None else np.zeros(4), target)
    return str(e.value)


@pytest.mark.skipif(not TARGETS, reason="the C kernel is not built")
def test_malformed_job_tables_are_refused():
    x = torch.zeros(10)
    assert "malformed" in _job_error(_job(K_MINMAX, x, a=1, o=(0, 1, 0, 0)))  # no pointer 1
    assert "malformed" in _job_error(_job(K_MINMAX, x, o=(0, 4, 0, 0)))  # past `out`
    assert "malformed" in _job_error(_job(K_SAMPLE, x, stride=3, nsample=5, o=(0, 0, 2, 3)))
    assert "malformed" in _job_error(_job(K_UNITMAX, x, rows=3, width=3))  # 9 != 10 values
    assert "malformed" in _job_error(_job(K_UNITMAX, x, rows=2, width=5), out=np.zeros(4))
    assert "malformed" in _job_error(_job(99, x))
    assert "multiple" in _job_error(b"\0" * 7)
    assert "float64" in _job_error(_job(K_MINMAX, x, o=(0, 1, 0, 0)),
                                   out=np.zeros(4, np.float32))
    assert "not available" in _job_error(_job(K_MINMAX, x, o=(0, 1, 0, 0)), target="vax")
    assert "null" in _job_error(_job(K_MINMAX, x, o=(0, 1, 0, 0)), ptrs=[0])


# -- whole runs on both paths ----------------------------------------------------------

def _attribution(task: str, monkeypatch, path: str, **changes) -> dict:
    from stability_lab.spec import RunSpec
    from stability_lab.tasks import get_task

    monkeypatch.setattr(kernel_path, "REDUCE", path)
    t = get_task(task)
    spec = RunSpec(task=task, data="digits").replace(attribute_every=1, **changes)
    t.validate(spec)
    return run_one(t, spec, t.prepare(spec)).extras["attribution"]


@pytest.mark.skipif(not TARGETS, reason="the C kernel is not built")
@pytest.mark.parametrize("task,changes", [
    ("mlp", {"policy": "float32", "epochs": 6}),
    ("mlp", {"policy": "float16", "lr": 0.1, "epochs": 6}),
    ("mlp", {"policy": "mixed-fp16", "epochs": 6}),
    ("mlp", {"policy": "fp8", "epochs": 4}),
    ("attention", {"policy": "bfloat16", "epochs": 2}),
])
def test_runs_record_the_same_attribution_on_both_paths(task, changes, monkeypatch):
    a = _attribution(task, monkeypatch, "kernel", **changes)
    b = _attribution(task, monkeypatch, "torch", **changes)
    assert a["series"].keys() == b["series"].keys()
    assert a["series"]["steps"] == b["series"]["steps"]
    for name, ser in b["series"].items():
        if name == "steps":
            continue
        for key, ref in ser.items():
            got = a["series"][name][key]
            assert len(got) == len(ref), (name, key)
            if key in ("grad_norm", "update_ratio"):
                # float64 sums in another order, rounded to 4 digits in the series
                np.testing.assert_allclose(np.asarray(got, float), np.asarray(ref, float),
                                           rtol=2e-4, atol=0, err_msg=f"{name} {key}")
            else:
                assert np.array_equal(np.asarray(got, float), np.asarray(ref, float),
                                      equal_nan=True), (name, key)


def _count_kernel_calls(monkeypatch) -> list[int]:
    """A list that grows by one per call of the C kernel."""
    calls: list[int] = []
    if KERNEL is not None:
        real = KERNEL.attr_reduce
        monkeypatch.setattr(KERNEL, "attr_reduce",
                            lambda *a: calls.append(1) or real(*a))
    return calls


def _attributed_step(attr, step: int, loss_fn, opt=None) -> None:
    """One training step inside the Attributor's hooks; ``loss_fn()`` runs the forward
    pass. Without ``opt`` nothing is zeroed or updated (gradients only)."""
    attr.begin(step)
    if opt is not None:
        opt.zero_grad()
    loss = loss_fn()
    attr.end_forward()
    loss.backward()
    attr.before_update()
    if opt is not None:
        opt.step()
    attr.end_step()


def test_a_non_contiguous_parameter_falls_back_to_torch(monkeypatch):
    """The kernel reads parameters in place; one that is a transposed view sends the
    step to the torch reductions, with the same statistics."""
    calls = _count_kernel_calls(monkeypatch)

    def run(path):
        monkeypatch.setattr(kernel_path, "REDUCE", path)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(),
                                    torch.nn.Linear(5, 3))
        model[0].weight = torch.nn.Parameter(model[0].weight.detach().t().contiguous().t())
        assert not model[0].weight.is_contiguous()
        from stability_lab.precision import policies as P
        attr = Attributor(model, P.get_policy("float32"), 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
        for step in (1, 2):
            _attributed_step(attr, step, lambda: torch.nn.functional.cross_entropy(model(x), y),
                             opt)
        return attr.arrays()

    a, b = run("kernel"), run("torch")
    assert not calls
    for name in b:
        for key in b[name]:
            np.testing.assert_allclose(a[name][key], b[name][key], rtol=0, atol=0)


class Tagged(torch.Tensor):
    """A tensor subclass (as libraries wrap activations); kept through torch ops."""


class TagOutput(torch.nn.Module):
    def forward(self, x):
        return x.as_subclass(Tagged)


def test_a_tensor_subclass_output_falls_back_to_torch(monkeypatch):
    """Subclasses may hold no storage of their own: the kernel does not read them, and
    the step's statistics are torch's."""
    calls = _count_kernel_calls(monkeypatch)
    from stability_lab.precision import policies as P

    def run(path):
        monkeypatch.setattr(kernel_path, "REDUCE", path)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), TagOutput(), torch.nn.ReLU(),
                                    torch.nn.Linear(5, 3))
        attr = Attributor(model, P.get_policy("float32"), 1)
        x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
        _attributed_step(attr, 1, lambda: torch.nn.functional.cross_entropy(
            model(x).as_subclass(torch.Tensor), y))
        return attr.arrays()

    a, b = run("kernel"), run("torch")
    assert not calls
    assert a["1"]["act_absmax"][0] > 0
    for name in b:
        for key in b[name]:
            np.testing.assert_array_equal(a[name][key], b[name][key])
