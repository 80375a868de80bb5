"""Policy evaluation of deep-net sweeps (no torch): the judgment; report/policies.py
prints it.

Runs are grouped with their matched reference: the same spec (seed, data, model, lr)
with policy ``float64`` if the sweep has it, else ``float32``. Per policy: verdict,
final loss (mean of the last ``TAIL`` steps) and test accuracy with their gaps to the
reference, steps skipped by the loss scaler and the scale's trajectory, the mean
fraction of gradient values flushed to zero, the smallest overflow headroom seen (over
the attributed modules' activations and gradients, else the output logits), the
median step time on this machine, and the policy's relative cost on the hardware it
targets (:data:`~stability_lab.spec.axes.POLICY_COST`).

Tolerance: a policy is *within tolerance* when its run did not fail, carries no warning
or error finding (a policy with ``stagnation`` or ``gradient_underflow`` is never the
recommendation), its test accuracy
is at most ``ACC_TOL`` (1 percentage point) below the reference's and its final loss at
most ``LOSS_RTOL`` (10%) plus ``LOSS_ATOL`` (0.001) above it. The recommendation is the
cheapest policy within tolerance by that cost (ties: the faster measured step); every
other policy is listed with the reason it was rejected.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from stability_lab.spec.axes import POLICY_COST
from stability_lab.formatting import jsonable
from stability_lab.precision import FORMATS

ACC_TOL = 0.01
LOSS_RTOL = 0.10
LOSS_ATOL = 1e-3
TAIL = 10


def _policy(r) -> str:
    return r.spec.policy or r.spec.precision


def _tail_loss(trace) -> float:
    loss = trace.metric("loss")
    if loss.size == 0 or not np.isfinite(loss[-1]):
        return math.nan if loss.size == 0 else float(loss[-1])
    return float(np.mean(loss[-TAIL:]))


def _min_headroom(trace) -> float | None:
    attr = trace.extras.get("attribution") or {}
    vals = []
    for m in (attr.get("modules") or {}).values():
        for k in ("act_headroom_min", "grad_headroom_min"):
            if m.get(k) is not None:
                vals.append(float(m[k]))
    if vals:
        return min(vals)
    fmt = FORMATS.get((trace.extras.get("format") or {}).get("activations", ""), None)
    logit = trace.metric("max_abs_logit")
    if fmt is None or logit.size == 0:
        return None
    peak = float(np.max(np.where(np.isfinite(logit), logit, np.inf)))
    return fmt.headroom_log2(peak)


def _scale_trajectory(trace) -> list[list[float]]:
    s = trace.metric("loss_scale")
    if s.size == 0 or not np.isfinite(s).any():
        return []
    pts = [[1, float(s[0])]]
    for i in range(1, len(s)):
        if s[i] != s[i - 1]:
            pts.append([i + 1, float(s[i])])
    if len(pts) > 20:
        pts = pts[:10] + pts[-10:]
    return pts


def policy_row(r, ref) -> dict[str, Any]:
    t = r.trace
    row: dict[str, Any] = {
        "policy": _policy(r), "run": r.run_id, "verdict": r.verdict.status,
        "verdict_text": str(r.verdict), "failed": r.failed or bool(t.error),
        "final_loss": _tail_loss(t), "accuracy": t.extras.get("accuracy"),
        "cost": POLICY_COST.get(_policy(r)),
        "step_time_ms": 1e3 * t.extras.get("step_time_median_s", math.nan),
        "semantics": t.extras.get("semantics", ""),
        "alarms": _alarms(r),
    }
    sc = t.extras.get("loss_scaler")
    if sc:
        row["skipped_steps"] = sc["skipped_steps"]
        row["scale_trajectory"] = _scale_trajectory(t)
        row["scale_min"] = sc["min_scale"]
        row["scale_final"] = sc["final_scale"]
    u = t.metric("grad_underflow_frac")
    u = u[np.isfinite(u)]
    row["grad_underflow_frac"] = float(np.mean(u)) if u.size else None
    row["min_headroom_log2"] = _min_headroom(t)
    created = (t.extras.get("attribution") or {}).get("first_creator")
    if created:
        row["first_nonfinite"] = created
    if ref is not None and ref is not r:
        rl, ra = _tail_loss(ref.trace), ref.trace.extras.get("accuracy")
        row["reference"] = _policy(ref)
        row["loss_gap"] = row["final_loss"] - rl
        row["accuracy_gap"] = (row["accuracy"] - ra if row["accuracy"] is not None
                               and ra is not None else None)
        row["within_tolerance"], row["reason"] = _judge(row, rl, ra)
    elif ref is r:
        row["reference"] = _policy(r)
        row["loss_gap"], row["accuracy_gap"] = 0.0, 0.0
        ok = not row["failed"] and not row["alarms"]
        row["within_tolerance"] = ok
        row["reason"] = "reference" if ok else (
            f"reference run failed: {row['verdict_text']}" if row["failed"] else
            "reference carries finding(s): " + ", ".join(row["alarms"]))
    else:
        row["within_tolerance"], row["reason"] = None, "no float32/float64 reference run"
    return row


def _alarms(r) -> list[str]:
    """The run's warning and error findings, as 'signature (severity)'."""
    return sorted({f"{f.signature} ({f.severity})" for f in r.findings
                   if f.severity in ("warning", "error")})


