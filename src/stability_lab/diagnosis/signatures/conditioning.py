"""Ill-posed numbers: ``catastrophic_cancellation``, ``ill_conditioned_blowup`` and
``rank_deficiency``.

These read context that the data pipeline, the task or the scenario attaches, and are
silent without it:

- ``catastrophic_cancellation``: ``probes['data']``: the variance's relative error
  ``variance_rel_error`` >= 1e-2, or a negative variance.
- ``ill_conditioned_blowup``: the weight norm is at least 1e6 times the reference norm
  (``probes['reference']``, or 1e6 absolute) with a finite, non-growing loss and
  cond(X) >= 1e8 (``probes['start']``: ``cond_X``, or the square root of ``cond_XtX``).
- ``rank_deficiency``: ``probes['design']`` rank < columns (or, without it, the task's
  ``cond_XtX`` probe >= 1e26), with lambda below 1e-8.
"""

from __future__ import annotations

import math

import numpy as np

from stability_lab.diagnosis.findings import Finding
from stability_lab.diagnosis.signatures.base import Playbook, Signature
from stability_lab.diagnosis.signatures.common import (entry, example_trace, growing,
                                                       healthy_loss, number, probe,
                                                       trace_format)
from stability_lab.precision import FORMATS
from stability_lab.trace import Trace


def detect_cancellation(trace: Trace) -> list[Finding]:
    data = entry(trace.probes, "data")
    if not data or "variance_rel_error" not in data:
        return []
    err = float(data["variance_rel_error"])
    negative = int(data.get("negative_variances", 0) or 0)
    if not (err >= 1e-2 or negative > 0 or not math.isfinite(err)):
        return []
    ratio = data.get("max_mean_over_std")
    fmt = FORMATS.get(str(data.get("format", "")), trace_format(trace))
    bound = fmt.unit_roundoff * float(ratio) ** 2 if ratio is not None else None
    evidence = {"variance_rel_error": err, "negative_variances": negative,
                "max_mean_over_std": ratio, "predicted_rel_error": bound,
                "method": data.get("variance_method"), "format": fmt.name,
                "column": data.get("worst_column")}
    digits = -math.log10(err) if err > 0 and math.isfinite(err) else 0.0
    return [Finding(
        "catastrophic_cancellation", data.get("onset"),
        f"the {data.get('variance_method', 'computed')} variance is off by {number(err)} "
        f"relative ({max(digits, 0):.1f} digits right, {negative} negative) in {fmt.name}: "
        f"|mean|/std reaches {number(ratio)}, so u (mean/std)^2 = {number(bound)}",
        evidence, "error")]


def detect_blowup(trace: Trace) -> list[Finding]:
    wn = trace.metric("weight_norm")
    if np.isfinite(wn).any():
        last = float(wn[np.isfinite(wn)][-1])
    else:
        last = probe(trace, "end", "weight_norm")
    if last is None or not math.isfinite(last):
        return []
    loss = trace.metric("loss")
    if loss.size and (not np.all(np.isfinite(loss)) or growing(loss)):
        return []  # divergence/overflow are reported by their own detectors
    ref = probe(trace, "reference", "weight_norm")
    limit = 1e6 * max(1.0, ref or 1.0)
    cond_x = probe(trace, "start", "cond_X")
    if cond_x is None:
        cxx = probe(trace, "start", "cond_XtX")
        cond_x = math.sqrt(cxx) if cxx is not None and cxx >= 0 else None
    if last < limit or cond_x is None or cond_x < 1e8:
        return []
    evidence = {"weight_norm": last, "reference_weight_norm": ref, "cond_X": cond_x,
                "limit": limit, "max_abs_prediction": probe(trace, "end", "max_abs_prediction")}
    ref_text = f" (the identifiable fit has {ref:.3g})" if ref else ""
    return [Finding(
        "ill_conditioned_blowup", trace.n_steps or None,
        f"weight norm {last:.3g}{ref_text} with cond(X) = {cond_x:.3g}: the solver divided by "
        f"rounding noise in near-zero singular values",
        evidence, "error")]


def detect_rank_deficiency(trace: Trace) -> list[Finding]:
    design = entry(trace.probes, "design") or {}
    rank, cols = design.get("rank"), design.get("columns")
    cond = probe(trace, "start", "cond_XtX")
    lam = float(trace.spec.lam or 0.0)
    deficient = False
    if rank is not None and cols is not None:
        deficient = int(rank) < int(cols)
    elif cond is not None:
        deficient = not math.isfinite(cond) or cond >= 1e26
    # a penalty far below rounding of the Gram matrix does not pin the null space
    if not deficient or lam >= 1e-8:
        return []
    evidence = {"rank": rank, "columns": cols, "cond_XtX": cond,
                "null_space": design.get("null_space"), "lambda": lam,
                "constant_columns": design.get("constant_columns"),
                "duplicate_columns": design.get("duplicate_columns")}
    what = (f"rank {rank} < {cols} columns" if rank is not None
            else f"cond(X^T X) = {number(cond)}")
    hint = f" ({design['null_space']})" if design.get("null_space") else ""
    return [Finding(
        "rank_deficiency", None,
        f"the design is rank-deficient: {what}{hint}; with lambda = 0 the weights along the "
        f"null space are whatever the initialization left there",
        evidence, "warning")]


