"""One project's index: a SQLite file in WAL mode holding files, chunks, their FTS5 rows and vectors.

- ``files``: each indexed file's content hash, size and modification time (a file whose size and
  time are unchanged is not even read again);
- ``chunks``: path, line span, symbol, kind, text and the hash of what is embedded for it;
- ``chunks_fts``: FTS5 over the code-aware expansion (:mod:`.terms`) of the text (``body``) and of
  the path and symbol (``label``, weighted higher), ranked with BM25;
- ``vectors``: one vector per (chunk hash, model), so an unchanged chunk is never embedded twice,
  even after its file changed elsewhere or was renamed.

An index whose files were chunked by another version of :mod:`.chunking` (``meta.chunking``; none
before version 2) has every file marked unread when it is opened, so the next sync re-chunks them
all; the vectors stay, keyed by what is embedded, so only chunks that changed are embedded again.

A file's chunks and FTS rows are replaced in one transaction, so a reader (or a crash) never sees
half a file. All methods are synchronous and thread-safe (one connection behind a lock): call them
through a worker thread from async code.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

from caelum_mcp.core.damaged import move_sqlite_aside

from .chunking import CHUNKING_VERSION, Chunk
from .terms import FTS_TOKENIZER, fts_query, index_text

SCHEMA_VERSION = "1"
# BM25 weight of the path-and-symbol column against the body (chosen on the code questions' dev split).
LABEL_WEIGHT = 2.0

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, hash TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL, start_line INTEGER NOT NULL, end_line INTEGER NOT NULL,
    symbol TEXT NOT NULL, kind TEXT NOT NULL, hash TEXT NOT NULL, text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_path ON chunks (path);
CREATE INDEX IF NOT EXISTS chunks_by_hash ON chunks (hash);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5 (body, label, tokenize="{FTS_TOKENIZER}");
CREATE TABLE IF NOT EXISTS vectors (
    hash TEXT NOT NULL, model TEXT NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (hash, model)
) WITHOUT ROWID;
"""


# SQLite's primary result codes for a file that is not a database or whose pages are damaged.
_DAMAGE_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def is_damaged_store(exc: BaseException) -> bool:
    """Whether ``exc`` says an SQLite file itself is unreadable (garbage, damaged pages, a layout
    this code does not know), as opposed to a busy lock, a full disk or a bug in a query."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _DAMAGE_CODES
    # raised by this package (an unknown layout), or by sqlite3 without a code
    return not isinstance(exc, (sqlite3.OperationalError, sqlite3.IntegrityError, sqlite3.ProgrammingError))


def set_aside(path: Path) -> Path:
    """Rename the SQLite file ``path`` (and its ``-wal`` and ``-shm`` files) to
    ``<name>.corrupt-<UTC time>`` beside it, as the workflow run store does, so that a fresh one
    can be created under the old name and what the old one held can still be recovered by hand.
    Returns the new name."""
    return move_sqlite_aside(path)


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as stored: its id (stable until its file changes) and where it comes from."""

    id: int
    path: str
    start_line: int
    end_line: int
    symbol: str
    kind: str
    text: str


@dataclass(frozen=True)
class FileState:
    hash: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class NewChunk:
    """A chunk to store, with the hash of the text embedded for it (see :mod:`.vectors`)."""

    chunk: Chunk
    embed_hash: str


@dataclass(frozen=True)
class VectorMatrix:
    """Every chunk that has a vector for one model: ids, paths and unit vectors (rows)."""

    ids: npt.NDArray[np.int64]
    paths: tuple[str, ...]
    matrix: npt.NDArray[np.float32]


