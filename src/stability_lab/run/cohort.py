"""The engine's batched mode: a cohort of linear-model runs trained in lockstep.

The specs of a cohort share the data variant, the precision, the loss form and the
batch order (the task's ``cohort_key``); they differ in lr, lambda, clipping, warm-up,
epochs and seed. Their weights are the rows of one (runs x parameters) tensor in the
run's format, so one product with the data per step serves every run. The task supplies
the data (:class:`~stability_lab.tasks.logistic.LogisticData`) and the model's math (the
data's loss and gradient with tensor-core products, the initial weights of a seed, the
curvature and the float64 optimum); the engine's one loop (:func:`.loop.fit`) steps the
:class:`Cohort`, whose update is the chain of transforms (:mod:`.transforms`) in its
batched layout: L2, clipping by global norm per run, the lr schedule, the step for the
runs still active. It records per epoch, per run: ``loss``,
``grad_norm``, ``update_norm``, ``weight_norm``, ``update_ratio``, ``nonfinite_weights``,
``nonfinite_grads``, ``max_abs_logit``, ``headroom_log2`` (to the format's max),
``grad_min_headroom_log2`` (smallest non-zero gradient entry over the smallest normal),
``frac_unchanged`` (entries whose intended update rounded away) and ``clip_factor``;
runs of the squared-error loss form also ``frac_saturated`` and ``frac_saturated_wrong``
(probabilities exactly 0 or 1, where its gradient vanishes), and have no Hessian probes
and no float64 optimum (both are the log-loss's). A run stops at its first non-finite
loss, weight or gradient.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from stability_lab.precision import Format
from stability_lab.metrics import COHORT, SQUARED_ERROR_ONLY, metric_names
from stability_lab.spec import RunSpec
from stability_lab.run.loop import Updater, fit
from stability_lab.run.transforms import Rows, Step, for_spec
from stability_lab.tasks.logistic import (
    LogisticData,
    _loss_and_dz,
    _matmul,
    data_objective,
    initial_weights,
    l2_penalty,
    probabilities,
)
from stability_lab.tasks.optimum import optimum_gap
from stability_lab.trace import Trace, environment


def train_cohort(specs: Sequence[RunSpec], prepared: LogisticData) -> list[Trace]:
    """Run a cohort in chunks of at most :func:`chunk_runs` runs (bounded memory);
    every chunk sees the same data and, for mini-batches, the same batch order."""
    import torch

    specs = list(specs)
    size = chunk_runs(prepared.X.shape[0], prepared.fmt)
    out: list[Trace] = []
    for i in range(0, len(specs), size):
        out.extend(_run_chunk(torch, specs[i:i + size], prepared))
    return out


#: memory for a cohort chunk's (n x runs) arrays (logits, loss and gradient terms)
COHORT_BYTES = 512 << 20


def chunk_runs(n: int, fmt: Format) -> int:
    """Runs per cohort chunk: about 8 (n x runs) arrays in the run's format (float32
    for 16-bit formats, where the products accumulate) within :data:`COHORT_BYTES`."""
    itemsize = 8 if fmt.name == "float64" else 4
    return max(1, COHORT_BYTES // (8 * itemsize * max(n, 1)))


def _run_chunk(torch, specs: list[RunSpec], prep: LogisticData) -> list[Trace]:
    """One chunk of a cohort in lockstep, stepped by the engine's one loop."""
    cohort = Cohort(torch, specs, prep)
    fit(cohort, cohort.E)
    return cohort.traces()


