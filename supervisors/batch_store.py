"""The batch store: every batch and each item's state, in SQLite (WAL) under the ai supervisor's folder.

A batch row holds its spec (template, schema, tier, model, Claude allowance), where its results go,
its status (``running``, ``done``, ``cancelled``, ``failed``) and the process that runs it. An item
row holds its input (the JSON value, or the file a glob item reads), its state (``pending``,
``running``, ``done``), its outcome (``ok``, ``low_confidence``, ``error``) and its result row.

An item is claimed (``running``) just before its model call and marked ``done`` with its result in
one committed transaction when the call ends, so after a kill -9 the only items not known to be
finished are those that were in flight: :meth:`BatchStore.requeue` puts them back to ``pending``
and nothing finished is redone. The results JSONL is written from here after each commit; a crash
between the commit and the append is mended by :meth:`BatchStore.write_results`, which rewrites the
file from the rows when a batch resumes.

A store SQLite cannot read (a corrupt or foreign file) never stops the server: it is moved aside
as ``batches.sqlite3.corrupt-<UTC time>`` (with its ``-wal``/``-shm`` files), a warning is logged
and an empty store is started.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from caelum_mcp.core.damaged import move_sqlite_aside
from caelum_mcp.core.types import Frozen

log = logging.getLogger(__name__)

BatchStatus = Literal["running", "done", "cancelled", "failed"]
Outcome = Literal["ok", "low_confidence", "error"]
STORE_FILE = "batches.sqlite3"
_INSERT_CHUNK = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    finished REAL,
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    source TEXT NOT NULL,
    total INTEGER NOT NULL DEFAULT 0,
    concurrency INTEGER NOT NULL,
    results TEXT NOT NULL,
    owner_pid INTEGER NOT NULL,
    owner_started REAL NOT NULL,
    note TEXT
);
CREATE TABLE IF NOT EXISTS items (
    batch_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    payload TEXT,
    input_error TEXT,
    state TEXT NOT NULL DEFAULT 'pending',
    outcome TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    PRIMARY KEY (batch_id, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS items_state ON items (batch_id, state, idx);
"""


class Counts(Frozen):
    total: int
    pending: int
    running: int
    ok: int
    low_confidence: int
    error: int

    @property
    def done(self) -> int:
        return self.ok + self.low_confidence + self.error


class BatchRow(Frozen):
    id: str
    created: float
    finished: float | None
    status: BatchStatus
    spec: dict[str, Any]
    source: str
    total: int
    concurrency: int
    results: str
    owner_pid: int
    owner_started: float
    note: str | None


class ClaimedItem(Frozen):
    index: int
    item_id: str
    payload: Any = None
    input_error: str | None = None


