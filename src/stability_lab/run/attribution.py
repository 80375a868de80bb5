"""Per-layer attribution: where in a model the numbers go wrong.

Two mechanisms, both keyed by the qualified names of ``model.named_modules()``
(the root module is called ``<model>``):

**Statistics every k steps** (:class:`Attributor`). On an attribution step one global
module forward hook, filtered to the model's modules, is installed for the forward pass
(and removed after it, so other steps pay nothing); it notes each module's output with
its version and autograd node. After the forward each output is stashed and a pre-hook on
the autograd node the output had when its module returned it keeps a reference to the
gradient arriving there (no copy, no Python frame in the backward pass; the gradient of
the value the module produced, also when the output is modified in place later in the
forward). The statistics of an output are those of its value at the end of the step.
The global hook runs before a module's own forward hooks, so where user code registered a
hook that replaces a module's output, the statistics are those of what ``forward``
returned.
At the end of the step, per stashed tensor: the exact minimum and maximum (NaN
propagates); for an ``nn.ReLU`` output still as the ReLU returned it, the per-unit
maxima instead, which give the dead units and the absmax at once, and, for the ReLU's
input when it is unchanged since, its maximum where positive; and the counts over a
strided sample. Parameters, gradients and updates give float64 sums of squares per
module. All of it is one call of a C kernel (``_attrkernel.c``: a job table built once
per layout of shapes and dtypes, this step's data pointers, one float64 buffer out; each
tensor read once, its sample while it is still in cache). Where the kernel is not built,
or a tensor is not a strided CPU tensor of float32/float64/float16/bfloat16 (or a
parameter not contiguous), the same numbers come from torch reductions (:data:`REDUCE`
selects; the tests run both and every copy of the kernel). The step's numbers are kept
as they come and decoded into per-module values when the results are read
(:meth:`Attributor.arrays`), or every :attr:`Attributor.DECODE_EVERY` steps. Per module
and step:

- activation and gradient absmax, and headroom ``log2(fmax / absmax)`` in powers of two
  to the largest finite value of the format the policy holds them in;
- the fraction of non-zero values below the format's smallest normal (subnormal range),
  and the fraction of zeros (NaN counts as zero), both over a deterministic strided
  sample of ``SAMPLE`` to ``2 * SAMPLE - 1`` values per tensor (``reshape(-1)[::s]`` with
  ``s = numel // SAMPLE``; every value of smaller tensors); where the lab does the
  rounding (emulated GEMMs), the fraction flushed to zero (non-zero before rounding, zero
  after); the fraction of dead units (zero in every row of the batch; NaN counts as
  alive) for ReLU outputs;
- gradient norm of the module's own parameters and the update-to-weight ratio
  ``||dW|| / ||W||``.

**Creators of non-finite values** (:func:`find_creators`). When a step's loss or
gradients are non-finite the step is *replayed*: parameters have not been updated yet
and the run is deterministic, so the same forward and backward are run again with full
checks. In the forward pass a module is a *creator* when all its inputs (and its own
parameters) are finite and its output is not; a module whose inputs were already
non-finite only *passed it on*. In the backward pass a module is a creator when the
gradient reaching its output is finite and the gradient it sends to its inputs (or to
its own parameters) is not (full backward hooks). Containers satisfy the same test as
the child that did it, so only the deepest module meeting it is named. The loss
function is checked as the pseudo-module ``loss_fn`` (finite outputs, non-finite loss;
finite loss, non-finite gradient of the outputs).

**Warnings before the overflow** (:func:`headroom_projections`): for each module the
headroom series is fitted with a straight line against the step; a headroom that falls
steadily (r^2 >= 0.7, a fall of at least one power of two) is reported with the step at
which the line reaches zero.
"""

from __future__ import annotations

import functools
import math
import struct
import warnings
from typing import Any, Callable

import numpy as np
import torch

from stability_lab.precision import policies as P

try:  # the one-visit C reductions (optional; built with the package)
    from stability_lab.run import _attrkernel
except ImportError:  # pragma: no cover - a build without a C compiler
    _attrkernel = None

#: reductions of an attribution step: "kernel" (the C kernel, where it is built and the
#: tensors allow it) or "torch" (torch reductions only). Same statistics either way.
REDUCE = "kernel"
#: the C kernel's instruction-set copy (None: the best this CPU runs); for tests
KERNEL_TARGET: str | None = None
_KERNEL_DTYPES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
_JOB = struct.Struct("<14qd")
_K_MINMAX, _K_SAMPLE, _K_UNITMAX, _K_UNITANY, _K_PARAM = 1, 2, 4, 8, 16
_DATA_PTR = torch.Tensor.data_ptr
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_IS_CONTIGUOUS = torch.Tensor.is_contiguous


def kernel_targets() -> tuple[str, ...]:
    """The C kernel's copies this CPU runs, best first (empty: not built)."""
    return tuple(_attrkernel.targets()) if _attrkernel is not None else ()


ROOT = "<model>"
_TENSOR = torch.Tensor
_NUMEL = torch.Tensor.numel
#: values per tensor sampled for the below-normal and zero fractions
SAMPLE = 2048


