"""What one attribution step hands its reductions, and what both reduction paths share.

The :class:`~stability_lab.run.attribution.attributor.Attributor` gathers a step's
outputs, gradients and parameters into a :class:`StepTensors`; the C kernel path
(:mod:`.kernel_path`) or the torch path (:mod:`.torch_path`) reduces it to a
:class:`Reduction`, whose numbers are decoded into per-module values when the results
are read. Both paths measure the same statistics from the same definitions, given here:
the deterministic strided sample (:data:`SAMPLE`, :func:`sample_shape`), the
below-normal threshold as a comparison in the tensor's dtype sees it
(:class:`Thresholds`), and the flat parameter buffers (:class:`ParameterBuffers`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

#: values per tensor sampled for the below-normal and zero fractions
SAMPLE = 2048


def sample_shape(n: int) -> tuple[int, int]:
    """``(s, values sampled)`` of the strided sample ``reshape(-1)[::s]`` of ``n`` values."""
    s = max(1, n // SAMPLE)
    return s, -(-n // s)


def rounded(value: float, dtype: torch.dtype) -> float:
    """``value`` as the tensor comparison ``t >= value`` sees it for a tensor of ``dtype``."""
    return float(torch.tensor(value, dtype=torch.float64).to(dtype))


class Thresholds:
    """:func:`rounded` per ``(threshold, dtype)``, computed once per pair."""

    def __init__(self) -> None:
        self._cache: dict[tuple[float, torch.dtype], float] = {}

    def __call__(self, thr: float, dtype: torch.dtype) -> float:
        k = (thr, dtype)
        v = self._cache.get(k)
        if v is None:
            v = self._cache[k] = rounded(thr, dtype)
        return v


class ReluCall(NamedTuple):
    """One call of a module whose dead units are measured (its class is called ``ReLU``)."""

    module: str
    output: torch.Tensor
    #: the output's index among the step's tensors
    output_index: int
    #: the output's version when the module returned it
    version: int
    #: an ``nn.ReLU``: its output is ``>= 0`` (or NaN) as returned
    is_relu: bool
    #: for an exact ``nn.ReLU`` whose input is one of the step's outputs of the same
    #: shape: ``(the input's index, its version then)``; else None
    input_link: tuple[int, int] | None


class StepTensors(NamedTuple):
    """Everything one attribution step reduces, as the Attributor gathered it."""

    #: the unique module outputs in forward order, then their gradients in backward order
    tensors: list[torch.Tensor]
    n_acts: int
    relus: list[ReluCall]
    #: per ReLU call: its output is as the ReLU returned it, so its per-unit maxima are
    #: measured (dead units and absmax at once); else only a flag per unit (alive)
    fast_units: list[bool]
    #: tensor index -> the ReLU call whose unit maxima give its maximum (and absmax)
    relu_max: dict[int, int]
    #: tensor index -> the ReLU call that had it, unchanged, as input: the largest unit
    #: maximum is the input's maximum where positive, so only its minimum is needed
    input_max: dict[int, int]
    #: the parameters before the update (None: no update measured this step)
    before: list[torch.Tensor] | None
    #: thresholds of the below-normal count: the activation format's smallest normal,
    #: and the gradient format's times the loss scale (the gradients are scaled)
    act_tiny: float
    grad_tiny: float


class ParamSums(NamedTuple):
    """Where a step's parameter sums of squares lie in its values: ``count`` sums of
    squared gradients, then as many of weights, then of updates; per module, the indices
    (among ``count``) of the sums that add up to its own."""

    count: int
    modules: list[tuple[str, list[int]]]


class Reduction(NamedTuple):
    """One step's reduced numbers, as a path left them (decoded later).

    ``plan`` is the cached plan of the layout (its identity keys the step's program);
    ``values`` the C kernel's one float64 array, or the torch path's list of tensors.
    """

    plan: Any
    values: Any
    #: None where the model has no parameters
    param_sums: ParamSums | None


class ParameterBuffers:
    """Flat, zero-padded ``(3, chunks, C)`` parameter buffers, made once per model.

    Rows: gradients, weights, and the weights before the update (the snapshot of
    :meth:`~.attributor.Attributor.before_update`), which the torch path turns in place
    into the update ``before - after``; all in the parameters' promoted dtype, at least
    float32, and copied into a float64 twin for the sums of squares. Each module's
    parameters lie one after the other from a chunk boundary on, so the per-chunk sums of
    squares add up, in Python, to the module's sums of squares (the padding stays zero).
    The C kernel path reads the parameters in place and uses only the snapshot row.
    """

    def __init__(self, params: list[torch.Tensor], owners: list[str]) -> None:
        total = sum(p.numel() for p in params)
        n_mod = len(set(owners)) or 1
        chunk = 64
        while chunk < 16384 and chunk * 8 * n_mod < total:
            chunk *= 2
        dtype = torch.float32
        for p in params:
            dtype = torch.promote_types(dtype, p.dtype)
        offsets, pos = [], 0
        last = None
        for name, p in zip(owners, params):
            if name != last:  # a module starts on a chunk boundary
                pos = -(-pos // chunk) * chunk
                last = name
            offsets.append(pos)
            pos += p.numel()
        n_chunks = max(1, -(-pos // chunk))
        flat = torch.zeros(3, n_chunks * chunk, dtype=dtype)
        #: per row (gradients, weights, before), per parameter: its place, shaped like it
        self.views = [[flat[r, o:o + p.numel()].view(p.shape) for o, p in zip(offsets, params)]
                      for r in range(3)]
        self.grads, self.weights, self.before = self.views
        self.weight_row = flat[1]
        self.update_row = flat[2]
        self.chunks = flat.view(3, n_chunks, chunk)
        self.chunks64 = torch.zeros(3, n_chunks, chunk, dtype=torch.float64)
        chunk_owner: list[str | None] = [None] * n_chunks
        for name, o, p in zip(owners, offsets, params):
            for c in range(o // chunk, -(-(o + p.numel()) // chunk)):
                chunk_owner[c] = name
        # chunks of each module, in parameter order
        groups: dict[str, list[int]] = {}
        for c, name in enumerate(chunk_owner):
            if name is not None:
                groups.setdefault(name, []).append(c)
        #: the per-chunk sums of squares the torch path gives
        self.sums = ParamSums(n_chunks, list(groups.items()))