class BatchStore:
    """One SQLite file shared by the runner's threads; every write is its own committed transaction."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / STORE_FILE
        self._lock = threading.Lock()
        self.moved_aside: Path | None = None
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as exc:
            self.moved_aside = self._move_aside()
            log.warning(
                "the batch store could not be read (%s); it was moved aside to %s and an empty one started "
                "(its batches no longer resume; their results files are kept)",
                exc,
                self.moved_aside,
            )
            self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: a killed process loses nothing committed
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def _move_aside(self) -> Path:
        """Rename the store (and its WAL and shared-memory files) with a UTC time suffix; returns
        the new name of the store file."""
        return move_sqlite_aside(self.path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # batches ---------------------------------------------------------------------------------

    def create(
        self,
        batch_id: str,
        spec: dict[str, Any],
        source: str,
        results: Path,
        concurrency: int,
        owner: tuple[int, float],
    ) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO batches (id, created, status, spec, source, concurrency, results, owner_pid,"
                " owner_started)"
                " VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                (batch_id, time.time(), json.dumps(spec), source, concurrency, str(results), *owner),
            )

    def add_items(self, batch_id: str, items: Iterable[tuple[str, str | None, str | None]]) -> int:
        """Append ``(item_id, payload JSON, input error)`` rows in chunks; returns the new total."""
        total = self.batch(batch_id).total
        chunk: list[tuple[Any, ...]] = []

        def flush() -> None:
            with self._write() as conn:
                conn.executemany(
                    "INSERT INTO items (batch_id, idx, item_id, payload, input_error) VALUES (?, ?, ?, ?, ?)", chunk
                )
                conn.execute("UPDATE batches SET total = ? WHERE id = ?", (total, batch_id))
            chunk.clear()

        for item_id, payload, error in items:
            chunk.append((batch_id, total, item_id, payload, error))
            total += 1
            if len(chunk) >= _INSERT_CHUNK:
                flush()
        if chunk:
            flush()
        return total

    def batch(self, batch_id: str) -> BatchRow:
        with self._lock:
            row = self._conn.execute(
                "SELECT id, created, finished, status, spec, source, total, concurrency, results, owner_pid,"
                " owner_started, note FROM batches WHERE id = ?",
                (batch_id,),
            ).fetchone()
        if row is None:
            raise KeyError(batch_id)
        return BatchRow(
            id=row[0],
            created=row[1],
            finished=row[2],
            status=row[3],
            spec=json.loads(row[4]),
            source=row[5],
            total=row[6],
            concurrency=row[7],
            results=row[8],
            owner_pid=row[9],
            owner_started=row[10],
            note=row[11],
        )

    def unfinished(self) -> list[str]:
        with self._lock:
            rows = self._conn.execute("SELECT id FROM batches WHERE status = 'running' ORDER BY created").fetchall()
        return [r[0] for r in rows]

    def recent(self, limit: int) -> list[str]:
        with self._lock:
            rows = self._conn.execute("SELECT id FROM batches ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        return [r[0] for r in rows]

    def set_status(self, batch_id: str, status: BatchStatus, note: str | None = None) -> None:
        finished = None if status == "running" else time.time()
        with self._write() as conn:
            conn.execute(
                "UPDATE batches SET status = ?, finished = ?, note = COALESCE(?, note) WHERE id = ?",
                (status, finished, note, batch_id),
            )

    def set_note(self, batch_id: str, note: str | None) -> None:
        with self._write() as conn:
            conn.execute("UPDATE batches SET note = ? WHERE id = ?", (note, batch_id))

    def take_over(self, batch_id: str, owner: tuple[int, float]) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE batches SET owner_pid = ?, owner_started = ?, status = 'running', finished = NULL WHERE id = ?",
                (*owner, batch_id),
            )

    # items -----------------------------------------------------------------------------------

    def requeue(self, batch_id: str) -> int:
        """Put the items that were in flight when their runner stopped back to ``pending``."""
        with self._write() as conn:
            return conn.execute(
                "UPDATE items SET state = 'pending' WHERE batch_id = ? AND state = 'running'", (batch_id,)
            ).rowcount

    def claim(self, batch_id: str, n: int) -> list[ClaimedItem]:
        """Up to ``n`` pending items, lowest index first, now ``running``; none once the batch is no
        longer ``running`` (cancelled from another server that shares the folder)."""
        with self._write() as conn:
            rows = conn.execute(
                "UPDATE items SET state = 'running', attempts = attempts + 1 WHERE batch_id = ? AND idx IN"
                " (SELECT idx FROM items WHERE batch_id = ? AND state = 'pending' ORDER BY idx LIMIT ?)"
                " AND EXISTS (SELECT 1 FROM batches WHERE id = ? AND status = 'running')"
                " RETURNING idx, item_id, payload, input_error",
                (batch_id, batch_id, n, batch_id),
            ).fetchall()
        rows.sort()
        return [
            ClaimedItem(index=r[0], item_id=r[1], payload=None if r[2] is None else json.loads(r[2]), input_error=r[3])
            for r in rows
        ]

    def unclaim(self, batch_id: str, indexes: Sequence[int]) -> None:
        """Items claimed but not sent (the batch was cancelled or no host could take them)."""
        with self._write() as conn:
            conn.executemany(
                "UPDATE items SET state = 'pending', attempts = MAX(attempts - 1, 0)"
                " WHERE batch_id = ? AND idx = ? AND state = 'running'",
                [(batch_id, i) for i in indexes],
            )

    def finish(self, batch_id: str, results: Sequence[dict[str, Any]]) -> None:
        """Mark items done with their result rows (one transaction for all of them)."""
        with self._write() as conn:
            conn.executemany(
                "UPDATE items SET state = 'done', outcome = ?, result = ? WHERE batch_id = ? AND idx = ?",
                [(r["status"], json.dumps(r, ensure_ascii=False), batch_id, r["index"]) for r in results],
            )

    def counts(self, batch_id: str) -> Counts:
        with self._lock:
            rows = self._conn.execute(
                "SELECT state, outcome, COUNT(*) FROM items WHERE batch_id = ? GROUP BY state, outcome", (batch_id,)
            ).fetchall()
        tally = {"pending": 0, "running": 0, "ok": 0, "low_confidence": 0, "error": 0}
        for state, outcome, n in rows:
            tally[outcome if state == "done" else state] += n
        return Counts(total=sum(tally.values()), **tally)

    def attempts_over_one(self, batch_id: str) -> int:
        """Items started more than once (after a crash, the ones that were in flight: some of them
        may have been waiting in the pool for a slot, never sent to a host)."""
        with self._lock:
            return int(
                self._conn.execute(
                    "SELECT COUNT(*) FROM items WHERE batch_id = ? AND attempts > 1", (batch_id,)
                ).fetchone()[0]
            )

    def first_errors(self, batch_id: str, limit: int) -> list[tuple[str, str]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT item_id, result FROM items WHERE batch_id = ? AND outcome = 'error' ORDER BY idx LIMIT ?",
                (batch_id, limit),
            ).fetchall()
        return [(r[0], json.loads(r[1]).get("error") or "") for r in rows]

    def write_results(self, batch_id: str, path: Path) -> None:
        """Rewrite the results file from the finished rows (after a crash it may lack the last
        few, or hold a row the store did not commit); streamed, in finishing order of index."""
        partial = path.with_name(path.name + ".partial")
        with open(partial, "w", encoding="utf-8") as out:
            with self._lock:
                cursor = self._conn.execute(
                    "SELECT result FROM items WHERE batch_id = ? AND state = 'done' ORDER BY idx", (batch_id,)
                )
                for (result,) in cursor:
                    out.write(result + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
