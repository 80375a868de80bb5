"""Curvature of the regularized logistic loss, in float64, at any size.

:class:`Curvature` gives what the lab judges a logistic run's lr and conditioning
against: the bound L on the loss's largest curvature (so 2/L is the stability bound of
gradient descent), the extremes of X^T X / n, and the Hessian's extreme eigenvalues at
chosen weights for many runs at once (exact up to :data:`EXACT_HESSIAN_LIMIT`
parameters, Lanczos on Hessian-vector products beyond), streaming over the data in
blocks so a million rows never form an n x k copy.
"""

from __future__ import annotations

import math

import numpy as np

from stability_lab.linalg.conditioning import _pow2_of, sym_eigvalsh

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

    def _weighted_grams_by_run(self, D: np.ndarray) -> np.ndarray:
        """C^T diag(D[:, j]) C / n for every column j of D, (runs, k, k): one k x k
        product per run and block, each block of the design formed once for all runs
        (the same sums as :meth:`weighted_gram` of each column)."""
        M = np.zeros((D.shape[1], self.k, self.k))
        for i, Cb in self.blocks():
            d = D[i:i + len(Cb)]
            for j in range(D.shape[1]):
                M[j] += (Cb * d[:, j, None]).T @ Cb
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
            small = self.n * self.k * self.k <= _BLOCK_ENTRIES
            if self.exact and self.k <= _BATCH_K and small:
                # small data: every run's Hessian from one product per block of rows, the
                # block's (rows x k^2) products A_i A_j times the (rows x runs) weights
                # (one GEMM for all runs; on larger data forming the n x k^2 products
                # costs more than a k x k GEMM per run: 0.97 s against 0.045 s for two
                # runs on 100,000 x 51)
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
            grams = self._weighted_grams_by_run(D) if self.exact else None
            for j, r in enumerate(rows):
                lam = float(lams[r])
                if grams is not None:
                    lo, hi = self._extremes_exact(grams[j] + self._penalty(lam), lam)
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
