"""Results store: one SQLite file (stdlib), one row per run keyed by the run config's hash.

A run is recorded as ``running`` when it starts and ``done``, ``failed`` or ``skipped`` (the method cannot
apply to the model) when it ends, with its metrics and environment as JSON. A sweep that is killed and
restarted skips runs that are ``done`` or ``skipped`` and reruns the others (which resume from their
last checkpoint), so no finished result is lost or repeated. Concurrent writers wait on SQLite's lock;
writes are single-statement transactions (safe to kill at any time).

Writers: the process that runs ``cnnkit run`` / ``sweep`` is the only one that opens the file. Under
``torchrun`` that is rank 0 (ranks > 0 get a :class:`NullStore`); with the Ray executor it is the driver
(workers return their metrics to it), so the SQLite file never has to live on a network filesystem.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cnnkit.core.config import ConfigError

__all__ = ["NullStore", "ResultStore", "RunRecord", "StoreError"]

Status = Literal["running", "done", "failed", "skipped"]

_COLUMNS = "key, config, status, metrics, environment, error, started, finished"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'skipped')),
    metrics TEXT NOT NULL DEFAULT '{}',
    environment TEXT NOT NULL DEFAULT '{}',
    error TEXT NOT NULL DEFAULT '',
    started REAL NOT NULL,
    finished REAL
)
"""


class StoreError(ConfigError):
    """The results store cannot be opened; the message names the path and why."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__("results store", [(str(path), reason)])


@dataclass(frozen=True)
class RunRecord:
    key: str
    config: dict[str, Any]
    status: Status
    metrics: dict[str, Any]
    environment: dict[str, Any]
    error: str
    started: float
    finished: float | None


class ResultStore:
    """SQLite-backed run records at ``path`` (created with its parent folders)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            in_the_way = next(p for p in (self.path.parent, *self.path.parent.parents) if p.exists())
            raise StoreError(in_the_way, "is a file, not a folder; give the store a folder") from None
        try:
            with self._connect() as db:
                db.execute(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                self.path,
                f"cannot be opened as a results database ({exc}); move it away or use another store",
            ) from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=60.0)) as db, db:
            db.execute("PRAGMA busy_timeout = 60000")
            yield db

    def start(self, key: str, config: dict[str, Any], environment: dict[str, Any] | None = None) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO runs (key, config, status, environment, started) VALUES (?, ?, 'running', ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET status='running', config=excluded.config, metrics='{}', "
                "environment=excluded.environment, error='', started=excluded.started, finished=NULL",
                (key, _json(config), _json(environment or {}), time.time()),
            )

    def finish(self, key: str, metrics: dict[str, Any], environment: dict[str, Any] | None = None) -> None:
        """The run is done; ``environment`` (where it actually ran, e.g. a Ray worker) replaces the one given
        to :meth:`start` when given."""
        self._end(key, "done", metrics, "", environment)

    def fail(
        self,
        key: str,
        error: str,
        metrics: dict[str, Any] | None = None,
        environment: dict[str, Any] | None = None,
    ) -> None:
        self._end(key, "failed", metrics or {}, error, environment)

    def skip(self, key: str, reason: str, environment: dict[str, Any] | None = None) -> None:
        """The run cannot be done as configured (e.g. the method does not apply to the model)."""
        self._end(key, "skipped", {}, reason, environment)

    def _end(
        self,
        key: str,
        status: Status,
        metrics: dict[str, Any],
        error: str,
        environment: dict[str, Any] | None = None,
    ) -> None:
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE runs SET status=?, metrics=?, error=?, finished=?, "
                "environment=COALESCE(?, environment) WHERE key=?",
                (
                    status,
                    json.dumps(metrics, sort_keys=True),
                    error,
                    time.time(),
                    None if environment is None else _json(environment),
                    key,
                ),
            )
            if cursor.rowcount != 1:
                raise KeyError(f"run {key} was never started in {self.path}")

    def get(self, key: str) -> RunRecord | None:
        with self._connect() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM runs WHERE key=?", (key,)).fetchone()
        return _record(row) if row else None

    def is_done(self, key: str) -> bool:
        """Finished for good: ``done``, or ``skipped`` because the method cannot apply."""
        record = self.get(key)
        return record is not None and record.status in ("done", "skipped")

    def records(self, status: Status | None = None) -> list[RunRecord]:
        query = f"SELECT {_COLUMNS} FROM runs" + (" WHERE status=?" if status else "") + " ORDER BY started"
        with self._connect() as db:
            rows = db.execute(query, (status,) if status else ()).fetchall()
        return [_record(row) for row in rows]


def _record(row: tuple[Any, ...]) -> RunRecord:
    key, config, status, metrics, environment, error, started, finished = row
    loads = json.loads
    return RunRecord(key, loads(config), status, loads(metrics), loads(environment), error, started, finished)


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True)


class NullStore:
    """Stands in for :class:`ResultStore` where nothing may be written (DDP ranks > 0 never touch SQLite):
    records nothing, knows no run."""

    path = None

    def start(self, key: str, config: dict[str, Any], environment: dict[str, Any] | None = None) -> None:
        pass

    def finish(self, key: str, metrics: dict[str, Any], environment: dict[str, Any] | None = None) -> None:
        pass

    def fail(
        self,
        key: str,
        error: str,
        metrics: dict[str, Any] | None = None,
        environment: dict[str, Any] | None = None,
    ) -> None:
        pass

    def skip(self, key: str, reason: str, environment: dict[str, Any] | None = None) -> None:
        pass

    def get(self, key: str) -> RunRecord | None:
        return None

    def is_done(self, key: str) -> bool:
        return False

    def records(self, status: Status | None = None) -> list[RunRecord]:
        return []
