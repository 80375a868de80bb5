"""The signature catalogue's detectors: pure, cheap functions of one trace.

Each detector reads a :class:`~stability_lab.trace.Trace` (its per-step metric arrays,
its start/end probes, its spec, and for a few signatures context that the scenario or
the verifier attached) and returns :class:`~stability_lab.diagnosis.findings.Finding`
objects with the 1-based onset step and the numbers that prove the signature.
Detectors never run training and never raise on a trace that lacks a metric: they read
``trace.metric(name)`` (a NaN array when absent) and return nothing when their
evidence is missing. Everything is vectorised NumPy over the metric arrays, so
:func:`detect_all` costs tens of microseconds per run.

What each detector reads (``W`` is the window, ``min(10, steps // 2)``):

==========================  ===========================================================
signature                   evidence read
==========================  ===========================================================
overflow                    loss = +inf (a value past the max, or log(0)), max_abs_logit
                            = inf, or any ``headroom*`` <= 0
nan_creation                first NaN loss, or non-finite gradients from a finite forward
                            (an inf loss is not NaN: that is ``overflow``)
divergence                  loss above 4x its running minimum to the end (or to non-finite)
                            after growing; lr vs the probe ``lr_bound`` = 2/L
edge_of_stability           last 2W steps: loss differences alternate in sign (>= 85%),
                            swing above rounding noise, no net descent; lr*sharpness
loss_spike                  a loss above mean + k std of the previous W steps (and 5% above
                            their maximum) that comes back to the pre-spike level
stagnation                  frac_unchanged >= 0.5 (or update_ratio < eps/2) over the last W
                            steps while the gradient is not small
gradient_underflow          grad_underflow_frac (gradient entries flushed to zero) >= 0.05
catastrophic_cancellation   probes["data"]: variance_rel_error >= 1e-2 or a negative variance
ill_conditioned_blowup      weight norm >= 1e6 x the reference norm (or 1e6 absolute) with a
                            finite, non-growing loss and cond >= 1e8
rank_deficiency             probes["design"] rank < columns (or cond(X^T X) >= 1e26), lambda 0
silent_digit_loss           extras["reference"]: digits agreeing with the float64 reference
                            < 3 (format-capped) while the loss is finite and not growing
nondeterminism              extras["determinism"]: digits agreeing across thread counts /
                            summation orders, below what the conditioning predicts, minus 1
saturation                  frac_saturated_wrong (probabilities exactly 0 or 1 on the wrong
                            side: zero gradient) >= 0.02 at the end, loss not improving
==========================  ===========================================================

Context detectors: ``catastrophic_cancellation`` (``probes["data"]``, filled by the data
pipeline or scenario), ``rank_deficiency`` (``probes["design"]``, or the task's
``cond_XtX`` probe), ``silent_digit_loss`` (``extras["reference"]``, filled by
:func:`attach_reference`, which :mod:`stability_lab.remedies.verify` and the catalogue call),
``nondeterminism`` (``extras["determinism"]``, filled by :func:`attach_determinism`).
They return nothing when their context is absent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from stability_lab.precision import FORMATS, Format
from stability_lab.trace import Trace
from stability_lab.diagnosis.findings import Finding

Detector = Callable[[Trace], list[Finding]]

#: loss-spike rule: a value above mean + SPIKE_K std of the previous window
SPIKE_K = 6.0
#: ... and above the window's maximum by this fraction of its mean (noise floor)
SPIKE_REL = 0.05
#: digits below which a run that "converged" is reported as silently inaccurate
FEW_DIGITS = 3.0
LRE_CAP = 15.95


@dataclass(frozen=True)
class Signature:
    name: str
    description: str
    detector: Detector
    #: "trace" (metrics and probes of one run) or the context entry it needs
    reads: str = "trace"


SIGNATURES: dict[str, Signature] = {}


def register(name: str, description: str, reads: str = "trace"):
    def wrap(fn: Detector) -> Detector:
        SIGNATURES[name] = Signature(name, description, fn, reads)
        return fn

    return wrap


def detect_all(trace: Trace) -> list[Finding]:
    """Every finding of every registered detector, in catalogue order."""
    if trace.error or trace.n_steps == 0 and not trace.probes:
        return []
    out: list[Finding] = []
    for sig in SIGNATURES.values():
        out.extend(sig.detector(trace))
    return out


def detect(trace: Trace, name: str) -> list[Finding]:
    """The findings of one signature's detector."""
    return SIGNATURES[name].detector(trace)


