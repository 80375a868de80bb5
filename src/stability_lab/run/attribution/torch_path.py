"""An attribution step's reductions done by torch: the path where the C kernel is not
built, or a tensor is not one it reads (a subclass, a device tensor, another dtype).

Per tensor, one or two reductions (its exact minimum and maximum, or the per-unit maxima
of a ReLU output) and one strided copy of its sample, read while the tensor is still in
cache; then comparisons and sums over all samples at once, and the parameters' sums of
squares from one flat buffer: a fixed number of torch calls over all tensors together,
and no host transfer (the results stay tensors until they are decoded).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch

from stability_lab.run.attribution.step import (ParameterBuffers, Reduction, ReluCall,
                                                StepTensors, Thresholds, sample_shape)

_NUMEL = torch.Tensor.numel


class SamplePlan(NamedTuple):
    """Sample strides and sizes, scratch buffers and thresholds for one layout of shapes.

    The samples go, one row per tensor, into a zero-padded ``(2, tensors, longest)``
    buffer: row block 0 holds ``|x|``, block 1 ``|x| >= thr`` (thresholds per row). The
    minimum and maximum of every tensor go into one ``(2, tensors)`` buffer of the
    promoted dtype (values of a narrower dtype convert exactly).
    """

    strides: list[int]
    #: values sampled per tensor
    sizes: list[int]
    samples: torch.Tensor
    #: the two blocks of ``samples``: ``|x|`` (then ``|x| > 0``), and ``|x| >= thr``
    magnitudes: torch.Tensor
    indicators: torch.Tensor
    #: per tensor: its row of block 0, as long as its sample
    sample_rows: list[torch.Tensor]
    #: ``(tensors, 1)``: the below-normal threshold of each row
    thresholds: torch.Tensor
    #: per tensor: its minimum's and its maximum's slot, and whether its dtype is the
    #: buffer's (the reduction then writes there directly)
    minima: list[torch.Tensor]
    maxima: list[torch.Tensor]
    same_dtype: list[bool]
    #: the ``(2, tensors)`` minima and maxima, flat
    extrema: torch.Tensor


class UnitPlan(NamedTuple):
    """A zero-padded ``(ReLU calls, widest)`` buffer for the per-unit maxima, and the row
    of each call (as wide as the call's output)."""

    maxima: torch.Tensor
    rows: list[torch.Tensor]


class TorchPath:
    """The torch reductions' plans for one model: :meth:`reduce` runs one step.

    ``params``: the model's parameters in the Attributor's order; ``buffers`` makes
    (once) or returns their flat buffers.
    """

    def __init__(self, params: list[torch.Tensor], buffers: Callable[[], ParameterBuffers],
                 thresholds: Thresholds) -> None:
        self.params = params
        self.buffers = buffers
        self.thresholds = thresholds
        self._plans: dict[tuple, SamplePlan] = {}
        self._unit_plans: dict[tuple, UnitPlan] = {}

    def reduce(self, step: StepTensors) -> Reduction:
        """The step's reductions; the values are a list of tensors: the unit rows (where
        there are ReLU calls), the minima and maxima, the per-row sums of the sample
        block (non-zero counts, then ``>= thr`` counts), the per-chunk parameter sums."""
        tensors, relus, fast_units = step.tensors, step.relus, step.fast_units
        relu_max, input_max = step.relu_max, step.input_max
        pieces: list[torch.Tensor] = []
        plan = None
        ps = self.params
        with torch.no_grad():
            unit_rows: dict[int, list[int]] = {}  # tensor index -> its ReLU calls
            if relus:
                units = self._unit_plan(relus)
                for k, r in enumerate(relus):
                    unit_rows.setdefault(r.output_index, []).append(k)
            if tensors:
                plan = self._plan(tensors, step)
                # per tensor, in one visit: the exact minimum and maximum (both propagate
                # NaN) or the ReLU unit maxima, and the same deterministic strided sample
                # as a per-tensor reshape(-1)[::s]
                for i, (t, lo, hi, same, s, n, row) in enumerate(zip(
                        tensors, plan.minima, plan.maxima, plan.same_dtype, plan.strides,
                        plan.sizes, plan.sample_rows)):
                    ks = unit_rows.get(i)
                    if ks is not None:
                        rows_by_units = t if t.dim() == 2 else (
                            t.reshape(-1, t.shape[-1]) if t.dim() > 1 else t.reshape(1, -1))
                        for k in ks:
                            if fast_units[k]:
                                if t.dtype == units.maxima.dtype:
                                    torch.amax(rows_by_units, 0, out=units.rows[k])
                                else:
                                    units.rows[k].copy_(rows_by_units.amax(0))
                            else:
                                units.rows[k].copy_(rows_by_units.ne(0).any(0))
                    if i not in relu_max:
                        if same:
                            torch.amin(t, (), out=lo)
                            if i not in input_max:
                                torch.amax(t, (), out=hi)
                        else:
                            lo.copy_(t.amin())
                            if i not in input_max:
                                hi.copy_(t.amax())
                    # |x| of the sample, read while the tensor is still in cache
                    src = (torch.as_strided(t, (n,), (s,), t.storage_offset())
                           if t.is_contiguous() else t.reshape(-1)[::s])
                    if t.dtype == row.dtype:
                        torch.abs(src, out=row)
                    else:  # a narrower dtype converts exactly
                        row.copy_(src).abs_()
                if relus:
                    # unit maxima (or alive flags): alive units and maxima counted when
                    # the step is decoded
                    pieces.append(units.maxima.clone())
                # indicators as 0/1 floats summed per row (comparisons written as floats,
                # no bool kernels): |x| >= thr (normal or infinite) and |x| > 0; NaN is
                # false in both, so it counts as zero; the zero padding counts in neither
                torch.ge(plan.magnitudes, plan.thresholds, out=plan.indicators)
                torch.gt(plan.magnitudes, 0, out=plan.magnitudes)
                pieces.append(plan.extrema.clone())
                pieces.append(plan.samples.sum(-1).view(-1))
            param_sums = None
            if ps:
                # gradients, weights and the update of every parameter in one flat buffer
                # (the update in the parameters' dtype); sums of squares per chunk in float64
                buffers = self.buffers()
                gl = [p.grad for p in ps]
                if all(g is not None for g in gl):
                    torch._foreach_copy_(buffers.grads, gl)
                else:
                    for v, g in zip(buffers.grads, gl):
                        v.copy_(g) if g is not None else v.zero_()
                torch._foreach_copy_(buffers.weights, ps)
                before = step.before
                if before is not None:
                    if before is not buffers.before:  # a snapshot made by the caller
                        torch._foreach_copy_(buffers.before, before)
                    buffers.update_row.sub_(buffers.weight_row)  # before - after, negated
                buffers.chunks64.copy_(buffers.chunks)
                pieces.append(buffers.chunks64.square_().sum(-1).view(-1))
                param_sums = buffers.sums
        return Reduction(plan, pieces, param_sums)

    def _plan(self, tensors: list[torch.Tensor], step: StepTensors) -> SamplePlan:
        """The :class:`SamplePlan` of these shapes and dtypes, made once."""
        n_acts, thr_act, thr_grad = step.n_acts, step.act_tiny, step.grad_tiny
        key = (n_acts, thr_act, thr_grad, tuple(map(_NUMEL, tensors)),
               tuple(t.dtype for t in tensors))
        plan = self._plans.get(key)
        if plan is None:
            strides, sizes, thrs = [], [], []
            dtype = torch.float32  # sums of 0/1 up to 4095 are exact in float32
            for i, t in enumerate(tensors):
                s, m = sample_shape(t.numel())
                strides.append(s)
                sizes.append(m)
                thrs.append(self.thresholds(thr_act if i < n_acts else thr_grad, t.dtype))
                dtype = torch.promote_types(dtype, t.dtype)
            samples = torch.zeros(2, len(tensors), max(sizes), dtype=dtype)
            ext_dtype = tensors[0].dtype
            for t in tensors:
                ext_dtype = torch.promote_types(ext_dtype, t.dtype)
            extrema = torch.zeros(2, len(tensors), dtype=ext_dtype)
            plan = self._plans[key] = SamplePlan(
                strides, sizes, samples, samples[0], samples[1],
                [samples[0, i, :n] for i, n in enumerate(sizes)],
                torch.tensor(thrs, dtype=dtype).reshape(-1, 1),
                [extrema[0, i] for i in range(len(tensors))],
                [extrema[1, i] for i in range(len(tensors))],
                [t.dtype == ext_dtype for t in tensors], extrema.view(-1))
        return plan

    def _unit_plan(self, relus: list[ReluCall]) -> UnitPlan:
        """The :class:`UnitPlan` of these ReLU calls' widths and dtypes, made once."""
        key = tuple((r.output.shape[-1], r.output.dtype) for r in relus)
        plan = self._unit_plans.get(key)
        if plan is None:
            dtype = relus[0].output.dtype
            for r in relus:
                dtype = torch.promote_types(dtype, r.output.dtype)
            buf = torch.zeros(len(relus), max(w for w, _d in key), dtype=dtype)
            plan = self._unit_plans[key] = UnitPlan(
                buf, [buf[k, :w] for k, (w, _d) in enumerate(key)])
        return plan


def split_values(pieces: list[torch.Tensor], has_units: bool
                 ) -> tuple[np.ndarray | None, list[float]]:
    """``(unit maxima: one row per ReLU call, or None; the other values)`` of
    :meth:`TorchPath.reduce`'s pieces."""
    unit_max = None
    if has_units:
        unit_max = pieces[0].double().numpy()
        pieces = pieces[1:]
    return unit_max, [v for t in pieces for v in t.tolist()]