def _judge(row: dict[str, Any], ref_loss: float, ref_acc: float | None) -> tuple[bool, str]:
    if row["failed"]:
        return False, f"run failed: {row['verdict_text']}"
    if row.get("alarms"):
        return False, "carries finding(s): " + ", ".join(row["alarms"])
    if not math.isfinite(row["final_loss"]):
        return False, "final loss is not finite"
    limit = ref_loss * (1 + LOSS_RTOL) + LOSS_ATOL
    if row["final_loss"] > limit:
        return False, (f"final loss {row['final_loss']:.4g} above the reference's "
                       f"{ref_loss:.4g} by more than {LOSS_RTOL:.0%} + {LOSS_ATOL:g}")
    if ref_acc is not None and row["accuracy"] is not None and \
            row["accuracy"] < ref_acc - ACC_TOL:
        return False, (f"accuracy {row['accuracy']:.2%} more than {ACC_TOL:.0%} below the "
                       f"reference's {ref_acc:.2%}")
    return True, "within tolerance"


def sweep_report(results: list) -> dict[str, Any]:
    groups: dict[str, list] = {}
    for r in results:
        key = r.spec.replace(policy=None, precision="float64").run_id
        groups.setdefault(key, []).append(r)
    out_groups = []
    for members in groups.values():
        by_policy = {_policy(r): r for r in members}
        ref = by_policy.get("float64") or by_policy.get("float32")
        rows = [policy_row(r, ref) for r in members]
        ok = [row for row in rows if row.get("within_tolerance")]
        ok.sort(key=lambda row: (row["cost"] if row["cost"] is not None else math.inf,
                                 row["step_time_ms"]))
        choice = ok[0]["policy"] if ok else None
        base = members[0].spec
        out_groups.append({
            "label": f"{base.task} seed={base.seed} lr={base.lr:g}"
                     + "".join(f" {k}={v}" for k, v in base.params
                               if k not in ("attribute_every",)),
            "reference": _policy(ref) if ref is not None else None,
            "policies": rows,
            "cheapest_within_tolerance": choice,
            "rejected": {row["policy"]: row["reason"] for row in rows
                         if not row.get("within_tolerance")},
            "layers": _layer_tables(members),
        })
    return jsonable({
        "tolerance": {"accuracy_drop": ACC_TOL, "loss_rtol": LOSS_RTOL, "loss_atol": LOSS_ATOL,
                      "loss_is_mean_of_last_steps": TAIL},
        "cost_model": dict(POLICY_COST),
        "groups": out_groups,
    })


def _layer_tables(members: list) -> dict[str, Any]:
    out = {}
    for r in members:
        attr = r.trace.extras.get("attribution") or {}
        if attr.get("modules") or attr.get("creators"):
            out[_policy(r)] = {"modules": attr.get("modules") or {},
                               "creators": attr.get("creators") or [],
                               "projections": (attr.get("projections") or [])[:5]}
    return out


#: a layer is a culprit when its headroom (powers of two left before overflow) is at
#: most this, or it flushed at least CULPRIT_FLUSH of its gradient values to zero
CULPRIT_HEADROOM = 2.0
CULPRIT_FLUSH = 0.01


def culprit_modules(tab: dict[str, Any], policy_row: dict[str, Any] | None = None) -> list[str]:
    """The layers worth printing for one policy: the creators of non-finite values, the
    layers whose headroom is nearly gone (or projected to run out within twice the steps
    run) and the layers that flushed gradients to zero."""
    names: list[str] = []

    def add(name: str | None) -> None:
        if name and name not in names:
            names.append(name)

    if policy_row and policy_row.get("first_nonfinite"):
        add(policy_row["first_nonfinite"].get("module"))
    for c in tab.get("creators") or []:
        if isinstance(c, dict) and c.get("kind", "created") != "passed":
            add(c.get("module"))
    for pr in tab.get("projections") or []:
        if pr["projected_step"] <= 2 * max(pr["fitted_steps"][1], 1):
            add(pr["module"])
    for name, m in (tab.get("modules") or {}).items():
        hr = [m.get(k) for k in ("act_headroom_min", "grad_headroom_min")
              if m.get(k) is not None]
        if (hr and min(hr) <= CULPRIT_HEADROOM) or \
                (m.get("grad_flush_max") or 0) >= CULPRIT_FLUSH:
            add(name)
    return [n for n in names if n in (tab.get("modules") or {})]
