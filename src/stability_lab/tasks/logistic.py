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
from typing import Any, Sequence

import numpy as np

from stability_lab.tasks import datasets

from stability_lab import numerics
from stability_lab.numerics import naive
from stability_lab.linalg.conditioning import DesignSpectrum, _pow2_of, design_spectrum, sym_eigvalsh
from stability_lab.errors import DataError
from stability_lab.precision import FORMATS, Format
from stability_lab.spec import RunSpec
from stability_lab.trace import Trace, environment
from stability_lab.tasks.base import Task

#: initial weights are N(0, (INIT_SCALE^2 / p)) for p parameters: small logits on any data
INIT_SCALE = 1e-3


@dataclass
class Prepared:
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


#: exact Hessian eigenvalues (LAPACK on a k x k matrix) for k = min(n, p) + 1 up to this;
#: Lanczos on Hessian-vector products beyond
EXACT_HESSIAN_LIMIT = 1500
#: rows per block when streaming over the data: block x k float64 at most 32 MiB
_BLOCK_ENTRIES = 1 << 22
#: up to this k, all runs' Hessians come from one product per block (rows x k^2)
_BATCH_K = 64


def _batch_eigvalsh(M: np.ndarray) -> np.ndarray:
    """Ascending eigenvalues of a stack of symmetric matrices; never raises."""
    if np.all(np.isfinite(M)):
        try:
            return np.linalg.eigvalsh(M)
        except np.linalg.LinAlgError:
            pass
    return sym_eigvalsh(M)