class KnowledgeStore:
    """The index of one project in one SQLite file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.RLock()
        self._generation = 0  # bumped on every write: cached vector matrices know they are stale
        self._matrices: dict[str, tuple[int, VectorMatrix]] = {}
        try:
            self._db.execute("PRAGMA journal_mode=WAL")  # the first read: a file that is no database fails here
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._lock:
                self._db.executescript(_SCHEMA)
                version = self.meta("schema")
                if version not in (None, SCHEMA_VERSION):
                    # an index is derived from the project's files: one of another layout is rebuilt
                    raise sqlite3.DatabaseError(f"index schema {version}, not {SCHEMA_VERSION}")
                self.set_meta("schema", SCHEMA_VERSION)
                if self.meta("chunking") != CHUNKING_VERSION:
                    self._db.execute("UPDATE files SET hash = '', mtime_ns = -1")  # re-chunked at the next sync
                    self.set_meta("chunking", CHUNKING_VERSION)
        except BaseException:
            self._db.close()  # the caller may move the file aside: nothing of ours holds it open
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # meta ------------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # files -----------------------------------------------------------------------------------

    def file_states(self) -> dict[str, FileState]:
        with self._lock:
            rows = self._db.execute("SELECT path, hash, size, mtime_ns FROM files").fetchall()
        return {path: FileState(h, size, mtime) for path, h, size, mtime in rows}

    def replace_file(self, path: str, state: FileState, chunks: Sequence[NewChunk]) -> None:
        """Store ``path`` 's chunks in place of its old ones, in one transaction."""
        with self._lock, self._transaction():
            self._delete_chunks([path])
            self._db.execute(
                "INSERT OR REPLACE INTO files (path, hash, size, mtime_ns) VALUES (?, ?, ?, ?)",
                (path, state.hash, state.size, state.mtime_ns),
            )
            for new in chunks:
                c = new.chunk
                cur = self._db.execute(
                    "INSERT INTO chunks (path, start_line, end_line, symbol, kind, hash, text) VALUES (?,?,?,?,?,?,?)",
                    (c.path, c.start_line, c.end_line, c.symbol, c.kind, new.embed_hash, c.text),
                )
                self._db.execute(
                    "INSERT INTO chunks_fts (rowid, body, label) VALUES (?, ?, ?)",
                    (cur.lastrowid, index_text(c.text), index_text(f"{c.path} {c.symbol}")),
                )
            self._generation += 1

    def touch_file(self, path: str, state: FileState) -> None:
        """Record a new size or time for a file whose content did not change."""
        with self._lock:
            self._db.execute(
                "UPDATE files SET size = ?, mtime_ns = ? WHERE path = ?", (state.size, state.mtime_ns, path)
            )

    def remove_files(self, paths: Iterable[str]) -> int:
        """Forget ``paths``: their chunks, FTS rows and file rows. Returns how many were known."""
        paths = list(paths)
        if not paths:
            return 0
        with self._lock, self._transaction():
            self._delete_chunks(paths)
            removed = 0
            for path in paths:
                removed += self._db.execute("DELETE FROM files WHERE path = ?", (path,)).rowcount
            self._generation += 1
        return removed

    def _delete_chunks(self, paths: Sequence[str]) -> None:
        for path in paths:
            ids = [r[0] for r in self._db.execute("SELECT id FROM chunks WHERE path = ?", (path,))]
            self._db.executemany("DELETE FROM chunks_fts WHERE rowid = ?", [(i,) for i in ids])
            self._db.execute("DELETE FROM chunks WHERE path = ?", (path,))

    # vectors ---------------------------------------------------------------------------------

    def missing_vectors(self, model: str) -> list[tuple[str, int]]:
        """(embed hash, one chunk id carrying it) for every chunk hash without a vector for ``model``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT c.hash, MIN(c.id) FROM chunks c LEFT JOIN vectors v ON v.hash = c.hash AND v.model = ? "
                "WHERE v.hash IS NULL GROUP BY c.hash ORDER BY MIN(c.id)",
                (model,),
            ).fetchall()
        return [(str(h), int(i)) for h, i in rows]

    def put_vectors(self, model: str, items: Sequence[tuple[str, Sequence[float]]]) -> None:
        import numpy as np  # on first use: the server starts without numpy

        with self._lock, self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO vectors (hash, model, vector) VALUES (?, ?, ?)",
                [(h, model, np.asarray(v, dtype=np.float32).tobytes()) for h, v in items],
            )
            self._generation += 1

    def vector_models(self) -> dict[str, int]:
        """Models with stored vectors for current chunks, and how many chunks each covers."""
        with self._lock:
            rows = self._db.execute(
                "SELECT v.model, COUNT(*) FROM chunks c JOIN vectors v ON v.hash = c.hash GROUP BY v.model"
            ).fetchall()
        return {str(m): int(n) for m, n in rows}

    def vector_matrix(self, model: str) -> VectorMatrix:
        """The unit vectors of every chunk that has one for ``model`` (cached until the next write)."""
        import numpy as np  # on first use: the server starts without numpy

        with self._lock:
            cached = self._matrices.get(model)
            if cached is not None and cached[0] == self._generation:
                return cached[1]
            rows = self._db.execute(
                "SELECT c.id, c.path, v.vector FROM chunks c JOIN vectors v ON v.hash = c.hash AND v.model = ? "
                "ORDER BY c.id",
                (model,),
            ).fetchall()
            generation = self._generation
        matrix: npt.NDArray[np.float32] = np.zeros((0, 0), dtype=np.float32)
        if rows:
            raw = np.vstack([np.frombuffer(r[2], dtype=np.float32) for r in rows])
            norms = np.linalg.norm(raw, axis=1, keepdims=True)
            matrix = (raw / np.where(norms == 0, 1, norms)).astype(np.float32)
        built = VectorMatrix(
            ids=np.array([r[0] for r in rows], dtype=np.int64),
            paths=tuple(str(r[1]) for r in rows),
            matrix=matrix.astype(np.float32, copy=False),
        )
        with self._lock:
            self._matrices[model] = (generation, built)
        return built

    # reading ---------------------------------------------------------------------------------

    def lexical(
        self, terms: list[str], limit: int, *, require_all: bool = False, label_weight: float = LABEL_WEIGHT
    ) -> list[tuple[int, float]]:
        """(chunk id, BM25 score; higher is better) of the best ``limit`` chunks matching ``terms``."""
        if not terms:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT rowid, bm25(chunks_fts, 1.0, ?) AS s FROM chunks_fts WHERE chunks_fts MATCH ? "
                "ORDER BY s LIMIT ?",
                (float(label_weight), fts_query(terms, require_all=require_all), limit),
            ).fetchall()
        return [(int(i), -float(s)) for i, s in rows]

    def chunks(self, ids: Iterable[int]) -> dict[int, StoredChunk]:
        ids = list(ids)
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, path, start_line, end_line, symbol, kind, text FROM chunks WHERE id IN ({marks})",  # noqa: S608
                ids,
            ).fetchall()
        return {int(r[0]): StoredChunk(*r) for r in rows}

    def all_chunks(self) -> dict[int, StoredChunk]:
        with self._lock:
            rows = self._db.execute("SELECT id, path, start_line, end_line, symbol, kind, text FROM chunks").fetchall()
        return {int(r[0]): StoredChunk(*r) for r in rows}

    def chunk_texts(self, ids: Sequence[int]) -> dict[int, tuple[str, str, str]]:
        """(path, symbol, text) per chunk id: what the embedder needs."""
        return {i: (c.path, c.symbol, c.text) for i, c in self.chunks(ids).items()}

    def counts(self) -> tuple[int, int]:
        """(files, chunks) in the index."""
        with self._lock:
            files = self._db.execute("SELECT COUNT(*) FROM files").fetchone()[0]
            chunks = self._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        return int(files), int(chunks)

    # helpers ---------------------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any error (the connection is in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