# -- helpers --------------------------------------------------------------------------
def _entry(box: Any, key: str) -> Any:
    """``box[key]`` of a trace's ``probes`` or ``extras``; None when absent (or not a dict)."""
    return box.get(key) if isinstance(box, dict) else None


def trace_format(trace: Trace) -> Format:
    """The number format of the run's parameters (float32 when unknown)."""
    info = _entry(trace.extras, "format")
    if isinstance(info, dict) and info.get("name") in FORMATS:
        return FORMATS[info["name"]]
    for name in (trace.spec.precision, trace.spec.policy):
        if name in FORMATS:
            return FORMATS[name]
    policy = str(trace.spec.policy or "")
    if "bf16" in policy or "bfloat16" in policy:
        return FORMATS["bfloat16"]
    if "fp16" in policy or "float16" in policy:
        return FORMATS["float16"]
    return FORMATS["float32"]


def gradient_format(trace: Trace) -> Format:
    """The number format the run's gradients are rounded to: a precision policy's
    gradient format (``extras['format']['gradients']``: float16 under mixed-fp16, whose
    parameters are float32), else the parameters' format."""
    info = _entry(trace.extras, "format")
    name = info.get("gradients") if isinstance(info, dict) else None
    return FORMATS[name] if name in FORMATS else trace_format(trace)


