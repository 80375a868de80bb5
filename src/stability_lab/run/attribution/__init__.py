"""Per-layer attribution: where in a model the numbers go wrong.

Three mechanisms, all keyed by the qualified names of ``model.named_modules()`` (the
root module is called ``<model>``, :data:`ROOT`):

**Statistics every k steps** (:class:`Attributor`, in :mod:`.attributor`). On an
attribution step hooks stash each module's output and the gradient arriving at it; at the
end of the step, per stashed tensor: the exact minimum and maximum (NaN propagates); for
an ``nn.ReLU`` output still as the ReLU returned it, the per-unit maxima instead, which
give the dead units and the absmax at once, and, for the ReLU's input when it is
unchanged since, its maximum where positive; and the counts over a strided sample.
Parameters, gradients and updates give float64 sums of squares per module. All of it is
one call of a C kernel (:mod:`.kernel_path`); where the kernel is not built, or a tensor
is not a strided CPU tensor of float32/float64/float16/bfloat16 (or a parameter not
contiguous), the same numbers come from torch reductions (:mod:`.torch_path`;
``kernel_path.REDUCE`` selects, and the tests run both and every copy of the kernel).
Per module and step:

- activation and gradient absmax, and headroom ``log2(fmax / absmax)`` in powers of two
  to the largest finite value of the format the policy holds them in;
- the fraction of non-zero values below the format's smallest normal (subnormal range),
  and the fraction of zeros (NaN counts as zero), both over a deterministic strided
  sample of ``SAMPLE`` to ``2 * SAMPLE - 1`` values per tensor (``reshape(-1)[::s]`` with
  ``s = numel // SAMPLE``; every value of smaller tensors); where the lab does the
  rounding (emulated GEMMs), the fraction flushed to zero (non-zero before rounding, zero
  after); the fraction of dead units (zero in every row of the batch; NaN counts as
  alive) for ReLU outputs;
- gradient norm of the module's own parameters and the update-to-weight ratio
  ``||dW|| / ||W||``.

**Creators of non-finite values** (:func:`find_creators`, in :mod:`.creators`): a step
whose loss or gradients are non-finite is replayed with full checks, naming the module
that made the first inf/NaN in the forward or the backward pass and those that only
passed it on.

**Warnings before the overflow** (:func:`headroom_projections`, in :mod:`.headroom`):
modules whose headroom falls steadily, with the step at which a fitted line reaches zero.

The files, along the step: :mod:`.modules` (module names, tensors in outputs),
:mod:`.attributor` (the hooks and the step), :mod:`.step` (what a step hands its
reductions), :mod:`.kernel_path` and :mod:`.torch_path` (the two reduction paths),
:mod:`.decode` (a step's numbers into per-module values), :mod:`.table` (their storage),
:mod:`.creators`, :mod:`.headroom`.
"""

from stability_lab.run.attribution.attributor import Attributor
from stability_lab.run.attribution.creators import find_creators
from stability_lab.run.attribution.headroom import fit_line, headroom_projections
from stability_lab.run.attribution.kernel_path import kernel_targets
from stability_lab.run.attribution.modules import ROOT, first_tensor, qualified_names
from stability_lab.run.attribution.step import SAMPLE

__all__ = ["Attributor", "ROOT", "SAMPLE", "find_creators", "first_tensor", "fit_line",
           "headroom_projections", "kernel_targets", "qualified_names"]
