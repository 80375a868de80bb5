"""The verdict of a run: one word and its onset, decided from the whole trace.

Rules, applied in this order (``W`` is the window, 10 steps by default):

1. **non-finite**: the first step whose loss is inf/NaN or whose weights or gradients
   hold a non-finite value. If the loss had grown to at least twice its running
   minimum before that step, the run *diverged* on its way to inf; otherwise the
   value appeared without warning: *overflow* (inf) or *nan*. Printed as
   ``diverged (loss=inf at epoch 14)``.
2. **diverged** (finite): the final loss is more than ``growth`` (4) times the initial
   loss and above its running minimum by the same factor. Onset: the first step whose
   loss exceeds twice the running minimum (a growing loss often swings on its way up,
   so "stays above" would point at the last step).
   **diverged** (unrecovered spike): the loss rose ``growth`` times above its best so
   far and never came back near it (:func:`unrecovered_rise`), whatever its
   last window does; a classification run whose loss then sits at chance level
   (log C) says so.
3. **stagnated**: over the last W steps at least half of the weights that had a
   non-zero update did not change at all, because the update was below half an ulp
   of the weight in this format, while the gradient is still large (above the
   convergence tolerance) or the run stopped away from the task's float64 optimum
   (loss unchanged over the window, final weights outside the format's tolerance of
   the optimum: :func:`~stability_lab.diagnosis.windows.frozen_off_optimum`). Onset:
   the first step of the final stretch where that holds.
4. **converged**: where the task computed a float64 optimum (logistic regression:
   ``extras['optimum']``), the final weights are within the format's tolerance of it
   in loss gap and in float64 gradient norm (:func:`_optimum_verdict`); otherwise over
   the last W steps the relative loss improvement is below
   ``rtol``, the gradient norm is below ``gtol`` times its initial value, and the loss
   is not above its initial value. Both
   tolerances are floored by the format (rtol >= 4 eps, gtol >= sqrt(eps)), so a
   low-precision run is not asked for digits its format does not carry. Onset: the
   first step from which both hold to the end.
5. **oscillating**: over the last 2W steps the loss differences change sign at least
   half the time (90% for stochastic step traces, where noise alone gives about half),
   the loss is not going down overall (the mean of the window's second half is not
   below that of its first half by more than rtol), and the swing is larger than
   2 rtol times the loss (smaller swings are rounding noise on a flat loss).
6. otherwise **not converged**, with the numbers that say how far it is.

Traces of optimizer steps (``step_unit == "step"``: deep nets, mini-batches, fresh
samples every step) are judged on windowed means instead of rule 4, since gradient
noise never lets the gradient norm settle: see :func:`_stochastic_converged`.

Convergence is never decided on a single step's change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stability_lab.precision import FORMATS
from stability_lab.trace import Trace
from stability_lab.diagnosis.findings import Verdict
from stability_lab.diagnosis.windows import (SOLVED, at_optimum, final_stretch,
                                              frozen_off_optimum, task_optimum, window)


@dataclass(frozen=True)
class VerdictRules:
    window: int = 10
    rtol: float = 1e-5
    gtol: float = 1e-3
    growth: float = 4.0
    stagnant_fraction: float = 0.5
    oscillation_sign_changes: float = 0.5
    stochastic_oscillation_sign_changes: float = 0.9
    #: relative change of the windowed mean loss that counts as a plateau (step traces)
    stochastic_plateau: float = 0.01


DEFAULT_RULES = VerdictRules()


def tolerances(precision: str | None, rules: VerdictRules = DEFAULT_RULES) -> tuple[float, float]:
    fmt = FORMATS.get(precision or "float64", FORMATS["float32"])
    return max(rules.rtol, 4 * fmt.eps), max(rules.gtol, math.sqrt(fmt.eps))


#: a classifier whose final loss is within this fraction of its chance level log C (and
#: whose accuracy, where known, is at most twice chance) is "stuck at chance level",
#: whatever else its verdict says
CHANCE_BAND = 0.05


def decide(trace: Trace, rules: VerdictRules = DEFAULT_RULES) -> Verdict:
    """The verdict of one run (pure function of the trace). A classifier that ends at
    chance level says so in a verdict that would not otherwise (converged on a plateau at
    log C, or not converged there): its status stays, since the plateau can be the best a
    model can do (labels that are noise), but the detail and the evidence
    (``stuck_at_chance``) say that it learned nothing."""
    verdict = _decide(trace, rules)
    if (verdict.status in ("converged", "not_converged", "oscillating")
            and not verdict.evidence.get("stuck_at_chance")):
        return _with_chance(trace, verdict, CHANCE_BAND)
    return verdict


def _decide(trace: Trace, rules: VerdictRules) -> Verdict:
    if trace.error:
        return Verdict("error", None, trace.error.splitlines()[0][:200])
    loss = trace.metric("loss")
    unit = trace.step_unit
    if len(loss) == 0:
        return Verdict("error", None, "no steps recorded")
    grad = trace.metric("grad_norm")
    nfw, nfg = trace.nonfinite_counts()
    bad = ~np.isfinite(loss) | (nfw > 0) | (nfg > 0)
    rtol, gtol = tolerances(trace.spec.policy or trace.spec.precision, rules)
    W = window(len(loss), rules.window)

    if bad.any():
        k = int(np.argmax(bad))
        value = loss[k]
        if math.isnan(value):
            what = "loss=nan"
        elif math.isinf(value):
            what = "loss=inf"
        elif nfw[k] > 0:
            what = f"{int(nfw[k])} non-finite weights"
        else:
            what = f"{int(nfg[k])} non-finite gradients"
        before = loss[:k]
        grew = bool(before.size >= 2 and before[-1] >= 2.0 * np.min(before) and before[-1] > 0)
        if grew:
            status = "diverged"
        elif math.isinf(value) or (not math.isnan(value) and nfw[k] > 0):
            status = "overflow"
        else:
            status = "nan"
        evidence = {"step": k + 1, "last_finite_loss": float(before[-1]) if before.size else None,
                    "max_abs_logit": _at(trace, "max_abs_logit", k)}
        return Verdict(status, k + 1, f"{what} at {unit} {k + 1}", evidence)

    if unit == "solve":
        return _solve_verdict(trace)

    running_min = np.minimum.accumulate(loss)
    final = loss[-1]
    if (final > rules.growth * abs(loss[0]) and final > rules.growth * running_min[-1]
            and final > 0):
        above = loss > 2.0 * np.maximum(running_min, 1e-300)
        onset = int(np.argmax(above)) + 1  # first rise past twice the best so far
        return Verdict("diverged", onset,
                       f"loss {loss[0]:.3g} -> {final:.3g}, growing from {unit} {onset}",
                       {"initial_loss": float(loss[0]), "final_loss": float(final)})

    spiked = unrecovered_rise(loss, unit, rules)
    if spiked is not None:
        return _with_chance(trace, spiked)

    if unit == "step":
        solved = _stochastic_converged(loss, rules)
        if solved is not None:
            return solved

    g0 = grad[0] if grad.size and grad[0] > 0 else 1.0
    grad_small = grad / g0 <= gtol
    unchanged = trace.metric("frac_unchanged")
    if unchanged.size and np.isfinite(unchanged[-W:]).all():
        # the gradient is not small, or the run stopped away from the task's optimum
        stuck = ((unchanged >= rules.stagnant_fraction)
                 & (~grad_small | frozen_off_optimum(trace, W)))
        if stuck[-W:].all():
            onset = final_stretch(stuck) + 1
            return Verdict(
                "stagnated", onset,
                f"{unchanged[-1]:.0%} of weights unchanged from {unit} {onset}: updates below "
                f"half an ulp while grad norm is {grad[-1]:.2g}",
                {"frac_unchanged": float(unchanged[-1]), "grad_norm": float(grad[-1])},
            )

    rel = _relative_improvement(loss, W)
    opt = task_optimum(trace)
    if opt is not None:
        return _optimum_verdict(trace, loss, rel, W, opt, rules)
    plateau = np.abs(rel) <= rtol
    conv = plateau & grad_small & (loss <= loss[0] * (1 + rtol))
    if conv[-1]:
        onset = final_stretch(conv) + 1
        return Verdict("converged", onset, "",
                       {"rel_improvement": float(rel[-1]), "grad_ratio": float(grad[-1] / g0)})

    tail = loss[-2 * W:]
    if tail.size >= 4:
        # mini-batch noise alone changes the sign about half the time: a stochastic
        # step trace oscillates only when nearly every step reverses
        osc = _oscillation(trace, tail, loss, rules)
        if osc is not None:
            return osc

    trend = (f"still improving {rel[-1]:.1e}/window" if rel[-1] >= 0
             else f"rising {-rel[-1]:.1e}/window")
    return Verdict("not_converged", None,
                   f"loss {final:.4g}, {trend}, grad norm {grad[-1] / g0:.1e} of initial",
                   {"rel_improvement": float(rel[-1]), "grad_ratio": float(grad[-1] / g0)})


def _optimum_verdict(trace: Trace, loss: np.ndarray, rel: np.ndarray, W: int,
                     opt: dict, rules: VerdictRules) -> Verdict:
    """Rule 4 where the task has a float64 optimum (logistic regression): converged
    means the final weights are close to it, in loss and in gradient, within the
    tolerances the run's format allows (``extras['optimum']``, computed by the task:
    see :func:`stability_lab.tasks.optimum.optimum_gap`)."""
    gap, tol_f = float(opt["gap"]), float(opt["tol_gap"])
    g, tol_g = float(opt["grad_norm64"]), float(opt["tol_grad"])
    ev = {"gap": gap, "tol_gap": tol_f, "grad_norm64": g, "tol_grad": tol_g,
          "optimum_loss": float(opt["optimum_loss"])}
    if at_optimum(opt):
        # onset: the first step from which the recorded loss stays within the
        # tolerance of its final value (the final weights are at the optimum)
        within = loss - loss[-1] <= tol_f + max(abs(loss[-1] - float(opt["final_loss64"])), 0)
        onset = final_stretch(within) + 1
        return Verdict("converged", onset, "", ev)
    tail = loss[-2 * W:]
    if tail.size >= 4:
        osc = _oscillation(trace, tail, loss, rules)
        if osc is not None:
            return osc
    trend = (f"still improving {rel[-1]:.1e}/window" if rel[-1] >= 0
             else f"rising {-rel[-1]:.1e}/window")
    return Verdict("not_converged", None,
                   f"loss {float(opt['final_loss64']):.4g} is {gap:.2g} above the float64 "
                   f"optimum {float(opt['optimum_loss']):.4g} (tolerance {tol_f:.2g}), grad "
                   f"norm {g:.2g} (tolerance {tol_g:.2g}), {trend}", ev)


def _oscillation(trace: Trace, tail: np.ndarray, loss: np.ndarray,
                 rules: VerdictRules) -> Verdict | None:
    rtol, _ = tolerances(trace.spec.policy or trace.spec.precision, rules)
    unit = trace.step_unit
    diffs = np.diff(tail)
    signs = np.sign(diffs[diffs != 0])
    changes = np.mean(signs[1:] != signs[:-1]) if signs.size > 1 else 0.0
    half = len(tail) // 2
    flat = np.mean(tail[half:]) >= np.mean(tail[:half]) * (1 - rtol)
    needed = (rules.stochastic_oscillation_sign_changes if unit == "step"
              else rules.oscillation_sign_changes)
    amp = float(np.max(tail) - np.min(tail))
    # a swing within the plateau tolerance is rounding noise on a flat loss (a float32
    # loss near its floor alternates in its last bits), not an oscillation
    audible = amp > 2.0 * rtol * float(np.max(np.abs(tail)))
    if changes >= needed and flat and audible:
        onset = len(loss) - len(tail) + 1
        return Verdict("oscillating", onset,
                       f"loss swings by {amp:.3g} around {np.median(tail):.3g}, "
                       f"{changes:.0%} sign changes over the last {len(tail)} {unit}s",
                       {"amplitude": amp, "sign_change_rate": float(changes)})
    return None


def _smoothed(loss: np.ndarray, unit: str) -> np.ndarray:
    """The loss the rise rules judge: as recorded for epochs (deterministic), a running
    median of 5 steps for optimizer steps (one noisy mini-batch is not a level)."""
    if unit != "step" or len(loss) < 5:
        return loss
    from numpy.lib.stride_tricks import sliding_window_view

    med = np.median(sliding_window_view(loss, 5), axis=1)
    return np.concatenate([loss[:4], med])


def unrecovered_rise(loss: np.ndarray, unit: str,
                     rules: VerdictRules = DEFAULT_RULES) -> Verdict | None:
    """A loss that rose many-fold above its best and never came back near it.

    With s the judged loss (:func:`_smoothed`) and b_t = min(s[:t]) its best before
    step t: a rise at t is s_t >= ``growth`` (4) x b_t that also gives back a real
    part of the progress, s_t - b_t >= 0.25 max(|s_0|, s_0 - b_t) (so noise around a
    loss near 0 is no rise). It is unrecovered when s never again comes back near b_t:
    to within max(1.5 b_t, b_t + 0.1 |s_0|), and not above its starting loss s_0.
    Such a run has failed whatever its last window does (it may still be falling from
    the peak): verdict ``diverged`` with the onset of the rise and the numbers.
    """
    s = _smoothed(loss, unit)
    n = len(s)
    if n < 3:
        return None
    best = np.minimum.accumulate(s)
    prev = np.concatenate([[np.inf], best[:-1]])
    give_back = np.maximum(abs(s[0]), s[0] - prev)
    rise = (s >= rules.growth * np.maximum(prev, 1e-300)) & (s - prev >= 0.25 * give_back)
    rise[0] = False
    if not rise.any():
        return None
    suffix_min = np.minimum.accumulate(s[::-1])[::-1]
    # back near the best: within 1.5x of it (or 10% of the start above it, for a best
    # near 0), and never above where the run started
    near = np.minimum(np.maximum(1.5 * prev, prev + 0.1 * abs(s[0])), max(s[0], 0.0))
    near = np.maximum(near, prev)
    unrecovered = rise & (suffix_min > near)
    if not unrecovered.any():
        return None
    t = int(np.argmax(unrecovered))
    b = float(prev[t])
    # onset: where the climb to the rise began (the first step past 2 x the best)
    climb = np.flatnonzero(s[:t + 1] > 2.0 * b)
    start = int(climb[0]) if climb.size else t
    after = s[t:]
    peak = float(np.max(after))
    k_peak = t + int(np.argmax(after))
    return Verdict(
        "diverged", start + 1,
        f"unrecovered spike: loss rose from its best {b:.3g} to {peak:.3g} by {unit} "
        f"{k_peak + 1} and never came back near it (final {float(loss[-1]):.3g})",
        {"best_before": b, "peak": peak, "peak_step": k_peak + 1,
         "best_after": float(suffix_min[t]), "final_loss": float(loss[-1]),
         "kind": "unrecovered_spike"})


def _with_chance(trace: Trace, verdict: Verdict, band: float | None = None) -> Verdict:
    """Add 'stuck at chance level' when a classification task's loss ends at log(C): at
    or above 0.8 log C after an unrecovered spike, or within ``band`` (a fraction) of
    it when given."""
    chance = trace.extras.get("chance_loss") if isinstance(trace.extras, dict) else None
    loss = trace.metric("loss")
    if not chance or loss.size < 2:
        return verdict
    tail = float(np.median(loss[-max(2, min(20, len(loss) // 10)):]))
    acc = trace.extras.get("accuracy")
    chance_acc = trace.extras.get("chance_accuracy")
    at_chance = (tail >= 0.8 * float(chance) if band is None
                 else abs(tail - float(chance)) <= band * float(chance))
    if acc is not None and chance_acc is not None:
        at_chance = at_chance and float(acc) <= 2.0 * float(chance_acc)
    if not at_chance:
        return verdict
    acc_text = f", accuracy {float(acc):.0%}" if acc is not None else ""
    ev = dict(verdict.evidence, stuck_at_chance=True, chance_loss=float(chance))
    stuck = (f"stuck at chance level (loss {tail:.3g} vs log(C) = {float(chance):.3g}"
             f"{acc_text})")
    return Verdict(verdict.status, verdict.onset,
                   f"{verdict.detail}; {stuck}" if verdict.detail else stuck, ev)


def _stochastic_converged(loss: np.ndarray, rules: VerdictRules) -> Verdict | None:
    """Convergence of an optimizer-step trace (deep nets: mini-batches, fresh samples).

    Gradient noise keeps the gradient norm and the step-to-step loss from settling, so
    the deterministic rule never fires. Instead, with W = max(window, n/10) steps: the
    task is solved (the mean loss of the last W steps is below 1% of that of the
    first W), or the loss has plateaued after falling to below half its start: the
    last two windows' means differ by less than ``stochastic_plateau`` relative, or by
    less than twice the standard error of that difference (the change is noise).
    """
    n = len(loss)
    W = max(rules.window, n // 10)
    if n < 3 * W:
        return None
    first, prev, last = loss[:W].mean(), loss[-2 * W:-W].mean(), loss[-W:].mean()
    if not (first > 0 and last >= 0):
        return None
    if last <= SOLVED * first:
        return Verdict("converged", n - W + 1,
                       f"mean loss {first:.3g} -> {last:.3g} over the last {W} steps",
                       {"first_window_loss": float(first), "last_window_loss": float(last)})
    change = abs(prev - last) / max(last, 1e-300)
    a, b = loss[-2 * W:-W], loss[-W:]
    scale = max(float(np.max(np.abs(loss[-2 * W:]))), 1e-300)  # no overflow in the squares
    se = scale * math.sqrt((np.var(a / scale) + np.var(b / scale)) / W)
    noise = 2.0 * se / max(last, 1e-300)
    if change < max(rules.stochastic_plateau, noise) and last <= 0.5 * first:
        return Verdict("converged", n - 2 * W + 1,
                       f"windowed mean loss flat ({change:.1%} over {W} steps) at {last:.3g}",
                       {"window_change": float(change), "last_window_loss": float(last)})
    return None


def _solve_verdict(trace: Trace) -> Verdict:
    """A direct or iterative least-squares solve: finite coefficients are 'converged'
    unless the solver reported failure or an iterative one ran out of iterations."""
    solve = trace.extras.get("solve", {})
    digits = trace.probes.get("end", {}).get("digits")
    detail = "" if digits is None else f"{float(digits):.1f} digits agree with the reference"
    if solve.get("status") == "failed":
        return Verdict("nan", 1, solve.get("message") or "solver failed", dict(solve))
    if solve.get("converged") is False:
        return Verdict("not_converged", None,
                       f"stopped after {solve.get('iterations')} iterations; {detail}",
                       {"iterations": solve.get("iterations"), "digits": digits})
    return Verdict("converged", 1, detail, {"digits": digits})


def _relative_improvement(loss: np.ndarray, window: int) -> np.ndarray:
    """(loss[t-W] - loss[t]) / |loss[t]| for every t (inf where t < W)."""
    rel = np.full(loss.shape, np.inf)
    if len(loss) > window:
        prev = loss[:-window]
        cur = loss[window:]
        with np.errstate(divide="ignore", invalid="ignore"):
            rel[window:] = (prev - cur) / np.maximum(np.abs(cur), 1e-300)
    return rel


def _at(trace: Trace, name: str, k: int):
    values = trace.metrics.get(name)
    if values is None or k >= len(values):
        return None
    return float(values[k])