def _window(n: int, cap: int = 10) -> int:
    """The judging window for ``n`` steps: half of them, between 2 and ``cap``."""
    return max(2, min(cap, n // 2 or 1))


def _first_nonfinite(trace: Trace) -> int:
    """0-based index of the first step with a non-finite loss, weight or gradient (or n)."""
    loss = trace.metric("loss")
    nfw, nfg = trace.nonfinite_counts()
    bad = ~np.isfinite(loss) | (nfw > 0) | (nfg > 0)
    return int(np.argmax(bad)) if bad.any() else len(loss)


def _loss_while_finite(trace: Trace) -> np.ndarray:
    """The loss of the steps before the first non-finite loss, weight or gradient."""
    return trace.metric("loss")[:_first_nonfinite(trace)]


def _final_stretch(flags: np.ndarray) -> int:
    """0-based start of the last run of True values reaching the end (len if none)."""
    if flags.size == 0 or not flags[-1]:
        return len(flags)
    false = np.flatnonzero(~flags)
    return int(false[-1] + 1) if false.size else 0


def _grad_small(trace: Trace, fmt: Format) -> np.ndarray:
    grad = trace.metric("grad_norm")
    g0 = grad[0] if grad.size and np.isfinite(grad[0]) and grad[0] > 0 else 1.0
    gtol = max(1e-3, math.sqrt(fmt.eps))
    return grad / g0 <= gtol


def _growing(loss: np.ndarray) -> bool:
    """The finite loss ends far above its running minimum (diverging, not settling)."""
    fin = loss[np.isfinite(loss)]
    if fin.size < 3:
        return False
    return bool(fin[-1] > 4.0 * max(float(np.min(fin)), 1e-300) and fin[-1] > 0)


def _probe(trace: Trace, group: str, name: str) -> float | None:
    value = (_entry(trace.probes, group) or {}).get(name)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _f(x: Any) -> str:
    if x is None:
        return "n/a"
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3g}"


def agreeing_digits(estimate: Any, reference: Any) -> float:
    """Normwise digits of agreement, -log10(||a - b|| / ||b||): one number for a whole
    vector (capped at 15.95); the per-coefficient NIST measure is
    :func:`stability_lab.linalg.records.lre`.

    0 when the estimate is non-finite or off by 100% or more (McCullough 1998).
    """
    a = np.atleast_1d(np.asarray(estimate, dtype=np.float64))
    b = np.atleast_1d(np.asarray(reference, dtype=np.float64))
    if a.shape != b.shape or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return 0.0
    from stability_lab.numerics import l2_norm  # no overflow for the 1e200 weights of a diverged run

    nb = float(l2_norm(b))
    with np.errstate(over="ignore"):
        diff = a - b
    err = float(l2_norm(diff)) if np.all(np.isfinite(diff)) else math.inf
    if err == 0.0:
        return LRE_CAP
    rel = err / nb if nb > 0 else err
    return float(min(LRE_CAP, max(0.0, -math.log10(rel))))


def attach_reference(trace: Trace, reference: Trace) -> dict[str, Any]:
    """Record in ``trace.extras['reference']`` how many digits agree with a float64 run.

    ``reference`` is the matched run in float64 (same spec otherwise). Digits are the LRE
    of the final loss and of the final parameters (when both runs kept them).
    """
    info: dict[str, Any] = {
        "reference_run": reference.run_id,
        "reference_precision": reference.spec.precision,
        "lre_loss": agreeing_digits(trace.final_loss, reference.final_loss),
        "reference_loss": reference.final_loss,
    }
    if trace.final_params is not None and reference.final_params is not None:
        info["lre_params"] = agreeing_digits(trace.final_params, reference.final_params)
    trace.extras["reference"] = info
    return info


def attach_determinism(traces: Sequence[Trace], factors: Sequence[str],
                       predicted_digits: float | None = None) -> dict[str, Any]:
    """Record in each trace's ``extras['determinism']`` how many digits agree across runs
    that differ only in thread count or summation order (mathematically identical).

    Digits: the smallest pairwise LRE of the final parameters (or losses) against the
    first run. ``predicted_digits`` is what the conditioning explains: the format's
    digits less log10 of the condition number of the problem.
    """
    first = traces[0]
    digits = []
    spread = []
    for t in traces[1:]:
        if first.final_params is not None and t.final_params is not None:
            digits.append(agreeing_digits(t.final_params, first.final_params))
        else:
            digits.append(agreeing_digits(t.final_loss, first.final_loss))
        spread.append(abs(t.final_loss - first.final_loss))
    info = {"variants": len(traces), "factors": list(factors),
            "agree_digits": float(min(digits)) if digits else LRE_CAP,
            "loss_spread": float(max(spread)) if spread else 0.0,
            "predicted_digits": predicted_digits,
            "final_losses": [float(t.final_loss) for t in traces]}
    for t in traces:
        t.extras["determinism"] = dict(info)
    return info


# -- detectors ---------------------------------------------------------------------------
@register("overflow", "a value exceeded the format's largest finite number and became inf")
def detect_overflow(trace: Trace) -> list[Finding]:
    loss = trace.metric("loss")
    if loss.size == 0:
        return []
    fmt = trace_format(trace)
    logit = trace.metric("max_abs_logit")
    nfw, _ = trace.nonfinite_counts()
    # a loss of +inf is an overflow whatever produced it (a value past the format's
    # max, or log(0) of a probability rounded to 0 or 1): inf is not NaN
    bad = np.isinf(logit) | np.isposinf(loss)
    worst_head = np.full(loss.shape, np.inf)
    for name, values in trace.metrics.items():
        if name.startswith("headroom") and len(values) == len(loss):
            h = np.asarray(values, dtype=np.float64)
            worst_head = np.fmin(worst_head, h)
            bad |= h <= 0
    if not bad.any():
        return []
    k = int(np.argmax(bad))
    nan_first = np.isnan(loss[:k]).any()
    if nan_first:
        return []
    before = loss[:k]
    fin_logit = logit[:k][np.isfinite(logit[:k])]
    evidence = {
        "step": k + 1, "loss": float(loss[k]),
        "last_finite_loss": float(before[-1]) if before.size else None,
        "max_abs_logit_before": float(fin_logit.max()) if fin_logit.size else None,
        "headroom_log2": float(worst_head[k]), "format": fmt.name, "format_max": fmt.max,
    }
    what = "loss=inf" if np.isposinf(loss[k]) else (
        "max|logit| = inf" if np.isinf(logit[k]) else "a value reached the format's max")
    logit_k = float(logit[k]) if k < logit.size else math.nan
    log_zero = bool(np.isposinf(loss[k]) and math.isfinite(logit_k) and nfw[k] == 0)
    evidence["cause"] = "log(0)" if log_zero else "format_max"
    if log_zero:
        cause = (f"the logits are finite (max|logit| {_f(logit_k)}): a probability rounded "
                 f"to exactly 0 or 1 in {fmt.name} made log(0) = -inf, e.g. log(1 - p) with "
                 "p rounded to 1")
    else:
        cause = (f"a value passed the {fmt.name} maximum {fmt.max:.3g} (largest finite "
                 f"|logit| before: {_f(evidence['max_abs_logit_before'])})")
    return [Finding("overflow", k + 1, f"{what} at {trace.step_unit} {k + 1}: {cause}",
                    evidence, "error")]


@register("nan_creation",
          "NaN created from finite values (0/0, inf-inf, 0*inf) in loss or gradient")
def detect_nan(trace: Trace) -> list[Finding]:
    loss = trace.metric("loss")
    if loss.size == 0:
        return []
    logit = trace.metric("max_abs_logit")
    nfw, nfg = trace.nonfinite_counts()
    # logits may be NaN when absent: only a recorded inf counts as a prior overflow.
    # An inf loss is not NaN (the overflow detector reports it); a NaN loss, or
    # non-finite gradients from a finite forward pass, are created NaNs.
    forward_ok = ~np.isinf(logit) & (nfw == 0)
    created = np.isnan(loss) | ((nfg > 0) & forward_ok)
    if not created.any():
        return []
    k = int(np.argmax(created))
    prior_inf = np.isinf(loss[:k]).any() or np.isinf(logit[:k]).any() or (nfw[:k] > 0).any()
    if prior_inf:
        return []  # NaN after inf is the overflow's consequence, reported there
    where = "loss" if np.isnan(loss[k]) else "gradient"
    evidence = {"step": k + 1, "where": where,
                "last_finite_loss": float(loss[k - 1]) if k > 0 else None,
                "max_abs_logit": None if np.isnan(logit[k]) else float(logit[k]),
                "nonfinite_grads": float(nfg[k]), "weights_finite": bool(nfw[k] == 0)}
    return [Finding(
        "nan_creation", k + 1,
        f"NaN created in the {where} at {trace.step_unit} {k + 1} from finite weights "
        f"(max|logit| {_f(evidence['max_abs_logit'])}): an invalid operation such as "
        f"0*inf or inf-inf (e.g. the chain rule through log(1 - p) once p rounds to 1)",
        evidence, "error")]


@register("divergence", "the loss grows without bound (gradient descent with lr above 2/L)")
def detect_divergence(trace: Trace) -> list[Finding]:
    loss = trace.metric("loss")
    if loss.size < 3:
        return []
    k = _first_nonfinite(trace)
    fin = loss[:k]
    if fin.size < 2:
        return []
    running_min = np.minimum.accumulate(fin)
    above = fin > 2.0 * np.maximum(running_min, 1e-300)
    went_nonfinite = k < loss.size
    grew = fin[-1] > 2.0 * max(running_min[-1], 1e-300) and fin[-1] > 0
    if went_nonfinite:
        if not grew:
            return []
    elif not (_growing(fin) and fin[-1] > 4.0 * abs(fin[0])):
        return []
    onset = _final_stretch(above) + 1
    lr = float(trace.spec.lr)
    bound = _probe(trace, "start", "lr_bound")
    evidence = {"onset": onset, "initial_loss": float(fin[0]), "min_loss": float(running_min[-1]),
                "last_finite_loss": float(fin[-1]), "went_nonfinite": went_nonfinite,
                "lr": lr, "lr_bound": bound,
                "lr_over_bound": lr / bound if bound else None}
    grad = trace.metric("grad_norm")[:k]
    if grad.size and np.isfinite(grad).any():
        evidence["max_grad_norm"] = float(np.nanmax(grad))
    if bound:
        cause = (f"lr {lr:g} is {lr / bound:.3g}x the stability bound 2/L = {bound:.3g}"
                 if lr > bound else f"lr {lr:g} is below 2/L = {bound:.3g}: look at the format")
    else:
        cause = "no curvature probe to compare lr with"
    return [Finding(
        "divergence", onset,
        f"loss grew from {fin[0]:.3g} (min {running_min[-1]:.3g}) to {fin[-1]:.3g}"
        f"{' then non-finite' if went_nonfinite else ''} from {trace.step_unit} {onset}; {cause}",
        evidence, "error")]


@register("edge_of_stability",
          "the loss oscillates step to step without descending (lr at or above 2/sharpness)")
def detect_edge_of_stability(trace: Trace) -> list[Finding]:
    loss = _loss_while_finite(trace)
    W = _window(len(loss))
    tail = loss[-2 * W:]
    if tail.size < 8 or _growing(loss):
        return []
    fmt = trace_format(trace)
    diffs = np.diff(tail)
    level = float(np.median(np.abs(tail)))
    amp = float(np.max(tail) - np.min(tail))
    # swings at rounding level are noise, not dynamics
    if amp <= max(8 * fmt.eps * level, 1e-7 * level, 1e-300):
        return []
    signs = np.sign(diffs[diffs != 0])
    if signs.size < 4:
        return []
    rate = float(np.mean(signs[1:] != signs[:-1]))
    h = tail.size // 2
    descent = (tail[:h].mean() - tail[-h:].mean()) > 0.25 * amp
    if rate < 0.85 or descent:
        return []
    d = np.sign(np.diff(loss))
    alt = np.zeros(len(loss), dtype=bool)
    alt[2:] = (d[1:] * d[:-1]) < 0
    # onset: the first step of the final run of alternations (allowing one-step gaps)
    run = alt | np.roll(alt, -1)
    run[-1] = alt[-1] or alt[-2]
    onset = _final_stretch(run) + 1
    lr = float(trace.spec.lr)
    sharp = _probe(trace, "end", "hessian_max")
    bound = _probe(trace, "start", "lr_bound")
    evidence = {"sign_change_rate": rate, "amplitude": amp, "level": level,
                "window": int(tail.size), "lr": lr, "lr_bound": bound,
                "lr_times_sharpness": lr * sharp if sharp is not None else None}
    extra = ""
    if sharp is not None:
        extra = f"; lr x sharpness = {lr * sharp:.3g} (stable below 2)"
    elif bound:
        extra = f"; lr is {lr / bound:.3g}x 2/L"
    return [Finding(
        "edge_of_stability", onset,
        f"loss swings by {amp:.3g} around {level:.3g}, {rate:.0%} sign changes over the last "
        f"{tail.size} {trace.step_unit}s, no net descent{extra}",
        evidence, "warning")]


@register("loss_spike",
          "a sudden loss spike (above mean + k std of the recent window) that recovers")
def detect_loss_spike(trace: Trace) -> list[Finding]:
    loss = _loss_while_finite(trace)
    W = _window(len(loss))
    if len(loss) < W + 2:
        return []
    from numpy.lib.stride_tricks import sliding_window_view

    win = sliding_window_view(loss[:-1], W)  # window i covers loss[i:i+W], judges loss[i+W]
    cur = loss[W:]
    with np.errstate(over="ignore", invalid="ignore"):
        mu = win.mean(axis=1)
        sd = win.std(axis=1)
    top = win.max(axis=1)
    spike = (cur > mu + SPIKE_K * sd) & (cur - top > SPIKE_REL * np.abs(mu))
    if not spike.any():
        return []
    out = []
    idx = np.flatnonzero(spike)
    last_end = -1
    for i in idx:
        t = int(i + W)  # 0-based step of the spike
        if t <= last_end:
            continue
        later = loss[t + 1:]
        back = np.flatnonzero(later <= top[i])
        if back.size == 0:
            continue  # no recovery: divergence or a new level, not a spike
        rec = t + 1 + int(back[0])
        peak_at = t + int(np.argmax(loss[t:rec]))
        last_end = rec
        z = (loss[t] - mu[i]) / sd[i] if sd[i] > 0 else float("inf")
        evidence = {"step": t + 1, "peak_step": peak_at + 1, "peak": float(loss[peak_at]),
                    "window_mean": float(mu[i]), "window_std": float(sd[i]), "z": float(z),
                    "height": float(loss[peak_at] / max(top[i], 1e-300)),
                    "recovered_at": rec + 1, "recovery_steps": rec - t, "k": SPIKE_K}
        out.append(Finding(
            "loss_spike", t + 1,
            f"loss spiked at {trace.step_unit} {t + 1} to {loss[peak_at]:.3g} "
            f"({evidence['height']:.3g}x the previous {W}-step maximum, z = {_f(z)}) and "
            f"recovered by {trace.step_unit} {rec + 1}",
            evidence, "warning"))
    return out[:5]


@register("stagnation",
          "updates below half an ulp of the weights: training stops while the gradient is large")
def detect_stagnation(trace: Trace) -> list[Finding]:
    n = trace.n_steps
    k = _first_nonfinite(trace)
    if n < 4 or k < n:
        return []
    fmt = trace_format(trace)
    W = _window(n)
    small = _grad_small(trace, fmt)
    unchanged = trace.metric("frac_unchanged")
    ratio = trace.metric("update_ratio")
    if np.isfinite(unchanged[-W:]).all():
        stuck = (unchanged >= 0.5) & ~small
        what = "frac_unchanged"
    elif np.isfinite(ratio[-W:]).all():
        stuck = (ratio < fmt.eps / 2) & ~small
        what = "update_ratio"
    else:
        return []
    if not stuck[-W:].all():
        return []
    onset = _final_stretch(stuck) + 1
    grad = trace.metric("grad_norm")
    evidence = {"frac_unchanged": float(unchanged[-1]) if what == "frac_unchanged" else None,
                "update_ratio": float(ratio[-1]), "half_ulp_ratio": fmt.eps / 2,
                "grad_norm": float(grad[-1]), "grad_norm_initial": float(grad[0]),
                "lr": float(trace.spec.lr), "format": fmt.name}
    lead = (f"{unchanged[-1]:.0%} of weights did not change" if what == "frac_unchanged"
            else f"update/weight ratio {ratio[-1]:.2g} below half an ulp ({fmt.eps / 2:.2g})")
    return [Finding(
        "stagnation", onset,
        f"{lead} from {trace.step_unit} {onset} in {fmt.name}: lr x grad is below half an ulp "
        f"of the weights while the grad norm is still {grad[-1]:.2g} "
        f"({grad[-1] / grad[0]:.2g} of initial)",
        evidence, "error")]


@register("gradient_underflow",
          "gradient values flushed to zero in a narrow format (no loss scaling)")
def detect_gradient_underflow(trace: Trace) -> list[Finding]:
    frac = trace.metric("grad_underflow_frac")
    if frac.size == 0 or not np.isfinite(frac).any():
        return []
    f = np.nan_to_num(frac, nan=0.0)
    hit = f >= 0.05
    if not hit.any():
        return []
    k = int(np.argmax(hit))
    fmt = gradient_format(trace)
    scale = trace.metric("loss_scale")
    evidence = {"step": k + 1, "max_frac": float(f.max()), "mean_frac": float(f.mean()),
                "format": fmt.name, "format_tiny": fmt.tiny, "format_subnormal": fmt.subnormal,
                "loss_scale": float(scale[k]) if np.isfinite(scale[k]) else None}
    return [Finding(
        "gradient_underflow", k + 1,
        f"{f.max():.1%} of gradient values flushed to zero (below {fmt.subnormal:.2g}, the "
        f"smallest {fmt.name} subnormal) from {trace.step_unit} {k + 1}; mean {f.mean():.1%} "
        f"of entries per step carry no signal",
        evidence, "error" if f.mean() >= 0.25 else "warning")]


@register("catastrophic_cancellation",
          "subtracting nearly equal numbers (E[x^2] - E[x]^2 when |mean| >> std) loses all digits",
          reads="probes['data']")
def detect_cancellation(trace: Trace) -> list[Finding]:
    data = _entry(trace.probes, "data")
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
        f"the {data.get('variance_method', 'computed')} variance is off by {_f(err)} relative "
        f"({max(digits, 0):.1f} digits right, {negative} negative) in {fmt.name}: |mean|/std "
        f"reaches {_f(ratio)}, so u (mean/std)^2 = {_f(bound)}",
        evidence, "error")]


