"""Per-layer attribution: where in a model the numbers go wrong.

Two mechanisms, both keyed by the qualified names of ``model.named_modules()``
(the root module is called ``<model>``):

**Statistics every k steps** (:class:`Attributor`). On an attribution step forward
hooks are attached to every module (and removed after the step, so other steps pay
nothing). A hook only keeps a reference to the module's output and puts a tensor hook
on it that keeps the gradient reaching that output; all reductions are done once at
the end of the step over the stashed tensors together (``torch._foreach_norm`` for the
absmax, one concatenation for the counts). Per module and step:

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


class Attributor:
    """Per-module statistics on every ``every``-th step (steps 1, 1+k, 1+2k, ...)."""

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
        #: name -> stat -> list over attribution steps (nan where not measured)
        self.series: dict[str, dict[str, list[float]]] = {}
        self._handles: list[Any] = []
        self._acts: list[tuple[str, torch.Tensor]] = []
        self._grads: list[tuple[str, torch.Tensor]] = []
        self._recorder: P.Recorder | None = None
        self._before: list[torch.Tensor] | None = None
        self._step = 0
        self._seg_cache: dict[tuple[int, ...], torch.Tensor] = {}

    def _segments(self, sizes: tuple[int, ...]) -> torch.Tensor:
        seg = self._seg_cache.get(sizes)
        if seg is None:
            seg = torch.repeat_interleave(torch.arange(len(sizes)) * 3, torch.tensor(sizes))
            self._seg_cache[sizes] = seg
        return seg

    def wants(self, step: int) -> bool:
        return self.every > 0 and (step - 1) % self.every == 0

    # -- one attribution step ------------------------------------------------------
    def begin(self, step: int) -> None:
        self._step = step
        self._acts.clear()
        self._grads.clear()
        rec = P.Recorder() if self.policy.emulated else None
        self._recorder = rec
        P.RECORDER = rec
        record_order = not self.order
        for module, name in self.names.items():
            self._handles.append(module.register_forward_pre_hook(self._pre(name, rec)))
            self._handles.append(module.register_forward_hook(self._post(name, rec,
                                                                         record_order)))

    def _pre(self, name: str, rec: P.Recorder | None) -> Callable:
        def hook(module, args):
            if rec is not None:
                rec.stack.append(name)
        return hook

    def _post(self, name: str, rec: P.Recorder | None, record_order: bool) -> Callable:
        acts, grads = self._acts, self._grads

        def hook(module, args, output):
            if rec is not None and rec.stack:
                rec.stack.pop()
            if record_order:
                self.order.append(name)
            out = _first_tensor(output)
            if out is None or not out.is_floating_point():
                return
            acts.append((name, out.detach()))
            if out.requires_grad:
                out.register_hook(lambda g: grads.append((name, g)) and None)
        return hook

    def end_forward(self) -> None:
        # the recorder stays installed through the backward pass (its GEMMs know their
        # module from the forward); end_step uninstalls it
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def before_update(self) -> None:
        """Snapshot parameters (for update-to-weight ratios) and reduce the step's tensors."""
        self._before = [p.detach().clone() for ps in self.params.values() for p in ps]

    def end_step(self, grad_scale: float = 1.0) -> None:
        """Reduce everything stashed on this step into the series (after the update)."""
        P.RECORDER = None
        step = self._step
        self.steps.append(step)
        idx = len(self.steps) - 1
        act_fmt, grad_fmt = self.policy.act_format, self.policy.grad_format
        stats: dict[str, dict[str, float]] = {}

        def reduce(items, prefix, fmt, scale=1.0):
            if not items:
                return
            seen: dict[int, dict[str, float]] = {}
            uniq, owners = [], []
            for name, t in items:
                key = id(t)
                if key in seen:
                    stats.setdefault(name, {}).update(seen[key])
                    continue
                seen[key] = {}
                uniq.append(t)
                owners.append((name, key))
            with torch.no_grad():
                mm = [torch.aminmax(t) for t in uniq]
                amax = torch.stack([torch.maximum(-lo, hi).double() for lo, hi in mm])
                # fractions from a deterministic strided sample of <= SAMPLE values per
                # tensor (absmax above is exact); one pass and one bincount for all
                samples = [t.reshape(-1)[::max(1, t.numel() // SAMPLE)] for t in uniq]
                sizes = [x.numel() for x in samples]
                flat = torch.cat(samples).abs()
                seg = self._segments(tuple(sizes))
                key = seg + (flat > 0).long() + (flat >= fmt.tiny * scale).long()
                counts = torch.bincount(key, minlength=3 * len(uniq)).view(-1, 3)
                below, zero = counts[:, 1], counts[:, 0]
            amax_l = (amax / scale).tolist()
            below_l, zero_l = below.tolist(), zero.tolist()
            for i, (name, key) in enumerate(owners):
                n = max(sizes[i], 1)
                d = {f"{prefix}_absmax": amax_l[i],
                     f"{prefix}_headroom": fmt.headroom_log2(amax_l[i] * scale),
                     f"{prefix}_below_normal": below_l[i] / n,
                     f"{prefix}_zero": zero_l[i] / n}
                seen[key].update(d)
                stats.setdefault(name, {}).update(d)

        reduce(self._acts, "act", act_fmt)
        # gradients carry the loss scale: headroom and underflow are judged on the values
        # the format held; absmax is reported unscaled
        reduce(self._grads, "grad", grad_fmt, scale=grad_scale)
        with torch.no_grad():
            for name, t in self._acts:
                if self.kinds.get(name) == "ReLU" and t.dim() >= 1:
                    units = t.reshape(-1, t.shape[-1]) if t.dim() > 1 else t.reshape(1, -1)
                    alive = int(torch.count_nonzero(units.ne(0).any(0)))
                    stats[name]["dead_frac"] = 1.0 - alive / max(units.shape[-1], 1)
        if self._recorder is not None:
            for (name, which), (flushed, _below, _over, total) in self._recorder.counts.items():
                key = "act_flush" if which == "forward" else "grad_flush"
                d = stats.setdefault(name, {})
                d[key] = d.get(key, 0.0) + flushed / max(total, 1)
        # parameter gradients and update ratios, per module
        flat_params = [(name, p) for name, ps in self.params.items() for p in ps]
        if flat_params:
            with torch.no_grad():
                gs = [p.grad if p.grad is not None else torch.zeros_like(p)
                      for _, p in flat_params]
                gn = torch._foreach_norm(gs, 2, dtype=torch.float64)
                wn = torch._foreach_norm([p.detach() for _, p in flat_params], 2,
                                         dtype=torch.float64)
                if self._before is not None:
                    diffs = torch._foreach_sub([p.detach() for _, p in flat_params],
                                               self._before)
                    un = torch._foreach_norm(diffs, 2, dtype=torch.float64)
                else:
                    un = [torch.tensor(math.nan)] * len(flat_params)
            agg: dict[str, list[float]] = {}
            for (name, _), g, w, u in zip(flat_params, torch.stack(gn).tolist(),
                                          torch.stack(wn).tolist(), torch.stack(un).tolist()):
                a = agg.setdefault(name, [0.0, 0.0, 0.0])
                a[0] += g * g / (grad_scale * grad_scale)
                a[1] += w * w
                a[2] += u * u
            for name, (g2, w2, u2) in agg.items():
                d = stats.setdefault(name, {})
                d["grad_norm"] = math.sqrt(g2)
                d["update_ratio"] = math.sqrt(u2) / math.sqrt(w2) if w2 > 0 else math.nan
        self._before = None
        self._acts.clear()
        self._grads.clear()
        self._recorder = None
        for name, d in stats.items():
            ser = self.series.setdefault(name, {})
            for key, value in d.items():
                lst = ser.setdefault(key, [])
                lst.extend([math.nan] * (idx - len(lst)))
                lst.append(float(value))

    def abort(self) -> None:
        """Drop a step's hooks and stash (the step was replayed or failed)."""
        self.end_forward()
        P.RECORDER = None
        self._acts.clear()
        self._grads.clear()
        self._before = None

    # -- results -------------------------------------------------------------------
    def arrays(self) -> dict[str, dict[str, np.ndarray]]:
        n = len(self.steps)
        out = {}
        for name, ser in self.series.items():
            out[name] = {k: np.asarray(v + [math.nan] * (n - len(v)), dtype=np.float64)
                         for k, v in ser.items()}
        return out

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
