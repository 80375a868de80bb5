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
  float64) the loss is inf and the gradient NaN (inf * 0);
- ``mse``: the squared error of the sigmoid output, (p - y)^2 / 2, with gradient
  (p - y) p (1 - p): a classifier whose gradient vanishes once p rounds to exactly 0 or
  1, so a sample saturated on the wrong side is never corrected. Its runs also record
  ``frac_saturated`` (samples with p exactly 0 or 1) and ``frac_saturated_wrong`` (those
  on the wrong side), and carry no Hessian probes and no float64 optimum: both are the
  log-loss's. The bound 2/L stays a safe step size: the squared error's curvature in z,
  sigmoid'^2 + (p - y) sigmoid'', is at most 1/16 + 0.097 < 1/4.

Precision: parameters, data and elementwise arithmetic are in the run's format. For
float16 and bfloat16 the matrix products use the semantics of GPU tensor cores:
inputs in the low format, products accumulated in float32, result rounded once to the
format (torch's CPU float16 matmul is about 600 times slower than float32 here).
Reductions follow torch's: the mean loss over samples accumulates 16-bit values in
float32 and rounds once (what ``F.binary_cross_entropy_with_logits(..., reduction='mean')``
does), and the gradient of the mean is the element-wise gradient divided by n in the
format, as torch's backward does. The element-wise loss and gradient are computed in
float32 and rounded once (torch rounds after each of its few element-wise ops: the two
differ by a few units in the last place; ``tests/test_fidelity.py`` states the bound).
The ``naive`` loss form deliberately differs from torch: it reproduces the textbook
sigmoid-then-log graph, whose log(1 - p) torch's fused loss never computes.

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
from typing import Any

import numpy as np

from stability_lab.tasks import datasets

from stability_lab import numerics
from stability_lab.numerics import naive
from stability_lab.linalg.conditioning import DesignSpectrum, design_spectrum
from stability_lab.errors import DataError
from stability_lab.precision import FORMATS, Format
from stability_lab.spec import RunSpec
from stability_lab.trace import Trace
from stability_lab.tasks.base import Task
from stability_lab.tasks.curvature import Curvature

#: initial weights are N(0, (INIT_SCALE^2 / p)) for p parameters: small logits on any data
INIT_SCALE = 1e-3


@dataclass
class LogisticData:
    dataset: datasets.Dataset
    #: the features the run sees, once, in the run's storage type: float64 or float32
    #: arrays as such; float16/bfloat16 values (rounded to the format) held in float32
    X: np.ndarray
    y64: np.ndarray
    fmt: Format
    scale: str
    #: the curvature probes' view of A = [X, 1] (Hessian extremes, 2/L)
    curv: "Curvature"
    #: the extreme singular values of X (cond(X^T X))
    spectrum: DesignSpectrum
    #: the --data value the variant came from
    source: str = ""

    @property
    def variant(self) -> str:
        return f"{self.dataset.name} scale={self.scale} {self.fmt.name}"

    @property
    def X64(self) -> np.ndarray:
        """The features as float64 (a copy unless the run is in float64)."""
        return np.asarray(self.X, dtype=np.float64)

    @property
    def cond_gram(self) -> float:
        return self.spectrum.cond_gram

    @property
    def feature_eig(self) -> np.ndarray:
        """[smallest, largest] eigenvalue of X^T X / n (0 when X has more columns than
        rows): what the L2 recommendation needs of the features' Gram matrix."""
        n, d = self.X.shape
        s = np.array([self.spectrum.sigma_min if n >= d else 0.0, self.spectrum.sigma_max])
        with np.errstate(over="ignore"):
            return s * s / n  # inf beyond float64


def round_to(X: np.ndarray, fmt: Format) -> np.ndarray:
    """Round float64 values to a format and back (what the run sees), as float64."""
    return np.asarray(storage(X, fmt), dtype=np.float64)


def storage(X: np.ndarray, fmt: Format) -> np.ndarray:
    """X rounded to a format, in the smallest NumPy type that holds it exactly: float64
    for float64, float32 for the others (float16 and bfloat16 values are exact in
    float32). One copy at most; none when X already has that type."""
    if fmt.name == "float64":
        return np.asarray(X, dtype=np.float64)
    X32 = np.asarray(X, dtype=np.float32)
    if fmt.name == "float32":
        return X32
    import torch

    t = torch.from_numpy(X32 if X32 is not X else X32.copy())
    return t.to(fmt.torch_dtype()).to(torch.float32).numpy()


class LogisticRegression(Task):
    kind = "cohort"  # trained by the engine's batched loop (stability_lab.run.cohort)
    name = "logistic_regression"

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

    def prepare(self, spec: RunSpec, dataset: datasets.Dataset | None = None) -> LogisticData:
        ds = dataset if dataset is not None else self.load_dataset(spec)
        fmt = FORMATS[spec.precision]
        scaled = datasets.scale_features(ds.X, spec.scale)
        X = storage(scaled, fmt)
        if not np.all(np.isfinite(X)):
            raise DataError(
                f"Features of {ds.name!r} overflow {fmt.name} after scale={spec.scale} "
                f"(largest |x| = {np.max(np.abs(scaled)):.3g}, "
                f"format max {fmt.max:.3g}); use a smaller scale factor or a wider format."
            )
        del scaled
        return LogisticData(ds, X, ds.y, fmt, spec.scale, Curvature(X), design_spectrum(X),
                        spec.data)

    def conditioning(self, prepared: LogisticData) -> dict[str, Any]:
        lo, hi = prepared.curv.gram_extremes()
        out = {
            "cond_XtX": prepared.cond_gram,
            "gram_eig_max": hi,
            "gram_eig_min": lo,
            "n": prepared.dataset.n,
            "d": prepared.dataset.d,
        }
        if not prepared.spectrum.exact:
            out["cond_XtX_relative_error"] = 2 * prepared.spectrum.relative_error_bound
        return out

    def lr_bound(self, spec: RunSpec, prepared: LogisticData) -> float:
        """2/L for a spec's data variant and lambda (used to re-bound lr after a fix)."""
        return 2.0 / prepared.curv.bound(spec.lam)

    # -- running ---------------------------------------------------------------------
    def cohort_key(self, spec: RunSpec):
        order_seed = spec.seed if spec.batch_size else None
        return self.data_key(spec) + (spec.loss, spec.batch_size, order_seed)


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


def mean_rows(torch, per, n: int):
    """The mean over samples (dim 0) the way torch's ``mean`` reduces each format.

    torch accumulates float16/bfloat16 reductions in float32 and rounds the mean once
    (``reduction='mean'`` of its losses is this mean): summing 100,000 float16 losses
    of 0.69 in float16 would give inf (65504 is the format's max), which no PyTorch
    training run sees. float32/float64 reduce in their own format.
    """
    if per.dtype in (torch.float16, torch.bfloat16):
        return (per.float().sum(0) / n).to(per.dtype)
    return per.sum(0) / n


def _loss_and_dz(torch, Z, Y, loss_form: str, n: int):
    """Per-run mean loss (R,) and dL/dZ (n, R), in Z's format.

    The mean is torch's (:func:`mean_rows`: float32 accumulation for 16-bit formats);
    dL/dZ is the element-wise gradient divided by n in the format, as torch's backward
    of ``reduction='mean'`` does.
    """
    if loss_form == "naive":
        per, dz = naive.log_loss_and_grad(Z, Y)
    elif loss_form == "mse":
        per, dz = _squared_error(torch, Z, Y)
    elif bool(((Y == 0) | (Y == 1)).all()):
        per, dz = _fused_hard_labels(torch, Z, Y)
    else:
        per, dz = numerics.log_loss_and_grad(Z, Y)
    return mean_rows(torch, per, n), dz / n


def probabilities(torch, Z):
    """sigmoid(Z) as the run's format holds it: computed in float32 for 16-bit formats
    and rounded once, as a 16-bit ``torch.sigmoid`` does. Returned in the compute type
    (float32 for 16-bit formats)."""
    x = Z.float() if Z.dtype in (torch.float16, torch.bfloat16) else Z
    return torch.sigmoid(x).to(Z.dtype).to(x.dtype)


def _squared_error(torch, Z, Y):
    """Per-sample (p - y)^2 / 2 and its gradient in z, (p - y) p (1 - p), with p the
    format's sigmoid (:func:`probabilities`); 16-bit formats computed in float32 and
    rounded once. Exactly 0 where p is exactly 0 or 1: saturation."""
    p = probabilities(torch, Z)
    r = p - Y.to(p.dtype)
    return (0.5 * r * r).to(Z.dtype), (r * p * (1.0 - p)).to(Z.dtype)


def objective(torch, X, y, W, lam, fmt: Format, loss_form: str = "stable"):
    """Logits (n, R), regularized mean loss (R,) as float64 and gradient (R, p) in the
    format, for the (R, p) weights-then-intercept rows ``W`` and (R, 1) lambdas.

    What torch computes for ``F.binary_cross_entropy_with_logits(X @ w + b, y)`` plus
    (lambda/2)||w||^2 on tensors of the run's format, with tensor-core products for
    16-bit formats (``tests/test_fidelity.py`` holds the two to a stated bound).
    """
    d = X.shape[1]
    penal = torch.ones(1, d + 1, dtype=W.dtype)
    penal[0, -1] = 0
    Z, loss, g = data_objective(torch, X, y, W, fmt, loss_form)
    return Z, loss.double() + l2_penalty(W, lam), g + lam * penal * W


def data_objective(torch, X, y, W, fmt: Format, loss_form: str = "stable"):
    """Logits (n, R), the data's mean loss (R,) in the format and its gradient (R, p) in
    the format, for the (R, p) weights-then-intercept rows ``W``: the model's part of
    the objective; the L2 term is the engine's (:func:`l2_penalty` and the
    ``add_l2`` transform of :mod:`stability_lab.run.transforms`)."""
    n, d = X.shape
    Z = _matmul(torch, X, W[:, :d].T, fmt) + W[:, d]
    loss, dz = _loss_and_dz(torch, Z, y, loss_form, n)
    gW = _matmul(torch, dz.T, X, fmt)
    return Z, loss, torch.cat([gW, mean_rows(torch, dz, 1).reshape(-1, 1)], dim=1)


def l2_penalty(W, lam):
    """(lambda/2)||w||^2 per row of ``W`` (weights, not the intercept), in float64,
    added to the data's loss (as float64) for the objective's value; ``lam`` is the
    (R, 1) tensor of lambdas in the format."""
    wsq = (W[:, :-1].double() ** 2).sum(1)
    return 0.5 * lam.double().reshape(-1) * wsq


#: |x| above which exp(-|x|) is subnormal, and above which it is 0, per dtype
_EXP_LIMITS = {"float32": (87.0, 105.0), "float64": (708.0, 746.0)}


def _exp_neg(torch, ax):
    """exp(-ax) for ax >= 0, the same values as ``torch.exp(-ax)``, without the x86
    subnormal slow path on every element: the exponential is taken on ax clamped to
    the normal range, results beyond it are 0 (exp underflows to 0 past the second
    limit) and only the elements in the subnormal band are recomputed exactly."""
    normal, zero = _EXP_LIMITS[str(ax.dtype).replace("torch.", "")]
    e = torch.exp(-ax.clamp(max=normal))
    big = ax > normal  # NaN compares False: NaN stays NaN from the clamp's NaN
    if bool(big.any()):
        e = e.masked_fill(big, 0.0)
        band = big & (ax < zero)
        if bool(band.any()):
            e[band] = torch.exp(-ax[band])
    return e


def _fused_hard_labels(torch, Z, Y):
    """``numerics.log_loss_and_grad``'s hard-label path, in torch's vectorized kernels:
    with e = exp(-|z|), s = 1 - 2t and u = s z, the loss is max(u, 0) + log1p(e) and the
    gradient s (1 if u >= 0 else e) / (1 + e): no cancellation, a saturated logit keeps
    its tiny gradient; 16-bit formats computed in float32 and rounded once. The same
    formulas as the NumPy kernel (tested against it); torch's exp and log1p may differ
    from NumPy's in the last bit."""
    x = Z.float() if Z.dtype in (torch.float16, torch.bfloat16) else Z
    t = Y.to(x.dtype)
    e = _exp_neg(torch, x.abs())
    s = 1.0 - 2.0 * t
    u = x * s
    loss = u.clamp_min(0.0).add_(torch.log1p(e))
    grad = torch.where(u >= 0, torch.ones_like(e), e).div_(e.add(1.0)).mul_(s)
    return loss.to(Z.dtype), grad.to(Z.dtype)


def predicted_digits(trace: Trace) -> float:
    """Digits the format carries, less log10 of the Hessian's condition at the end."""
    fmt = FORMATS[trace.spec.precision]
    hc = trace.probes.get("end", {}).get("hessian_cond", float("nan"))
    if not (isinstance(hc, float) and math.isfinite(hc) and hc > 0):
        return float("nan")
    return max(0.0, fmt.digits - math.log10(hc))