@register("ill_conditioned_blowup",
          "huge weights from a near-singular design: the fit looks fine, predictions do not")
def detect_blowup(trace: Trace) -> list[Finding]:
    wn = trace.metric("weight_norm")
    if np.isfinite(wn).any():
        last = float(wn[np.isfinite(wn)][-1])
    else:
        last = _probe(trace, "end", "weight_norm")
    if last is None or not math.isfinite(last):
        return []
    loss = trace.metric("loss")
    if loss.size and (not np.all(np.isfinite(loss)) or _growing(loss)):
        return []  # divergence/overflow are reported by their own detectors
    ref = _probe(trace, "reference", "weight_norm")
    limit = 1e6 * max(1.0, ref or 1.0)
    cond_x = _probe(trace, "start", "cond_X")
    if cond_x is None:
        cxx = _probe(trace, "start", "cond_XtX")
        cond_x = math.sqrt(cxx) if cxx is not None and cxx >= 0 else None
    if last < limit or cond_x is None or cond_x < 1e8:
        return []
    evidence = {"weight_norm": last, "reference_weight_norm": ref, "cond_X": cond_x,
                "limit": limit, "max_abs_prediction": _probe(trace, "end", "max_abs_prediction")}
    ref_text = f" (the identifiable fit has {ref:.3g})" if ref else ""
    return [Finding(
        "ill_conditioned_blowup", trace.n_steps or None,
        f"weight norm {last:.3g}{ref_text} with cond(X) = {cond_x:.3g}: the solver divided by "
        f"rounding noise in near-zero singular values",
        evidence, "error")]


