"""A watched run as the lab's :class:`~stability_lab.trace.Trace`.

:func:`policy_of` names the precision policy the user's loop runs in (the parameters'
dtype, autocast's, a GradScaler), :func:`watched_trace` turns what a
:class:`~stability_lab.watcher.Watcher` recorded into a Trace of task ``watched``: the
per-step metric arrays, a RunSpec, the environment, and the extras the diagnosis and the
reports read (policy, format, attribution, loss scaler). The online diagnosis and
:func:`~stability_lab.watch_report.finish` judge that trace with the lab's own code.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def policy_of(params: list, autocast: tuple[bool, Any], scaled: bool):
    """The :class:`~stability_lab.precision.policies.Policy` of the loop: ``params``'
    dtype, ``autocast`` = (enabled, dtype) as the last forward pass saw it, ``scaled``:
    a GradScaler is used."""
    from stability_lab.precision import policies as P

    pdt = str(params[0].dtype).replace("torch.", "") if params else "float32"
    on, adt = autocast
    if on:
        out = str(adt).replace("torch.", "")
        return P.Policy(f"autocast-{out}", pdt, pdt, out, master=True, autocast=True,
                        loss_scaling=scaled)
    return P.Policy(pdt, pdt, pdt, pdt)


def watched_trace(w, policy, started: float, attributor):
    """The run the watcher ``w`` recorded so far as a Trace (read from its public
    attributes), in ``policy``, started at ``started`` (``time.time()``), with the
    per-layer statistics of ``attributor`` (None when there were none)."""
    from stability_lab.run.attribution.summary import attribution_summary
    from stability_lab.spec import RunSpec
    from stability_lab.trace import Trace, environment

    torch = w.torch
    n = len(w.steps)
    metrics = {k: np.asarray(v, dtype=np.float64) for k, v in w.rec.items()}
    if w.scaler is None:
        del metrics["loss_scale"]
    lr0 = next((v for v in w.rec["lr"] if math.isfinite(v)), math.nan)
    spec = RunSpec(task="watched", data=w.name, precision=policy.param_dtype,
                   policy=None, lr=lr0 if math.isfinite(lr0) else 0.0, epochs=n,
                   seed=0, params=tuple(sorted({
                       "model": type(w.inner).__name__,
                       "every": w.every, "started": round(started, 3),
                       "autocast": policy.output if policy.autocast else "off",
                       "world_size": w.world}.items())))
    meta = environment()
    meta.update({"policy": policy.name, "compiled": w.compiled,
                 "watched_steps": w.step_no})
    trace = Trace(spec=spec, metrics=metrics, probes={"end": {}}, meta=meta,
                  step_unit="step")
    attr = attribution_summary(attributor, w.creators)
    trace.extras.update({
        "policy": policy.name,
        "semantics": (f"native torch: parameters {policy.param_dtype}"
                      + (f", autocast {policy.output}" if policy.autocast else "")
                      + (", GradScaler" if w.scaler is not None else "")),
        "format": {"name": policy.param_dtype, "activations": policy.act_format.name,
                   "gradients": policy.grad_format.name, "outputs": policy.output,
                   "max": policy.act_format.max, "tiny": policy.act_format.tiny},
        "steps_run": n, "steps_planned": n, "watched": {
            "creator_dtype": next((c.get("dtype") for c in w.creators
                                   if c["kind"] == "created"), None),
            "optimizer_steps": w.step_no, "recorded_steps": w.steps,
            "every": w.every, "compiled": w.compiled, "world_size": w.world,
            "torch": torch.__version__},
        "attribution": attr,
    })
    if w.scaler is not None and n:
        used = metrics["loss_scale"]
        trace.extras["loss_scaler"] = {
            "skipped_steps": int(np.nansum(metrics["skipped"])),
            "final_scale": float(w.scaler.get_scale()),
            "min_scale": float(np.nanmin(used)), "max_scale": float(np.nanmax(used))}
    return trace
