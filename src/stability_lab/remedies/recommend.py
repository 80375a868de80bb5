"""Recommendations from evidence, with numbers.

A rule reads the diagnosed runs of a sweep and returns :class:`Recommendation` s. A
recommendation fires only when its evidence holds, and it carries the numbers: the
action (a spec change the verifier can apply and re-run with the same seed), the
reason, and the runs it is for. Rules are registered in :data:`RULES`; tasks add
their own with :func:`register_rule`.

Rules for the linear tasks:

- ``scale_features``: a run on raw or factor-scaled features failed or did not
  converge, cond(X^T X) >= 1e6, and standardizing lowers it at least 10-fold.
- ``lower_lr``: a run diverged, overflowed, went NaN or oscillated with lr above the
  bound 2/L (L the largest curvature of the regularized loss). Says the largest safe lr.
- ``add_l2``: a failing run's cond(X^T X) is near-singular for its format
  (cond * u >= 0.01) and its lambda is below the value that brings
  cond(X^T X / n + lambda I) under 0.01 / u; says that lambda. It does not fire when
  that lambda would exceed 1% of the largest eigenvalue of X^T X / n (the penalty
  would swamp the data: the format, not the regularization, is the problem).
- ``fused_logloss``: a naive-loss run went non-finite while its matched stable-loss run
  (everything else equal) did not.
- ``higher_precision``: a low-precision run failed while its matched float64 run did
  not: compute in float32/float64 or keep fp32 master weights.
- ``clip``: a run diverged with a gradient norm more than 100 times its initial value
  and clipping off; clip at the initial gradient norm.
- ``raise_lr``: a run stagnated (its updates fell below half an ulp of its weights) at
  an lr below ``RAISE_BELOW`` (1/10) of the stability bound 2/L: raise lr to half of
  2/L, the largest step that still keeps a safety factor of 2 (larger steps make
  larger updates, which the format can represent).
"""

from __future__ import annotations

import math

import numpy as np

from stability_lab.diagnosis.record import RunResult
from stability_lab.remedies.rules import (
    RULES,
    Context,
    Recommendation,
    _ids,
    _unhealthy,
    register_rule,
    safe_lr,
)
from stability_lab.formatting import round_sig, sci
from stability_lab.precision import FORMATS
from stability_lab.spec import format_value


def recommend(ctx: Context) -> list[Recommendation]:
    """Every recommendation whose evidence holds, in registration order."""
    out: list[Recommendation] = []
    for rule in RULES:
        out.extend(rule(ctx))
    return out


@register_rule
def scale_features(ctx: Context) -> list[Recommendation]:
    out = []
    by_source: dict[str, list[RunResult]] = {}
    for r in ctx.results:
        if r.spec.scale != "standardized" and _unhealthy(r) and "cond_XtX" in r.trace.probes.get(
                "start", {}):
            by_source.setdefault(r.spec.data, []).append(r)
    for source, runs in by_source.items():
        before = max(r.trace.probes["start"]["cond_XtX"] for r in runs)
        after = ctx.standardized_cond.get(source)
        if after is None or not (math.isfinite(before) and before >= 1e6
                                 and after * 10 <= before):
            continue
        rescued = [r for r in runs if (m := ctx.matched(r, scale="standardized")) and m.healthy]
        extra = (f"; {len(rescued)} of these runs converged with the same seed once "
                 "standardized" if rescued else "")
        out.append(Recommendation(
            "scale_features",
            f"scale features (cond {sci(before)} -> {sci(after)})",
            f"cond(X^T X) is {sci(before)} on the features as given and {sci(after)} after "
            f"standardizing; {len(runs)} run(s) on unscaled features failed or did not "
            f"converge{extra}",
            {"scale": "standardized"}, _ids(runs),
            {"cond_before": before, "cond_after": after, "rescued_by_matched_run": len(rescued)},
        ))
    return out


@register_rule
def lower_lr(ctx: Context) -> list[Recommendation]:
    groups: dict[tuple, list[RunResult]] = {}
    for r in ctx.results:
        bound = r.trace.probes.get("start", {}).get("lr_bound")
        if bound is None or r.verdict.status not in ("diverged", "overflow", "nan", "oscillating"):
            continue
        if not bound > 0:  # L overflowed float64 (features near 1e200): no lr is safe
            continue
        if r.spec.lr > bound:
            groups.setdefault((r.spec.data, r.spec.scale), []).append(r)
    out = []
    for (_data, scale), runs in groups.items():
        # the smallest bound over the runs' lambdas is safe for all of them
        bound = min(r.trace.probes["start"]["lr_bound"] for r in runs)
        safe = safe_lr(bound)
        worst = max(r.spec.lr for r in runs)
        out.append(Recommendation(
            "lower_lr",
            f"lower lr to at most {safe:g}",
            f"lr {format_value(worst)} is {worst / bound:.3g}x the stability bound "
            f"2/L = {bound:.3g} (L = {2.0 / bound:.3g}, the largest curvature of the loss on "
            f"scale={scale} features); {len(runs)} run(s) with lr above it failed",
            {"lr": safe}, _ids(runs),
            {"lr_bound": bound, "L": 2.0 / bound, "worst_lr": worst, "scale": scale},
        ))
    return out