@register("rank_deficiency",
          "constant or duplicated columns (dummy-variable trap): the weights are not identifiable",
          reads="probes['design'] or cond_XtX")
def detect_rank_deficiency(trace: Trace) -> list[Finding]:
    design = _entry(trace.probes, "design") or {}
    rank, cols = design.get("rank"), design.get("columns")
    cond = _probe(trace, "start", "cond_XtX")
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
            else f"cond(X^T X) = {_f(cond)}")
    hint = f" ({design['null_space']})" if design.get("null_space") else ""
    return [Finding(
        "rank_deficiency", None,
        f"the design is rank-deficient: {what}{hint}; with lambda = 0 the weights along the "
        f"null space are whatever the initialization left there",
        evidence, "warning")]


@register("silent_digit_loss",
          "the run converges but agrees with the float64 reference to few digits",
          reads="extras['reference']")
def detect_silent_digit_loss(trace: Trace) -> list[Finding]:
    ref = _entry(trace.extras, "reference")
    if not ref:
        return []
    loss = trace.metric("loss")
    if loss.size == 0 or not np.all(np.isfinite(loss)) or _growing(loss):
        return []  # a visible failure is not silent
    from stability_lab.diagnosis.verdict import decide

    if decide(trace).status != "converged":
        return []  # an unconverged run differs from its reference for other reasons
    digits = ref.get("lre_params", ref.get("lre_loss"))
    if digits is None:
        return []
    fmt = trace_format(trace)
    threshold = min(FEW_DIGITS, fmt.digits - 1.0)
    if digits >= threshold:
        return []
    hc = _probe(trace, "end", "hessian_cond")
    predicted = None
    if hc and hc > 0 and math.isfinite(hc):
        predicted = max(0.0, fmt.digits - math.log10(hc))
    evidence = {"digits": float(digits), "lre_loss": ref.get("lre_loss"),
                "lre_params": ref.get("lre_params"), "format_digits": fmt.digits,
                "predicted_digits": predicted, "threshold": threshold,
                "reference_run": ref.get("reference_run")}
    what = "weights" if "lre_params" in ref else "final loss"
    return [Finding(
        "silent_digit_loss", trace.n_steps,
        f"the {what} agree with the float64 reference to {digits:.1f} digits (the loss to "
        f"{_f(ref.get('lre_loss'))}) although {fmt.name} carries {fmt.digits:.1f}"
        + (f"; the conditioning predicts {predicted:.1f}" if predicted is not None else ""),
        evidence, "warning")]


