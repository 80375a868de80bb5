"""The engine's batched mode: a cohort of linear-model runs trained in lockstep.

The specs of a cohort share the data variant, the precision, the loss form and the
batch order (the task's ``cohort_key``); they differ in lr, lambda, clipping, epochs and
seed. Their weights are the rows of one (runs x parameters) tensor in the run's format,
so one product with the data per step serves every run. The task supplies the data
(:class:`~stability_lab.tasks.logistic.LogisticData`), the model's math (the objective and
its gradient with tensor-core products, the initial weights of a seed, the curvature and
the float64 optimum); this loop does the stepping (clipping by global norm per run, the
lr step, masking the runs that stopped) and records per epoch, per run: ``loss``,
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
    """One chunk of a cohort in lockstep: the runs' weights are the rows of one
    (runs x parameters) tensor; one product with the data per step serves them all.
    The update is the engine's chain of transforms (:mod:`.transforms`) in its batched
    layout: L2, clipping, the lr schedule, then the step for the runs still active."""
    fmt = prep.fmt
    dtype = fmt.torch_dtype()
    R = len(specs)
    n, d = prep.X.shape
    p = d + 1
    base = specs[0]
    layout = Rows(torch, dtype, p)
    steps = for_spec(base, batched_specs=specs)
    with torch.no_grad():
        X = torch.from_numpy(prep.X).to(dtype)  # no copy for float32/float64 runs
        y = torch.from_numpy(prep.y64).to(dtype).reshape(n, 1)
        W0 = np.stack([initial_weights(s.seed, p) for s in specs])
        W = torch.from_numpy(W0).to(dtype)  # (R, p): weights then intercept
        lam = layout.column([s.lam for s in specs])
        epochs = np.array([s.epochs for s in specs])
        E = int(epochs.max())
        names = metric_names(COHORT)
        log_loss = base.loss != "mse"
        if log_loss:
            names = tuple(k for k in names if k not in SQUARED_ERROR_ONLY)
        rec = {k: np.full((E, R), np.nan) for k in names}
        active = np.ones(R, dtype=bool)
        stopped_at = epochs.copy()  # number of epochs recorded per run
        batch = base.batch_size
        order_gen = torch.Generator().manual_seed(int(base.seed) + 7919) if batch else None
        reg_state = steps.regularize.init(W)
        state = steps.update.init(W)
        index = 0  # the chain's step counter (one per full-batch epoch or mini-batch)

        def regularized(Wc, g, index):
            step = Step(index, layout, Wc, np.full(R, np.nan), active.copy())
            return steps.regularize.update(g, reg_state, step)[0]

        def update(Wc, g, index):
            nonlocal state
            step = Step(index, layout, Wc, layout.norms(g), active.copy())
            Wn, state = steps.update.update(g, state, step)
            return Wn, step.info

        for e in range(E):
            Z, loss, g = data_objective(torch, X, y, W, fmt, base.loss)
            g = regularized(W, g, index + 1)
            loss_np = (loss.double() + l2_penalty(W, lam)).numpy()
            Wd = W.double()
            gd = g.double()
            rec["loss"][e] = loss_np
            rec["grad_norm"][e] = gd.norm(dim=1).numpy()
            rec["weight_norm"][e] = Wd.norm(dim=1).numpy()
            rec["nonfinite_weights"][e] = (~torch.isfinite(W)).sum(1).numpy()
            rec["nonfinite_grads"][e] = (~torch.isfinite(g)).sum(1).numpy()
            amax = Z.abs().amax(0).double().numpy()
            rec["max_abs_logit"][e] = amax
            if not log_loss:
                P = probabilities(torch, Z)
                sat = (P == 0) | (P == 1)
                rec["frac_saturated"][e] = sat.double().mean(0).numpy()
                rec["frac_saturated_wrong"][e] = (sat & (P != y)).double().mean(0).numpy()
            # headroom to the format's smallest normal: the smallest non-zero gradient
            # entry, in powers of two above it (negative: it is subnormal)
            ga = gd.abs()
            gmin = torch.where(ga > 0, ga, torch.full_like(ga, math.inf)).amin(1).numpy()
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                rec["headroom_log2"][e] = np.log2(fmt.max / amax)
                rec["grad_min_headroom_log2"][e] = np.log2(gmin / fmt.tiny)
            failed = ~np.isfinite(loss_np) | (rec["nonfinite_weights"][e] > 0) | (
                rec["nonfinite_grads"][e] > 0)
            newly = active & failed
            stopped_at[newly] = e + 1
            active &= ~failed
            if not active.any():
                break
            if batch is None:
                index += 1
                Wn, info = update(W, g, index)
            else:
                Wn = W
                perm = torch.randperm(n, generator=order_gen)
                for start in range(0, n, batch):
                    idx = perm[start:start + batch]
                    Xb, yb = X[idx], y[idx]
                    Zb = _matmul(torch, Xb, Wn[:, :d].T, fmt) + Wn[:, d]
                    _, dz = _loss_and_dz(torch, Zb, yb, base.loss, len(idx))
                    gb = torch.cat([_matmul(torch, dz.T, Xb, fmt), dz.sum(0).reshape(-1, 1)],
                                   dim=1)
                    index += 1
                    Wn, info = update(Wn, regularized(Wn, gb, index), index)
            delta = (Wn.double() - Wd)
            rec["update_norm"][e] = delta.norm(dim=1).numpy()
            intended = (layout.column(info["lr"]) * g).double() != 0
            unchanged = (delta == 0) & intended
            with np.errstate(divide="ignore", invalid="ignore"):
                rec["frac_unchanged"][e] = (unchanged.sum(1).double()
                                            / intended.sum(1).clamp(min=1).double()).numpy()
                rec["update_ratio"][e] = rec["update_norm"][e] / rec["weight_norm"][e]
            rec["clip_factor"][e] = info["clip_factor"]
            for name in ("update_norm", "update_ratio", "frac_unchanged", "clip_factor"):
                rec[name][e, ~active] = np.nan  # no step taken by runs already stopped
            W = Wn
            done = active & (epochs <= e + 1)
            active &= ~done
            if not active.any():
                break

    meta = environment()
    meta["matmul"] = (
        f"{fmt.name} inputs, float32 accumulation, rounded to {fmt.name} (tensor-core semantics)"
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
