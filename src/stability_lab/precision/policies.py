"""Precision policies as data, and the arithmetic that applies them.

A :class:`Policy` says in which format the parameters live, which format the matrix
products (GEMMs) take and give, whether fp32 master weights are kept, whether some ops
are promoted to fp32 (autocast), and whether the loss is scaled. The training loop
applies a policy with :class:`PolicyMode`, a ``TorchFunctionMode`` that routes every
GEMM (``F.linear``, ``matmul``, ``@``, ``mm``, ``bmm``) through an emulated kernel and,
for mixed policies, casts the inputs of the autocast fp32 ops to float32. Models are
ordinary ``nn.Module`` s; nothing in them checks a dtype.

GEMM semantics (all 16-bit and 8-bit policies): the semantics of GPU tensor cores.
Inputs are rounded to the compute format, products are accumulated in float32, the
bias is added in float32 (cuBLAS epilogue), and the result is rounded once to the
output format. The backward products (grad-input ``g W`` and grad-weight ``g^T x``)
follow the same rule, with the gradient in the gradient format. On this CPU a native
float16 matmul runs at ~0.3 GFLOP/s against ~190 for float32; the emulation runs at
float32 speed and gives the GPU's numbers, not the CPU's.

fp8 (Micikevicius et al. 2022, "FP8 formats for deep learning"; NVIDIA Transformer
Engine's delayed scaling): forward GEMM inputs in E4M3, gradients in E5M2, each tensor
with its own scale ``s = fmax / (2^margin * max(amax history))`` from the absolute
maxima of the last ``AMAX_HISTORY`` steps (the current step's amax on the first step);
values beyond ``fmax`` after scaling saturate, as in Transformer Engine. GEMM outputs
and all other ops are float32, master weights float32.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from stability_lab.precision import (  # noqa: F401  (the policy table lives there)
    AMAX_HISTORY,
    FORMATS,
    FP8_MARGIN,
    POLICIES,
    Format,
    Policy,
    get_policy,
)

F = torch.nn.functional



# -- rounding and its bookkeeping ----------------------------------------------------

class Recorder:
    """Collects rounding events (flush to zero, overflow) per module on attribution steps.

    The attributor installs one as :data:`RECORDER` for the steps it measures; the GEMM
    kernels below report what their roundings did to the module that was running.
    """

    def __init__(self) -> None:
        self.stack: list[str] = []
        #: (module, pass) -> [flushed, below_normal, overflowed, non-zero before rounding]
        self.counts: dict[tuple[str, str], list[int]] = {}

    def current(self) -> str:
        return self.stack[-1] if self.stack else ""

    def note(self, module: str, which: str, exact: torch.Tensor, rounded: torch.Tensor,
             fmt: Format) -> tuple[int, int]:
        """Count one rounding; returns (values it flushed to zero, non-zero values before)."""
        with torch.no_grad():
            a = exact.abs()
            nz = a != 0
            flushed = int((nz & (rounded == 0)).sum())
            below = int((nz & (a < fmt.tiny)).sum())
            over = int((torch.isfinite(exact) & ~torch.isfinite(rounded)).sum())
            nonzero = int(nz.sum())
        c = self.counts.setdefault((module, which), [0, 0, 0, 0])
        c[0] += flushed
        c[1] += below
        c[2] += over
        c[3] += nonzero
        return flushed, nonzero


RECORDER: Recorder | None = None


class GradUnderflow:
    """Per step: gradient values non-zero before rounding to the gradient format
    (``total``) and those of them that rounding flushed to zero (``flushed``)."""

    def __init__(self) -> None:
        self.flushed = 0
        self.total = 0

    def reset(self) -> None:
        self.flushed = 0
        self.total = 0


UNDERFLOW = GradUnderflow()


def _round(x32: torch.Tensor, fmt_name: str) -> torch.Tensor:
    return x32.to(FORMATS[fmt_name].torch_dtype())


class Fp8State:
    """Amax histories of the fp8 GEMM operands, one slot per GEMM call site and role.

    Call sites are numbered in the order the forward executes them; the graph of a
    model is the same every step, so slot ``i`` is the same GEMM at every step.
    """

    def __init__(self) -> None:
        self.history: dict[tuple[int, str], list[float]] = {}
        self.calls = 0
        self.saturated = 0

    def begin_step(self) -> None:
        self.calls = 0

    def snapshot(self) -> tuple:
        return ({k: list(v) for k, v in self.history.items()}, self.calls, self.saturated)

    def restore(self, snap: tuple) -> None:
        hist, self.calls, self.saturated = snap
        self.history = {k: list(v) for k, v in hist.items()}

    def quantize(self, x: torch.Tensor, slot: int, role: str, fmt: Format) -> torch.Tensor:
        """Scale, round to the fp8 format (saturating), unscale; float32 in and out."""
        x = x.float()
        with torch.no_grad():
            finite = torch.isfinite(x)
            amax_now = float(torch.where(finite, x.abs(), torch.zeros((), dtype=x.dtype)).max()) \
                if x.numel() else 0.0
        hist = self.history.setdefault((slot, role), [])
        ref = max(hist) if hist else amax_now
        scale = fmt.max / (ref * 2.0 ** FP8_MARGIN) if ref > 0 else 1.0
        scale = 2.0 ** math.floor(math.log2(scale)) if scale > 0 and math.isfinite(scale) else 1.0
        hist.append(amax_now)
        if len(hist) > AMAX_HISTORY:
            del hist[0]
        y = x * scale
        with torch.no_grad():
            self.saturated += int((finite & (y.abs() > fmt.max)).sum())
        q = y.clamp(-fmt.max, fmt.max).to(fmt.torch_dtype()).float() / scale
        return torch.where(finite, q, x)


FP8: Fp8State | None = None


def _to_compute(x: torch.Tensor, policy: Policy, slot: int, role: str) -> torch.Tensor:
    """A GEMM operand as float32 holding values of the compute format."""
    if policy.compute == "fp8":
        fmt = FORMATS["fp8-e5m2" if role == "g" else "fp8-e4m3"]
        return FP8.quantize(x, slot, role, fmt)
    low = getattr(torch, policy.compute)
    return x.to(low).float() if x.dtype != low else x.float()


def _noted(exact: torch.Tensor, rounded: torch.Tensor, module: str, which: str,
           fmt: Format, underflow: bool) -> torch.Tensor:
    """``rounded``, after counting the gradient values its rounding flushed to zero into
    :data:`UNDERFLOW` (when ``underflow``) and reporting the rounding to :data:`RECORDER`
    (whose counts then serve both)."""
    rec = RECORDER
    if rec is not None:
        flushed, nonzero = rec.note(module, which, exact, rounded, fmt)
    elif underflow:
        with torch.no_grad():
            nz = exact != 0
            flushed, nonzero = int((nz & (rounded == 0)).sum()), int(nz.sum())
    if underflow:
        UNDERFLOW.flushed += flushed
        UNDERFLOW.total += nonzero
    return rounded


def _to_output(x32: torch.Tensor, policy: Policy, module: str, which: str,
               grad: bool = False) -> torch.Tensor:
    """Round a float32 GEMM result once to the policy's output format."""
    out_fmt = policy.output
    rounded = _round(x32, out_fmt) if out_fmt != "float32" else x32
    return _noted(x32, rounded, module, which,
                  policy.grad_format if grad else policy.act_format,
                  underflow=grad and out_fmt != "float32")


