"""The failure signatures: one registry of declared records, their detectors beside them.

- :mod:`.base`: the :class:`Signature` record (detector, the traces it applies to,
  playbook text, mitigations, catalogue scenario, hand-made traces) and its
  :class:`Playbook` text.
- :mod:`.registry`: the records in reporting order (:data:`SIGNATURES`) and
  :func:`detect_all`, the one detection path for every trace.
- the signatures, by family: :mod:`.nonfinite` (overflow, nan_creation),
  :mod:`.dynamics` (divergence, edge_of_stability, loss_spike), :mod:`.rounding`
  (stagnation, gradient_underflow, saturation), :mod:`.conditioning`
  (catastrophic_cancellation, ill_conditioned_blowup, rank_deficiency),
  :mod:`.reference` (silent_digit_loss, nondeterminism, and the context they read:
  :func:`attach_reference`, :func:`attach_determinism`), :mod:`.collapse_to_chance`,
  and :mod:`.deep_net` (per-layer findings of deep-net traces);
- :mod:`.common`: what the detectors read (:func:`trace_format`, probes, the finite
  prefix of the loss) and the builder of hand-made traces.

Detectors are pure, cheap functions of one trace: vectorised NumPy over the metric
arrays, tens of microseconds per run.
"""

from __future__ import annotations

from stability_lab.diagnosis.signatures.base import APPLIES_TO, Playbook, Signature
from stability_lab.diagnosis.signatures.common import trace_format
from stability_lab.diagnosis.signatures.reference import (agreeing_digits, attach_determinism,
                                                          attach_reference)
from stability_lab.diagnosis.signatures.registry import SIGNATURES, detect, detect_all

__all__ = ["APPLIES_TO", "Playbook", "SIGNATURES", "Signature", "agreeing_digits",
           "attach_determinism", "attach_reference", "detect", "detect_all", "trace_format"]
