"""Recommendation rules for deep-net findings (registered on import).

Each rule reads the findings of the deep-net runs of a sweep and returns
:class:`~stability_lab.remedies.rules.Recommendation` s whose ``delta`` the verifier can
apply (a RunSpec field, or a task parameter by its axis name) and re-run with the same
seed. A rule fires only on its finding; when the sweep holds the matched run with the
fix, its verdict is quoted as evidence. Each rule advises the action of its own name.

- ``use_loss_scaling``: gradient underflow in float16 without loss scaling ->
  ``{"policy": "mixed-fp16"}``.
- ``use_bf16_range``: a non-finite value created in the forward pass, a loss-scale
  collapse caused by a forward overflow, or a module's headroom projected to run out,
  in a float16/fp8 policy -> ``{"policy": "mixed-bf16"}`` (bfloat16 has float32's
  range).
- ``qk_layernorm``: attention-logit growth without qk-layernorm -> ``{"qk_layernorm": True}``.
- ``z_loss``: output-logit growth without z-loss -> ``{"z_loss": 1e-4}``.
- ``depth_exploding_gradients`` / ``depth_vanishing_gradients``: gradients by depth
  in the mlp -> ``init_scale`` divided by the measured factor per layer (vanishing
  without normalization: ``norm: layernorm``); other models -> clip at the initial
  gradient norm.
- ``dying_relu_lr``: dying ReLU that grew during training -> ``lr`` / 10.
"""

from __future__ import annotations

from typing import Any

from stability_lab.diagnosis.findings import Finding
from stability_lab.formatting import round_sig
from stability_lab.spec.tasks import DEEP_TASKS, is_user_task
from stability_lab.remedies.rules import Context, Recommendation, register_rule
from stability_lab.diagnosis.record import RunResult
from stability_lab.diagnosis.policy_evaluation import _policy


def _is_deep(r: RunResult) -> bool:
    return r.spec.task in DEEP_TASKS or is_user_task(r.spec.task)


def _findings(r: RunResult, signature: str) -> list[Finding]:
    """The run's findings of one signature, as its diagnosis found them."""
    return [f for f in r.findings if f.signature == signature]


def _twin_text(ctx: Context, r: RunResult, **delta: Any) -> str:
    twin = ctx.matched(r, **delta)
    if twin is None:
        return ""
    return f"; the matched run with {_fmt_delta(delta)} (same seed): {twin.verdict}"


def _fmt_delta(delta: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in delta.items())


def _recommend(ctx: Context, hits: list, action: str, text: str, reason: str,
               delta: dict[str, Any], evidence: dict[str, Any]) -> list[Recommendation]:
    """The recommendation for ``hits`` (its ``reason`` quoting the verdict of the first
    hit's matched run with ``delta``), citing the runs of all hits, each once."""
    runs = tuple(dict.fromkeys(h[0].run_id for h in hits))
    return [Recommendation(action, text, reason + _twin_text(ctx, hits[0][0], **delta),
                           delta, runs, evidence)]


def _collect(ctx: Context, signature: str, pred=lambda r, f: True):
    hits = []
    for r in ctx.results:
        if not _is_deep(r):
            continue
        for f in _findings(r, signature):
            if pred(r, f):
                hits.append((r, f))
                break
    return hits


@register_rule
def use_loss_scaling(ctx: Context) -> list[Recommendation]:
    hits = _collect(ctx, "gradient_underflow",
                    lambda r, f: _policy(r) in ("mixed-fp16-noscale", "float16"))
    if not hits:
        return []
    r, f = hits[0]
    mean = f.evidence["mean_frac"]
    return _recommend(
        ctx, hits, "use_loss_scaling", "use dynamic loss scaling (policy mixed-fp16)",
        f"{mean:.1%} of gradient values flushed to zero in float16 "
        f"(policy {_policy(r)}); scaling the loss by 2^16 before the backward pass keeps "
        f"them representable",
        {"policy": "mixed-fp16"},
        {"mean_underflow_fraction": mean, "runs": len(hits)})


