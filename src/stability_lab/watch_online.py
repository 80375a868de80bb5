"""The watcher's online diagnosis: the lab's diagnosis run while the user's loop trains.

When (:func:`diagnosis_due`): at the first non-finite step, and every
:data:`DIAGNOSE_EVERY` recorded steps or rarer, so that it costs at most about 1% of the
loop's time (each diagnosis's cost is measured). What (:func:`say_new_findings`): the
watched trace is diagnosed (``diagnosis.diagnose``, the one signature registry) and each
finding not said before is said in one line, with its onset step and its module.
"""

from __future__ import annotations

import math
from typing import Callable

#: recorded steps between two online diagnoses, at least (and at the first non-finite
#: step); more when a diagnosis costs more than 1% of that many steps' time
DIAGNOSE_EVERY = 25


def diagnosis_due(first_bad: bool, since_last: int, cost: float, step_time: float) -> bool:
    """Whether to diagnose now: ``first_bad``, the first non-finite step; ``since_last``,
    recorded steps since the last diagnosis, which took ``cost`` seconds; ``step_time``,
    seconds of this step."""
    # online diagnosis at the first bad step, and every DIAGNOSE_EVERY recorded
    # steps or rarer: at most ~1% of the loop's time (its cost is measured)
    gap = max(DIAGNOSE_EVERY, math.ceil(100 * cost / max(step_time, 1e-6)))
    return bool(first_bad or since_last >= gap)


def say_new_findings(trace, steps: list[int], seen: set[tuple],
                     say: Callable[[str], None]) -> None:
    """Diagnose ``trace`` (its rows are the optimizer steps ``steps``) and ``say`` one
    line per finding whose (signature, location) is not in ``seen`` (which it adds)."""
    from stability_lab.diagnosis import diagnose

    verdict, findings = diagnose(trace)
    for f in findings:
        key = (f.signature, f.location)
        if key in seen:
            continue
        seen.add(key)
        onset = steps[f.onset - 1] if f.onset and f.onset <= len(steps) else f.onset
        where = f.location or culprit(trace) or "the whole model"
        say(f"{f.signature} at step {onset} in {where}: {f.message}")


def culprit(trace) -> str | None:
    """The module that created the first non-finite value, per the trace's attribution."""
    first = (trace.extras.get("attribution") or {}).get("first_creator")
    return first["module"] if first else None
