"""The signature registry: every failure signature the lab names, each once.

:data:`ENTRIES` lists the :class:`~.base.Signature` records in the order a run's
findings are reported. Each record is declared beside its detector, in one file per
signature or per family of signatures. Adding a signature is one new file declaring its
record and one line here (docs/extending.md shows how).

:func:`detect_all` is the one detection path, for the lab's runs and the watcher alike:
every signature that applies to the trace runs on it.
"""

from __future__ import annotations

from stability_lab.diagnosis.findings import Finding
from stability_lab.diagnosis.signatures import (collapse_to_chance, conditioning, deep_net,
                                                dynamics, nonfinite, reference, rounding)
from stability_lab.diagnosis.signatures.base import Signature
from stability_lab.trace import Trace

ENTRIES: tuple[Signature, ...] = (
    nonfinite.OVERFLOW,
    nonfinite.NAN_CREATION,
    dynamics.DIVERGENCE,
    dynamics.EDGE_OF_STABILITY,
    dynamics.LOSS_SPIKE,
    rounding.STAGNATION,
    rounding.GRADIENT_UNDERFLOW,
    conditioning.CATASTROPHIC_CANCELLATION,
    conditioning.ILL_CONDITIONED_BLOWUP,
    conditioning.RANK_DEFICIENCY,
    reference.SILENT_DIGIT_LOSS,
    reference.NONDETERMINISM,
    rounding.SATURATION,
    collapse_to_chance.COLLAPSE_TO_CHANCE,
    deep_net.NONFINITE_CREATED,
    deep_net.EXPLODING_GRADIENTS,
    deep_net.VANISHING_GRADIENTS,
    deep_net.DYING_RELU,
    deep_net.LOGIT_GROWTH,
    deep_net.ATTENTION_LOGIT_GROWTH,
    deep_net.LOSS_SCALE_COLLAPSE,
    deep_net.HEADROOM_SHRINKING,
)

#: the records by name, in :data:`ENTRIES` order
SIGNATURES: dict[str, Signature] = {}
for _record in ENTRIES:
    if _record.name in SIGNATURES:
        raise ValueError(f"signature {_record.name!r} is registered twice")
    SIGNATURES[_record.name] = _record
del _record


def detect_all(trace: Trace) -> list[Finding]:
    """Every finding of every signature that applies to the trace, in registry order."""
    if trace.error or trace.n_steps == 0 and not trace.probes:
        return []
    out: list[Finding] = []
    for signature in ENTRIES:
        if signature.applies(trace):
            out.extend(signature.detect(trace))
    return out


def detect(trace: Trace, name: str) -> list[Finding]:
    """The findings of one signature's detector."""
    return SIGNATURES[name].detect(trace)