def _l2_for_eigenvalues(ev: np.ndarray, target: float) -> float:
    """Smallest lambda with cond(G + lambda I) <= target, from the ascending eigenvalues
    ``ev`` of a feature Gram matrix G.

    With eigenvalues s_max >= s_min >= 0 of G, cond(G + lambda I) =
    (s_max + lambda) / (s_min + lambda), which falls monotonically in lambda, so
    lambda = (s_max - target * s_min) / (target - 1), or 0 if G already meets it.
    """
    s_min, s_max = max(float(ev[0]), 0.0), float(ev[-1])
    if s_min > 0 and s_max / s_min <= target:
        return 0.0
    return max(0.0, (s_max - target * s_min) / (target - 1.0))


#: e-folds of decay asked of the weights along a null space within the run's steps
PIN_EFOLDS = 3.0


def _l2_to_pin_null_space(r) -> float:
    """For a run with a rank_deficiency finding: the lambda whose pull decays the weights
    along the design's null space by e^-PIN_EFOLDS (5%) within the run's own steps.

    With lambda = 0 gradient descent never moves them (the data's gradient has no
    component there); with lambda > 0 they shrink by (1 - lr lambda) a step, so
    lambda = PIN_EFOLDS / (lr * steps). A lambda that only bounds cond(X^T X + lambda I)
    in the format (``_l2_for_eigenvalues``: 1.5e-13 for a duplicated column in float64)
    leaves them where the initialization put them. 0 when the run has no such finding."""
    if not any(f.signature == "rank_deficiency" for f in r.findings):
        return 0.0
    lr, steps = float(r.spec.lr or 0.0), int(r.trace.n_steps)
    if lr <= 0 or steps <= 0:
        return 0.0
    return PIN_EFOLDS / (lr * steps)


@register_rule
def add_l2(ctx: Context) -> list[Recommendation]:
    out = []
    seen = set()
    for r in ctx.results:
        start = r.trace.probes.get("start", {})
        key = (r.spec.data, r.spec.scale, r.spec.precision)
        gram = ctx.grams.get(key)
        fmt = FORMATS.get(r.spec.precision)
        if "cond_XtX" not in start or gram is None or fmt is None or not _unhealthy(r):
            continue
        # near-singular in this format: fewer than 2 digits survive cond * u
        target = 0.01 / fmt.unit_roundoff
        if start["cond_XtX"] <= target or key in seen:
            continue
        ev = np.asarray(gram)  # extreme eigenvalues of X^T X / n (no intercept)
        if not np.all(np.isfinite(ev)):  # beyond float64 (huge data): no number to give
            continue
        s_max = float(ev[-1])
        cond_lam = _l2_for_eigenvalues(ev, target)
        # rank-deficient: lift the zero eigenvalues within the run's budget (0 otherwise)
        pin = _l2_to_pin_null_space(r)
        lam = round_sig(max(cond_lam, pin))
        # a penalty that swamps the data's largest direction is no fix: the format is
        if r.spec.lam >= lam or lam > 0.01 * s_max:
            continue
        seen.add(key)
        runs = [x for x in ctx.results if (x.spec.data, x.spec.scale, x.spec.precision) == key
                and _unhealthy(x) and x.spec.lam < lam]
        why = (f"lambda >= {lam:g} brings cond(X^T X/n + lambda I) under {sci(target)}"
               if pin <= cond_lam else
               f"the design is rank-deficient, and lambda = {lam:g} = {PIN_EFOLDS:g}/(lr x "
               f"steps) shrinks the weights along its null space by e^-{PIN_EFOLDS:g} within "
               f"the run's {r.trace.n_steps} steps at lr {format_value(r.spec.lr)} (with "
               "lambda = 0 nothing moves them)")
        out.append(Recommendation(
            "add_l2",
            f"add L2 lambda >= {lam:g}",
            f"cond(X^T X) = {sci(start['cond_XtX'])} is near-singular for {fmt.name} "
            f"(cond * u = {start['cond_XtX'] * fmt.unit_roundoff:.2g} >= 0.01: fewer than 2 "
            f"digits survive); {why} (scale={r.spec.scale})",
            {"lambda": lam}, _ids(runs),
            {"cond": start["cond_XtX"], "target": target, "lambda": lam,
             "precision": fmt.name, "scale": r.spec.scale, "pin_null_space": pin},
        ))
    return out


