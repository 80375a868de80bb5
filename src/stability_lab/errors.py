"""User-facing errors.

Every error a user can cause by what they typed or handed in is a :class:`LabError`.
The CLI prints its message as one line (``stability-lab: error: ...``) and exits with
code 2, with no traceback. Messages name the input, say what was expected and what to
do, in the manner of scikit-learn's parameter validation:

    The 'lr' parameter must be a positive float. Got -1 instead; pass e.g. --lr 0.01.

Faults of the machine rather than of the input (a full disk, a read-only folder, a
store another process holds locked past the bounded wait, a damaged ``lab.sqlite``)
are an :class:`EnvironmentFault`: one line too, exit code 3, so a script can tell
"fix the command" (2) from "fix the machine and run the same command again" (3).
"""

from __future__ import annotations


class LabError(Exception):
    """An error caused by the user's input; reported in one line, exit code 2."""

    exit_code = 2


class UsageError(LabError, ValueError):
    """A bad option, axis, value or data source."""


class DataError(LabError, ValueError):
    """Data that cannot be used as given (missing file, NaN, wrong shape, ...)."""


class ResourceError(LabError):
    """A sweep estimated not to fit in this machine's memory, refused before it starts
    (exit 2: change the command, or add ``--force``)."""


class EnvironmentFault(LabError):
    """The machine, not the input: disk full, read-only, store locked or damaged; exit 3."""

    exit_code = 3
