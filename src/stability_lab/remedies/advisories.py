"""Advisories: what a sweep should know even when every run converged.

``near_singular_design``: columns that are nearly linear combinations of each other.
For each data variant (data source and feature scale) of a linear-model sweep, the
features are standardized (so that mere units do not count: that is the
``scale_features`` recommendation's business) and the condition number of their Gram
matrix cond(X^T X) is taken. Each format keeps about -log10(cond * u) digits of the
coefficients along the worst direction. The advisory fires when

- cond(X^T X) of the standardized features is at least ``MIN_COND`` (1e4), and
- fewer than ``FEW_DIGITS`` (2) digits survive in float32, cond * u > 10^-2 with u
  float32's unit roundoff (a float64 run that would keep no digit in float32 is fragile;
  a 16-bit run's format problems are the ``higher_precision`` recommendation's), and
- the measured digits confirm it: the coefficients of the near-dependent columns,
  refitted in float64 after a relative perturbation of the features of size u, agree
  with the unperturbed fit to fewer than ``CONFIRM_DIGITS`` (3) digits.

The near-dependent columns are read from the right singular vectors of the smallest
singular values (entries of at least 30% of the vector's largest), named as in the
data. The fixes: drop or merge one of those columns, or an L2 penalty with the lambda
that brings cond(X^T X / n + lambda I) of the run's features under 10^-4 / u (four
digits), verified by refitting with that lambda under the same perturbation.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np

from stability_lab.linalg.conditioning import sym_eigvalsh
from stability_lab.precision import FORMATS

MIN_COND = 1e4
FEW_DIGITS = 2.0
CONFIRM_DIGITS = 3.0
RESTORE_DIGITS = 4.0
#: refits only when the design is at most this many entries (n * p) and columns
MAX_REFIT_ENTRIES = 20_000_000
MAX_REFIT_COLUMNS = 400


def _digits(a: np.ndarray, b: np.ndarray) -> float:
    """Digits to which a agrees with b (LRE in the norm, capped at 15.95)."""
    with np.errstate(over="ignore", invalid="ignore"):
        nb = float(np.linalg.norm(b))
        err = float(np.linalg.norm(a - b))
    if not math.isfinite(err) or nb == 0:
        return 0.0
    if err == 0:
        return 15.95
    return float(min(15.95, max(0.0, -math.log10(err / nb))))


def _fit(X: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray | None:
    from stability_lab.tasks.optimum import optimum

    opt = optimum(SimpleNamespace(X64=X, y64=y), lam)
    if not opt["attained"]:
        return None
    return opt["w"][:-1]


def near_singular(variant, formats: list[str]) -> dict[str, Any] | None:
    """The near-singular-design advisory of one logistic data variant, or None."""
    from stability_lab.tasks import datasets
    from stability_lab.remedies.recommend import _l2_for_eigenvalues

    ds = variant.dataset
    X = datasets.scale_features(ds.X, variant.scale)
    if not np.all(np.isfinite(X)):
        return None  # non-finite features are the conditioning probe's finding, not ours
    # standardizing is invariant to a column's scale: divide each column by a power of
    # two near its largest magnitude first (exact), so that values near float64's
    # maximum (1e200, 1e308) neither overflow the mean nor the variance
    col = np.max(np.abs(X), axis=0)
    c2 = np.ones_like(col)
    big = col > 0
    c2[big] = np.ldexp(1.0, np.frexp(col[big])[1] - 1)
    Xs = X / c2
    sd = Xs.std(axis=0)
    keep = sd > 0
    if keep.sum() < 2:
        return None
    if keep.sum() >= len(X):
        # at least as many columns as rows: after centring X^T X is exactly singular, a
        # rank deficiency (the rank_deficiency finding), not a near-dependence; and its
        # p x p Gram matrix would take O(p^2) memory (2 x 9,999: 2.4 GB)
        return None
    Z = (Xs[:, keep] - Xs[:, keep].mean(axis=0)) / sd[keep]
    try:
        s, Vt = np.linalg.svd(Z / math.sqrt(len(Z)), full_matrices=False)[1:]
    except np.linalg.LinAlgError:
        return None
    if s[-1] <= 0:
        cond = math.inf
    else:
        cond = float((s[0] / s[-1]) ** 2)
    if cond < MIN_COND:
        return None
    us = []
    for name in formats:
        fmt = FORMATS.get(name)
        if fmt is None:
            continue
        # float32 for float64/float32 runs; a 16-bit run's format problems are the
        # higher_precision recommendation's business, not a property of the design
        us.append(FORMATS["float32"].unit_roundoff)
    if not us:
        return None
    u = max(us)
    predicted = -math.log10(cond * u) if math.isfinite(cond) else -math.inf
    if predicted >= FEW_DIGITS:
        return None
    names = [str(n) for n, k in zip(ds.feature_names, keep) if k] or [
        f"x{i}" for i in range(Z.shape[1])]
    # the near-dependent columns: the big entries of the smallest singular vectors
    cols: list[int] = []
    for i in range(len(s) - 1, -1, -1):
        if s[i] <= 0 or (s[0] / s[i]) ** 2 * u >= 10 ** -FEW_DIGITS:
            v = np.abs(Vt[i])
            for j in np.flatnonzero(v >= 0.3 * v.max()):
                if int(j) not in cols:
                    cols.append(int(j))
        else:
            break
    column_names = [names[j] for j in cols]
    # the fix by L2: lambda bringing cond(X^T X / n + lambda I) under 10^-4 / u
    Xr = X[:, keep]
    # the centred Gram's eigenvalues, from the power-of-two-scaled columns (exact) and
    # sym_eigvalsh (never raises; beyond float64's range an eigenvalue is inf)
    Xc = Xs[:, keep] - Xs[:, keep].mean(axis=0)
    sc = c2[keep]
    with np.errstate(over="ignore", invalid="ignore"):
        ev = sym_eigvalsh((Xc * sc).T @ (Xc * sc) / len(Xc))
    if np.all(np.isfinite(ev)):
        lam: float | None = float(f"{_l2_for_eigenvalues(ev, 10 ** -RESTORE_DIGITS / u):.2g}")
    else:
        lam = None  # X^T X itself overflows float64: no lambda in range restores digits
    out: dict[str, Any] = {
        "kind": "near_singular_design", "data": variant.source or ds.name,
        "scale": variant.scale, "cond_XtX_standardized": cond, "unit_roundoff": u,
        "predicted_digits": predicted, "columns": column_names, "lambda": lam,
        "formats": formats,
    }
    n, p = Xr.shape
    if n * p <= MAX_REFIT_ENTRIES and p <= MAX_REFIT_COLUMNS and lam is not None:
        # (lam is None: X^T X overflows, so would the refit's Hessian)
        rng = np.random.default_rng(0)
        Xp = Xr * (1.0 + u * rng.uniform(-1.0, 1.0, size=Xr.shape))
        y = variant.y64 if hasattr(variant, "y64") else ds.y
        base, pert = _fit(Xr, y, 0.0), _fit(Xp, y, 0.0)
        if base is not None and pert is not None:
            idx = [keep.nonzero()[0].tolist().index(j) for j in np.flatnonzero(keep)[cols]]
            out["measured_digits"] = _digits(pert[idx], base[idx])
            b2, p2 = _fit(Xr, y, lam), _fit(Xp, y, lam)
            if b2 is not None and p2 is not None:
                out["digits_with_lambda"] = _digits(p2[idx], b2[idx])
        if out.get("measured_digits", 0.0) >= CONFIRM_DIGITS:
            return None  # the fit is not as fragile as the condition number says
        out["verified"] = "measured_digits" in out
    else:
        out["verified"] = False
    out["text"] = _text(out)
    return out


def _text(a: dict[str, Any]) -> str:
    cols = a["columns"]
    shown = ", ".join(repr(c) for c in cols[:6]) + (f" and {len(cols) - 6} more"
                                                    if len(cols) > 6 else "")
    fmt = "float32" if a["unit_roundoff"] == FORMATS["float32"].unit_roundoff else (
        "the runs' format")
    text = (f"near-singular design: columns {shown} are nearly linearly dependent "
            f"(cond(X^T X) = {a['cond_XtX_standardized']:.2g} after standardizing: "
            f"{max(a['predicted_digits'], 0):.1f} digits of their coefficients survive in "
            f"{fmt}); their coefficients are not identifiable")
    if "measured_digits" in a:
        text += (f": refitted after a relative perturbation of {a['unit_roundoff']:.2g} "
                 f"they keep {a['measured_digits']:.1f} digits")
    if a["lambda"] is None:
        return text + (". Fix: drop or merge one of these columns (no L2 lambda helps: "
                       "X^T X overflows float64; rescale the features)")
    text += (f". Fix: drop or merge one of these columns, or add L2 lambda >= "
             f"{a['lambda']:g}")
    if "digits_with_lambda" in a:
        text += f" (keeps {a['digits_with_lambda']:.1f} digits under the same perturbation)"
    else:
        text += " (not verified: the design is too large to refit)"
    return text


def advisories(result) -> list[dict[str, Any]]:
    """Every advisory of a sweep (logistic-regression data variants)."""
    prepared = getattr(result, "prepared", None)
    if prepared is None:
        return []
    seen: dict[tuple, tuple[Any, list[str]]] = {}
    ran = {(r.spec.data, r.spec.scale) for r in result.results}
    for (task_name, _key), variant in prepared.variants.items():
        if task_name != "logistic_regression" or not hasattr(variant, "dataset"):
            continue
        key = (variant.source, variant.scale)
        if key not in ran:
            continue  # a variant only the recommendations looked at
        entry = seen.setdefault(key, (variant, []))
        if variant.fmt.name not in entry[1]:
            entry[1].append(variant.fmt.name)
    out = []
    for variant, formats in seen.values():
        adv = near_singular(variant, formats)
        if adv is not None:
            out.append(adv)
    return out
