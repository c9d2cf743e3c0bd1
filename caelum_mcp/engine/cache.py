"""Results of internal tools, cached by the content of the files they read.

The key of a result is a hash of the tool's name, its parameters (analyser versions included, by
the caller) and the path and SHA-256 of every file it looked at: an unchanged project gets the
stored result back, any edited, added or removed file gives a new key. Entries live in one SQLite
file in the data directory (WAL; a concurrent reader never sees half an entry) and the oldest are
pruned past ``max_entries``. A damaged cache is deleted and rebuilt, never an error for the user.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel, ValidationError

from caelum_mcp.tools.safe_read import open_regular

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    tool TEXT NOT NULL,
    key TEXT NOT NULL,
    created REAL NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (tool, key)
);
CREATE INDEX IF NOT EXISTS results_created ON results (created);
CREATE TABLE IF NOT EXISTS file_parts (
    tool TEXT NOT NULL,
    key TEXT NOT NULL,
    created REAL NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (tool, key)
);
CREATE INDEX IF NOT EXISTS file_parts_created ON file_parts (created);
"""
_CHUNK = 500  # keys per SELECT, far below SQLite's limit on bound parameters


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open_regular(path) as fh:  # a file swapped for a FIFO would block a plain open()
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint_files(root: Path, files: Iterable[str]) -> str:
    """One hash over (relative path, content hash) of every file; missing files count as such."""
    h = hashlib.sha256()
    for rel in sorted(set(files)):
        path = root / rel
        try:
            digest = file_digest(path)
        except OSError:
            digest = "missing"
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()


async def fingerprint(root: Path, files: Iterable[str]) -> str:
    listed = list(files)
    return await anyio.to_thread.run_sync(fingerprint_files, root, listed)


def make_key(tool: str, params: Mapping[str, Any], content: str) -> str:
    blob = json.dumps({"tool": tool, "params": params, "content": content}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResultCache:
    """Pydantic results by (tool, key) in ``<data_dir>/cache.sqlite3``."""

    def __init__(self, path: Path, *, max_entries: int = 2000, max_file_parts: int = 200_000) -> None:
        self.path = path
        self.max_entries = max_entries
        self.max_file_parts = max_file_parts
        self._lock = threading.Lock()
        self._conn = self._open()
        self.hits = 0
        self.misses = 0
        self.part_hits = 0
        self.part_misses = 0

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except sqlite3.DatabaseError:
            log.warning("result cache %s is damaged; starting a new one", self.path)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=5)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)
        return conn

    def get(self, tool: str, key: str, model: type[M]) -> M | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM results WHERE tool = ? AND key = ?", (tool, key)).fetchone()
        if row is None:
            self.misses += 1
            return None
        try:
            value = model.model_validate_json(row[0])
        except ValidationError:  # stored by an older version of the tool: recompute
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, tool: str, key: str, value: BaseModel) -> None:
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO results (tool, key, created, value) VALUES (?, ?, ?, ?)",
                (tool, key, time.time(), value.model_dump_json()),
            )
            count = self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            if count > self.max_entries:
                self._conn.execute(
                    "DELETE FROM results WHERE rowid IN (SELECT rowid FROM results ORDER BY created LIMIT ?)",
                    (count - self.max_entries,),
                )

    # one file's share of an analyser's output (see caelum_mcp.tools.code.incremental) -----------

    def get_parts(self, tool: str, keys: Sequence[str]) -> dict[str, str]:
        """The stored parts (JSON text) among ``keys``; absent keys are left out."""
        found: dict[str, str] = {}
        with self._lock:
            for start in range(0, len(keys), _CHUNK):
                chunk = list(keys[start : start + _CHUNK])
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT key, value FROM file_parts WHERE tool = ? AND key IN ({marks})",  # noqa: S608 - only ? marks
                    (tool, *chunk),
                )
                found.update(rows.fetchall())
        self.part_hits += len(found)
        self.part_misses += len(keys) - len(found)
        return found

    def put_parts(self, tool: str, parts: Mapping[str, str]) -> None:
        now = time.time()
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO file_parts (tool, key, created, value) VALUES (?, ?, ?, ?)",
                [(tool, key, now, value) for key, value in parts.items()],
            )
            count = self._conn.execute("SELECT COUNT(*) FROM file_parts").fetchone()[0]
            if count > self.max_file_parts:
                self._conn.execute(
                    "DELETE FROM file_parts WHERE rowid IN (SELECT rowid FROM file_parts ORDER BY created LIMIT ?)",
                    (count - self.max_file_parts,),
                )

    def clear(self) -> None:
        with self._lock, self._conn:
            self._conn.execute("DELETE FROM results")
            self._conn.execute("DELETE FROM file_parts")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
