"""Binary logistic regression by gradient descent, run in lockstep cohorts.

Model: p(y=1 | x) = sigmoid(x.w + b). Loss: the mean log-loss plus (lambda/2)||w||^2
(the intercept b is not penalized). Optimizer: gradient descent, full batch by default
or with mini-batches (``batch_size``), with optional clipping of the gradient to a
global norm.

Loss forms (the ``loss`` axis):

- ``stable``: the fused log-loss, softplus(z) - y z, with gradient sigmoid(z) - y, both
  from :mod:`stability_lab.numerics` (no overflow for any finite logit);
- ``naive``: the textbook p = 1/(1 + exp(-z)), then -log p for y = 1 and -log(1 - p) for
  y = 0, and the gradient by the chain rule through p, exactly what autograd computes
  on that graph: once p rounds to 1 on a y = 0 sample (z > 16.6 in float32, 36.7 in
  float64) the loss is inf and the gradient NaN (inf * 0).

Precision: parameters, data and elementwise arithmetic are in the run's format. For
float16 and bfloat16 the matrix products use the semantics of GPU tensor cores:
inputs in the low format, products accumulated in float32, result rounded once to the
format (torch's CPU float16 matmul is about 600 times slower than float32 here).

Cohorts: the specs of one cohort share the data variant, loss form and, for
mini-batches, the seed (which fixes the batch order). Their weights are stacked into a
(runs x features) matrix and every step does one matrix product for all of them;
lr, lambda, clip and epochs are per-run vectors, and a run is frozen (masked) from
the epoch it fails. A cohort of one is the one-at-a-time path, so both agree.

Per-epoch metrics, per run: loss, gradient/update/weight norms, update-to-weight ratio,
non-finite counts in weights and gradients, the largest |logit|, the headroom to the
format's max (``headroom_log2 = log2(max / max|logit|)``) and to its smallest normal
(``grad_min_headroom_log2``: the smallest non-zero gradient entry, in powers of two
above it), the fraction of weights a non-zero update left unchanged, the clip factor.

Probes (float64, on the data the run sees, i.e. scaled and rounded to its format):
cond(X^T X) of the features; the extreme eigenvalues of the Hessian of the
regularized loss, H(w) = A^T diag(p(1-p)) A / n + lambda P with A = [X, 1] and P the
projector onto the weights, at the start and at the end; and the step-size bound 2/L
with L = lambda_max(A^T A / (4 n) + lambda P), the largest curvature the loss can
have anywhere (p(1-p) <= 1/4). Gradient descent with lr < 2/L cannot diverge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .. import datasets, numerics
from ..numerics import naive
from ..conditioning import gram_condition, pow2_scale, sym_eigvalsh
from ..errors import DataError
from ..precision import FORMATS, Format
from ..spec import RunSpec
from ..trace import Trace, environment
from .base import Task

#: initial weights are N(0, (INIT_SCALE^2 / p)) for p parameters: small logits on any data
INIT_SCALE = 1e-3


@dataclass
class Prepared:
    dataset: datasets.Dataset
    X64: np.ndarray  # the features the run sees, as float64
    y64: np.ndarray
    fmt: Format
    scale: str
    gram: np.ndarray  # A^T A / n with A = [X, 1], float64
    cond_gram: float
    #: the --data value the variant came from
    source: str = ""

    @property
    def variant(self) -> str:
        return f"{self.dataset.name} scale={self.scale} {self.fmt.name}"


def round_to(X: np.ndarray, fmt: Format) -> np.ndarray:
    """Round float64 values to a format and back (what the run sees)."""
    if fmt.name == "float64":
        return X
    if fmt.name == "float32":
        return X.astype(np.float32).astype(np.float64)
    import torch

    return torch.from_numpy(X).to(fmt.torch_dtype()).to(torch.float64).numpy()


def curvature_bound(gram: np.ndarray, lam: float) -> float:
    """L = lambda_max(A^T A / (4 n) + lambda P): the loss's largest possible curvature."""
    if not np.all(np.isfinite(gram)):  # A^T A / n overflowed: so does its top eigenvalue
        return math.inf
    H = gram / 4.0
    H = H + lam * _penalty(gram.shape[0])
    return float(sym_eigvalsh(H)[-1])


def _penalty(p: int) -> np.ndarray:
    P = np.eye(p)
    P[-1, -1] = 0.0  # the intercept is not penalized
    return P


def hessian_extremes(A: np.ndarray, w: np.ndarray, lam: float) -> dict[str, float]:
    """Extreme eigenvalues of H(w) = A^T diag(p(1-p)) A / n + lambda P, in float64."""
    return hessian_extremes_batch(A, w[None, :], np.array([lam]))[0]


