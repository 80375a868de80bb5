"""The embedded run store (SQLite, standard library).

Layout, one database ``lab.sqlite`` in the output folder (default ``./lab-runs``):

- ``sweeps``: one row per invocation: command line, axes, base spec, conditioning,
  recommendations (JSON).
- ``runs``: one row per run, keyed by the spec's hash: full spec, status
  (``ok``/``error``), verdict, onset, final loss, findings, summary, probes, meta, the
  error message if the run raised, and the sweep it was first run in.
- ``metrics``: one row per (run, metric name): the per-step values as a JSON array.
- ``sweep_runs``: which runs belong to which sweep (a run reused by a later sweep
  is linked, not run again).
- ``verifications``: before/after rows of mitigation re-runs, beside the run they fix.

Every run is written in its own transaction, so an interrupted sweep leaves every
completed run intact and a re-run of the same command skips them.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError
from .formatting import jsonable
from .spec import RunSpec

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


def _dumps(value: Any) -> str:
    return json.dumps(jsonable(value), sort_keys=True)


def _float_or_none(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class Store:
    """A handle on ``DIR/lab.sqlite``; create the folder only when writing."""

    def __init__(self, directory: str | Path, *, create: bool = True):
        self.directory = Path(directory)
        self.path = self.directory / DB_NAME
        if not create and not self.path.exists():
            raise UsageError(
                f"No run store at {self.path}; run a sweep first or pass --out DIR "
                f"pointing at a folder that holds {DB_NAME}."
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path)
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------
    def begin_sweep(self, command: str, task: str, axes: list, base: RunSpec) -> int:
        with self.conn:
            cur = self.conn.execute(
                "INSERT INTO sweeps (created, command, task, axes, base) VALUES (?,?,?,?,?)",
                (time.time(), command, task, _dumps(axes), _dumps(base.to_dict())),
            )
        return int(cur.lastrowid)

    def finish_sweep(self, sweep_id: int, conditioning: Any, recommendations: Any) -> None:
        with self.conn:
            self.conn.execute(
                "UPDATE sweeps SET conditioning=?, recommendations=? WHERE id=?",
                (_dumps(conditioning), _dumps(recommendations), sweep_id),
            )

    def has_run(self, run_id: str) -> bool:
        row = self.conn.execute(
            "SELECT status FROM runs WHERE id=?", (run_id,)
        ).fetchone()
        return row is not None and row[0] == "ok"

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

    def link(self, sweep_id: int, run_id: str, position: int, commit: bool = True) -> None:
        sql = "INSERT OR REPLACE INTO sweep_runs (sweep_id, run_id, position) VALUES (?,?,?)"
        if commit:
            with self.conn:
                self.conn.execute(sql, (sweep_id, run_id, position))
        else:
            self.conn.execute(sql, (sweep_id, run_id, position))

    def save_verification(self, run_id: str, mitigation: str, fixed_run_id: str | None,
                          row: dict[str, Any]) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO verifications (run_id, mitigation, fixed_run_id, row) "
                "VALUES (?,?,?,?)",
                (run_id, mitigation, fixed_run_id, _dumps(row)),
            )

    # -- reading -----------------------------------------------------------------
    def load_run(self, run_id: str) -> dict[str, Any] | None:
        cur = self.conn.execute("SELECT * FROM runs WHERE id=?", (run_id,))
        row = cur.fetchone()
        if row is None:
            matches = self.conn.execute(
                "SELECT id FROM runs WHERE id LIKE ?", (run_id + "%",)
            ).fetchall()
            if len(matches) != 1:
                return None
            return self.load_run(matches[0][0])
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

    def load_metrics(self, run_id: str) -> dict[str, np.ndarray]:
        out = {}
        for name, values in self.conn.execute(
            'SELECT name, "values" FROM metrics WHERE run_id=? ORDER BY name', (run_id,)
        ):
            out[name] = np.array([float(v) for v in json.loads(values)], dtype=np.float64)
        return out

    def run_ids(self, sweep_id: int | None = None) -> list[str]:
        if sweep_id is None:
            rows = self.conn.execute("SELECT id FROM runs ORDER BY created, id")
        else:
            rows = self.conn.execute(
                "SELECT run_id FROM sweep_runs WHERE sweep_id=? ORDER BY position", (sweep_id,)
            )
        return [r[0] for r in rows]
