"""The embedded run store (SQLite, standard library).

Layout, one database ``lab.sqlite`` in the output folder (default ``./lab-runs``):

- ``sweeps``: one row per invocation: command line, axes, base spec, conditioning,
  recommendations, and what the reports need besides the runs: the task's own report
  (the policy evaluation of deep nets), the sweep's verification rows and its note
  (JSON). Stores made before those three columns existed get them when next opened for writing
  (:data:`MIGRATIONS`); ``stability-lab report`` rebuilds what they lack from the runs.
- ``runs``: one row per run, keyed by the spec's hash: full spec, status
  (``ok``/``error``), verdict, onset, final loss, findings, summary, probes, meta, the
  error message if the run raised, and the sweep it was first run in.
- ``metrics``: one row per (run, metric name): the per-step values as a JSON array.
- ``sweep_runs``: which runs belong to which sweep (a run reused by a later sweep
  is linked, not run again).
- ``verifications``: before/after rows of mitigation re-runs, beside the run they fix.

Every run is written in its own transaction, so an interrupted sweep leaves every
completed run intact and a re-run of the same command skips them.

Faults (every SQLite error is turned into a one-line
:class:`~stability_lab.errors.EnvironmentFault`, exit code 3; see :func:`store_fault`):
a store another process holds locked is waited on for ``STABILITY_LAB_LOCK_TIMEOUT``
seconds (default 30), then reported; a full disk (SQLITE_FULL) rolls back the run being
written and keeps every finished one; a read-only folder, and a damaged or foreign
``lab.sqlite``, are reported as such. ``show`` opens the store read-only.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

from stability_lab.errors import EnvironmentFault, LabError, UsageError
from stability_lab.formatting import jsonable
from stability_lab.spec import RunSpec

DB_NAME = "lab.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS sweeps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    command TEXT NOT NULL,
    task TEXT NOT NULL,
    axes TEXT NOT NULL,
    base TEXT NOT NULL,
    conditioning TEXT,
    recommendations TEXT
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    sweep_id INTEGER,
    created REAL NOT NULL,
    task TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    verdict TEXT,
    verdict_detail TEXT,
    onset INTEGER,
    final_loss REAL,
    findings TEXT,
    summary TEXT,
    probes TEXT,
    meta TEXT,
    extras TEXT,
    error TEXT,
    step_unit TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    "values" TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS sweep_runs (
    sweep_id INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (sweep_id, run_id)
);
CREATE TABLE IF NOT EXISTS verifications (
    run_id TEXT NOT NULL,
    mitigation TEXT NOT NULL,
    fixed_run_id TEXT,
    row TEXT NOT NULL,
    PRIMARY KEY (run_id, mitigation)
);
"""


#: columns added after the first release: (table, column, type), added when a store is
#: opened for writing
MIGRATIONS = (
    ("sweeps", "report", "TEXT"),
    ("sweeps", "verification", "TEXT"),
    ("sweeps", "note", "TEXT"),
)


def _dumps(value: Any) -> str:
    return json.dumps(jsonable(value), sort_keys=True)