class EmulatedLinear(torch.autograd.Function):
    """``x W^T + b`` with tensor-core semantics, forward and backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, policy: Policy, module: str):
        slot = FP8.calls if FP8 is not None else 0
        if FP8 is not None:
            FP8.calls += 1
        xc = _to_compute(x, policy, slot, "x")
        wc = _to_compute(weight, policy, slot, "w")
        out = xc @ wc.t()
        if bias is not None:
            out = out + _to_compute(bias, policy, slot, "b") if policy.compute != "fp8" \
                else out + bias.float()
        ctx.save_for_backward(xc, wc)
        ctx.meta = (policy, module, slot, x.dtype, weight.dtype,
                    None if bias is None else bias.dtype)
        return _to_output(out, policy, module, "forward")

    @staticmethod
    def backward(ctx, g):
        xc, wc = ctx.saved_tensors
        policy, module, slot, xdt, wdt, bdt = ctx.meta
        gc = _to_compute(g, policy, slot, "g")
        g2 = gc.reshape(-1, gc.shape[-1])
        x2 = xc.reshape(-1, xc.shape[-1])
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _to_output(gc @ wc, policy, module, "backward", grad=True).to(xdt)
        if ctx.needs_input_grad[1]:
            gw = _to_output(g2.t() @ x2, policy, module, "backward", grad=True).to(wdt)
        if bdt is not None and ctx.needs_input_grad[2]:
            gb = _to_output(g2.sum(0), policy, module, "backward", grad=True).to(bdt)
        return gx, gw, gb, None, None


class EmulatedMatmul(torch.autograd.Function):
    """``a @ b`` (batched, broadcasting) with tensor-core semantics."""

    @staticmethod
    def forward(ctx, a, b, policy: Policy, module: str):
        slot = FP8.calls if FP8 is not None else 0
        if FP8 is not None:
            FP8.calls += 1
        ac = _to_compute(a, policy, slot, "x")
        bc = _to_compute(b, policy, slot, "w")
        ctx.save_for_backward(ac, bc)
        ctx.meta = (policy, module, slot, a.dtype, b.dtype, a.shape, b.shape)
        return _to_output(torch.matmul(ac, bc), policy, module, "forward")

    @staticmethod
    def backward(ctx, g):
        ac, bc = ctx.saved_tensors
        policy, module, slot, adt, bdt, ashape, bshape = ctx.meta
        gc = _to_compute(g, policy, slot, "g")
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = torch.matmul(gc, bc.transpose(-1, -2)).sum_to_size(ashape)
            ga = _to_output(ga, policy, module, "backward", grad=True).to(adt)
        if ctx.needs_input_grad[1]:
            gb = torch.matmul(ac.transpose(-1, -2), gc).sum_to_size(bshape)
            gb = _to_output(gb, policy, module, "backward", grad=True).to(bdt)
        return ga, gb, None, None


_LINEAR = {F.linear}
_MATMUL = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm,
           torch.Tensor.mm, torch.bmm, torch.Tensor.bmm}
#: the autocast fp32 list (CUDA autocast's "ops that can autocast to float32"), as used here
_FP32_OPS = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, torch.Tensor.softmax,
             torch.Tensor.log_softmax, F.layer_norm, F.group_norm, F.cross_entropy, F.nll_loss,
             F.mse_loss, F.binary_cross_entropy_with_logits, F.kl_div, F.l1_loss,
             F.smooth_l1_loss, torch.logsumexp, torch.Tensor.logsumexp, torch.exp,
             torch.Tensor.exp, torch.log, torch.Tensor.log, torch.norm, torch.Tensor.norm,
             torch.cumsum, torch.pow, torch.Tensor.pow, torch.rsqrt, torch.reciprocal,
             F.softplus, F.batch_norm}


class Upcast(torch.autograd.Function):
    """Autocast's cast of a 16-bit tensor to float32 for an fp32-list op.

    The backward rounds the float32 gradient back to the tensor's format, as autocast
    does, and counts the values that rounding flushes to zero (for a loss computed in
    float32 this is where small gradients first meet float16).
    """

    @staticmethod
    def forward(ctx, x, module: str):
        ctx.meta = (x.dtype, module)
        return x.float()

    @staticmethod
    def backward(ctx, g):
        dtype, module = ctx.meta
        g32 = g.float()
        fmt = FORMATS["float16" if dtype == torch.float16 else "bfloat16"]
        return _noted(g32, g32.to(dtype), module, "backward", fmt, underflow=True), None


def _fp32(value: Any, module: str = "") -> Any:
    if isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16):
        if value.requires_grad and torch.is_grad_enabled():
            return Upcast.apply(value, module)
        return value.float()
    if isinstance(value, (list, tuple)):
        return type(value)(_fp32(v, module) for v in value)
    return value


class PolicyMode(TorchFunctionMode):
    """Applies a policy to every GEMM (and, for mixed policies, the fp32 op list)."""

    def __init__(self, policy: Policy) -> None:
        super().__init__()
        self.policy = policy

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        policy = self.policy
        module = RECORDER.current() if RECORDER is not None else ""
        if func in _LINEAR:
            x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            if x.is_floating_point() and x.dim() >= 1:
                return EmulatedLinear.apply(x, w, b, policy, module)
        elif func in _MATMUL and len(args) >= 2 and not kwargs:
            a, b = args[0], args[1]
            if (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                    and a.dim() >= 2 and b.dim() >= 2 and a.is_floating_point()):
                return EmulatedMatmul.apply(a, b, policy, module)
        elif policy.autocast and func in _FP32_OPS:
            return func(*_fp32(args, module), **{k: _fp32(v, module) for k, v in kwargs.items()})
        return func(*args, **kwargs)


def cast_inputs(value: Any, policy: Policy) -> Any:
    """Floating inputs to the parameter dtype (pure policies); others unchanged."""
    if isinstance(value, torch.Tensor):
        return value.to(policy.dtype) if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(cast_inputs(v, policy) for v in value)
    if isinstance(value, dict):
        return {k: cast_inputs(v, policy) for k, v in value.items()}
    return value
