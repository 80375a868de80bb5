"""An attribution step's reductions in one call of the C kernel (``run/_attrkernel.c``).

The kernel takes a job table, built once per layout of shapes and dtypes, and this
step's data pointers, and writes one float64 buffer: each tensor is read once for its
exact minimum and maximum (or its per-unit maxima), then, while it is still in cache, at
its strided sample; the parameters are read in place for their sums of squares. It gives
the torch path's minima, maxima, unit values and counts bit for bit; only the float64
sums of squares differ, in summation order. Where the kernel is not built, or a tensor
is not one it reads, the torch path (:mod:`.torch_path`) does the step.
"""

from __future__ import annotations

import struct
from typing import Callable, NamedTuple

import numpy as np
import torch

from stability_lab.run.attribution.step import (ParameterBuffers, ParamSums, Reduction,
                                                StepTensors, Thresholds, sample_shape)

try:  # the one-visit C reductions (optional; built with the package)
    from stability_lab.run import _attrkernel
except ImportError:  # pragma: no cover - a build without a C compiler
    _attrkernel = None

#: reductions of an attribution step: "kernel" (the C kernel, where it is built and the
#: tensors allow it) or "torch" (torch reductions only). Same statistics either way.
REDUCE = "kernel"
#: the C kernel's instruction-set copy (None: the best this CPU runs); for tests
KERNEL_TARGET: str | None = None

#: the kernel's dtype codes
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
#: one job: kind, dtype, pointer indices a, b, c, numel, rows, width, stride, nsample,
#: output offsets o0-o3 (int64), threshold (double); ``job_t`` in the C source
JOB = struct.Struct("<14qd")
#: job kinds: minimum and maximum; sampled non-zero and ``>= thr`` counts; per-unit
#: maxima; per-unit non-zero flags; sums of squares of a parameter's gradient, weight and
#: update (``rows`` then holds the snapshot's dtype code)
JOB_MINMAX, JOB_SAMPLE, JOB_UNIT_MAX, JOB_UNIT_ANY, JOB_PARAM = 1, 2, 4, 8, 16

_TENSOR = torch.Tensor
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_DATA_PTR = torch.Tensor.data_ptr
_IS_CONTIGUOUS = torch.Tensor.is_contiguous
_NUMEL = torch.Tensor.numel
_NOT_PLANNED = object()  # a layout not seen yet (a plan of None: the kernel cannot do it)


def kernel_targets() -> tuple[str, ...]:
    """The C kernel's copies this CPU runs, best first (empty: not built)."""
    return tuple(_attrkernel.targets()) if _attrkernel is not None else ()


def kernel_enabled() -> bool:
    """Whether attribution steps try the kernel (built, and :data:`REDUCE` asks for it)."""
    return REDUCE == "kernel" and _attrkernel is not None


def job(kind: int, dtype_code: int, numel: int, *, a: int = -1, b: int = -1, c: int = -1,
        rows: int = 0, width: int = 0, stride: int = 0, nsample: int = 0,
        out: tuple[int, int, int, int] = (0, 0, 0, 0), thr: float = 0.0) -> bytes:
    """One packed job (:data:`JOB`)."""
    return JOB.pack(kind, dtype_code, a, b, c, numel, rows, width, stride, nsample, *out,
                    thr)


class KernelPlan(NamedTuple):
    """The job table of one layout of shapes and dtypes, and how to read its output.

    The output: the ReLU calls' unit rows (``n_relus`` rows zero-padded to ``widest``),
    then per tensor its minimum, maximum, sampled non-zero count and sampled count
    ``>= thr`` (four blocks of one value per tensor), then the parameter sums.
    """

    #: values sampled per tensor
    sizes: list[int]
    jobs: bytes
    n_out: int
    param_sums: ParamSums
    #: indices of the parameters with values (their pointers follow the tensors')
    live: list[int]
    #: data pointers of the live parameters' snapshot views
    before_ptrs: list[int]
    n_relus: int
    widest: int

    def split(self, out: np.ndarray) -> tuple[np.ndarray | None, list[float]]:
        """``(unit maxima: one row per ReLU call, or None; the other values)``."""
        if not self.n_relus:
            return None, out.tolist()
        n_units = self.n_relus * self.widest
        return out[:n_units].reshape(self.n_relus, self.widest), out[n_units:].tolist()