class Curvature:
    """Everything the curvature probes need from the design A (n x k1), computed once per
    data variant without any n x k1 x k1 intermediate.

    The probes are eigenvalues of H = A^T diag(c) A / n + lambda P, with c the curvature
    weights (p(1-p) for the Hessian, 1/4 for the bound L) and P the projector onto every
    coordinate but the last (the unpenalized intercept). A is either ``[X, 1]`` (``X``
    given, ``append_ones=True``) or the given matrix itself; it is never formed whole:
    every pass streams over blocks of rows, converted to float64 a block at a time.

    - Tall data (n >= k1): H is formed in the original coordinates, k = k1, by one
      weighted Gram product per block: O(n k^2) time, O(block k + k^2) memory.
    - Wide data (n < k1): S = rowspace(A) + span(e_last) is invariant under H and H is
      lambda I on its complement, so the eigenvalues of H are those of V^T H V (V an
      orthonormal basis of S, k = n + 1 columns, from one Householder QR of [A^T, e])
      and lambda (k1 - k times). O(n^2 k1) time, O(n k1) memory: the 2 x 9,999 case is a
      3 x 3 eigenproblem.

    For k <= ``exact_limit`` the eigenvalues are exact to rounding (LAPACK ``syevd`` on
    the k x k matrix). Beyond, they are estimated by Lanczos (ARPACK ``eigsh``) on
    Hessian-vector products, ``v -> C^T (c * (C v)) / n + lambda (v - q q^T v)`` with C
    the reduced design, O(n k) per product; the estimate's error is the Ritz residual
    ``||H x - theta x||``, a bound on the distance from theta to an eigenvalue of H
    (Parlett, *The Symmetric Eigenvalue Problem*, thm 4.5.1), recorded with it.
    """

    def __init__(self, X: np.ndarray, append_ones: bool = True,
                 exact_limit: int = EXACT_HESSIAN_LIMIT):
        self.X = X
        self.append_ones = append_ones
        n, d = X.shape
        self.n = n
        self.k1 = d + 1 if append_ones else d  # parameters
        self.exact_limit = exact_limit
        #: A is used as A / c (c a power of two, exact; 1 for data in the ordinary
        #: range), so that huge finite features (1e200) cannot overflow the products;
        #: eigenvalues are multiplied back by c^2 (inf where beyond float64)
        self.c = np.float64(max(_pow2_of(X), 1.0))
        if n >= self.k1:
            self.C = None  # the design itself, streamed from X
            self.k = self.k1
            self.q = np.zeros(self.k)
            self.q[-1] = 1.0
            self.basis = "original coordinates"
        else:
            At = np.empty((self.k1, n + 1))
            At[:, :n] = self._design(0, n).T
            At[:, n] = 0.0
            At[-1, n] = 1.0
            R = np.linalg.qr(At, mode="r")  # [A^T, e] = V R: A V = R[:, :n]^T, V^T e = R[:, n]
            self.C = np.ascontiguousarray(R[:, :n].T)
            self.q = R[:, n].copy()
            self.k = n + 1
            self.basis = f"rowspace(A) + intercept direction ({self.k} of {self.k1})"
        self.exact = self.k <= exact_limit
        #: a design that fits in one block is built once and kept
        self._whole = (self._design(0, n) if self.C is None and n * self.k <= _BLOCK_ENTRIES
                       else None)
        self._gram: np.ndarray | None = None
        self._bounds: dict[float, float] = {}

    # -- streaming over the reduced design -------------------------------------------
    def _design(self, i: int, j: int) -> np.ndarray:
        """Rows i:j of A in float64."""
        block = np.asarray(self.X[i:j], dtype=np.float64)
        if self.c != 1.0:
            block = block / self.c
        if not self.append_ones:
            return block
        out = np.empty((block.shape[0], self.k1))
        out[:, :-1] = block
        out[:, -1] = 1.0 / self.c
        return out

    def blocks(self):
        """(start, rows of C) for every block of rows, C = A (tall) or A V (wide)."""
        if self.C is not None or self._whole is not None:
            yield 0, self.C if self.C is not None else self._whole
            return
        rows = max(1, _BLOCK_ENTRIES // self.k)
        for i in range(0, self.n, rows):
            yield i, self._design(i, min(i + rows, self.n))

    def logits(self, W: np.ndarray) -> np.ndarray:
        """A w for every row w of W (R x k1), as an (n, R) float64 array."""
        W = np.asarray(W, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            if self.C is not None:  # wide: V is not kept, so use A itself
                return (self._design(0, self.n) @ W.T) * self.c
            Z = np.empty((self.n, W.shape[0]))
            for i, Cb in self.blocks():
                Z[i:i + len(Cb)] = Cb @ W.T
            return Z * self.c

    def weighted_gram(self, c: np.ndarray | None) -> np.ndarray:
        """C^T diag(c) C / n (c = None: all ones), k x k."""
        M = np.zeros((self.k, self.k))
        for i, Cb in self.blocks():
            if c is None:
                M += Cb.T @ Cb
            else:
                M += (Cb * c[i:i + len(Cb), None]).T @ Cb
        return M / self.n

    def _weighted_grams(self, D: np.ndarray) -> np.ndarray:
        """C^T diag(D[:, j]) C / n for every column j of D: (runs, k, k), from blocks of
        at most _BLOCK_ENTRIES products (never n x k x k)."""
        k = self.k
        M = np.zeros((k * k, D.shape[1]))
        rows = max(1, _BLOCK_ENTRIES // (k * k))
        for i, Cb in self.blocks():
            for a in range(0, len(Cb), rows):
                blk = Cb[a:a + rows]
                outer = (blk[:, :, None] * blk[:, None, :]).reshape(len(blk), k * k)
                M += outer.T @ D[i + a:i + a + len(blk)]
        return np.ascontiguousarray((M / self.n).T).reshape(-1, k, k)

    @property
    def gram(self) -> np.ndarray:
        """C^T C / n (A^T A / n in the reduced coordinates), computed once."""
        if self._gram is None:
            self._gram = self.weighted_gram(None)
        return self._gram

    def _penalty(self, lam: float) -> np.ndarray:
        """lambda P in the scaled reduced coordinates (lambda / c^2)."""
        return (lam / self.c / self.c) * (np.eye(self.k) - np.outer(self.q, self.q))

    # -- eigenvalues ----------------------------------------------------------------
    def _extremes_exact(self, M: np.ndarray, lam: float) -> tuple[float, float]:
        """Extremes of c^2 M (M in the scaled coordinates), with lambda on the
        complement of the invariant subspace for wide data."""
        ev = sym_eigvalsh(M)  # NaN, never a crash, for a matrix that overflowed
        with np.errstate(over="ignore", invalid="ignore"):
            lo, hi = float(ev[0] * self.c * self.c), float(ev[-1] * self.c * self.c)
        if self.k < self.k1:  # lambda on the complement of the invariant subspace
            lo, hi = min(lo, lam), max(hi, lam)
        return lo, hi

    def _operator(self, c: np.ndarray | None, lam: float):
        import scipy.sparse.linalg as sla

        q = self.q

        def matvec(v):
            v = np.ravel(v)
            out = np.zeros(self.k)
            for i, Cb in self.blocks():
                z = Cb @ v
                if c is not None:
                    z = z * c[i:i + len(Cb)]
                out += Cb.T @ z
            return out / self.n + (lam / self.c / self.c) * (v - q * (q @ v))

        return sla.LinearOperator((self.k, self.k), matvec=matvec, dtype=np.float64)

    def _extremes_lanczos(self, c: np.ndarray | None, lam: float,
                          which=("SA", "LA")) -> tuple[dict[str, float], dict[str, float]]:
        """Lanczos estimates of the extremes and their Ritz residuals."""
        import scipy.sparse.linalg as sla

        op = self._operator(c, lam)
        v0 = np.random.default_rng(0).standard_normal(self.k)
        vals, errs = {}, {}
        for w in which:
            try:
                lam_w, vec = sla.eigsh(op, k=1, which=w, tol=1e-8, v0=v0,
                                       maxiter=20 * self.k)
            except sla.ArpackNoConvergence as exc:
                if not len(exc.eigenvalues):
                    vals[w], errs[w] = math.nan, math.nan
                    continue
                lam_w, vec = exc.eigenvalues, exc.eigenvectors
            x = vec[:, 0] / np.linalg.norm(vec[:, 0])
            theta = float(lam_w[0])
            with np.errstate(over="ignore"):
                vals[w] = float(np.float64(theta) * self.c * self.c)
                errs[w] = float(np.linalg.norm(op.matvec(x) - theta * x) * self.c * self.c)
        if self.k < self.k1:
            if "SA" in vals and lam < vals["SA"]:
                vals["SA"], errs["SA"] = lam, 0.0
            if "LA" in vals and lam > vals["LA"]:
                vals["LA"], errs["LA"] = lam, 0.0
        return vals, errs

    def bound(self, lam: float) -> float:
        """L = lambda_max(A^T A / (4 n) + lambda P): the loss's largest curvature."""
        lam = float(lam)
        if lam not in self._bounds:
            if self.exact:
                self._bounds[lam] = self._extremes_exact(self.gram / 4.0 + self._penalty(lam),
                                                         lam)[1]
            else:
                vals, errs = self._extremes_lanczos(np.full(self.n, 0.25), lam, ("LA",))
                # Lanczos converges to lambda_max from below: add the residual, so that
                # 2/L stays a safe step size
                self._bounds[lam] = vals["LA"] + errs["LA"]
        return self._bounds[lam]

    def gram_extremes(self) -> tuple[float, float]:
        """Smallest and largest eigenvalues of A^T A / n."""
        if self.exact:
            return self._extremes_exact(self.gram, 0.0)
        vals, _ = self._extremes_lanczos(None, 0.0)
        return vals["SA"], vals["LA"]

    def hessians(self, W: np.ndarray, lams: np.ndarray) -> list[dict[str, float]]:
        """Extreme eigenvalues of H(w) = A^T diag(p(1-p)) A / n + lambda P for every row
        w of W (lambda from ``lams``), in float64. Non-finite weights give NaN."""
        W = np.asarray(W, dtype=np.float64)
        out = [{"hessian_min": math.nan, "hessian_max": math.nan, "hessian_cond": math.nan}
               for _ in range(len(W))]
        ok = np.flatnonzero(np.all(np.isfinite(W), axis=1))
        if not ok.size:
            return out
        # curvature weights of a group of runs: (n, group) float64 at most 32 MiB
        group = max(1, _BLOCK_ENTRIES // max(self.n, 1))
        for g0 in range(0, ok.size, group):
            rows = ok[g0:g0 + group]
            Z = self.logits(W[rows])
            D = 0.25 * (1.0 - np.tanh(0.5 * Z) ** 2)  # p(1-p) = sigmoid'(z), no overflow
            del Z
            if self.exact and self.k <= _BATCH_K:
                # small k: every run's Hessian from one product per block of rows, the
                # block's (rows x k^2) products A_i A_j times the (rows x runs) weights
                M = self._weighted_grams(D)
                M += (lams[rows, None, None] / self.c / self.c) * (
                    np.eye(self.k) - np.outer(self.q, self.q))
                ev = _batch_eigvalsh(M)
                with np.errstate(over="ignore", invalid="ignore"):
                    ev = ev * self.c * self.c
                for j, r in enumerate(rows):
                    lo, hi = float(ev[j, 0]), float(ev[j, -1])
                    if not hi > 0:
                        # every p(1-p) underflowed: not measurable, not a Hessian of 0
                        out[r]["hessian_note"] = ("not computed: every p(1-p) underflowed "
                                                  "at these weights")
                        continue
                    out[r] = {"hessian_min": lo, "hessian_max": hi,
                              "hessian_cond": hi / lo if lo > 0 else (
                                  math.inf if lo == lo else math.nan)}
                continue
            for j, r in enumerate(rows):
                lam = float(lams[r])
                if self.exact:
                    lo, hi = self._extremes_exact(
                        self.weighted_gram(D[:, j]) + self._penalty(lam), lam)
                    est = {}
                else:
                    vals, errs = self._extremes_lanczos(np.ascontiguousarray(D[:, j]), lam)
                    lo, hi = vals["SA"], vals["LA"]
                    est = {"hessian_min_error": errs["SA"], "hessian_max_error": errs["LA"]}
                if not hi > 0:
                    # every p(1-p) underflowed (logits beyond ~700): the curvature is not
                    # measurable at these weights, not a Hessian of 0 with cond inf
                    out[r]["hessian_note"] = ("not computed: every p(1-p) underflowed at "
                                              "these weights")
                    continue
                out[r] = {"hessian_min": lo, "hessian_max": hi,
                          "hessian_cond": hi / lo if lo > 0 else math.inf, **est}
        return out

    def describe(self) -> str:
        how = ("exact: LAPACK eigenvalues of the k x k matrix" if self.exact else
               "estimate: Lanczos (ARPACK eigsh, tol 1e-8) on Hessian-vector products; "
               "*_error is the Ritz residual, a bound on the distance to an eigenvalue")
        return f"{how}; k = {self.k} ({self.basis})"


def curvature_bound(curv: "Curvature", lam: float) -> float:
    """L = lambda_max(A^T A / (4 n) + lambda P): the loss's largest possible curvature."""
    return curv.bound(lam)


def hessian_extremes(A: np.ndarray, w: np.ndarray, lam: float) -> dict[str, float]:
    """Extreme eigenvalues of H(w) = A^T diag(p(1-p)) A / n + lambda P, in float64, for a
    design A whose last coordinate is not penalized."""
    return Curvature(np.asarray(A), append_ones=False).hessians(w[None, :],
                                                                np.array([lam]))[0]


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
        X = storage(scaled, fmt)
        if not np.all(np.isfinite(X)):
            raise DataError(
                f"Features of {ds.name!r} overflow {fmt.name} after scale={spec.scale} "
                f"(largest |x| = {np.max(np.abs(scaled)):.3g}, "
                f"format max {fmt.max:.3g}); use a smaller scale factor or a wider format."
            )
        del scaled
        return Prepared(ds, X, ds.y, fmt, spec.scale, Curvature(X), design_spectrum(X),
                        spec.data)

    def conditioning(self, prepared: Prepared) -> dict[str, Any]:
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

    def lr_bound(self, spec: RunSpec, prepared: Prepared) -> float:
        """2/L for a spec's data variant and lambda (used to re-bound lr after a fix)."""
        return 2.0 / prepared.curv.bound(spec.lam)

    # -- running ---------------------------------------------------------------------
    def cohort_key(self, spec: RunSpec):
        order_seed = spec.seed if spec.batch_size else None
        return self.data_key(spec) + (spec.loss, spec.batch_size, order_seed, spec.mitigations)

    def run(self, spec: RunSpec, prepared: Prepared) -> Trace:
        return self.run_cohort([spec], prepared)[0]

    def run_cohort(self, specs: Sequence[RunSpec], prepared: Prepared) -> list[Trace]:
        """Run a cohort in chunks of at most :func:`chunk_runs` runs (bounded memory);
        every chunk sees the same data and, for mini-batches, the same batch order."""
        import torch

        specs = list(specs)
        size = chunk_runs(prepared.X.shape[0], prepared.fmt)
        out: list[Trace] = []
        for i in range(0, len(specs), size):
            out.extend(_run_cohort(torch, specs[i:i + size], prepared))
        return out


#: memory for a cohort chunk's (n x runs) arrays (logits, loss and gradient terms)
COHORT_BYTES = 512 << 20


def chunk_runs(n: int, fmt: Format) -> int:
    """Runs per cohort chunk: about 8 (n x runs) arrays in the run's format (float32
    for 16-bit formats, where the products accumulate) within :data:`COHORT_BYTES`."""
    itemsize = 8 if fmt.name == "float64" else 4
    return max(1, COHORT_BYTES // (8 * itemsize * max(n, 1)))


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
    elif bool(((Y == 0) | (Y == 1)).all()):
        per, dz = _fused_hard_labels(torch, Z, Y)
    else:
        per, dz = numerics.log_loss_and_grad(Z, Y)
    return mean_rows(torch, per, n), dz / n


def objective(torch, X, y, W, lam, fmt: Format, loss_form: str = "stable"):
    """Logits (n, R), regularized mean loss (R,) as float64 and gradient (R, p) in the
    format, for the (R, p) weights-then-intercept rows ``W`` and (R, 1) lambdas.

    What torch computes for ``F.binary_cross_entropy_with_logits(X @ w + b, y)`` plus
    (lambda/2)||w||^2 on tensors of the run's format, with tensor-core products for
    16-bit formats (``tests/test_fidelity.py`` holds the two to a stated bound).
    """
    n, d = X.shape
    penal = torch.ones(1, d + 1, dtype=W.dtype)
    penal[0, -1] = 0
    Z = _matmul(torch, X, W[:, :d].T, fmt) + W[:, d]
    loss, dz = _loss_and_dz(torch, Z, y, loss_form, n)
    gW = _matmul(torch, dz.T, X, fmt)
    g = torch.cat([gW, mean_rows(torch, dz, 1).reshape(-1, 1)], dim=1) + lam * penal * W
    wsq = (W[:, :d].double() ** 2).sum(1)
    loss = loss.double() + 0.5 * lam.double().reshape(-1) * wsq
    return Z, loss, g


def _f_and_grad(A: np.ndarray, y: np.ndarray, w: np.ndarray, lam: float):
    """The regularized mean log-loss and its gradient in float64 (stable forms)."""
    n = A.shape[0]
    with np.errstate(all="ignore"):
        z = A @ w
        f = float(np.mean(np.logaddexp(0.0, z) - y * z)) + 0.5 * lam * float(w[:-1] @ w[:-1])
        p = 0.5 * (1.0 + np.tanh(0.5 * z))
        g = A.T @ (p - y) / n
        g[:-1] += lam * w[:-1]
    return (f if math.isfinite(f) else math.inf), g


def _design(prep: Prepared) -> np.ndarray:
    """A = [X, 1] of a data variant, built once."""
    A = prep.__dict__.get("_A")
    if A is None:
        A = prep.__dict__["_A"] = np.hstack([prep.X64, np.ones((prep.X64.shape[0], 1))])
    return A


def optimum(prep: Prepared, lam: float) -> dict[str, Any]:
    """The float64 optimum of a data variant's regularized loss (cached per lambda).

    Newton's method with backtracking (p <= 400 parameters), else scipy's L-BFGS, both
    in float64 on the features the runs see. ``attained`` is False when the iteration
    did not reach a gradient norm of 1e-10 of the initial one (at lambda 0 a separable
    data set has no minimizer: the loss falls toward 0 as the weights grow).
    """
    cache = prep.__dict__.setdefault("_optima", {})
    if lam in cache:
        return cache[lam]
    A = _design(prep)
    y = prep.y64
    n, p = A.shape
    w = np.zeros(p)
    f0, g0 = _f_and_grad(A, y, w, lam)
    g0n = _l2(g0)
    goal = 1e-10 * max(g0n, 1e-300)
    method, it = ("newton" if p <= 400 else "lbfgs"), 0
    f, g = f0, g0
    if method == "newton":
        P = np.eye(p)
        P[-1, -1] = 0.0  # the intercept is not penalized
        for it in range(1, 101):
            if _l2(g) <= goal:
                break
            z = A @ w
            D = 0.25 * (1.0 - np.tanh(0.5 * z) ** 2)
            with np.errstate(over="ignore", invalid="ignore"):
                H = (A.T * D) @ A / n + lam * P
            if not np.all(np.isfinite(H)):
                # features near float64's maximum: the Hessian overflows, so no Newton
                # step exists; L-BFGS needs only gradients
                method = "lbfgs"
                break
            try:
                step = np.linalg.solve(H + 1e-14 * np.trace(H) / p * np.eye(p), g)
            except np.linalg.LinAlgError:
                step = np.full(p, np.nan)
            if not np.all(np.isfinite(step)):
                try:
                    step = np.linalg.lstsq(H, g, rcond=None)[0]
                except np.linalg.LinAlgError:
                    break
                if not np.all(np.isfinite(step)):
                    break
            # the Newton decrement g^T H^-1 g / 2 is the decrease a full step predicts:
            # below f's rounding no line search can see progress (each iteration would
            # halve t 30-40 times for nothing: 2,917 loss evaluations, 35 s, on a
            # 100,000 x 50 variant), so the iteration has gone as far as float64 allows
            if 0.5 * float(g @ step) <= 4.0 * np.finfo(float).eps * max(abs(f), 1e-300):
                break
            t = 1.0
            while t > 1e-12:
                fn, gn = _f_and_grad(A, y, w - t * step, lam)
                if fn <= f - 1e-4 * t * float(g @ step):
                    break
                t *= 0.5
            if t <= 1e-12:
                break
            w = w - t * step
            f, g = fn, gn
    if method == "lbfgs":
        from scipy.optimize import minimize

        res = minimize(lambda v: _f_and_grad(A, y, v, lam), w, jac=True, method="L-BFGS-B",
                       options={"maxiter": 5000, "gtol": goal, "ftol": 1e-16, "maxcor": 30})
        w = res.x
        it = int(res.nit)
        f, g = _f_and_grad(A, y, w, lam)
    gn = _l2(g)
    out = {"loss": f, "grad_norm": gn, "w": w, "attained": bool(gn <= 1e3 * goal),
           "method": method, "iterations": it, "initial_grad_norm": g0n}
    cache[lam] = out
    return out


def _l2(v: np.ndarray) -> float:
    """The 2-norm without overflow in its squares (a diverged run's gradient reaches
    1e160): :func:`stability_lab.numerics.l2_norm`, as a float."""
    return float(numerics.l2_norm(v))


def optimum_gap(prep: Prepared, spec: RunSpec, w_final: np.ndarray,
                w_start: np.ndarray) -> dict[str, Any]:
    """How far a run's final weights are from the float64 optimum, and the tolerance
    its format allows (``extras['optimum']``, read by the verdict).

    Tolerances (u the format's unit roundoff): the gradient norm in float64 at the
    final weights must be at most max(gtol, sqrt(u)) (gtol = 1e-3) of the initial one,
    or twice the gradient at the optimum rounded to the format, ||grad f(fl(w*))|| ~
    u lambda_max ||w*|| (u times the curvature: what storing the answer costs); the loss
    gap f(w) - f* at most max(1e-6, 16 u) f*, or twice f(fl(w*)) - f* ~ u^2 w*^T H w* / 2.
    """
    opt = optimum(prep, spec.lam)
    A = _design(prep)
    u = prep.fmt.unit_roundoff
    info: dict[str, Any] = {"optimum_loss": opt["loss"], "attained": opt["attained"],
                            "method": opt["method"], "iterations": opt["iterations"]}
    if not np.all(np.isfinite(w_final)):
        info["final_finite"] = False
        return info
    f_s, g_s = _f_and_grad(A, prep.y64, w_start, spec.lam)
    f_t, g_t = _f_and_grad(A, prep.y64, w_final, spec.lam)
    w_fmt = round_to(opt["w"], prep.fmt)
    f_r, g_r = _f_and_grad(A, prep.y64, w_fmt, spec.lam)
    gtol = max(1e-3, math.sqrt(prep.fmt.eps))
    tol_g = max(gtol * _l2(g_s), 2.0 * _l2(g_r))
    tol_f = max(max(1e-6, 16 * u) * abs(opt["loss"]), 2.0 * max(f_r - opt["loss"], 0.0),
                1e-12 * abs(f_s))
    info.update({"final_finite": True, "final_loss64": f_t,
                 "gap": f_t - opt["loss"], "grad_norm64": _l2(g_t),
                 "initial_grad_norm64": _l2(g_s),
                 "tol_gap": tol_f, "tol_grad": tol_g,
                 "rounded_optimum_gap": f_r - opt["loss"],
                 "rounded_optimum_grad": _l2(g_r)})
    return info


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


def _run_cohort(torch, specs: list[RunSpec], prep: Prepared) -> list[Trace]:
    fmt = prep.fmt
    dtype = fmt.torch_dtype()
    R = len(specs)
    n, d = prep.X.shape
    p = d + 1
    base = specs[0]
    with torch.no_grad():
        X = torch.from_numpy(prep.X).to(dtype)  # no copy for float32/float64 runs
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
            return objective(torch, X, y, Wc, lam, fmt, base.loss)

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
    h_start = prep.curv.hessians(W0, lams)
    h_end = prep.curv.hessians(Wf, lams)
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
        trace.extras["optimum"] = optimum_gap(prep, spec, Wf[r], W0[r])
        traces.append(trace)
    return traces


def predicted_digits(trace: Trace) -> float:
    """Digits the format carries, less log10 of the Hessian's condition at the end."""
    fmt = FORMATS[trace.spec.precision]
    hc = trace.probes.get("end", {}).get("hessian_cond", float("nan"))
    if not (isinstance(hc, float) and math.isfinite(hc) and hc > 0):
        return float("nan")
    return max(0.0, fmt.digits - math.log10(hc))
