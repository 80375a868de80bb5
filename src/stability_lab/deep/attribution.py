"""Per-layer attribution: where in a model the numbers go wrong.

Two mechanisms, both keyed by the qualified names of ``model.named_modules()``
(the root module is called ``<model>``):

**Statistics every k steps** (:class:`Attributor`). On an attribution step forward
hooks are attached to every module (and removed after the forward, so other steps pay
nothing). A hook keeps a reference to the module's output and calls ``retain_grad`` on
it (no Python call in the backward pass; an output modified in place later in the
forward instead gets a pre-hook on its own autograd node, so the gradient is the one of
the value the module produced). All reductions are done once at the end of the step over
the stashed tensors together: ``aminmax`` per tensor into one buffer, the strided samples
copied into one zero-padded buffer and counted with float kernels, parameters, gradients
and updates in one flat buffer reduced per chunk in float64; four ``tolist`` transfers.
Per module and step:

- activation and gradient absmax, and headroom ``log2(fmax / absmax)`` in powers of two
  to the largest finite value of the format the policy holds them in;
- the fraction of non-zero values below the format's smallest normal (subnormal range)
  and, where the lab does the rounding (emulated GEMMs), the fraction flushed to zero
  (non-zero before rounding, zero after); the fraction of dead units for ReLU outputs;
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
import warnings
from typing import Any, Callable

import numpy as np
import torch

from . import policies as P

ROOT = "<model>"
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


def _stack_list(ts: list[torch.Tensor]) -> list[float]:
    """Values of 0-dim tensors as floats: one stack and transfer per dtype present."""
    if not ts:
        return []
    dtype = ts[0].dtype
    if all(t.dtype == dtype for t in ts):
        return torch.stack(ts).tolist()
    return [float(t) for t in ts]


class Attributor:
    """Per-module statistics on every ``every``-th step (steps 1, 1+k, 1+2k, ...).

    Cost model (the digits MLP, 8 modules): one forward hook per module on attribution
    steps only (pre-hooks too where the lab rounds); the hook stashes the output and asks
    autograd to keep its gradient (``retain_grad``, no Python call in the backward pass;
    outputs modified in place later in the forward get a pre-hook on their own autograd
    node instead, so the gradient is the one of the value the module produced). At the end
    of the step every statistic comes from a fixed, small number of torch calls over all
    tensors together and two ``tolist`` transfers; rows are stored as flat value lists.
    """

    def __init__(self, model: torch.nn.Module, policy: P.Policy, every: int) -> None:
        self.model = model
        self.policy = policy
        self.every = int(every)
        self.names = qualified_names(model)
        self.kinds = {name: type(m).__name__ for m, name in self.names.items()}
        self.params = {name: [p for p in m.parameters(recurse=False)]
                       for m, name in self.names.items()}
        self.children = {name: [self.names[c] for c in m.modules() if c is not m]
                         for m, name in self.names.items()}
        self.order: list[str] = []
        self.steps: list[int] = []
        self._flat_params = [p for ps in self.params.values() for p in ps]
        self._param_owner = [name for name, ps in self.params.items() for _ in ps]
        # ReLU outputs are >= 0 (or NaN): a unit is alive iff its column max is not 0
        self._relu_fast = {name for m, name in self.names.items()
                           if isinstance(m, torch.nn.ReLU)}
        self._relu = {name for name, kind in self.kinds.items() if kind == "ReLU"}
        self._handles: list[Any] = []
        # one step's stash
        self._acts: list[torch.Tensor] = []          # unique outputs, forward order
        self._act_owners: list[list[str]] = []
        self._act_ix: dict[int, int] = {}
        #: (module, output, its version when stashed, its autograd node, output_nr)
        self._gents: list[tuple[str, torch.Tensor, int, Any, int]] = []
        self._node_grads: dict[int, torch.Tensor] = {}
        self._relus: list[tuple[str, torch.Tensor]] = []
        self._recorder: P.Recorder | None = None
        self._record_order = False
        self._before: list[torch.Tensor] | None = None
        self._pbuf: tuple | None = None  # flat parameter buffer, made on first use
        self._step = 0
        # storage: columns (module, stat); one row per attribution step
        self._cols: list[tuple[str, str]] = []
        self._col_of: dict[tuple[str, str], int] = {}
        self._colsets: dict[tuple[str, tuple[str, ...]], tuple[int, ...]] = {}
        self._layouts: list[tuple[int, ...]] = []
        self._layout_of: dict[tuple[int, ...], int] = {}
        self._rows: list[tuple[int, list[float]]] = []
        self._plans: dict[tuple, tuple] = {}
        self._thr: dict[tuple[float, torch.dtype], float] = {}
        self._hooks = {name: (self._make_pre(name), self._make_post(name))
                       for name in self.names.values()}

    def wants(self, step: int) -> bool:
        return self.every > 0 and (step - 1) % self.every == 0

    # -- hooks (made once) -----------------------------------------------------------
    def _make_pre(self, name: str) -> Callable:
        def hook(module, args):
            rec = self._recorder
            if rec is not None:
                rec.stack.append(name)
        return hook

    def _make_post(self, name: str) -> Callable:
        acts, owners, act_ix = self._acts, self._act_owners, self._act_ix
        gents, relus, order = self._gents, self._relus, self.order
        relu = name in self._relu
        tensor = torch.Tensor

        def hook(module, args, output):
            rec = self._recorder
            if rec is not None and rec.stack:
                rec.stack.pop()
            if self._record_order:
                order.append(name)
            out = output if type(output) is tensor else _first_tensor(output)
            if out is None or not out.is_floating_point() or out.numel() == 0:
                return
            key = id(out)
            i = act_ix.get(key)
            if i is None:
                act_ix[key] = len(acts)
                acts.append(out)
                owners.append([name])
            else:
                owners[i].append(name)
            if relu and out.dim() >= 1:
                relus.append((name, out))
            if out.requires_grad:
                gents.append((name, out, out._version, out.grad_fn, out.output_nr))
                out.retain_grad()
        return hook

    def _keep_grad(self, j: int, nr: int, grad_outputs) -> None:
        self._node_grads[j] = grad_outputs[nr]

    # -- one attribution step ------------------------------------------------------
    def begin(self, step: int) -> None:
        self._step = step
        self._clear()
        rec = P.Recorder() if self.policy.emulated else None
        self._recorder = rec
        P.RECORDER = rec
        self._record_order = not self.order
        handles = self._handles
        for module, name in self.names.items():
            pre, post = self._hooks[name]
            if rec is not None:
                handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post))

    def _remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def end_forward(self) -> None:
        # the recorder stays installed through the backward pass (its GEMMs know their
        # module from the forward); end_step uninstalls it
        self._remove_hooks()
        # an output modified in place after its module returned (e.g. by ReLU(inplace))
        # would retain the gradient of the modified value: take the gradient reaching the
        # module's own autograd node instead
        for j, (_name, out, version, node, nr) in enumerate(self._gents):
            if out._version != version and node is not None:
                node.register_prehook(functools.partial(self._keep_grad, j, nr))

    def _param_buffer(self) -> tuple:
        """A zero-padded ``(3, chunks, C)`` buffer: gradients, weights, weights before.

        Each module's parameters lie one after the other from a chunk boundary on, so the
        per-chunk sums of squares add up, in Python, to the module's sums of squares (the
        padding stays zero).
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
            chunk_owner = [None] * n_chunks
            for name, o, p in zip(self._param_owner, offsets, ps):
                for c in range(o // chunk, -(-(o + p.numel()) // chunk)):
                    chunk_owner[c] = name
            self._pbuf = (buf, buf.view(3, n_chunks, chunk), views, chunk_owner)
        return self._pbuf

    def before_update(self) -> None:
        """Snapshot parameters (for update-to-weight ratios) into the reused flat buffer."""
        ps = self._flat_params
        if not ps:
            return
        _buf, _chunks, views, _owner = self._param_buffer()
        with torch.no_grad():
            torch._foreach_copy_(views[2], ps)
        self._before = views[2]

    def _plan(self, tensors: list[torch.Tensor], n_acts: int, thr_act: float,
              thr_grad: float) -> tuple:
        """Sample strides and sizes, scratch buffer and thresholds for these shapes.

        The samples go, one row per tensor, into a zero-padded ``(2, tensors, longest)``
        buffer: row block 0 holds ``|x|``, block 1 ``thr - |x|`` (thresholds per row).
        """
        key = (n_acts, thr_act, thr_grad) + tuple((t.numel(), t.dtype) for t in tensors)
        plan = self._plans.get(key)
        if plan is None:
            strides, sizes, thrs = [], [], []
            dtype = torch.float32  # sums of 0/1 up to 4095 are exact in float32
            for i, t in enumerate(tensors):
                n = t.numel()
                s = max(1, n // SAMPLE)
                strides.append(s)
                sizes.append(-(-n // s))
                thr = thr_act if i < n_acts else thr_grad
                k = (thr, t.dtype)
                if k not in self._thr:
                    self._thr[k] = _rounded(thr, t.dtype)
                thrs.append(self._thr[k])
                dtype = torch.promote_types(dtype, t.dtype)
            longest = max(sizes)
            buf = torch.zeros(2, len(tensors), longest, dtype=dtype)
            rows = [buf[0, i, :n] for i, n in enumerate(sizes)]
            thr_col = torch.tensor(thrs, dtype=dtype).reshape(-1, 1)
            pads = [longest - n for n in sizes]
            # min and max of every tensor written straight into one buffer (one dtype)
            dtypes = {t.dtype for t in tensors}
            ext = torch.zeros(2, len(tensors), dtype=tensors[0].dtype) if len(dtypes) == 1 \
                else None
            outs = ([(ext[0, i], ext[1, i]) for i in range(len(tensors))]
                    if ext is not None else None)
            plan = (strides, sizes, buf, rows, thr_col, pads, ext, outs)
            self._plans[key] = plan
        return plan

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
        """Reduce everything stashed on this step into a row (after the update)."""
        P.RECORDER = None
        self.steps.append(self._step)
        act_fmt, grad_fmt = self.policy.act_format, self.policy.grad_format
        scale = grad_scale
        # unique gradients, in backward order (the earliest call of a module called
        # twice is the last to receive its gradient, as with a tensor hook)
        grads: list[torch.Tensor] = []
        g_owners: list[list[str]] = []
        g_ix: dict[int, int] = {}
        node_grads = self._node_grads
        gents = self._gents
        for j in range(len(gents) - 1, -1, -1):
            name, out, version, _node, _nr = gents[j]
            g = node_grads.get(j) if j in node_grads else (
                out.grad if out._version == version else None)
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
        n_acts = len(acts)
        ps = self._flat_params
        before = self._before
        with torch.no_grad():
            extremes: list[torch.Tensor] = []
            alive: list[torch.Tensor] = []
            counts: list[list[float]] = []
            sizes: list[int] = []
            pads: list[int] = []
            if tensors:
                strides, sizes, buf, rows, thr_col, pads, ext, outs = self._plan(
                    tensors, n_acts, act_fmt.tiny, grad_fmt.tiny * scale)
                if outs is not None:
                    for t, o in zip(tensors, outs):
                        torch.aminmax(t, out=o)
                else:
                    for t in tensors:
                        extremes.extend(torch.aminmax(t))
                # the same deterministic strided sample as a per-tensor reshape(-1)[::s];
                # indicators as 0/1 floats (sign) summed per row: no bool kernels
                samples = [torch.as_strided(t, (n,), (s,), t.storage_offset())
                           if t.is_contiguous() else t.reshape(-1)[::s]
                           for t, s, n in zip(tensors, strides, sizes)]
                torch._foreach_copy_(rows, samples)
                a = buf[0]
                a.abs_()
                a.nan_to_num_(nan=0.0, posinf=math.inf)  # NaN counts as zero, as before
                torch.sub(thr_col, a, out=buf[1])
                buf[1].clamp_(min=0)
                buf.sign_()
                counts = buf.sum(-1).tolist()
            relus = self._relus
            for name, t in relus:
                units = t.reshape(-1, t.shape[-1]) if t.dim() > 1 else t.reshape(1, -1)
                alive.append(torch.count_nonzero(
                    units.amax(0) if name in self._relu_fast else units.ne(0).any(0)))
            sums: list[list[float]] = []
            if ps:
                # gradients, weights and the update of every parameter in one flat buffer;
                # per-chunk sums of squares in float64, one transfer
                pbuf, pchunks, views, _owner = self._param_buffer()
                gl = [p.grad for p in ps]
                if all(g is not None for g in gl):
                    torch._foreach_copy_(views[0], gl)
                else:
                    for v, g in zip(views[0], gl):
                        v.copy_(g) if g is not None else v.zero_()
                if before is not None and before is not views[2]:
                    torch._foreach_copy_(views[2], before)  # a snapshot made by the caller
                torch._foreach_copy_(views[1], ps)
                pbuf[2].sub_(pbuf[1])  # before - after: the update, negated
                p64 = pchunks.double()
                sums = torch.linalg.vecdot(p64, p64).tolist()
            # one stack per dtype (a mixed-dtype stack converts element by element)
            if tensors and ext is not None:
                lows, highs = ext.tolist()
                vals = [v for pair in zip(lows, highs) for v in pair]
            else:
                vals = _stack_list(extremes)
            alive_l = torch.stack(alive).tolist() if alive else []
        row: dict[int, float] = {}
        colset = self._colset
        # activations and gradients: absmax (exact), headroom, sampled fractions
        n_t = len(tensors)
        for i in range(n_t):
            lo, hi = vals[2 * i], vals[2 * i + 1]
            am = -lo if -lo > hi else hi
            if lo != lo or hi != hi:
                am = math.nan
            n = max(sizes[i], 1)
            if i < n_acts:
                a = am
                head = act_fmt.headroom_log2(a)
                names, keys = self._act_owners[i], _ACT_KEYS
            else:
                a = am / scale
                head = grad_fmt.headroom_log2(a * scale)
                names, keys = g_owners[i - n_acts], _GRAD_KEYS
            nonzero, low = counts[0][i], counts[1][i] - pads[i]
            zero = (sizes[i] - nonzero) / n
            below = (low - (sizes[i] - nonzero)) / n
            for name in names:
                c0, c1, c2, c3 = colset(name, keys)
                row[c0] = a
                row[c1] = head
                row[c2] = below
                row[c3] = zero
        for (name, t), n_alive in zip(self._relus, alive_l):
            row[colset(name, ("dead_frac",))[0]] = 1.0 - n_alive / max(t.shape[-1], 1)
        if self._recorder is not None:
            for (name, which), (flushed, _b, _o, total) in self._recorder.counts.items():
                c = colset(name, ("act_flush",) if which == "forward" else ("grad_flush",))[0]
                row[c] = row.get(c, 0.0) + flushed / max(total, 1)
        # parameter gradients and update ratios, per module
        if ps:
            _b, _c, _v, chunk_owner = self._param_buffer()
            agg: dict[str, list[float]] = {}
            for name, g2, w2, u2 in zip(chunk_owner, *sums):
                if name is None:
                    continue
                a3 = agg.get(name)
                if a3 is None:
                    agg[name] = [g2, w2, u2]
                else:
                    a3[0] += g2
                    a3[1] += w2
                    a3[2] += u2
            s2 = scale * scale
            for name, (g2, w2, u2) in agg.items():
                c0, c1 = colset(name, _PARAM_KEYS)
                row[c0] = math.sqrt(g2 / s2)
                row[c1] = (math.sqrt(u2) / math.sqrt(w2) if before is not None else math.nan
                           ) if w2 > 0 else math.nan
        layout = tuple(row)
        lid = self._layout_of.get(layout)
        if lid is None:
            lid = self._layout_of[layout] = len(self._layouts)
            self._layouts.append(layout)
        self._rows.append((lid, list(row.values())))
        self._clear()

    def _clear(self) -> None:
        self._acts.clear()
        self._act_owners.clear()
        self._act_ix.clear()
        self._gents.clear()
        self._node_grads.clear()
        self._relus.clear()
        self._before = None
        self._recorder = None

    def abort(self) -> None:
        """Drop a step's hooks and stash (the step was replayed or failed)."""
        self._remove_hooks()
        P.RECORDER = None
        self._clear()

    # -- results -------------------------------------------------------------------
    def arrays(self) -> dict[str, dict[str, np.ndarray]]:
        """``{module: {stat: values over the attribution steps}}`` (nan: not measured)."""
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