class KernelPath:
    """The kernel's plans for one model: :meth:`reduce` runs one step.

    ``params`` and ``owners``: the model's parameters and their modules' names, in the
    Attributor's order; ``buffers`` makes (once) or returns the parameter buffers, whose
    snapshot row holds the weights before the update.
    """

    def __init__(self, params: list[torch.Tensor], owners: list[str],
                 buffers: Callable[[], ParameterBuffers], thresholds: Thresholds) -> None:
        self.params = params
        self.owners = owners
        self.buffers = buffers
        self.thresholds = thresholds
        self._plans: dict[tuple, KernelPlan | None] = {}

    def reduce(self, step: StepTensors) -> Reduction | None:
        """The step's reductions in one kernel call; None where the kernel cannot do them.

        None where a tensor is not a strided CPU tensor of float32, float64, float16 or
        bfloat16, or a parameter or its gradient not a contiguous one, or where one is a
        tensor subclass (the torch path then does the step). A tensor that is not
        contiguous is copied first (its values in ``reshape(-1)`` order, which is the
        order the statistics use).
        """
        tensors = tensors_in = step.tensors
        codes = DTYPE_CODES
        for i, t in enumerate(tensors):
            # a subclass may keep no storage of its own (wrapper subclasses): torch path
            if (type(t) is not _TENSOR or not t.is_cpu or t.dtype not in codes
                    or t.layout is not torch.strided):
                return None
            if not _IS_CONTIGUOUS(t):  # a view: its values in order (as reshape(-1))
                if tensors is tensors_in:
                    tensors = list(tensors)
                tensors[i] = t.contiguous()
        ps = self.params
        gl = [p.grad for p in ps]
        before = step.before
        params_key = None
        if ps:
            snapshot = self.buffers().before
            for p, g in zip(ps, gl):
                if (type(p) not in _PLAIN or not p.is_cpu or p.dtype not in codes
                        or not _IS_CONTIGUOUS(p)
                        or (g is not None and (type(g) is not _TENSOR or g.dtype is not p.dtype
                                               or g.layout is not torch.strided
                                               or not _IS_CONTIGUOUS(g)))):
                    return None
            if before is not None and before is not snapshot:  # a snapshot by the caller
                with torch.no_grad():
                    torch._foreach_copy_(snapshot, before)
            params_key = (tuple(g is None for g in gl), tuple(p.dtype for p in ps),
                          tuple(map(_NUMEL, ps)), before is not None)
        relus = step.relus
        key = (step.n_acts, step.act_tiny, step.grad_tiny, tuple(map(_NUMEL, tensors)),
               tuple(t.dtype for t in tensors),
               tuple((r.output_index, r.output.shape[-1]) for r in relus),
               tuple(step.fast_units), tuple(step.relu_max), params_key)
        plan = self._plans.get(key, _NOT_PLANNED)
        if plan is _NOT_PLANNED:
            plan = self._plans[key] = self._plan(tensors, step, gl)
        if plan is None:
            return None
        ptrs = list(map(_DATA_PTR, tensors))
        live = plan.live
        if live:
            ptrs += [_DATA_PTR(ps[j]) for j in live]
            ptrs += [_DATA_PTR(gl[j] if gl[j] is not None else ps[j]) for j in live]
            ptrs += plan.before_ptrs
        out = np.zeros(plan.n_out)
        _attrkernel.attr_reduce(ptrs, plan.jobs, out, KERNEL_TARGET)
        return Reduction(plan, out, plan.param_sums)

    def _plan(self, tensors: list[torch.Tensor], step: StepTensors,
              grads: list[torch.Tensor | None]) -> KernelPlan | None:
        """The job table of :meth:`reduce` for one layout of shapes and dtypes."""
        codes = DTYPE_CODES
        relus = step.relus
        n_t = len(tensors)
        widest = max((r.output.shape[-1] for r in relus), default=0)
        base = len(relus) * widest  # the unit rows come first
        jobs: list[bytes] = []
        sizes = []
        for i, t in enumerate(tensors):
            n, code = t.numel(), codes[t.dtype]
            s, m = sample_shape(n)
            sizes.append(m)
            for k, r in enumerate(relus):
                if r.output_index == i:  # units: rows x the last dimension
                    w = r.output.shape[-1]
                    jobs.append(job(JOB_UNIT_MAX if step.fast_units[k] else JOB_UNIT_ANY,
                                    code, n, a=i, rows=n // w, width=w,
                                    out=(k * widest, 0, 0, 0)))
            if i not in step.relu_max:
                jobs.append(job(JOB_MINMAX, code, n, a=i,
                                out=(base + i, base + n_t + i, 0, 0)))
            thr = self.thresholds(step.act_tiny if i < step.n_acts else step.grad_tiny,
                                  t.dtype)
            jobs.append(job(JOB_SAMPLE, code, n, a=i, stride=s, nsample=m,
                            out=(0, 0, base + 2 * n_t + i, base + 3 * n_t + i), thr=thr))
        # parameters: one sum of squares per module (gradient, weight, update); pointers
        # after the tensors': the live parameters, their gradients, their snapshots
        ps = self.params
        live = [j for j, p in enumerate(ps) if p.numel() > 0]
        before_ptrs: list[int] = []
        modules: list[tuple[str, list[int]]] = []
        n_out = base + 4 * n_t
        if ps:
            snapshot = self.buffers().before
            if any(v.numel() != p.numel() for v, p in zip(snapshot, ps)):
                return None  # parameters resized since the buffers were made
            snap_code = codes[snapshot[0].dtype]
            n_live = len(live)
            index: dict[str, int] = {}
            for name in self.owners:
                index.setdefault(name, len(index))
            n_m = len(index)
            pbase = n_out
            for q, j in enumerate(live):
                p, mi = ps[j], index[self.owners[j]]
                jobs.append(job(JOB_PARAM, codes[p.dtype], p.numel(),
                                a=-1 if grads[j] is None else n_t + n_live + q, b=n_t + q,
                                c=-1 if step.before is None else n_t + 2 * n_live + q,
                                rows=snap_code, out=(pbase + mi, pbase + n_m + mi,
                                                     pbase + 2 * n_m + mi, 0)))
            before_ptrs = [snapshot[j].data_ptr() for j in live]
            modules = [(name, [mi]) for name, mi in index.items()]
            n_out = pbase + 3 * n_m
        return KernelPlan(sizes, b"".join(jobs), n_out, ParamSums(len(modules), modules),
                          live, before_ptrs, len(relus), widest)