@register("nondeterminism",
          "results change with thread count or summation order beyond what the "
          "conditioning explains",
          reads="extras['determinism']")
def detect_nondeterminism(trace: Trace) -> list[Finding]:
    info = _entry(trace.extras, "determinism")
    if not info or info.get("variants", 0) < 2:
        return []
    digits = float(info["agree_digits"])
    predicted = info.get("predicted_digits")
    fmt = trace_format(trace)
    expected = float(predicted) if predicted is not None else fmt.digits
    if digits >= expected - 1.0 or digits >= FEW_DIGITS + 3:
        return []
    evidence = dict(info)
    return [Finding(
        "nondeterminism", None,
        f"{info['variants']} runs differing only in {', '.join(info.get('factors', []))} agree "
        f"to {digits:.1f} digits (final loss spread {_f(info.get('loss_spread'))}); the "
        f"conditioning explains {expected:.1f}",
        evidence, "warning")]


@register("saturation", "probabilities exactly 0 or 1 on the wrong side kill the gradient")
def detect_saturation(trace: Trace) -> list[Finding]:
    wrong = trace.metric("frac_saturated_wrong")
    if wrong.size == 0 or not np.isfinite(wrong).any():
        return []
    W = _window(len(wrong))
    w = np.nan_to_num(wrong, nan=0.0)
    if w[-W:].min() < 0.02:
        return []
    loss = trace.metric("loss")
    fin = loss[np.isfinite(loss)]
    if fin.size > W and (fin[-W - 1] - fin[-1]) > 1e-3 * abs(fin[-1]):
        return []  # still learning: the saturated points are being fixed
    k = int(np.argmax(w >= 0.02))
    sat = trace.metric("frac_saturated")
    grad = trace.metric("grad_norm")
    evidence = {"step": k + 1, "frac_saturated_wrong": float(w[-1]),
                "frac_saturated": float(sat[-1]) if np.isfinite(sat[-1]) else None,
                "final_loss": float(loss[-1]), "grad_norm": float(grad[-1])}
    return [Finding(
        "saturation", k + 1,
        f"{w[-1]:.1%} of samples have a probability of exactly 0 or 1 on the wrong side from "
        f"{trace.step_unit} {k + 1}: their gradient is zero, the loss is stuck at {loss[-1]:.3g}",
        evidence, "error")]