# -- hand-made traces ----------------------------------------------------------------------
def _one_pass_variance_off_by_half() -> Trace:
    data = {"variance_rel_error": 0.5, "max_mean_over_std": 1e5, "format": "float32"}
    return example_trace(healthy_loss(), probes={"data": data})


def _two_pass_variance() -> Trace:
    data = {"variance_rel_error": 1e-7, "max_mean_over_std": 1e5, "format": "float32"}
    return example_trace(healthy_loss(), probes={"data": data})


def _solve_probes(rank: int) -> dict:
    return {"start": {"cond_X": 1e15}, "reference": {"weight_norm": 3.0},
            "design": {"rank": rank, "columns": 16}}


def _weights_1e13_from_a_near_singular_solve() -> Trace:
    return example_trace([0.05], probes=_solve_probes(16), weight_norm=[1e13],
                         step_unit="solve")


def _identifiable_weights() -> Trace:
    return example_trace([0.05], probes=_solve_probes(16), weight_norm=[3.1],
                         step_unit="solve")


def _rank_13_of_16_columns() -> Trace:
    return example_trace([0.05], probes=_solve_probes(13), weight_norm=[3.1],
                         step_unit="solve")


CATASTROPHIC_CANCELLATION = Signature(
    name="catastrophic_cancellation",
    description="subtracting nearly equal numbers (E[x^2] - E[x]^2 when |mean| >> std) loses "
                "all digits",
    detect=detect_cancellation,
    applies_to="all",
    playbook=Playbook(
        symptom="standardized features with wildly wrong (even negative) variances; with "
                "the square root guarded, sqrt(max(var, 0) + eps), some features come out "
                "hundreds of times too large and the training run downstream diverges "
                "(unguarded, it goes NaN)",
        cause="E[x^2] and E[x]^2 agree to more digits than float32 carries (relative error of "
              "the difference ~ u (mean/std)^2 = 6e-8 x 1e10), so their difference is rounding "
              "noise",
        fixes=("use the two-pass (or Welford) variance: same cost class, exact to rounding",
               "compute the statistics in float64 (still one-pass: only moves the limit)"),
    ),
    mitigations=(),
    no_mitigation="the cancellation happens in the data pipeline before training (a "
                  "one-pass variance), which no change of the run spec reaches; the fix is "
                  "the two-pass variance in that pipeline",
    scenario="catastrophic_cancellation",
    fires_on=_one_pass_variance_off_by_half,
    silent_on=_two_pass_variance,
)

ILL_CONDITIONED_BLOWUP = Signature(
    name="ill_conditioned_blowup",
    description="huge weights from a near-singular design: the fit looks fine, predictions "
                "do not",
    detect=detect_blowup,
    applies_to="all",
    playbook=Playbook(
        symptom="training residuals look normal but the weights are ~1e12 and predictions on "
                "a new category are absurd (exp() of them overflows)",
        cause="the design is exactly rank-deficient; its smallest singular values are "
              "rounding noise ~eps s_max, and a cutoff below them divides by that noise",
        fixes=("use the default pinv/lstsq cutoff (max(n, p) eps s_max) or an explicit rank",
               "drop a reference level per categorical feature",
               "add a small ridge penalty"),
    ),
    mitigations=("add_l2",),
    scenario="ill_conditioned_blowup",
    fires_on=_weights_1e13_from_a_near_singular_solve,
    silent_on=_identifiable_weights,
)

RANK_DEFICIENCY = Signature(
    name="rank_deficiency",
    description="constant or duplicated columns (dummy-variable trap): the weights are not "
                "identifiable",
    detect=detect_rank_deficiency,
    applies_to="all",
    playbook=Playbook(
        symptom="the loss converges, but the weights change with the seed and split "
                "arbitrarily between the duplicated columns; cond(X^T X) is infinite",
        cause="a duplicated or constant column (with the intercept) makes [X, 1] "
              "rank-deficient: directions in its null space do not change the loss, so "
              "nothing pins the weights",
        fixes=("drop the duplicated/constant columns (or one reference level per one-hot "
               "feature)",
               "add a small L2 penalty (makes the solution unique)"),
    ),
    mitigations=("add_l2",),
    scenario="rank_deficiency",
    fires_on=_rank_13_of_16_columns,
    silent_on=_identifiable_weights,
)