def design_outer(A: np.ndarray) -> np.ndarray:
    """The (n, p*p) matrix of products A[k, i] A[k, j] that every Hessian is built from."""
    n, p = A.shape
    return (A[:, :, None] * A[:, None, :]).reshape(n, p * p)


def hessian_extremes_batch(A: np.ndarray, W: np.ndarray, lams: np.ndarray,
                           outer: np.ndarray | None = None) -> list[dict[str, float]]:
    """:func:`hessian_extremes` for many weight vectors (rows of W) at once.

    All Hessians come from one matrix product: the (p*p, n) matrix of products
    A[k, i] A[k, j] (``outer``, :func:`design_outer` of A, built here if not given)
    times the (n, R) curvature weights p(1-p).
    """
    n, p = A.shape
    ok = np.all(np.isfinite(W), axis=1)
    out = [{"hessian_min": float("nan"), "hessian_max": float("nan"),
            "hessian_cond": float("nan")} for _ in range(len(W))]
    if not ok.any():
        return out
    with np.errstate(over="ignore", invalid="ignore"):
        Z = A @ W[ok].T
        D = 0.25 * (1.0 - np.tanh(0.5 * Z) ** 2)  # p(1-p) = sigmoid'(z), without overflow
    # huge finite features (1e200) would overflow the products A[k, i] A[k, j]: the
    # Hessians are then formed from A / c (c a power of two, exact) and scaled back
    c = max(pow2_scale(A), 1.0)  # only scaled down, never up
    if outer is None or c != 1.0:
        outer = design_outer(A / c)
    H = (outer.T @ D / n).T.reshape(-1, p, p) + (lams[ok, None, None] / c / c) * _penalty(p)
    ev = sym_eigvalsh(H)  # of H / c^2
    for k, r in enumerate(np.flatnonzero(ok)):
        lo, hi = float(ev[k, 0]), float(ev[k, -1])
        with np.errstate(over="ignore", invalid="ignore"):
            cond = hi / lo if lo > 0 else (float("inf") if lo == lo else float("nan"))
            out[r] = {"hessian_min": lo * c * c, "hessian_max": hi * c * c,
                      "hessian_cond": cond}
    return out


def gram_eigenvalues(prepared: "Prepared") -> np.ndarray:
    """Ascending eigenvalues of A^T A / n, A = [X, 1]; never raises on finite data.

    Where A^T A / n overflowed (features near 1e200), they come from the singular values
    of A / c (c a power of two): s^2 c^2 / n, inf where that exceeds float64.
    """
    gram = prepared.gram
    if np.all(np.isfinite(gram)):
        return sym_eigvalsh(gram)
    A = np.hstack([prepared.X64, np.ones((prepared.X64.shape[0], 1))])
    c = pow2_scale(A)
    s = np.linalg.svd(A / c, compute_uv=False)
    with np.errstate(over="ignore"):
        return np.sort((s * c) ** 2 / A.shape[0])


class LogisticRegression(Task):
    name = "logistic_regression"
    supports_cohort = True

    # -- data ----------------------------------------------------------------------
    def data_key(self, spec: RunSpec):
        return self.dataset_key(spec) + (spec.scale, spec.precision)

    def dataset_key(self, spec: RunSpec):
        """What :meth:`load_dataset` reads: the engine loads it once for every variant."""
        return (spec.data, spec.target, spec.param("kappa"))

    def load_dataset(self, spec: RunSpec) -> datasets.Dataset:
        ds = datasets.load(spec.data, spec.target, spec.param("kappa"))
        if len(ds.classes) > 2 and spec.data == "digits":
            # the built-in digits become a binary task: is the digit odd?
            y = (ds.y % 2 == 1).astype(np.float64)
            ds = datasets.Dataset(ds.name, ds.X, y, ds.feature_names,
                                  f"{ds.target_name} is odd", ["even", "odd"])
        elif len(ds.classes) > 2:
            raise DataError(
                f"Target column {ds.target_name!r} of {ds.name!r} has {len(ds.classes)} "
                f"classes ({', '.join(ds.classes[:5])}{', ...' if len(ds.classes) > 5 else ''})"
                "; logistic_regression is binary: keep two classes in the CSV."
            )
        return ds

    def prepare(self, spec: RunSpec, dataset: datasets.Dataset | None = None) -> Prepared:
        ds = dataset if dataset is not None else self.load_dataset(spec)
        fmt = FORMATS[spec.precision]
        scaled = datasets.scale_features(ds.X, spec.scale)
        X = round_to(scaled, fmt)
        if not np.all(np.isfinite(X)):
            raise DataError(
                f"Features of {ds.name!r} overflow {fmt.name} after scale={spec.scale} "
                f"(largest |x| = {np.max(np.abs(scaled)):.3g}, "
                f"format max {fmt.max:.3g}); use a smaller scale factor or a wider format."
            )
        A = np.hstack([X, np.ones((X.shape[0], 1))])
        with np.errstate(over="ignore"):  # inf where X^T X overflows: probes use X / c
            gram = A.T @ A / A.shape[0]
        return Prepared(ds, X, ds.y, fmt, spec.scale, gram, gram_condition(X), spec.data)

    def conditioning(self, prepared: Prepared) -> dict[str, Any]:
        ev = gram_eigenvalues(prepared)
        return {
            "cond_XtX": prepared.cond_gram,
            "gram_eig_max": float(ev[-1]),
            "gram_eig_min": float(ev[0]),
            "n": prepared.dataset.n,
            "d": prepared.dataset.d,
        }

    def lr_bound(self, spec: RunSpec, prepared: Prepared) -> float:
        """2/L for a spec's data variant and lambda (used to re-bound lr after a fix)."""
        return 2.0 / curvature_bound(prepared.gram, spec.lam)

    # -- running ---------------------------------------------------------------------
    def cohort_key(self, spec: RunSpec):
        order_seed = spec.seed if spec.batch_size else None
        return self.data_key(spec) + (spec.loss, spec.batch_size, order_seed, spec.mitigations)

    def run(self, spec: RunSpec, prepared: Prepared) -> Trace:
        return self.run_cohort([spec], prepared)[0]

    def run_cohort(self, specs: Sequence[RunSpec], prepared: Prepared) -> list[Trace]:
        import torch

        return _run_cohort(torch, list(specs), prepared)