def qualified_names(model: torch.nn.Module) -> dict[torch.nn.Module, str]:
    return {m: (name or ROOT) for name, m in model.named_modules()}


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    if isinstance(value, dict):
        for v in value.values():
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _all_finite(ts: list[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in ts if t.is_floating_point())


_ACT_KEYS = ("act_absmax", "act_headroom", "act_below_normal", "act_zero")
_GRAD_KEYS = ("grad_absmax", "grad_headroom", "grad_below_normal", "grad_zero")
_PARAM_KEYS = ("grad_norm", "update_ratio")


def _rounded(value: float, dtype: torch.dtype) -> float:
    """``value`` as the tensor comparison ``t >= value`` sees it for a tensor of ``dtype``."""
    return float(torch.tensor(value, dtype=torch.float64).to(dtype))


def _sample_shape(n: int) -> tuple[int, int]:
    """``(s, values sampled)`` of the strided sample ``reshape(-1)[::s]`` of ``n`` values."""
    s = max(1, n // SAMPLE)
    return s, -(-n // s)


class Attributor:
    """Per-module statistics on every ``every``-th step (steps 1, 1+k, 1+2k, ...).

    Use per attribution step: :meth:`begin` before the forward pass, :meth:`end_forward`
    after it (loss included), :meth:`before_update` before the optimizer step (or set
    ``_before`` to a snapshot), :meth:`end_step` after it; :meth:`abort` drops a step.

    Cost model (the digits MLP, 8 modules, 14 tensors): one global forward hook call per
    module and one autograd-node pre-hook (a C-level ``list.__setitem__``) per output;
    at the end of the step one C kernel call that reads each tensor once (torch path:
    one or two reductions per tensor plus one strided copy, a fixed number of torch
    calls over all tensors together), no ``tolist`` (the numbers are decoded in
    :meth:`arrays`).
    """

    #: undecoded steps kept before they are decoded (bounds the memory they take)
    DECODE_EVERY = 4096

    def __init__(self, model: torch.nn.Module, policy: P.Policy, every: int) -> None:
        self.model = model
        self.policy = policy
        self.every = int(every)
        self.names = qualified_names(model)
        self.kinds = {name: type(m).__name__ for m, name in self.names.items()}
        self.params = {name: [p for p in m.parameters(recurse=False)]
                       for m, name in self.names.items()}
        self.order: list[str] = []
        self.steps: list[int] = []
        self._flat_params = [p for ps in self.params.values() for p in ps]
        self._param_owner = [name for name, ps in self.params.items() for _ in ps]
        self._relu = {name for name, kind in self.kinds.items() if kind == "ReLU"}
        #: module -> (name, dead fraction measured, an ``nn.ReLU`` (outputs >= 0 or NaN),
        #: exactly ``nn.ReLU``: its output is ``max(input, 0)`` elementwise)
        self._info = {m: (name, name in self._relu, isinstance(m, torch.nn.ReLU),
                          type(m) is torch.nn.ReLU)
                      for m, name in self.names.items()}
        self._handles: list[Any] = []       # global module hooks, during a watched forward
        self._grad_handles: list[Any] = []  # autograd node pre-hooks, until end_step
        # one step's stash
        self._acts: list[torch.Tensor] = []          # unique outputs, forward order
        self._act_owners: list[list[str]] = []
        self._act_ix: dict[int, int] = {}
        #: per ReLU-kind call: (module, output, output index, its version then, an
        #: nn.ReLU, (input's output index, its version) for an exact nn.ReLU or None)
        self._relus: list[tuple[str, torch.Tensor, int, int, bool, Any]] = []
        #: gradient slots, one per (output, version): the ``grad_outputs`` of the output's
        #: autograd node (set by its pre-hook) and the output's index among them
        self._gslots: list[Any] = []
        self._gnr: list[int] = []
        self._gslot_of: dict[tuple[int, int], int] = {}
        self._gcalls: list[tuple[int, str]] = []     # (slot, module) per module call
        #: per call of a module of the model: (its info, output, output version, autograd
        #: node, ReLU input, input version), until the forward is over
        self._calls: list[tuple] = []
        self._gleaf: dict[int, tuple[torch.Tensor, int]] = {}  # slots of leaf outputs
        self._recorder: P.Recorder | None = None
        self._record_order = False
        self._before: list[torch.Tensor] | None = None
        self._pbuf: tuple | None = None  # flat parameter buffers, made on first use
        self._step = 0
        # storage: columns (module, stat); one row per attribution step
        self._cols: list[tuple[str, str]] = []
        self._col_of: dict[tuple[str, str], int] = {}
        self._colsets: dict[tuple[str, tuple[str, ...]], tuple[int, ...]] = {}
        self._layouts: list[tuple[int, ...]] = []
        self._layout_of: dict[tuple[int, ...], int] = {}
        self._rows: list[tuple[int, list[float]]] = []
        #: steps not decoded yet: (program, values, grad scale, snapshot taken, GEMM counts)
        self._pending: list[tuple] = []
        self._programs: dict[tuple, tuple] = {}
        self._last: tuple | None = None  # the last step's program and what it was made of
        self._plans: dict[tuple, tuple] = {}
        self._relu_plans: dict[tuple, tuple] = {}
        self._thr: dict[tuple[float, torch.dtype], float] = {}

    def wants(self, step: int) -> bool:
        return self.every > 0 and (step - 1) % self.every == 0

    # -- hooks (global, filtered to this model's modules) ----------------------------
    def _pre(self, module, args) -> None:
        info = self._info.get(module)
        if info is not None:
            rec = self._recorder
            if rec is not None:
                rec.stack.append(info[0])

    def _post(self, module, args, output) -> None:
        info = self._info.get(module)
        if info is None:
            return
        rec = self._recorder
        if rec is not None and rec.stack:
            rec.stack.pop()
        if self._record_order:
            self.order.append(info[0])
        out = output if type(output) is _TENSOR else _first_tensor(output)
        if out is None:
            return
        # what changes later in the forward (versions, autograd node) is read now; the
        # rest is done once after the forward (_watch)
        if info[3] and args and not module.inplace:
            inp = args[0]
            self._calls.append((info, out, out._version, out.grad_fn, inp,
                                getattr(inp, "_version", None)))
        else:
            self._calls.append((info, out, out._version, out.grad_fn, None, None))

    def _watch(self) -> None:
        """Stash this forward's outputs and ask autograd for their gradients."""
        acts, owners, act_ix = self._acts, self._act_owners, self._act_ix
        relus, slots, gslot_of = self._relus, self._gslots, self._gslot_of
        gcalls, handles = self._gcalls, self._grad_handles
        for (name, relu, relu_nn, _exact), out, version, node, inp, inp_version in \
                self._calls:
            if not out.is_floating_point() or out.numel() == 0:
                continue
            key = id(out)
            i = act_ix.get(key)
            if i is None:
                i = act_ix[key] = len(acts)
                acts.append(out)
                owners.append([name])
            else:
                owners[i].append(name)
            if relu and out.dim() >= 1:
                link = None
                if inp is not None:
                    # max(input, 0): the input's largest value where it is positive
                    ii = act_ix.get(id(inp))
                    if ii is not None and acts[ii] is inp and inp.shape == out.shape:
                        link = (ii, inp_version)
                relus.append((name, out, i, version, relu_nn, link))
            if out.requires_grad:
                # the gradient of the value the module produced: an output modified in
                # place later in the forward has a new autograd node, the pre-hook goes
                # on the node it had when its module returned it
                gkey = (key, version)
                j = gslot_of.get(gkey)
                if j is None:
                    j = gslot_of[gkey] = len(slots)
                    slots.append(None)
                    self._gnr.append(out.output_nr)
                    if node is not None:
                        # slots[j] = grad_outputs, no Python frame in the backward pass
                        handles.append(node.register_prehook(
                            functools.partial(slots.__setitem__, j)))
                    else:  # a leaf: autograd accumulates its gradient in .grad
                        self._gleaf[j] = (out, version)
                gcalls.append((j, name))
        self._calls.clear()

    # -- one attribution step ------------------------------------------------------
    def begin(self, step: int) -> None:
        if self._handles:
            self._remove_hooks()
        if self._grad_handles:
            self._remove_grad_hooks()
        self._step = step
        self._clear()
        rec = P.Recorder() if self.policy.emulated else None
        self._recorder = rec
        P.RECORDER = rec
        self._record_order = not self.order
        if rec is not None:
            self._handles.append(torch.nn.modules.module.register_module_forward_pre_hook(
                self._pre))
        self._handles.append(torch.nn.modules.module.register_module_forward_hook(self._post))

    def _remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _remove_grad_hooks(self) -> None:
        for h in self._grad_handles:
            h.remove()
        self._grad_handles.clear()

    def end_forward(self) -> None:
        # the recorder stays installed through the backward pass (its GEMMs know their
        # module from the forward); end_step uninstalls it
        self._remove_hooks()
        self._watch()

    def _param_buffer(self) -> tuple:
        """Flat, zero-padded ``(3, chunks, C)`` parameter buffers, made on first use.

        Rows: gradients, weights, and the weights before the update, turned in place into
        the update ``before - after`` (all in the parameters' promoted dtype, at least
        float32); then copied into a float64 twin for the sums of squares. Each module's
        parameters lie one after the other from a chunk boundary on, so the per-chunk sums
        of squares add up, in Python, to the module's sums of squares (the padding stays
        zero).
        """
        if self._pbuf is None:
            ps = self._flat_params
            total = sum(p.numel() for p in ps)
            n_mod = len({n for n in self._param_owner}) or 1
            chunk = 64
            while chunk < 16384 and chunk * 8 * n_mod < total:
                chunk *= 2
            dtype = torch.float32
            for p in ps:
                dtype = torch.promote_types(dtype, p.dtype)
            offsets, pos = [], 0
            last = None
            for name, p in zip(self._param_owner, ps):
                if name != last:  # a module starts on a chunk boundary
                    pos = -(-pos // chunk) * chunk
                    last = name
                offsets.append(pos)
                pos += p.numel()
            n_chunks = max(1, -(-pos // chunk))
            buf = torch.zeros(3, n_chunks * chunk, dtype=dtype)
            views = [[buf[r, o:o + p.numel()].view(p.shape) for o, p in zip(offsets, ps)]
                     for r in range(3)]
            flat64 = torch.zeros(3, n_chunks, chunk, dtype=torch.float64)
            chunk_owner = [None] * n_chunks
            for name, o, p in zip(self._param_owner, offsets, ps):
                for c in range(o // chunk, -(-(o + p.numel()) // chunk)):
                    chunk_owner[c] = name
            # chunks of each module, in parameter order
            groups: dict[str, list[int]] = {}
            for c, name in enumerate(chunk_owner):
                if name is not None:
                    groups.setdefault(name, []).append(c)
            self._pbuf = (buf, views, buf[1], buf[2], buf.view(3, n_chunks, chunk), flat64,
                          n_chunks, list(groups.items()))
        return self._pbuf

    def before_update(self) -> None:
        """Snapshot parameters (for update-to-weight ratios) into the reused flat buffer."""
        ps = self._flat_params
        if not ps:
            return
        snap_views = self._param_buffer()[1][2]
        with torch.no_grad():
            torch._foreach_copy_(snap_views, ps)
        self._before = snap_views

    def _plan(self, tensors: list[torch.Tensor], n_acts: int, thr_act: float,
              thr_grad: float) -> tuple:
        """Sample strides and sizes, scratch buffers and thresholds for these shapes.

        The samples go, one row per tensor, into a zero-padded ``(2, tensors, longest)``
        buffer: row block 0 holds ``|x|``, block 1 ``|x| >= thr`` (thresholds per row).
        The minimum and maximum of every tensor go into one ``(2, tensors)`` buffer of the
        promoted dtype (values of a narrower dtype convert exactly).
        """
        key = (n_acts, thr_act, thr_grad, tuple(map(_NUMEL, tensors)),
               tuple(t.dtype for t in tensors))
        plan = self._plans.get(key)
        if plan is None:
            strides, sizes, thrs = [], [], []
            dtype = torch.float32  # sums of 0/1 up to 4095 are exact in float32
            for i, t in enumerate(tensors):
                s, m = _sample_shape(t.numel())
                strides.append(s)
                sizes.append(m)
                thrs.append(self._threshold(thr_act if i < n_acts else thr_grad, t.dtype))
                dtype = torch.promote_types(dtype, t.dtype)
            longest = max(sizes)
            buf = torch.zeros(2, len(tensors), longest, dtype=dtype)
            rows = [buf[0, i, :n] for i, n in enumerate(sizes)]
            thr_col = torch.tensor(thrs, dtype=dtype).reshape(-1, 1)
            ext_dtype = tensors[0].dtype
            for t in tensors:
                ext_dtype = torch.promote_types(ext_dtype, t.dtype)
            ext = torch.zeros(2, len(tensors), dtype=ext_dtype)
            slots = [(ext[0, i], ext[1, i], t.dtype == ext_dtype)
                     for i, t in enumerate(tensors)]
            plan = (strides, sizes, buf, rows, thr_col, ext, slots, buf[0], buf[1],
                    ext.view(-1))
            self._plans[key] = plan
        return plan

    def _threshold(self, thr: float, dtype: torch.dtype) -> float:
        """:func:`_rounded` ``thr`` for ``dtype``, computed once per pair."""
        k = (thr, dtype)
        v = self._thr.get(k)
        if v is None:
            v = self._thr[k] = _rounded(thr, dtype)
        return v

    def _relu_plan(self, relus: list) -> tuple:
        """A zero-padded ``(ReLU calls, widest)`` buffer for the per-unit maxima."""
        key = tuple((r[1].shape[-1], r[1].dtype) for r in relus)
        plan = self._relu_plans.get(key)
        if plan is None:
            dtype = relus[0][1].dtype
            for r in relus:
                dtype = torch.promote_types(dtype, r[1].dtype)
            buf = torch.zeros(len(relus), max(w for w, _d in key), dtype=dtype)
            plan = (buf, [buf[k, :w] for k, (w, _d) in enumerate(key)])
            self._relu_plans[key] = plan
        return plan

    def _kernel_reduce(self, tensors: list[torch.Tensor], n_acts: int,
                       fast_units: list[bool], relu_max: dict[int, int], before: Any,
                       scale: float) -> Any:
        """The step's reductions in one call of the C kernel (``_attrkernel.c``).

        Returns ``(plan, out, (modules, groups))`` with ``out`` one float64 array: the
        ReLU unit rows (zero-padded to the widest), then per tensor the minimum, maximum,
        sampled non-zero count and sampled count ``>= thr``, then per module with
        parameters the sums of squares of gradients, weights and updates. None where a
        tensor is not a strided CPU tensor of float32, float64, float16 or bfloat16, or a
        parameter or its gradient not a contiguous one, or where one is a tensor subclass
        (the torch path then does the step). A tensor that is not contiguous is copied
        first (its values in ``reshape(-1)`` order, which is the order the statistics use).
        """
        tensors_in = tensors
        codes = _KERNEL_DTYPES
        for i, t in enumerate(tensors):
            # a subclass may keep no storage of its own (wrapper subclasses): torch path
            if (type(t) is not _TENSOR or not t.is_cpu or t.dtype not in codes
                    or t.layout is not torch.strided):
                return None
            if not _IS_CONTIGUOUS(t):  # a view: its values in order (as reshape(-1))
                if tensors is tensors_in:
                    tensors = list(tensors)
                tensors[i] = t.contiguous()
        ps = self._flat_params
        gl = [p.grad for p in ps]
        pkey = None
        if ps:
            views = self._param_buffer()[1]
            for p, g in zip(ps, gl):
                if (type(p) not in _PLAIN or not p.is_cpu or p.dtype not in codes
                        or not _IS_CONTIGUOUS(p)
                        or (g is not None and (type(g) is not _TENSOR or g.dtype is not p.dtype
                                               or g.layout is not torch.strided
                                               or not _IS_CONTIGUOUS(g)))):
                    return None
            if before is not None and before is not views[2]:  # a snapshot by the caller
                with torch.no_grad():
                    torch._foreach_copy_(views[2], before)
            pkey = (tuple(g is None for g in gl), tuple(p.dtype for p in ps),
                    tuple(map(_NUMEL, ps)), before is not None)
        relus = self._relus
        key = (n_acts, self.policy.act_format.tiny, self.policy.grad_format.tiny * scale,
               tuple(map(_NUMEL, tensors)), tuple(t.dtype for t in tensors),
               tuple((r[2], r[1].shape[-1]) for r in relus), tuple(fast_units),
               tuple(relu_max), pkey)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._kernel_plan(tensors, n_acts, key[1], key[2],
                                                        fast_units, relu_max, gl, before)
        if plan is None:
            return None
        jobs, n_out, live, before_ptrs = plan[2], plan[3], plan[5], plan[6]
        ptrs = list(map(_DATA_PTR, tensors))
        if live:
            ptrs += [_DATA_PTR(ps[j]) for j in live]
            ptrs += [_DATA_PTR(gl[j] if gl[j] is not None else ps[j]) for j in live]
            ptrs += before_ptrs
        out = np.zeros(n_out)
        _attrkernel.attr_reduce(ptrs, jobs, out, KERNEL_TARGET)
        return plan, out, plan[4]

    def _kernel_plan(self, tensors, n_acts, thr_act, thr_grad, fast_units, relu_max, gl,
                     before) -> tuple | None:
        """The job table of :meth:`_kernel_reduce` for one layout of shapes and dtypes."""
        codes, pack = _KERNEL_DTYPES, _JOB.pack
        relus = self._relus
        n_t = len(tensors)
        wmax = max((r[1].shape[-1] for r in relus), default=0)
        base = len(relus) * wmax
        jobs: list[bytes] = []
        strides, sizes = [], []
        for i, t in enumerate(tensors):
            n, code = t.numel(), codes[t.dtype]
            s, m = _sample_shape(n)
            strides.append(s)
            sizes.append(m)
            for k, r in enumerate(relus):
                if r[2] == i:  # units: rows x the last dimension
                    w = r[1].shape[-1]
                    jobs.append(pack(_K_UNITMAX if fast_units[k] else _K_UNITANY, code, i,
                                     -1, -1, n, n // w, w, 0, 0, k * wmax, 0, 0, 0, 0.0))
            if i not in relu_max:
                jobs.append(pack(_K_MINMAX, code, i, -1, -1, n, 0, 0, 0, 0, base + i,
                                 base + n_t + i, 0, 0, 0.0))
            thr = self._threshold(thr_act if i < n_acts else thr_grad, t.dtype)
            jobs.append(pack(_K_SAMPLE, code, i, -1, -1, n, 0, 0, s, m, 0, 0,
                             base + 2 * n_t + i, base + 3 * n_t + i, thr))
        # parameters: one sum of squares per module (gradient, weight, update)
        ps = self._flat_params
        live = [j for j, p in enumerate(ps) if p.numel() > 0]
        before_ptrs: list[int] = []
        groups: list[tuple[str, list[int]]] = []
        if ps:
            views = self._param_buffer()[1][2]
            if any(v.numel() != p.numel() for v, p in zip(views, ps)):
                return None  # parameters resized since the buffers were made
            snap = _KERNEL_DTYPES[views[0].dtype]
            n_live = len(live)
            mods: dict[str, int] = {}
            for name in self._param_owner:
                mods.setdefault(name, len(mods))
            n_m = len(mods)
            pbase = base + 4 * n_t
            for q, j in enumerate(live):
                p, mi = ps[j], mods[self._param_owner[j]]
                jobs.append(pack(_K_PARAM, codes[p.dtype],
                                 -1 if gl[j] is None else n_t + n_live + q, n_t + q,
                                 -1 if before is None else n_t + 2 * n_live + q,
                                 p.numel(), snap, 0, 0, 0, pbase + mi, pbase + n_m + mi,
                                 pbase + 2 * n_m + mi, 0, 0.0))
            before_ptrs = [views[j].data_ptr() for j in live]
            groups = [(name, [mi]) for name, mi in mods.items()]
            n_out = pbase + 3 * n_m
        else:
            n_out = base + 4 * n_t
        return (strides, sizes, b"".join(jobs), n_out, (len(groups), groups), live,
                before_ptrs, len(relus), wmax)

    def _colset(self, name: str, keys: tuple[str, ...]) -> tuple[int, ...]:
        cs = self._colsets.get((name, keys))
        if cs is None:
            out = []
            for k in keys:
                c = self._col_of.get((name, k))
                if c is None:
                    c = self._col_of[(name, k)] = len(self._cols)
                    self._cols.append((name, k))
                out.append(c)
            cs = self._colsets[(name, keys)] = tuple(out)
        return cs

    def end_step(self, grad_scale: float = 1.0) -> None:
        """Reduce everything stashed on this step into a few small tensors (after the update)."""
        P.RECORDER = None
        if self._calls:  # end_forward was not called
            self._remove_hooks()
            self._watch()
        if self._grad_handles:
            self._remove_grad_hooks()
        self.steps.append(self._step)
        scale = grad_scale
        # unique gradients, in backward order (the earliest call of a module called
        # twice is the last to receive its gradient, as with a tensor hook)
        grads: list[torch.Tensor] = []
        g_owners: list[list[str]] = []
        g_ix: dict[int, int] = {}
        slots, nrs, leaves = self._gslots, self._gnr, self._gleaf
        for j, name in reversed(self._gcalls):
            g = slots[j]
            if g is not None:
                g = g[nrs[j]]
            elif j in leaves:
                out, version = leaves[j]
                g = out.grad if out._version == version else None
            if g is None or not g.is_floating_point() or g.numel() == 0:
                continue
            i = g_ix.get(id(g))
            if i is None:
                g_ix[id(g)] = len(grads)
                grads.append(g)
                g_owners.append([name])
            else:
                g_owners[i].append(name)
        acts = self._acts
        tensors = acts + grads
        ps = self._flat_params
        before = self._before
        relus = self._relus
        # ReLU outputs still as their module returned them are >= 0 (or NaN): a unit is
        # alive iff its maximum over the batch is not 0, and the largest unit maximum is
        # the output's maximum and absmax (exact, as amax/amin would give); for an
        # unchanged input of an nn.ReLU it is the input's maximum where that is positive,
        # so the input's absmax is max(-min, that) (0 <= -min where the maximum is <= 0)
        relu_max: dict[int, int] = {}  # output index -> ReLU call whose maxima give it
        input_max: dict[int, int] = {}  # output index -> ReLU call that had it as input
        pieces: Any = []
        plan = None
        playout = None  # parameter sums per chunk (torch) or per module (C kernel)
        fast_units: list[bool] = []  # per ReLU call: unit maxima (else alive flags)
        if relus:
            for k, (_name, t, i, version, fast, link) in enumerate(relus):
                fast = fast and t._version == version
                fast_units.append(fast)
                if fast:
                    relu_max.setdefault(i, k)
                    if link is not None and acts[link[0]]._version == link[1]:
                        input_max.setdefault(link[0], k)
        kernel = None
        if REDUCE == "kernel" and _attrkernel is not None:
            kernel = self._kernel_reduce(tensors, len(acts), fast_units, relu_max, before,
                                         scale)
        if kernel is not None:
            plan, pieces, playout = kernel
        else:
            with torch.no_grad():
                unit_rows: dict[int, list[int]] = {}  # output index -> its ReLU calls
                if relus:
                    rbuf, rrows = self._relu_plan(relus)
                    for k, r in enumerate(relus):
                        unit_rows.setdefault(r[2], []).append(k)
                if tensors:
                    plan = self._plan(tensors, len(acts), self.policy.act_format.tiny,
                                      self.policy.grad_format.tiny * scale)
                    strides, sizes, _buf, rows, thr_col, _ext, xslots, a, b, ext_flat = \
                        plan
                    # per tensor, in one visit: the exact minimum and maximum (both propagate
                    # NaN) or the ReLU unit maxima, and the same deterministic strided sample as
                    # a per-tensor reshape(-1)[::s]
                    for i, (t, (lo, hi, same), s, n, row) in enumerate(
                            zip(tensors, xslots, strides, sizes, rows)):
                        ks = unit_rows.get(i)
                        if ks is not None:
                            for k in ks:
                                units = t if t.dim() == 2 else (
                                    t.reshape(-1, t.shape[-1]) if t.dim() > 1 else t.reshape(1, -1))
                                if fast_units[k]:
                                    if t.dtype == rbuf.dtype:
                                        torch.amax(units, 0, out=rrows[k])
                                    else:
                                        rrows[k].copy_(units.amax(0))
                                else:
                                    rrows[k].copy_(units.ne(0).any(0))
                        if i not in relu_max:
                            if same:
                                torch.amin(t, (), out=lo)
                                if i not in input_max:
                                    torch.amax(t, (), out=hi)
                            else:
                                lo.copy_(t.amin())
                                if i not in input_max:
                                    hi.copy_(t.amax())
                        # |x| of the sample, read while the tensor is still in cache
                        src = (torch.as_strided(t, (n,), (s,), t.storage_offset())
                               if t.is_contiguous() else t.reshape(-1)[::s])
                        if t.dtype == row.dtype:
                            torch.abs(src, out=row)
                        else:  # a narrower dtype converts exactly
                            row.copy_(src).abs_()
                    if relus:
                        # unit maxima (or alive flags): alive units and maxima counted in _decode
                        pieces.append(rbuf.clone())
                    # indicators as 0/1 floats summed per row (comparisons written as floats, no
                    # bool kernels): |x| >= thr (normal or infinite) and |x| > 0; NaN is false in
                    # both, so it counts as zero; the zero padding counts in neither
                    torch.ge(a, thr_col, out=b)
                    torch.gt(a, 0, out=a)
                    pieces.append(ext_flat.clone())
                    pieces.append(_buf.sum(-1).view(-1))
                if ps:
                    # gradients, weights and the update of every parameter in one flat buffer
                    # (the update in the parameters' dtype); sums of squares per chunk in float64
                    _pb, views, w_row, u_row, chunks, flat64, _n, _groups = self._param_buffer()
                    gl = [p.grad for p in ps]
                    if all(g is not None for g in gl):
                        torch._foreach_copy_(views[0], gl)
                    else:
                        for v, g in zip(views[0], gl):
                            v.copy_(g) if g is not None else v.zero_()
                    torch._foreach_copy_(views[1], ps)
                    if before is not None:
                        if before is not views[2]:  # a snapshot made by the caller
                            torch._foreach_copy_(views[2], before)
                        u_row.sub_(w_row)  # before - after: the update, negated
                    flat64.copy_(chunks)
                    pieces.append(flat64.square_().sum(-1).view(-1))
        last = self._last
        relu_meta = [(r[0], r[1].shape[-1]) for r in relus]
        if (last is not None and last[0] is plan and last[1] == self._act_owners
                and last[2] == g_owners and last[3] == relu_max and last[4] == input_max
                and last[5] == relu_meta):
            program = last[6]
        else:
            key = (id(plan), tuple(map(tuple, self._act_owners)), tuple(map(tuple, g_owners)),
                   tuple(relu_meta), tuple(relu_max.items()), tuple(input_max.items()))
            program = self._programs.get(key)
            if program is None:
                program = self._programs[key] = key[1:] + (plan,)
            self._last = (plan, [list(o) for o in self._act_owners], g_owners, relu_max,
                          input_max, relu_meta, program)
        rec = self._recorder
        self._pending.append((program, pieces, scale, before is not None,
                              rec.counts if rec is not None else None, playout))
        self._clear()
        if len(self._pending) >= self.DECODE_EVERY:
            self._decode()

    def _decode(self) -> None:
        """Turn the undecoded steps into rows of per-module values."""
        act_fmt, grad_fmt = self.policy.act_format, self.policy.grad_format
        act_head, grad_head = act_fmt.headroom_log2, grad_fmt.headroom_log2
        colset = self._colset
        pending, self._pending = self._pending, []
        for program, values, scale, measured_update, counts, playout in pending:
            act_owners, g_owners, relu_meta, relu_max, input_max, plan = program
            alive: list[int] = []
            rmax: list[float] = []
            kernel = type(values) is np.ndarray  # the C kernel's one flat buffer
            if relu_meta:
                # per ReLU call: units whose maximum (or alive flag) is not 0 (NaN: alive),
                # the largest maximum (NaN if any is NaN; the zero padding changes nothing)
                if kernel:
                    n_r, wmax = plan[7], plan[8]
                    unit_max = values[:n_r * wmax].reshape(n_r, wmax)
                    values = values[n_r * wmax:]
                else:
                    unit_max = values[0].double().numpy()
                    values = values[1:]
                alive = np.count_nonzero(unit_max, axis=1).tolist()
                rmax = unit_max.max(axis=1).tolist()
            vals = values.tolist() if kernel else [v for t in values for v in t.tolist()]
            pos = 0
            relu_max, input_max = dict(relu_max), dict(input_max)
            row: dict[int, float] = {}
            # activations and gradients: absmax (exact), headroom, sampled fractions
            if plan is not None:
                sizes = plan[1]
                n_t = len(sizes)
                n_acts = len(act_owners)
                lows = vals[pos:pos + n_t]
                highs = vals[pos + n_t:pos + 2 * n_t]
                nonzeros = vals[pos + 2 * n_t:pos + 3 * n_t]
                normals = vals[pos + 3 * n_t:pos + 4 * n_t]
                pos += 4 * n_t
                for i in range(n_t):
                    k = relu_max.get(i)
                    if k is None:
                        lo = lows[i]
                        k = input_max.get(i)
                        hi = highs[i] if k is None else rmax[k]
                        am = -lo if -lo > hi else hi
                        if lo != lo or hi != hi:
                            am = math.nan
                    else:
                        am = rmax[k]
                    size = sizes[i]
                    n = max(size, 1)
                    if i < n_acts:
                        av = am
                        head = act_head(av)
                        names, keys = act_owners[i], _ACT_KEYS
                    else:
                        av = am / scale
                        head = grad_head(av * scale)
                        names, keys = g_owners[i - n_acts], _GRAD_KEYS
                    nonzero = nonzeros[i]
                    zero = (size - nonzero) / n
                    below = (nonzero - normals[i]) / n
                    for name in names:
                        c0, c1, c2, c3 = colset(name, keys)
                        row[c0] = av
                        row[c1] = head
                        row[c2] = below
                        row[c3] = zero
            for (name, width), n_alive in zip(relu_meta, alive):
                row[colset(name, ("dead_frac",))[0]] = 1.0 - n_alive / max(width, 1)
            if counts is not None:
                for (name, which), (flushed, _b, _o, total) in counts.items():
                    c = colset(name, ("act_flush",) if which == "forward" else
                               ("grad_flush",))[0]
                    row[c] = row.get(c, 0.0) + flushed / max(total, 1)
            # parameter gradients and update ratios, per module
            if self._flat_params:
                n_chunks, groups = (playout if playout is not None else
                                    self._param_buffer()[6:])
                gs = vals[pos:pos + n_chunks]
                ws = vals[pos + n_chunks:pos + 2 * n_chunks]
                us = vals[pos + 2 * n_chunks:pos + 3 * n_chunks]
                s2 = scale * scale
                for name, cs in groups:
                    g2 = w2 = u2 = 0.0
                    for c in cs:
                        g2 += gs[c]
                        w2 += ws[c]
                        u2 += us[c]
                    c0, c1 = colset(name, _PARAM_KEYS)
                    row[c0] = math.sqrt(g2 / s2)
                    row[c1] = (math.sqrt(u2) / math.sqrt(w2) if measured_update else math.nan
                               ) if w2 > 0 else math.nan
            layout = tuple(row)
            lid = self._layout_of.get(layout)
            if lid is None:
                lid = self._layout_of[layout] = len(self._layouts)
                self._layouts.append(layout)
            self._rows.append((lid, list(row.values())))

    def _clear(self) -> None:
        # the step's owners are kept (by value) in its program; the pre-hooks writing into
        # the gradient slots are removed before the slots are cleared
        self._calls.clear()
        self._acts.clear()
        self._act_owners.clear()
        self._act_ix.clear()
        self._relus.clear()
        self._gslots.clear()
        self._gnr.clear()
        self._gslot_of.clear()
        self._gcalls.clear()
        self._gleaf.clear()
        self._before = None
        self._recorder = None

    def abort(self) -> None:
        """Drop a step's hooks and stash (the step was replayed or failed)."""
        self._remove_hooks()
        self._remove_grad_hooks()
        P.RECORDER = None
        self._clear()

    # -- results -------------------------------------------------------------------
    def arrays(self) -> dict[str, dict[str, np.ndarray]]:
        """``{module: {stat: values over the attribution steps}}`` (nan: not measured)."""
        if self._pending:
            self._decode()
        n = len(self._rows)
        table = np.full((n, len(self._cols)), np.nan)
        groups: dict[int, tuple[list[int], list[list[float]]]] = {}
        for i, (lid, values) in enumerate(self._rows):
            g = groups.setdefault(lid, ([], []))
            g[0].append(i)
            g[1].append(values)
        for lid, (idx, values) in groups.items():
            table[np.ix_(idx, self._layouts[lid])] = np.asarray(values, dtype=np.float64)
        out: dict[str, dict[str, np.ndarray]] = {}
        for c, (name, key) in enumerate(self._cols):
            out.setdefault(name, {})[key] = table[:, c].copy()
        return out

    @property
    def series(self) -> dict[str, dict[str, list[float]]]:
        """name -> stat -> list over attribution steps (nan where not measured)."""
        return {name: {k: v.tolist() for k, v in ser.items()}
                for name, ser in self.arrays().items()}

    def weighted_layers(self) -> list[str]:
        """Modules with their own parameters, in the order the forward ran them."""
        order = self.order or list(self.params)
        seen, out = set(), []
        for name in order:
            if self.params.get(name) and name not in seen:
                seen.add(name)
                out.append(name)
        return out


# -- creators of non-finite values -------------------------------------------------

def find_creators(model: torch.nn.Module, forward_backward: Callable[[], Any],
                  step: int) -> list[dict[str, Any]]:
    """Replay one step with full checks; the modules that created a non-finite value.

    ``forward_backward(output_hook)`` must run the step's forward pass, call
    ``output_hook(outputs, loss)`` with the model outputs and the loss, and run the
    backward pass. Returns events ``{"step", "pass", "module", "kind", "detail"}``:
    pass ``forward`` or ``backward``; creators first, then (``kind: "passed"``) the
    modules that only passed the value on, in the order they ran.
    """
    names = qualified_names(model)
    children = {name: {names[c] for c in m.modules() if c is not m} for m, name in names.items()}
    fwd: list[tuple[str, str, str]] = []  # (module, kind, detail)
    bwd: list[tuple[str, str, str]] = []
    handles = []

    def fhook(name):
        def hook(module, args, kwargs, output):
            outs = _tensors(output)
            if _all_finite(outs):
                return
            ins = _tensors(args) + _tensors(kwargs)
            params_ok = _all_finite([p.detach() for p in module.parameters(recurse=False)])
            if _all_finite(ins):
                detail = ("finite inputs, non-finite output" if params_ok else
                          "non-finite parameters (set by an earlier update)")
                fwd.append((name, "created", detail))
            else:
                fwd.append((name, "passed", "non-finite input"))
        return hook

    go_finite: dict[str, bool] = {}

    def bhook(name):
        def hook(mod, grad_input, grad_output):
            go = [g for g in grad_output if g is not None]
            gi = [g for g in grad_input if g is not None]
            go_ok = _all_finite(go)
            go_finite[name] = go_ok
            if not go_ok:
                if not _all_finite(gi):
                    bwd.append((name, "passed", "non-finite gradient at its output"))
                return
            if not _all_finite(gi):
                bwd.append((name, "created", "finite gradient at its output, non-finite "
                                             "gradient at its input"))
        return hook

    for module, name in names.items():
        handles.append(module.register_forward_hook(fhook(name), with_kwargs=True))
        handles.append(module.register_full_backward_hook(bhook(name)))
    loss_fwd: list[tuple[str, str, str]] = []
    loss_bwd: list[tuple[str, str, str]] = []

    def output_hook(outputs, loss):
        outs = [t for t in _tensors(outputs) if t.is_floating_point()]
        loss_finite = bool(torch.isfinite(loss.detach()).all())
        if _all_finite([t.detach() for t in outs]) and not loss_finite:
            loss_fwd.append(("loss_fn", "created", "finite model outputs, non-finite loss"))
        if loss_finite:
            for t in outs:
                if t.requires_grad:
                    t.register_hook(lambda g: loss_bwd.append(
                        ("loss_fn", "created",
                         "finite loss, non-finite gradient of the model outputs"))
                        if not bool(torch.isfinite(g).all()) else None)

    try:
        with warnings.catch_warnings():
            # "full backward hook is firing ... no inputs require gradients": expected for
            # the first layer; its parameter gradients are checked below instead
            warnings.simplefilter("ignore", UserWarning)
            forward_backward(output_hook)
    finally:
        for h in handles:
            h.remove()
    fwd.extend(loss_fwd)
    bwd[:0] = loss_bwd
    # weight gradients: a module whose own parameter gradients are non-finite while the
    # gradient reaching its output was finite created them (e.g. the first layer, whose
    # input needs no gradient)
    recorded = {n for n, _, _ in bwd}
    for module, name in names.items():
        own = [p.grad for p in module.parameters(recurse=False) if p.grad is not None]
        if own and not _all_finite(own) and go_finite.get(name, True) and name not in recorded:
            bwd.append((name, "created", "finite gradient at its output, non-finite "
                                         "gradient of its own parameters"))
    events: list[dict[str, Any]] = []
    for pass_, items in (("forward", fwd), ("backward", bwd)):
        created = [n for n, k, _ in items if k == "created"]
        for name, kind, detail in items:
            if kind == "created" and any(c in children.get(name, ()) for c in created):
                kind, detail = "contains", "its child created the value"
            events.append({"step": step, "pass": pass_, "module": name, "kind": kind,
                           "detail": detail, "type": _type(names, name)})
    return events


def _type(names: dict, name: str) -> str:
    if name == "loss_fn":
        return "loss"
    for m, n in names.items():
        if n == name:
            return type(m).__name__
    return ""


# -- headroom projections ----------------------------------------------------------

def fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares ``y = a + b x``: (a, b, r^2)."""
    if len(x) < 2:
        return math.nan, math.nan, math.nan
    b, a = np.polyfit(x, y, 1)
    pred = a + b * x
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - np.mean(y)) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0
    return float(a), float(b), r2


def headroom_projections(steps: list[int], arrays: dict[str, dict[str, np.ndarray]],
                         min_points: int = 4, min_r2: float = 0.7,
                         min_fall: float = 1.0) -> list[dict[str, Any]]:
    """Modules whose headroom falls steadily, with the step the fit reaches zero.

    The fit uses the attribution steps up to the first where the headroom is no longer
    finite and positive (the overflow itself is not part of the forecast).
    """
    x_all = np.asarray(steps, dtype=np.float64)
    out = []
    for name, ser in arrays.items():
        for kind in ("act", "grad"):
            h = ser.get(f"{kind}_headroom")
            if h is None:
                continue
            ok = np.isfinite(h) & (h > 0)
            stop = int(np.argmin(ok)) if not ok.all() else len(h)
            x, y = x_all[:stop], h[:stop]
            keep = np.isfinite(y)
            x, y = x[keep], y[keep]
            if len(x) < min_points:
                continue
            a, b, r2 = fit_line(x, y)
            fall = float(y[0] - y[-1])
            if not (b < 0 and r2 >= min_r2 and fall >= min_fall):
                continue
            projected = -a / b
            out.append({"module": name, "kind": "activation" if kind == "act" else "gradient",
                        "headroom_first": float(y[0]), "headroom_last": float(y[-1]),
                        "slope_per_step": b, "r2": r2, "fitted_steps": [int(x[0]), int(x[-1])],
                        "projected_step": int(math.ceil(projected)),
                        "overflowed_at": int(x_all[stop]) if stop < len(h) else None})
    out.sort(key=lambda d: d["projected_step"])
    return out
