"""Output paths, checked before any work starts (no heavy imports here).

``--out DIR`` (the run store's folder) and ``--html FILE`` are checked before data is
loaded or a run starts, so a sweep never runs for minutes and then fails to save:

- a folder given where a file is expected, or a file where a folder is expected (or
  a path through a file), is a :class:`~stability_lab.errors.UsageError` (exit 2);
- a folder the lab cannot write (read-only file system, no permission) is an
  :class:`~stability_lab.errors.EnvironmentFault` (exit 3). Writability is tested by
  creating and removing a probe file, not by ``os.access``: permission bits say nothing
  for root or on a read-only mount;
- an existing ``lab.sqlite`` that is not an SQLite database is reported as damaged
  (exit 3) before the sweep, not after it.

Nothing is left behind: no folder is created here and the probe file is removed.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from stability_lab.errors import EnvironmentFault, UsageError

SQLITE_MAGIC = b"SQLite format 3\x00"


def _existing_ancestor(path: Path) -> Path:
    """The nearest ancestor of ``path`` (or itself) that exists."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_write(folder: Path, path_shown: str, flag: str) -> None:
    """Create and remove a file in ``folder``; an OSError becomes a one-line fault."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".stability-lab-probe-"):
            pass
    except OSError as exc:
        raise os_fault(exc, f"{flag} {path_shown}", f"pass {flag} a writable location") from None


def os_fault(exc: OSError, what: str, todo: str) -> EnvironmentFault:
    """An OSError while writing ``what`` as a one-line fault (exit 3)."""
    reason = {
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EIO: "an input/output error",
    }.get(exc.errno, exc.strerror or str(exc))
    return EnvironmentFault(f"Cannot write {what}: {reason}; {todo}.")


def check_output_dir(directory: str | Path, flag: str = "--out") -> None:
    """``directory`` can hold the run store: a folder (or creatable), writable, and any
    ``lab.sqlite`` in it is an SQLite file."""
    d = Path(directory)
    shown = str(directory)
    if d.exists() and not d.is_dir():
        raise UsageError(f"{flag} {shown} is a file, not a folder; pass a folder for the run "
                         "store (it is created if missing).")
    base = _existing_ancestor(d)
    if not base.is_dir():
        raise UsageError(f"{flag} {shown} goes through {str(base)!r}, which is a file, not a "
                         "folder; pass another folder.")
    _probe_write(base, shown, flag)
    db = d / "lab.sqlite"
    if db.is_dir():
        raise UsageError(f"{db} is a folder, not the run store file; pass another {flag}.")
    if db.exists():
        try:
            with db.open("rb") as fh:
                head = fh.read(len(SQLITE_MAGIC))
        except OSError as exc:
            raise os_fault(exc, str(db), f"pass another {flag}") from None
        if head and head != SQLITE_MAGIC:  # an empty file is a new store to SQLite
            raise EnvironmentFault(
                f"The run store {db} is damaged or not an SQLite file (it does not start "
                f"with the SQLite header); move it aside (a new store is then created) or "
                f"pass another {flag}.")


def check_output_file(path: str | Path, flag: str) -> None:
    """``path`` can be written as a file: not a folder, its folder exists and is
    writable (an existing file is replaced later, not touched here)."""
    p = Path(path)
    shown = str(path)
    if p.is_dir() or shown.endswith(("/", os.sep)):
        raise UsageError(f"{flag} {shown} is a folder; pass a file path such as "
                         f"{str(p / 'report.html')!r}.")
    parent = p.parent
    if not parent.exists():
        base = _existing_ancestor(parent)
        if not base.is_dir():
            raise UsageError(f"{flag} {shown} goes through {str(base)!r}, which is a file, "
                             "not a folder; pass another path.")
        raise UsageError(f"Cannot write {flag} {shown}: folder {str(parent)!r} does not exist; "
                         "create it or pick another path.")
    if not parent.is_dir():
        raise UsageError(f"{flag} {shown} goes through {str(parent)!r}, which is a file, not "
                         "a folder; pass another path.")
    if p.exists():
        try:  # opening for append changes nothing, and fails where writing would
            with p.open("ab"):
                pass
        except OSError as exc:
            raise os_fault(exc, f"{flag} {shown}", "pass a writable path") from None
    else:
        _probe_write(parent, shown, flag)