def initial_weights(seed: int, p: int) -> np.ndarray:
    """Initial [w, b] for a seed: N(0, INIT_SCALE^2 / p), drawn in float64."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    w = torch.randn(p, generator=gen, dtype=torch.float64) * (INIT_SCALE / math.sqrt(p))
    return w.numpy()


def _matmul(torch, a, b, fmt: Format):
    """Tensor-core semantics for 16-bit formats: fp32 accumulation, one rounding."""
    if fmt.name in ("float16", "bfloat16"):
        return torch.matmul(a.float(), b.float()).to(a.dtype)
    return torch.matmul(a, b)


def _loss_and_dz(torch, Z, Y, loss_form: str, n: int):
    """Per-run mean loss (R,) and dL/dZ (n, R), in Z's format."""
    if loss_form == "naive":
        per, dz = naive.log_loss_and_grad(Z, Y)
    else:
        per, dz = numerics.log_loss_and_grad(Z, Y)
    return per.sum(0) / n, dz / n


def _run_cohort(torch, specs: list[RunSpec], prep: Prepared) -> list[Trace]:
    fmt = prep.fmt
    dtype = fmt.torch_dtype()
    R = len(specs)
    n, d = prep.X64.shape
    p = d + 1
    base = specs[0]
    with torch.no_grad():
        X = torch.from_numpy(prep.X64).to(dtype)
        y = torch.from_numpy(prep.y64).to(dtype).reshape(n, 1)
        W0 = np.stack([initial_weights(s.seed, p) for s in specs])
        W = torch.from_numpy(W0).to(dtype)  # (R, p): weights then intercept
        lr = torch.tensor([s.lr for s in specs], dtype=torch.float64).to(dtype).reshape(R, 1)
        lam = torch.tensor([s.lam for s in specs], dtype=torch.float64).to(dtype).reshape(R, 1)
        penal = torch.ones(1, p, dtype=dtype)
        penal[0, -1] = 0
        clip = np.array([s.clip if s.clip else np.inf for s in specs])
        epochs = np.array([s.epochs for s in specs])
        E = int(epochs.max())
        names = ("loss", "grad_norm", "update_norm", "weight_norm", "update_ratio",
                 "nonfinite_weights", "nonfinite_grads", "max_abs_logit", "headroom_log2",
                 "grad_min_headroom_log2", "frac_unchanged", "clip_factor")
        rec = {k: np.full((E, R), np.nan) for k in names}
        active = np.ones(R, dtype=bool)
        stopped_at = epochs.copy()  # number of epochs recorded per run
        batch = base.batch_size
        order_gen = torch.Generator().manual_seed(int(base.seed) + 7919) if batch else None

        def full_grad(Wc):
            Z = _matmul(torch, X, Wc[:, :d].T, fmt) + Wc[:, d]
            loss, dz = _loss_and_dz(torch, Z, y, base.loss, n)
            gW = _matmul(torch, dz.T, X, fmt)
            g = torch.cat([gW, dz.sum(0).reshape(-1, 1)], dim=1) + lam * penal * Wc
            wsq = (Wc[:, :d].double() ** 2).sum(1)
            loss = loss.double() + 0.5 * lam.double().reshape(-1) * wsq
            return Z, loss, g

        def step(Wc, g, mask):
            gn = g.double().norm(dim=1).numpy()
            with np.errstate(divide="ignore", invalid="ignore"):
                factor = np.where(gn > clip, clip / gn, 1.0)
            factor_t = torch.from_numpy(factor).to(dtype).reshape(R, 1)
            upd = lr * (g * factor_t if np.any(factor < 1) else g)
            Wn = Wc - upd
            Wn = torch.where(torch.from_numpy(mask).reshape(R, 1), Wn, Wc)
            return Wn, upd, factor

        for e in range(E):
            Z, loss, g = full_grad(W)
            loss_np = loss.numpy()
            Wd = W.double()
            gd = g.double()
            rec["loss"][e] = loss_np
            rec["grad_norm"][e] = gd.norm(dim=1).numpy()
            rec["weight_norm"][e] = Wd.norm(dim=1).numpy()
            rec["nonfinite_weights"][e] = (~torch.isfinite(W)).sum(1).numpy()
            rec["nonfinite_grads"][e] = (~torch.isfinite(g)).sum(1).numpy()
            amax = Z.abs().amax(0).double().numpy()
            rec["max_abs_logit"][e] = amax
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
                Wn, upd, factor = step(W, g, active)
            else:
                Wn = W
                perm = torch.randperm(n, generator=order_gen)
                factor = np.ones(R)
                for start in range(0, n, batch):
                    idx = perm[start:start + batch]
                    Xb, yb = X[idx], y[idx]
                    Zb = _matmul(torch, Xb, Wn[:, :d].T, fmt) + Wn[:, d]
                    _, dz = _loss_and_dz(torch, Zb, yb, base.loss, len(idx))
                    gb = torch.cat([_matmul(torch, dz.T, Xb, fmt), dz.sum(0).reshape(-1, 1)],
                                   dim=1) + lam * penal * Wn
                    Wn, _, factor = step(Wn, gb, active)
            delta = (Wn.double() - Wd)
            rec["update_norm"][e] = delta.norm(dim=1).numpy()
            intended = (lr * g).double() != 0
            unchanged = (delta == 0) & intended
            with np.errstate(divide="ignore", invalid="ignore"):
                rec["frac_unchanged"][e] = (unchanged.sum(1).double()
                                            / intended.sum(1).clamp(min=1).double()).numpy()
                rec["update_ratio"][e] = rec["update_norm"][e] / rec["weight_norm"][e]
            rec["clip_factor"][e] = factor
            for name in ("update_norm", "update_ratio", "frac_unchanged", "clip_factor"):
                rec[name][e, ~active] = np.nan  # no step taken by runs already stopped
            W = Wn
            done = active & (epochs <= e + 1)
            active &= ~done
            if not active.any():
                break

    A = np.hstack([prep.X64, np.ones((n, 1))])
    meta = environment()
    meta["matmul"] = (
        f"{fmt.name} inputs, float32 accumulation, rounded to {fmt.name} (tensor-core semantics)"
        if fmt.name in ("float16", "bfloat16") else f"native {fmt.name}"
    )
    meta["elementwise"] = (f"{fmt.name}; numerics primitives compute 16-bit formats in "
                           "float32 and round once")
    Wf = W.double().numpy()
    lams = np.array([s.lam for s in specs], dtype=np.float64)
    # shared by the start and end Hessians (built there, from A / c, for huge data)
    outer = design_outer(A) if pow2_scale(A) <= 1.0 else None
    h_start = hessian_extremes_batch(A, W0, lams, outer)
    h_end = hessian_extremes_batch(A, Wf, lams, outer)
    bounds = {lam: curvature_bound(prep.gram, lam) for lam in set(lams.tolist())}
    traces = []
    for r, spec in enumerate(specs):
        k = int(stopped_at[r])
        metrics = {name: rec[name][:k, r].copy() for name in names}
        L = bounds[spec.lam]
        start = {"cond_XtX": prep.cond_gram, "L": L, "lr_bound": 2.0 / L, **h_start[r]}
        end = {"cond_XtX": prep.cond_gram, **h_end[r]}
        trace = Trace(spec=spec, metrics=metrics, probes={"start": start, "end": end},
                      meta=dict(meta), step_unit="epoch", final_params=Wf[r].copy())
        trace.extras["format"] = {"name": fmt.name, "eps": fmt.eps, "max": fmt.max,
                                  "tiny": fmt.tiny}
        traces.append(trace)
    return traces


def predicted_digits(trace: Trace) -> float:
    """Digits the format carries, less log10 of the Hessian's condition at the end."""
    fmt = FORMATS[trace.spec.precision]
    hc = trace.probes.get("end", {}).get("hessian_cond", float("nan"))
    if not (isinstance(hc, float) and math.isfinite(hc) and hc > 0):
        return float("nan")
    return max(0.0, fmt.digits - math.log10(hc))
