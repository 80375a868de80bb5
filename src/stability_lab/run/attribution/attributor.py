"""The :class:`Attributor`: per-module statistics every k steps, and the hooks that stash
what it measures.

On an attribution step one global module forward hook, filtered to the model's modules,
is installed for the forward pass (and removed after it, so other steps pay nothing); it
notes each module's output with its version and autograd node. After the forward each
output is stashed and a pre-hook on the autograd node the output had when its module
returned it keeps a reference to the gradient arriving there (no copy, no Python frame in
the backward pass; the gradient of the value the module produced, also when the output
is modified in place later in the forward). The statistics of an output are those of its
value at the end of the step. The global hook runs before a module's own forward hooks,
so where user code registered a hook that replaces a module's output, the statistics are
those of what ``forward`` returned.

At the end of the step the stash is reduced by the C kernel (:mod:`.kernel_path`) or,
where it cannot, by torch (:mod:`.torch_path`); the step's numbers are kept as they come
and decoded into per-module values when the results are read (:meth:`Attributor.arrays`),
or every :attr:`Attributor.DECODE_EVERY` steps.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np
import torch

from stability_lab.precision import policies as P
from stability_lab.run.attribution import kernel_path, torch_path
from stability_lab.run.attribution.decode import PendingStep, StepProgram, decode_step
from stability_lab.run.attribution.modules import first_tensor, qualified_names
from stability_lab.run.attribution.step import (ParameterBuffers, Reduction, ReluCall,
                                                StepTensors, Thresholds)
from stability_lab.run.attribution.table import StatTable

_TENSOR = torch.Tensor


class ModuleInfo(NamedTuple):
    """What the forward hook needs to know of one module of the model."""

    name: str
    #: its dead units are measured (its class is called ``ReLU``)
    dead_units: bool
    #: an ``nn.ReLU``: its output is ``>= 0`` (or NaN) as returned
    is_relu: bool
    #: exactly ``nn.ReLU``: its output is ``max(input, 0)`` elementwise
    exact_relu: bool


class _LastProgram(NamedTuple):
    """The last step's program and what it was made of (most steps repeat it)."""

    plan: Any
    act_owners: list[list[str]]
    grad_owners: list[list[str]]
    relu_max: dict[int, int]
    input_max: dict[int, int]
    relu_calls: list[tuple[str, int]]
    program: StepProgram


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
        self._info = {m: ModuleInfo(name, self.kinds[name] == "ReLU",
                                    isinstance(m, torch.nn.ReLU), type(m) is torch.nn.ReLU)
                      for m, name in self.names.items()}
        self._handles: list[Any] = []       # global module hooks, during a watched forward
        self._grad_handles: list[Any] = []  # autograd node pre-hooks, until end_step
        # one step's stash
        self._acts: list[torch.Tensor] = []          # unique outputs, forward order
        self._act_owners: list[list[str]] = []
        self._act_ix: dict[int, int] = {}
        self._relus: list[ReluCall] = []
        #: gradient slots, one per (output, version): the ``grad_outputs`` of the output's
        #: autograd node (set by its pre-hook) and the output's index among them
        self._gslots: list[Any] = []
        self._gnr: list[int] = []
        self._gslot_of: dict[tuple[int, int], int] = {}
        self._gcalls: list[tuple[int, str]] = []     # (slot, module) per module call
        #: per call of a module of the model, until the forward is over: (its
        #: ModuleInfo, output, output version, autograd node, an exact ReLU's input, the
        #: input's version); a plain tuple, made in the hook on every call
        self._calls: list[tuple] = []
        self._gleaf: dict[int, tuple[torch.Tensor, int]] = {}  # slots of leaf outputs
        self._recorder: P.Recorder | None = None
        self._record_order = False
        self._before: list[torch.Tensor] | None = None
        self._step = 0
        # the reductions: flat parameter buffers (made on first use) and both paths
        self._buffers: ParameterBuffers | None = None
        thresholds = Thresholds()
        self._kernel = kernel_path.KernelPath(self._flat_params, self._param_owner,
                                              self._parameter_buffers, thresholds)
        self._torch = torch_path.TorchPath(self._flat_params, self._parameter_buffers,
                                           thresholds)
        # results: one row per attribution step, decoded from the pending steps
        self._table = StatTable()
        self._pending: list[PendingStep] = []
        self._programs: dict[tuple, StepProgram] = {}
        self._last: _LastProgram | None = None

    def wants(self, step: int) -> bool:
        return self.every > 0 and (step - 1) % self.every == 0

    # -- hooks (global, filtered to this model's modules) ----------------------------
    def _pre(self, module, args) -> None:
        info = self._info.get(module)
        if info is not None:
            rec = self._recorder
            if rec is not None:
                rec.stack.append(info.name)

    def _post(self, module, args, output) -> None:
        info = self._info.get(module)
        if info is None:
            return
        rec = self._recorder
        if rec is not None and rec.stack:
            rec.stack.pop()
        if self._record_order:
            self.order.append(info.name)
        out = output if type(output) is _TENSOR else first_tensor(output)
        if out is None:
            return
        # what changes later in the forward (versions, autograd node) is read now; the
        # rest is done once after the forward (_watch)
        if info.exact_relu and args and not module.inplace:
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
        for (name, dead_units, is_relu, _exact), out, version, node, inp, inp_version in \
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
            if dead_units and out.dim() >= 1:
                link = None
                if inp is not None:
                    # max(input, 0): the input's largest value where it is positive
                    ii = act_ix.get(id(inp))
                    if ii is not None and acts[ii] is inp and inp.shape == out.shape:
                        link = (ii, inp_version)
                relus.append(ReluCall(name, out, i, version, is_relu, link))
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

    def _parameter_buffers(self) -> ParameterBuffers:
        """The flat parameter buffers, made on first use (after the first forward, so
        lazily made parameters have their shapes)."""
        if self._buffers is None:
            self._buffers = ParameterBuffers(self._flat_params, self._param_owner)
        return self._buffers

    def before_update(self) -> None:
        """Snapshot parameters (for update-to-weight ratios) into the reused flat buffer."""
        ps = self._flat_params
        if not ps:
            return
        snapshot = self._parameter_buffers().before
        with torch.no_grad():
            torch._foreach_copy_(snapshot, ps)
        self._before = snapshot

    def end_step(self, grad_scale: float = 1.0) -> None:
        """Reduce everything stashed on this step into a few small tensors (after the update)."""
        P.RECORDER = None
        if self._calls:  # end_forward was not called
            self._remove_hooks()
            self._watch()
        if self._grad_handles:
            self._remove_grad_hooks()
        self.steps.append(self._step)
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
        relus = self._relus
        # ReLU outputs still as their module returned them are >= 0 (or NaN): a unit is
        # alive iff its maximum over the batch is not 0, and the largest unit maximum is
        # the output's maximum and absmax (exact, as amax/amin would give); for an
        # unchanged input of an nn.ReLU it is the input's maximum where that is positive,
        # so the input's absmax is max(-min, that) (0 <= -min where the maximum is <= 0)
        relu_max: dict[int, int] = {}
        input_max: dict[int, int] = {}
        fast_units: list[bool] = []
        for k, r in enumerate(relus):
            fast = r.is_relu and r.output._version == r.version
            fast_units.append(fast)
            if fast:
                relu_max.setdefault(r.output_index, k)
                link = r.input_link
                if link is not None and acts[link[0]]._version == link[1]:
                    input_max.setdefault(link[0], k)
        stash = StepTensors(acts + grads, len(acts), relus, fast_units, relu_max, input_max,
                            self._before, self.policy.act_format.tiny,
                            self.policy.grad_format.tiny * grad_scale)
        reduction = self._kernel.reduce(stash) if kernel_path.kernel_enabled() else None
        if reduction is None:  # the kernel is off, not built, or cannot read a tensor
            reduction = self._torch.reduce(stash)
        rec = self._recorder
        self._pending.append(PendingStep(
            self._program(reduction, g_owners, relu_max, input_max), reduction.values,
            grad_scale, self._before is not None, rec.counts if rec is not None else None,
            reduction.param_sums))
        self._clear()
        if len(self._pending) >= self.DECODE_EVERY:
            self._decode()

    def _program(self, reduction: Reduction, g_owners: list[list[str]],
                 relu_max: dict[int, int], input_max: dict[int, int]) -> StepProgram:
        """The step's program: the last step's where nothing changed, else one made once
        per layout."""
        plan = reduction.plan
        last = self._last
        relu_calls = [(r.module, r.output.shape[-1]) for r in self._relus]
        if (last is not None and last.plan is plan and last.act_owners == self._act_owners
                and last.grad_owners == g_owners and last.relu_max == relu_max
                and last.input_max == input_max and last.relu_calls == relu_calls):
            return last.program
        key = (id(plan), tuple(map(tuple, self._act_owners)), tuple(map(tuple, g_owners)),
               tuple(relu_calls), tuple(relu_max.items()), tuple(input_max.items()))
        program = self._programs.get(key)
        if program is None:
            program = self._programs[key] = StepProgram(*key[1:], plan)
        self._last = _LastProgram(plan, [list(o) for o in self._act_owners], g_owners,
                                  relu_max, input_max, relu_calls, program)
        return program

    def _decode(self) -> None:
        """Turn the undecoded steps into rows of per-module values."""
        pending, self._pending = self._pending, []
        for step in pending:
            self._table.add_row(decode_step(step, self.policy, self._table.columns))

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
        return self._table.arrays()

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