class Cohort:
    """The engine's batched mode: the runs of a cohort chunk as the rows of one (runs x
    parameters) tensor; one product with the data per step serves them all. A step is
    an epoch: :meth:`measure` records every run's full objective at its weights (the
    data's loss and gradient from the task, the L2 term from the chain), :meth:`updates`
    yields the step's gradients (the measured one, or one per mini-batch in the seed's
    fixed order) for the chain (clipping, the lr schedule, the step for the runs still
    active), :meth:`finish_step` records the epoch's update metrics."""

    def __init__(self, torch, specs: list[RunSpec], prep: LogisticData) -> None:
        self.torch, self.specs, self.prep = torch, specs, prep
        self.fmt = fmt = prep.fmt
        dtype = fmt.torch_dtype()
        self.R = R = len(specs)
        self.n, self.d = n, d = prep.X.shape
        p = d + 1
        self.base = base = specs[0]
        self.layout = Rows(torch, dtype, p)
        with torch.no_grad():
            self.X = torch.from_numpy(prep.X).to(dtype)  # no copy for float32/float64 runs
            self.y = torch.from_numpy(prep.y64).to(dtype).reshape(n, 1)
            self.W0 = np.stack([initial_weights(s.seed, p) for s in specs])
            self.W = torch.from_numpy(self.W0).to(dtype)  # (R, p): weights then intercept
            self.lam = self.layout.column([s.lam for s in specs])
        self.updater = Updater(for_spec(base, batched_specs=specs), self.W)
        self.epochs = np.array([s.epochs for s in specs])
        self.E = int(self.epochs.max())
        names = metric_names(COHORT)
        self.log_loss = base.loss != "mse"
        if self.log_loss:
            names = tuple(k for k in names if k not in SQUARED_ERROR_ONLY)
        self.names = names
        self.rec = {k: np.full((self.E, R), np.nan) for k in names}
        self.active = np.ones(R, dtype=bool)
        self.stopped_at = self.epochs.copy()  # number of epochs recorded per run
        self.batch = base.batch_size
        self.order_gen = (torch.Generator().manual_seed(int(base.seed) + 7919)
                          if self.batch else None)
        self.index = 0  # the chain's step counter (one per full-batch epoch or mini-batch)

    def _step(self, W, grads, norms=None) -> Step:
        norms = self.layout.norms(grads) if norms is None else norms
        return Step(self.index, self.layout, W, norms, self.active.copy())

    def _regularized(self, W, grads):
        step = Step(self.index + 1, self.layout, W, np.full(self.R, np.nan), self.active.copy())
        return self.updater.regularize(grads, step)

    # -- the loop's protocol ---------------------------------------------------------------
    def measure(self, k: int) -> bool:
        torch, rec, fmt, e, W = self.torch, self.rec, self.fmt, k - 1, self.W
        with torch.no_grad():
            Z, loss, g = data_objective(torch, self.X, self.y, W, fmt, self.base.loss)
            self.g = g = self._regularized(W, g)
            loss_np = (loss.double() + l2_penalty(W, self.lam)).numpy()
            self.Wd = W.double()
            gd = g.double()
            rec["loss"][e] = loss_np
            rec["grad_norm"][e] = gd.norm(dim=1).numpy()
            rec["weight_norm"][e] = self.Wd.norm(dim=1).numpy()
            rec["nonfinite_weights"][e] = (~torch.isfinite(W)).sum(1).numpy()
            rec["nonfinite_grads"][e] = (~torch.isfinite(g)).sum(1).numpy()
            amax = Z.abs().amax(0).double().numpy()
            rec["max_abs_logit"][e] = amax
            if not self.log_loss:
                P = probabilities(torch, Z)
                sat = (P == 0) | (P == 1)
                rec["frac_saturated"][e] = sat.double().mean(0).numpy()
                rec["frac_saturated_wrong"][e] = (sat & (P != self.y)).double().mean(0).numpy()
            # headroom to the format's smallest normal: the smallest non-zero gradient
            # entry, in powers of two above it (negative: it is subnormal)
            ga = gd.abs()
            gmin = torch.where(ga > 0, ga, torch.full_like(ga, math.inf)).amin(1).numpy()
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            rec["headroom_log2"][e] = np.log2(fmt.max / amax)
            rec["grad_min_headroom_log2"][e] = np.log2(gmin / fmt.tiny)
        failed = ~np.isfinite(loss_np) | (rec["nonfinite_weights"][e] > 0) | (
            rec["nonfinite_grads"][e] > 0)
        newly = self.active & failed
        self.stopped_at[newly] = k
        self.active &= ~failed
        return bool(self.active.any())

    def updates(self, k: int):
        torch, fmt, d = self.torch, self.fmt, self.d
        self.Wn = self.W
        if self.batch is None:
            self.index += 1  # the measured gradient, whose norms measure() recorded
            yield self._step(self.W, self.g, self.rec["grad_norm"][k - 1].copy()), self.g
            return
        with torch.no_grad():
            perm = torch.randperm(self.n, generator=self.order_gen)
        for start in range(0, self.n, self.batch):
            with torch.no_grad():
                idx = perm[start:start + self.batch]
                Xb, yb = self.X[idx], self.y[idx]
                Wn = self.Wn
                Zb = _matmul(torch, Xb, Wn[:, :d].T, fmt) + Wn[:, d]
                _, dz = _loss_and_dz(torch, Zb, yb, self.base.loss, len(idx))
                gb = torch.cat([_matmul(torch, dz.T, Xb, fmt), dz.sum(0).reshape(-1, 1)],
                               dim=1)
                self.index += 1
                gb = self._regularized(Wn, gb)
            yield self._step(Wn, gb), gb

    def apply(self, Wn, step: Step) -> None:
        self.Wn, self.info = Wn, step.info

    def finish_step(self, k: int) -> bool:
        torch, rec, e, active = self.torch, self.rec, k - 1, self.active
        with torch.no_grad():
            delta = (self.Wn.double() - self.Wd)
            rec["update_norm"][e] = delta.norm(dim=1).numpy()
            intended = (self.info["lr_rows"] * self.g).double() != 0
            unchanged = (delta == 0) & intended
            with np.errstate(divide="ignore", invalid="ignore"):
                rec["frac_unchanged"][e] = (unchanged.sum(1).double()
                                            / intended.sum(1).clamp(min=1).double()).numpy()
                rec["update_ratio"][e] = rec["update_norm"][e] / rec["weight_norm"][e]
        rec["clip_factor"][e] = self.info["clip_factor"]
        for name in ("update_norm", "update_ratio", "frac_unchanged", "clip_factor"):
            rec[name][e, ~active] = np.nan  # no step taken by runs already stopped
        self.W = self.Wn
        done = active & (self.epochs <= k)
        active &= ~done
        return bool(active.any())

    # -- the traces ---------------------------------------------------------------------
    def traces(self) -> list[Trace]:
        specs, prep, fmt, names = self.specs, self.prep, self.fmt, self.names
        W, W0, rec, stopped_at, log_loss = (self.W, self.W0, self.rec, self.stopped_at,
                                            self.log_loss)
        meta = environment()
        meta["matmul"] = (
            f"{fmt.name} inputs, float32 accumulation, rounded to {fmt.name} "
            "(tensor-core semantics)"
            if fmt.name in ("float16", "bfloat16") else f"native {fmt.name}"
        )
        meta["reduction"] = ("mean over samples accumulated in float32, rounded once (torch's)"
                             if fmt.name in ("float16", "bfloat16") else f"native {fmt.name}")
        meta["elementwise"] = (f"{fmt.name}; numerics primitives compute 16-bit formats in "
                               "float32 and round once")
        meta["probes"] = {"cond_XtX": ("exact: " if prep.spectrum.exact else "estimate: ")
                          + prep.spectrum.method,
                          "hessian": prep.curv.describe()}
        Wf = W.double().numpy()
        lams = np.array([s.lam for s in specs], dtype=np.float64)
        no_probe: list[dict[str, float]] = [{} for _ in specs]
        h_start = prep.curv.hessians(W0, lams) if log_loss else no_probe
        h_end = prep.curv.hessians(Wf, lams) if log_loss else no_probe
        bounds = {lam: prep.curv.bound(lam) for lam in set(lams.tolist())}
        est = ({} if prep.spectrum.exact else
               {"cond_XtX_relative_error": 2 * prep.spectrum.relative_error_bound})
        traces = []
        for r, spec in enumerate(specs):
            k = int(stopped_at[r])
            metrics = {name: rec[name][:k, r].copy() for name in names}
            L = bounds[spec.lam]
            start = {"cond_XtX": prep.cond_gram, **est, "L": L, "lr_bound": 2.0 / L,
                     **h_start[r]}
            end = {"cond_XtX": prep.cond_gram, **est, **h_end[r]}
            trace = Trace(spec=spec, metrics=metrics, probes={"start": start, "end": end},
                          meta=dict(meta), step_unit="epoch", final_params=Wf[r].copy())
            trace.extras["format"] = {"name": fmt.name, "eps": fmt.eps, "max": fmt.max,
                                      "tiny": fmt.tiny}
            if log_loss:
                trace.extras["optimum"] = optimum_gap(prep, spec, Wf[r], W0[r])
            traces.append(trace)
        return traces