@register_rule
def fused_logloss(ctx: Context) -> list[Recommendation]:
    hits = []
    for r in ctx.results:
        if r.spec.loss != "naive" or r.verdict.status not in ("diverged", "overflow", "nan"):
            continue
        twin = ctx.matched(r, loss="stable")
        if twin is None or twin.verdict.status not in ("diverged", "overflow", "nan"):
            hits.append((r, twin))
    if not hits:
        return []
    r, twin = hits[0]
    logit = r.verdict.evidence.get("max_abs_logit")
    fmt = FORMATS.get(r.spec.precision)
    sat = -math.log(fmt.unit_roundoff) if fmt else float("nan")
    twin_text = f"; its matched stable-loss run: {twin.verdict}" if twin else ""
    return [Recommendation(
        "fused_logloss",
        "use the fused log-loss (BCE with logits)",
        f"the naive sigmoid-then-log loss went non-finite at {r.trace.step_unit} "
        f"{r.verdict.onset} with max|logit| = {logit if logit is None else f'{logit:.3g}'}; "
        f"in {r.spec.precision} sigmoid rounds to exactly 1 beyond |z| ~ {sat:.3g}, so "
        f"log(1 - p) = -inf{twin_text}",
        {"loss": "stable"}, tuple(h[0].run_id for h in hits),
        {"runs": len(hits), "max_abs_logit": logit, "saturation_logit": sat},
    )]


@register_rule
def higher_precision(ctx: Context) -> list[Recommendation]:
    hits = []
    for r in ctx.results:
        if r.spec.precision in ("float64", "float32") or not r.failed:
            continue
        for wide in ("float32", "float64"):
            twin = ctx.matched(r, precision=wide)
            if twin is not None and not twin.failed:
                hits.append((r, twin))
                break
    if not hits:
        return []
    # the most telling example first: a non-finite failure beats a slow one
    order = {"overflow": 0, "nan": 0, "diverged": 1, "oscillating": 2, "stagnated": 3}
    r, twin = min(hits, key=lambda h: order.get(h[0].verdict.status, 9))
    fmts = sorted({h[0].spec.precision for h in hits})
    return [Recommendation(
        "higher_precision",
        "compute in float32/float64 or keep fp32 master weights",
        f"{len(hits)} run(s) in {'/'.join(fmts)} failed while the matched run in "
        f"{twin.spec.precision} (same data, init and seed) did not: e.g. "
        f"{r.spec.precision}: {r.verdict} vs {twin.spec.precision}: {twin.verdict}",
        {"precision": "float32"}, tuple(h[0].run_id for h in hits),
        {"runs": len(hits), "formats": fmts},
    )]


@register_rule
def clip(ctx: Context) -> list[Recommendation]:
    hits = []
    for r in ctx.results:
        if r.spec.clip is not None or r.verdict.status != "diverged":
            continue
        g = r.trace.metric("grad_norm")
        g = g[np.isfinite(g)]
        if g.size >= 2 and g[0] > 0 and g.max() > 100 * g[0]:
            hits.append((r, float(g[0]), float(g.max())))
    if not hits:
        return []
    r, g0, gmax = hits[0]
    level = round_sig(g0)
    return [Recommendation(
        "clip",
        f"clip gradients to norm {level:g}",
        f"the gradient norm grew from {g0:.3g} to {gmax:.3g} ({gmax / g0:.3g}x) before the "
        f"run diverged; clipping at the initial norm bounds every step",
        {"clip": level}, tuple(h[0].run_id for h in hits),
        {"initial_grad_norm": g0, "max_grad_norm": gmax},
    )]


#: raise_lr fires for a stagnated run whose lr is below this fraction of 2/L
RAISE_BELOW = 0.1


@register_rule
def raise_lr(ctx: Context) -> list[Recommendation]:
    hits = []
    for r in ctx.results:
        bound = r.trace.probes.get("start", {}).get("lr_bound")
        if r.verdict.status != "stagnated" or bound is None or not bound > 0:
            continue
        if r.spec.lr < RAISE_BELOW * bound:
            hits.append((r, float(bound)))
    if not hits:
        return []
    # the smallest bound over the hits keeps every one of them below 2/L
    bound = min(b for _, b in hits)
    lr = round_sig(0.5 * bound)
    r = hits[0][0]
    ratio = r.trace.metric("update_ratio")
    ratio = ratio[np.isfinite(ratio)]
    last = float(ratio[-1]) if ratio.size else float("nan")
    return [Recommendation(
        "raise_lr",
        f"raise lr to {lr:g} (half of 2/L)",
        f"{len(hits)} run(s) stagnated at lr {format_value(r.spec.lr)}, {r.spec.lr / bound:.2g} "
        f"of the stability bound 2/L = {bound:.3g}: updates lr x grad fell below half an "
        f"ulp of the weights (update/weight ratio {last:.2g} at the end in "
        f"{r.spec.precision}); a larger step makes updates the format can represent",
        {"lr": lr}, tuple(h[0].run_id for h in hits),
        {"lr_bound": bound, "lr": r.spec.lr, "update_ratio": last, "runs": len(hits)},
    )]


# the other rule modules register after these rules (the order recommendations print in)
from stability_lab.remedies import deep_rules, solver_rules  # noqa: E402,F401