def _float_or_none(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def lock_timeout() -> float:
    """Seconds to wait for a store another process holds locked (bounded)."""
    try:
        value = float(os.environ.get("STABILITY_LAB_LOCK_TIMEOUT", "30"))
    except ValueError:
        value = 30.0
    return value if value >= 0 else 30.0


def store_fault(exc: sqlite3.Error, path: Path | str) -> LabError:
    """A one-line fault for an SQLite error on the store at ``path``."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    low = text.lower()
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in low:
        return EnvironmentFault(
            f"The run store {path} is locked by another process (waited "
            f"{lock_timeout():g} s); let the other stability-lab command finish and run "
            "again, or pass another --out (STABILITY_LAB_LOCK_TIMEOUT sets the wait).")
    if name.startswith("SQLITE_FULL") or "is full" in low:
        return EnvironmentFault(
            f"The disk holding the run store {path} is full ({text}); the runs finished so "
            "far are kept: free space, or pass --out on another disk, and run the same "
            "command again (finished runs are reused).")
    if (name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM"))
            or "readonly" in low or "unable to open" in low):
        return EnvironmentFault(
            f"Cannot write the run store {path} ({text}): the folder or file system is "
            "read-only or not permitted; pass --out a writable folder.")
    if name.startswith("SQLITE_IOERR") or "disk i/o" in low:
        return EnvironmentFault(
            f"Input/output error on the run store {path} ({text}); check the disk, or pass "
            "--out on another one.")
    return EnvironmentFault(
        f"The run store {path} is damaged or not a stability-lab store ({text}); move it "
        "aside (a new store is then created) or pass another --out.")


def _guarded(method):
    """Store methods raise one-line faults, never a raw sqlite3 error."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise store_fault(exc, self.path) from None

    return wrapper


class Store:
    """A handle on ``DIR/lab.sqlite``; create the folder only when writing.

    ``create=False`` opens an existing store read-only (``show``): it works on a
    read-only file system and cannot change the file.
    """

    def __init__(self, directory: str | Path, *, create: bool = True):
        self.directory = Path(directory)
        self.path = self.directory / DB_NAME
        if self.directory.exists() and not self.directory.is_dir():
            raise UsageError(f"--out {directory} is a file, not a folder; pass the folder "
                             f"that holds (or will hold) the run store {DB_NAME}.")
        if not create and not self.path.is_file():
            raise UsageError(
                f"No run store at {self.path}; run a sweep first or pass --out DIR "
                f"pointing at a folder that holds {DB_NAME}."
            )
        #: True when this handle created the database file (removed again if unused)
        self.created = not self.path.exists()
        self._made_dir = not self.directory.exists()
        self.conn: sqlite3.Connection | None = None
        try:
            if create:
                self.directory.mkdir(parents=True, exist_ok=True)
            self._connect(create)
        except (FileExistsError, NotADirectoryError):
            raise UsageError(f"--out {directory} goes through a file, not a folder; pass "
                             "another folder.") from None
        except OSError as exc:
            from stability_lab.paths import os_fault

            raise os_fault(exc, f"the run store in {directory}",
                           "pass --out a writable folder") from None

    def _connect(self, create: bool) -> None:
        try:
            if create:
                self.conn = sqlite3.connect(self.path, timeout=lock_timeout())
                self.conn.executescript(SCHEMA)
                self._migrate()
            else:
                self.conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro",
                                            uri=True, timeout=lock_timeout())
                self.conn.execute("SELECT count(*) FROM runs").fetchone()
        except sqlite3.Error as exc:
            if self.conn is not None:
                self.conn.close()
            raise store_fault(exc, self.path) from None

    def _migrate(self) -> None:
        """Add the columns a store made by an older version lacks (NULL in old rows)."""
        for table, column, kind in MIGRATIONS:
            have = {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                with self.conn:
                    self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def discard_if_unused(self, sweep_id: int | None) -> None:
        """After a sweep that stopped before storing anything: drop its sweep row, and
        the database file and folder if this handle created them. Best effort: a fault
        here (the store locked or full) leaves things as they were."""
        try:
            if sweep_id is not None:
                (n,) = self.conn.execute("SELECT count(*) FROM runs WHERE sweep_id=?",
                                         (sweep_id,)).fetchone()
                if n:
                    return
                with self.conn:
                    self.conn.execute("DELETE FROM sweep_runs WHERE sweep_id=?", (sweep_id,))
                    self.conn.execute("DELETE FROM sweeps WHERE id=?", (sweep_id,))
            if self.created:
                (n,) = self.conn.execute(
                    "SELECT (SELECT count(*) FROM sweeps) + (SELECT count(*) FROM runs)"
                ).fetchone()
                if n == 0:
                    self.close()
                    self.path.unlink(missing_ok=True)
                    if self._made_dir:
                        self.directory.rmdir()
        except (sqlite3.Error, OSError):
            pass

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------
    @_guarded
    def begin_sweep(self, command: str, task: str, axes: list, base: RunSpec) -> int:
        with self.conn:
            cur = self.conn.execute(
                "INSERT INTO sweeps (created, command, task, axes, base) VALUES (?,?,?,?,?)",
                (time.time(), command, task, _dumps(axes), _dumps(base.to_dict())),
            )
        return int(cur.lastrowid)

    @_guarded
    def finish_sweep(self, sweep_id: int, conditioning: Any, recommendations: Any) -> None:
        with self.conn:
            self.conn.execute(
                "UPDATE sweeps SET conditioning=?, recommendations=? WHERE id=?",
                (_dumps(conditioning), _dumps(recommendations), sweep_id),
            )

    @_guarded
    def save_sweep_report(self, sweep_id: int, *, report: Any = None,
                          verification: Any = None, note: str | None = None) -> None:
        """What the reports of a sweep need besides its runs (re-rendered by
        ``stability-lab report SWEEP_ID``)."""
        with self.conn:
            # key order kept (a fix's delta prints in the order it was made)
            self.conn.execute(
                "UPDATE sweeps SET report=?, verification=?, note=? WHERE id=?",
                (None if report is None else json.dumps(jsonable(report)),
                 None if verification is None else json.dumps(jsonable(verification)),
                 note, sweep_id),
            )

    @_guarded
    def has_run(self, run_id: str) -> bool:
        row = self.conn.execute(
            "SELECT status FROM runs WHERE id=?", (run_id,)
        ).fetchone()
        return row is not None and row[0] == "ok"

    @_guarded
    def save_run(self, record: dict[str, Any], metrics: dict[str, np.ndarray],
                 sweep_id: int | None = None, position: int = 0) -> None:
        """Write one run and its metrics in one transaction (all or nothing)."""
        run_id = record["id"]
        verdict = record.get("verdict") or {}
        with self.conn:
            self.conn.execute("DELETE FROM metrics WHERE run_id=?", (run_id,))
            self.conn.execute(
                """INSERT OR REPLACE INTO runs (id, sweep_id, created, task, spec, status,
                   verdict, verdict_detail, onset, final_loss, findings, summary, probes,
                   meta, extras, error, step_unit)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
                (
                    run_id,
                    sweep_id,
                    time.time(),
                    record["config"]["task"],
                    _dumps(record["config"]),
                    "error" if record.get("error") else "ok",
                    verdict.get("status"),
                    verdict.get("detail"),
                    verdict.get("onset"),
                    _float_or_none(record.get("final_loss")),
                    _dumps(record.get("findings", [])),
                    _dumps(record.get("summary", {})),
                    _dumps(record.get("probes", {})),
                    _dumps(record.get("meta", {})),
                    _dumps(record.get("extras", {})),
                    record.get("error"),
                    record.get("step_unit", "epoch"),
                ),
            )
            self.conn.executemany(
                'INSERT INTO metrics (run_id, name, "values") VALUES (?,?,?)',
                [(run_id, name, _dumps(np.asarray(values, dtype=np.float64)))
                 for name, values in metrics.items()],
            )
            if sweep_id is not None:
                self.link(sweep_id, run_id, position, commit=False)

    @_guarded
    def link(self, sweep_id: int, run_id: str, position: int, commit: bool = True) -> None:
        sql = "INSERT OR REPLACE INTO sweep_runs (sweep_id, run_id, position) VALUES (?,?,?)"
        if commit:
            with self.conn:
                self.conn.execute(sql, (sweep_id, run_id, position))
        else:
            self.conn.execute(sql, (sweep_id, run_id, position))

    @_guarded
    def save_verification(self, run_id: str, mitigation: str, fixed_run_id: str | None,
                          row: dict[str, Any]) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO verifications (run_id, mitigation, fixed_run_id, row) "
                "VALUES (?,?,?,?)",
                (run_id, mitigation, fixed_run_id, _dumps(row)),
            )

    # -- reading -----------------------------------------------------------------
    @_guarded
    def load_run(self, run_id: str) -> dict[str, Any] | None:
        """The stored run with id ``run_id``, or a unique prefix of one; None if none.

        A prefix that matches several runs is a :class:`UsageError` that says how many.
        The prefix is compared as text (``%`` and ``_`` are not wildcards).
        """
        cur = self.conn.execute("SELECT * FROM runs WHERE id=?", (run_id,))
        row = cur.fetchone()
        if row is None:
            if not run_id:
                return None
            matches = [r[0] for r in self.conn.execute(
                "SELECT id FROM runs WHERE substr(id, 1, ?) = ? ORDER BY id LIMIT 6",
                (len(run_id), run_id))]
            if not matches:
                return None
            if len(matches) > 1:
                (count,) = self.conn.execute(
                    "SELECT count(*) FROM runs WHERE substr(id, 1, ?) = ?",
                    (len(run_id), run_id)).fetchone()
                shown = ", ".join(matches[:5]) + (", ..." if count > 5 else "")
                raise UsageError(f"Run id prefix {run_id!r} matches {count} runs ({shown}); "
                                 "pass more characters of the id.")
            return self.load_run(matches[0])
        cols = [d[0] for d in cur.description]
        rec = dict(zip(cols, row))
        for key in ("spec", "findings", "summary", "probes", "meta", "extras"):
            rec[key] = json.loads(rec[key]) if rec[key] else {}
        rec["metrics"] = self.load_metrics(rec["id"])
        rec["verifications"] = [
            json.loads(r[0]) for r in self.conn.execute(
                "SELECT row FROM verifications WHERE run_id=? ORDER BY mitigation",
                (rec["id"],))
        ]
        return rec

    @_guarded
    def load_metrics(self, run_id: str) -> dict[str, np.ndarray]:
        out = {}
        for name, values in self.conn.execute(
            'SELECT name, "values" FROM metrics WHERE run_id=? ORDER BY name', (run_id,)
        ):
            out[name] = np.array([float(v) for v in json.loads(values)], dtype=np.float64)
        return out

    @_guarded
    def load_sweep(self, sweep_id: int) -> dict[str, Any] | None:
        """The ``sweeps`` row, JSON columns decoded; None when there is no such sweep."""
        cur = self.conn.execute("SELECT * FROM sweeps WHERE id=?", (sweep_id,))
        row = cur.fetchone()
        if row is None:
            return None
        rec = dict(zip([d[0] for d in cur.description], row))
        for key in ("axes", "base", "conditioning", "recommendations", "report",
                    "verification"):
            rec[key] = json.loads(rec[key]) if rec.get(key) else None
        return rec

    @_guarded
    def last_sweep_id(self) -> int | None:
        row = self.conn.execute("SELECT MAX(id) FROM sweeps").fetchone()
        return None if row is None else row[0]

    @_guarded
    def verification_rows(self, run_ids: list[str]) -> list[dict[str, Any]]:
        """Stored verification rows of these runs, in run order."""
        out = []
        for rid in run_ids:
            out += [json.loads(r[0]) for r in self.conn.execute(
                "SELECT row FROM verifications WHERE run_id=? ORDER BY rowid", (rid,))]
        return out

    @_guarded
    def run_ids(self, sweep_id: int | None = None) -> list[str]:
        if sweep_id is None:
            rows = self.conn.execute("SELECT id FROM runs ORDER BY created, id")
        else:
            rows = self.conn.execute(
                "SELECT run_id FROM sweep_runs WHERE sweep_id=? ORDER BY position", (sweep_id,)
            )
        return [r[0] for r in rows]
