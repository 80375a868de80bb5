"""Reading an attribution step's numbers into per-module values.

A step's reductions stay as the path left them (no host transfer in the step); a
:class:`PendingStep` keeps them with the :class:`StepProgram` that says whose they are,
and :func:`decode_step` turns them into one row of ``(module, statistic)`` values: the
activation and gradient absmax and headroom, the sampled below-normal and zero
fractions, the dead-unit fraction of ReLU calls, the fractions the emulated GEMMs
flushed to zero, and per module the gradient norm and update-to-weight ratio.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np

from stability_lab.precision import policies as P
from stability_lab.run.attribution import torch_path
from stability_lab.run.attribution.step import ParamSums

ACT_KEYS = ("act_absmax", "act_headroom", "act_below_normal", "act_zero")
GRAD_KEYS = ("grad_absmax", "grad_headroom", "grad_below_normal", "grad_zero")
PARAM_KEYS = ("grad_norm", "update_ratio")


class StepProgram(NamedTuple):
    """How to read one layout of a step's numbers into per-module values."""

    #: per activation and per gradient: the modules that produced it (or received it)
    act_owners: tuple[tuple[str, ...], ...]
    grad_owners: tuple[tuple[str, ...], ...]
    #: per ReLU call: (module, units)
    relu_calls: tuple[tuple[str, int], ...]
    #: items of the step's ``relu_max`` and ``input_max`` (:class:`.step.StepTensors`)
    relu_max: tuple[tuple[int, int], ...]
    input_max: tuple[tuple[int, int], ...]
    #: the plan of the path that reduced the step (None: the torch path, no tensors)
    plan: Any


class PendingStep(NamedTuple):
    """One attribution step's numbers, not decoded yet."""

    program: StepProgram
    #: the C kernel's float64 array, or the torch path's tensors
    values: Any
    grad_scale: float
    #: the weights before the update were snapshot (update ratios measured)
    update_measured: bool
    #: the emulated GEMMs' rounding counts per (module, pass), or None
    gemm_counts: dict[tuple[str, str], list[int]] | None
    param_sums: ParamSums | None


def decode_step(step: PendingStep, policy: P.Policy,
                columns: Callable[[str, tuple[str, ...]], tuple[int, ...]]
                ) -> dict[int, float]:
    """One step's row: ``{column: value}``, columns from ``columns(module, keys)``."""
    act_head = policy.act_format.headroom_log2
    grad_head = policy.grad_format.headroom_log2
    program, values, scale = step.program, step.values, step.grad_scale
    plan = program.plan
    if type(values) is np.ndarray:  # the C kernel's one flat buffer
        unit_max, vals = plan.split(values)
    else:
        unit_max, vals = torch_path.split_values(values, bool(program.relu_calls))
    alive: list[int] = []
    rmax: list[float] = []
    if unit_max is not None:
        # per ReLU call: units whose maximum (or alive flag) is not 0 (NaN: alive), the
        # largest maximum (NaN if any is NaN; the zero padding changes nothing)
        alive = np.count_nonzero(unit_max, axis=1).tolist()
        rmax = unit_max.max(axis=1).tolist()
    pos = 0
    relu_max, input_max = dict(program.relu_max), dict(program.input_max)
    row: dict[int, float] = {}
    # activations and gradients: absmax (exact), headroom, sampled fractions
    if plan is not None:
        sizes = plan.sizes
        n_t = len(sizes)
        n_acts = len(program.act_owners)
        lows = vals[pos:pos + n_t]
        highs = vals[pos + n_t:pos + 2 * n_t]
        nonzeros = vals[pos + 2 * n_t:pos + 3 * n_t]
        normals = vals[pos + 3 * n_t:pos + 4 * n_t]
        pos += 4 * n_t
        for i in range(n_t):
            k = relu_max.get(i)
            if k is None:
                lo = lows[i]
                k = input_max.get(i)
                hi = highs[i] if k is None else rmax[k]
                am = -lo if -lo > hi else hi
                if lo != lo or hi != hi:
                    am = math.nan
            else:
                am = rmax[k]
            size = sizes[i]
            n = max(size, 1)
            if i < n_acts:
                av = am
                head = act_head(av)
                names, keys = program.act_owners[i], ACT_KEYS
            else:
                av = am / scale
                head = grad_head(av * scale)
                names, keys = program.grad_owners[i - n_acts], GRAD_KEYS
            nonzero = nonzeros[i]
            zero = (size - nonzero) / n
            below = (nonzero - normals[i]) / n
            for name in names:
                c0, c1, c2, c3 = columns(name, keys)
                row[c0] = av
                row[c1] = head
                row[c2] = below
                row[c3] = zero
    for (name, width), n_alive in zip(program.relu_calls, alive):
        row[columns(name, ("dead_frac",))[0]] = 1.0 - n_alive / max(width, 1)
    if step.gemm_counts is not None:
        for (name, which), (flushed, _b, _o, total) in step.gemm_counts.items():
            c = columns(name, ("act_flush",) if which == "forward" else ("grad_flush",))[0]
            row[c] = row.get(c, 0.0) + flushed / max(total, 1)
    # parameter gradients and update ratios, per module
    if step.param_sums is not None:
        n_sums, groups = step.param_sums.count, step.param_sums.modules
        gs = vals[pos:pos + n_sums]
        ws = vals[pos + n_sums:pos + 2 * n_sums]
        us = vals[pos + 2 * n_sums:pos + 3 * n_sums]
        s2 = scale * scale
        for name, cs in groups:
            g2 = w2 = u2 = 0.0
            for c in cs:
                g2 += gs[c]
                w2 += ws[c]
                u2 += us[c]
            c0, c1 = columns(name, PARAM_KEYS)
            row[c0] = math.sqrt(g2 / s2)
            row[c1] = (math.sqrt(u2) / math.sqrt(w2) if step.update_measured else math.nan
                       ) if w2 > 0 else math.nan
    return row