@register_rule
def use_bf16_range(ctx: Context) -> list[Recommendation]:
    low = ("float16", "mixed-fp16", "mixed-fp16-noscale", "fp8")
    hits = _collect(ctx, "nonfinite_created",
                    lambda r, f: _policy(r) in low and f.evidence["pass"] == "forward")
    hits += _collect(ctx, "loss_scale_collapse",
                     lambda r, f: f.evidence.get("forward_overflow"))
    hits += _collect(ctx, "headroom_shrinking", lambda r, f: _policy(r) in low)
    if not hits:
        return []
    r, f = hits[0]
    where = f.location or "the forward pass"
    coming = f.signature == "headroom_shrinking"
    return _recommend(
        ctx, hits, "use_bf16_range",
        "use bfloat16 autocast (policy mixed-bf16) for its float32 range",
        f"{f.message} (policy {_policy(r)}): the values "
        + ("are on course to exceed" if coming else "exceed")
        + f" the format's range at {where}, which loss scaling cannot fix; bfloat16 has "
        "float32's exponent range",
        {"policy": "mixed-bf16"}, {"finding": f.signature, "module": where})


@register_rule
def qk_layernorm(ctx: Context) -> list[Recommendation]:
    hits = _collect(ctx, "attention_logit_growth", lambda r, f: not r.spec.param("qk_layernorm"))
    if not hits:
        return []
    r, f = hits[0]
    ev = f.evidence
    return _recommend(
        ctx, hits, "qk_layernorm", "layer-normalize queries and keys (qk-layernorm)",
        f"attention logits grew {ev['growth']:.3g}x to {ev['peak']:.3g} at lr {r.spec.lr:g}; "
        "normalizing q and k bounds |q.k| by the LayerNorm gains (Wortsman et al. 2023, "
        "Dehghani et al. 2023)",
        {"qk_layernorm": True}, dict(ev))


@register_rule
def z_loss(ctx: Context) -> list[Recommendation]:
    hits = _collect(ctx, "logit_growth", lambda r, f: not r.spec.param("z_loss"))
    if not hits:
        return []
    ev = hits[0][1].evidence
    return _recommend(
        ctx, hits, "z_loss", "add the z-loss 1e-4 * log(Z)^2 on the output logits",
        f"output logits grew {ev['growth']:.3g}x to {ev['peak']:.3g}; the z-loss pulls "
        "log Z toward 0 and keeps the logits from drifting (Chowdhery et al. 2022, "
        "Wortsman et al. 2023)",
        {"z_loss": 1e-4}, dict(ev))


def _depth(ctx: Context, signature: str) -> list[Recommendation]:
    """The fix of gradients that explode or vanish with depth (``signature``): in the mlp
    the init scale divided by the measured factor per layer (vanishing without
    normalization: layer normalization); in other models a clip at the initial norm."""
    hits = _collect(ctx, signature)
    if not hits:
        return []
    r, f = hits[0]
    factor = f.evidence["factor_per_layer"]
    if r.spec.task == "mlp":
        scale = float(r.spec.param("init_scale") or 1.0)
        if signature == "vanishing_gradients" and (r.spec.param("norm") or "none") == "none":
            delta: dict[str, Any] = {"norm": "layernorm"}
            text = "add layer normalization after each hidden layer"
        else:
            new = round_sig(scale / factor)
            delta = {"init_scale": new}
            text = f"set init_scale to {new:g}"
    else:
        g = r.trace.metric("grad_norm")
        level = round_sig(g[0]) if g.size and g[0] > 0 else 1.0
        delta = {"clip": level}
        text = f"clip gradients to norm {level:g}"
    return _recommend(
        ctx, hits, f"depth_{signature}", text,
        f"{f.message}; a per-layer factor of {factor:.3g} compounds over depth",
        delta, dict(f.evidence))


@register_rule
def depth_exploding_gradients(ctx: Context) -> list[Recommendation]:
    return _depth(ctx, "exploding_gradients")


@register_rule
def depth_vanishing_gradients(ctx: Context) -> list[Recommendation]:
    return _depth(ctx, "vanishing_gradients")


@register_rule
def dying_relu_lr(ctx: Context) -> list[Recommendation]:
    hits = _collect(ctx, "dying_relu", lambda r, f: f.evidence["dead_fraction_last"]
                    - f.evidence["dead_fraction_first"] >= 0.3)
    if not hits:
        return []
    r, f = hits[0]
    lr = round_sig(r.spec.lr / 10)
    return _recommend(
        ctx, hits, "dying_relu_lr", f"lower lr to {lr:g}",
        f"{f.message} during training at lr {r.spec.lr:g}: large updates push "
        "pre-activations negative for every example",
        {"lr": lr}, dict(f.evidence))
