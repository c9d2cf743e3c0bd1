"""The ledger in one SQLite file in the data folder: the default store, for one server (and the
``caelum-mcp`` commands beside it).

Durability: the database runs in WAL mode with ``synchronous=FULL`` and every insert is its own
committed transaction, so a row survives the process being killed right after the insert returns
(and a power cut); the tool-call rows, which hold no money, survive the process being killed but
skip the wait for the disk. WAL also lets another process (``caelum-mcp status``, the dashboard's
reader) read while the server writes. One connection per store, shared by the event loop and worker
threads behind a lock; writes are a single short INSERT.

A budget reservation runs in one ``BEGIN IMMEDIATE`` transaction: SQLite's write lock on the file
is held from the first read of the day's spend to the reservation's commit, so two threads, or two
processes sharing the data folder, cannot both take the last dollar.

A file that is not a SQLite database, or is damaged, raises :class:`~caelum_mcp.core.errors.ConfigError`
naming the file and what to do (move it aside), never a raw sqlite3 error.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from caelum_mcp.core.errors import ConfigError
from caelum_mcp.core.llm import CallCost
from caelum_mcp.engine.ledger import sqlite_sql as sql
from caelum_mcp.engine.ledger.models import (
    MAX_ERROR_CHARS,
    MONEY_EPSILON,
    BudgetFigures,
    CalibrationLabel,
    ExecutionPath,
    KindFigures,
    LabelCounts,
    LedgerEntry,
    LedgerSummary,
    Reservation,
    ToolCallRecord,
)
from caelum_mcp.engine.ledger.sqlite_schema import MIGRATIONS, SCHEMA_VERSION, statements
from caelum_mcp.engine.ledger.store import (
    HistoryStore,
    SummaryRows,
    call_cost_of,
    entry_of,
    entry_values,
    kind_figures_of,
    label_of,
    label_values,
    tool_call_of,
)

log = logging.getLogger("caelum_mcp.engine.ledger")

BUSY_TIMEOUT_MS = 5000


@contextmanager
def translated_errors(path: Path) -> Iterator[None]:
    """sqlite3's errors as a :class:`ConfigError` naming the file and what to do."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if "locked" in text or "busy" in text:
            fix = "another process holds a write lock on it for too long; stop it or retry"
        else:
            fix = "check that the file and its folder are readable and writable and the disk has space"
        raise ConfigError(f"cost ledger {path}: {text}; {fix}") from exc
    except sqlite3.DatabaseError as exc:
        raise ConfigError(
            f"cost ledger {path} is not a usable SQLite database ({exc}); move the file "
            "aside (e.g. rename it to .bak) and a fresh ledger will be created, or point the "
            "ledger path at another file"
        ) from exc


class SQLiteStore:
    """The ledger file at ``path`` (created, or migrated to this version, when opened)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the folder for the cost ledger {self.path}: {exc}; "
                "point the ledger path at a writable location"
            ) from exc
        if self.path.is_dir():
            raise ConfigError(
                f"the cost ledger path {self.path} is a folder; point the ledger path at a file "
                "(it is created when missing)"
            )
        with translated_errors(self.path):
            # isolation_level=None: autocommit, so each INSERT commits on return; transactions
            # that need more than one statement are opened explicitly.
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            try:
                self._setup(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn

    @property
    def location(self) -> str:
        return str(self.path)

    def _setup(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # The first statement that reads the file: a non-SQLite file fails here.
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("cost ledger %s runs in %s mode, not WAL; concurrent readers may block", self.path, mode)
        conn.execute("PRAGMA synchronous = FULL")
        # IMMEDIATE: two processes opening a fresh file at once must not both create the schema.
        with self._transaction(conn, "BEGIN IMMEDIATE"):
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = int(row[0]) if row and row[0] is not None else 0
            if current > SCHEMA_VERSION:
                raise ConfigError(
                    f"the cost ledger {self.path} has schema version {current}, written by a newer "
                    f"caelum-mcp (this one knows up to {SCHEMA_VERSION}); upgrade caelum-mcp or "
                    "point the ledger path at another file"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in statements(MIGRATIONS[version]):
                    conn.execute(statement)
            if current < SCHEMA_VERSION:
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))

    @staticmethod
    @contextmanager
    def _transaction(conn: sqlite3.Connection, begin: str = "BEGIN") -> Iterator[None]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        conn.execute(begin)
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise RuntimeError(f"cost ledger {self.path} is closed")
            with translated_errors(self.path):
                yield self._conn

    @staticmethod
    def _insert(conn: sqlite3.Connection, entry: LedgerEntry) -> int:
        error = entry.error[:MAX_ERROR_CHARS] if entry.error else entry.error
        rowid = conn.execute(sql.INSERT, entry_values(entry, error)).lastrowid
        assert rowid is not None
        return rowid

    def insert(self, entry: LedgerEntry) -> int:
        with self._connection() as conn:
            return self._insert(conn, entry)

    def annotate(self, row_id: int, confidence: float | None, path: ExecutionPath | None) -> None:
        with self._connection() as conn:
            conn.execute(
                "UPDATE calls SET confidence = coalesce(?, confidence), path = coalesce(?, path) WHERE id = ?",
                (confidence, path, row_id),
            )

    def reserve(
        self, amount_usd: float, *, limit_usd: float | None, ttl_s: float, now: float, day: tuple[float, float]
    ) -> tuple[Reservation | None, BudgetFigures]:
        with self._connection() as conn, self._transaction(conn, "BEGIN IMMEDIATE"):
            conn.execute("DELETE FROM reservations WHERE expires <= ?", (now,))
            spent = float(conn.execute(sql.SPEND_BETWEEN, day).fetchone()[0])
            reserved = float(conn.execute(sql.RESERVED, (now,)).fetchone()[0])
            figures = BudgetFigures(spent_usd=spent, reserved_usd=reserved)
            if limit_usd is not None and spent + reserved + amount_usd > limit_usd + MONEY_EPSILON:
                return None, figures  # committed: the expired rows stay deleted
            reservation = Reservation(id=uuid.uuid4().hex, amount_usd=amount_usd, expires=now + ttl_s)
            conn.execute(
                "INSERT INTO reservations (id, created, expires, amount_usd) VALUES (?, ?, ?, ?)",
                (reservation.id, now, reservation.expires, amount_usd),
            )
        return reservation, figures

    def settle(self, reservation_id: str, entry: LedgerEntry | None) -> int | None:
        with self._connection() as conn, self._transaction(conn, "BEGIN IMMEDIATE"):
            rowid = None if entry is None else self._insert(conn, entry)
            conn.execute("DELETE FROM reservations WHERE id = ?", (reservation_id,))
        return rowid

    def budget_figures(self, now: float, day: tuple[float, float]) -> BudgetFigures:
        with self._connection() as conn, self._transaction(conn):
            spent = float(conn.execute(sql.SPEND_BETWEEN, day).fetchone()[0])
            reserved = float(conn.execute(sql.RESERVED, (now,)).fetchone()[0])
        return BudgetFigures(spent_usd=spent, reserved_usd=reserved)

    def spend_between(self, start: float, end: float) -> float:
        with self._connection() as conn:
            return float(conn.execute(sql.SPEND_BETWEEN, (start, end)).fetchone()[0])

    def summary(self, since: float | None, day: tuple[float, float]) -> LedgerSummary:
        params: tuple[float, ...] = (since,) if since is not None else ()
        totals_sql, by_model_sql, by_host_sql, embedding_sql, tool_calls_sql = sql.SUMMARY_QUERIES[since is not None]
        # One read transaction: every figure comes from the same snapshot of the file.
        with self._connection() as conn, self._transaction(conn):
            rows = SummaryRows(
                totals=conn.execute(totals_sql, params).fetchone(),
                models=conn.execute(by_model_sql, params).fetchall(),
                hosts=conn.execute(by_host_sql, params).fetchall(),
                embedding=conn.execute(embedding_sql, params).fetchone(),
                tool_calls=int(conn.execute(tool_calls_sql, params).fetchone()[0]),
                today=conn.execute(sql.SPEND_BETWEEN, day).fetchone()[0],
            )
        return rows.summary(since)

    @contextmanager
    def _bookkeeping(self) -> Iterator[sqlite3.Connection]:
        """The connection for rows that hold no money (tool-call bookkeeping), committed without
        waiting for the disk: in WAL mode such a commit survives the process being killed, not a
        power cut, and costs microseconds instead of an fsync (~1 ms here, twice a tool call, on
        the event loop). The next durable commit flushes it with everything before it."""
        with self._connection() as conn:
            conn.execute("PRAGMA synchronous = NORMAL")
            try:
                yield conn
            finally:
                conn.execute("PRAGMA synchronous = FULL")

    def start_tool_call(self, call_id: str, tool: str, parent_id: str | None, started: float) -> None:
        with self._bookkeeping() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO tool_calls (id, parent_id, tool, started) VALUES (?, ?, ?, ?)",
                (call_id, parent_id, tool, started),
            )

    def finish_tool_call(self, call_id: str, seconds: float, outcome: str, error: str | None) -> None:
        with self._bookkeeping() as conn:
            conn.execute(
                "UPDATE tool_calls SET seconds = ?, outcome = ?, error = ? WHERE id = ?",
                (seconds, outcome, error, call_id),
            )

    def tool_calls(self, parent_id: str | None, limit: int) -> list[ToolCallRecord]:
        with self._connection() as conn:
            # ``IS ?`` matches NULL too: no parent means the top-level calls.
            rows = conn.execute(
                "SELECT id, parent_id, tool, started, seconds, outcome, error FROM tool_calls "
                # +parent_id: walk the start-time index newest first and stop at the limit, rather
                # than gather every match through the parent index and sort (55 ms -> 1 ms at 50k).
                "WHERE +parent_id IS ? ORDER BY started DESC, rowid DESC LIMIT ?",
                (parent_id, limit),
            ).fetchall()
        return [tool_call_of(row) for row in rows]

    def call_cost(self, call_id: str) -> CallCost:
        with self._connection() as conn:
            return call_cost_of(conn.execute(sql.CALL_TREE_COST, (call_id,)).fetchone())

    def recent(self, limit: int) -> list[LedgerEntry]:
        with self._connection() as conn:
            rows = conn.execute(sql.SELECT_RECENT, (limit,)).fetchall()
        return [entry_of(row) for row in rows]

    def kind_figures(self, bucket: int) -> list[KindFigures]:
        with self._connection() as conn:
            return kind_figures_of(conn.execute(sql.KIND_FIGURES, (bucket,)).fetchall())

    def add_label(self, label: CalibrationLabel) -> int:
        with self._connection() as conn:
            rowid = conn.execute(
                "INSERT INTO calibration_labels (ts, model, kind, signals, label, source, claude_model, agreement) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                label_values(label),
            ).lastrowid
        assert rowid is not None
        return rowid

    def labels(self, model: str, kind: str, labelled_only: bool) -> list[CalibrationLabel]:
        query = sql.SELECT_LABELS.format(labelled="AND label IS NOT NULL" if labelled_only else "")
        with self._connection() as conn:
            rows = conn.execute(query, (model, kind)).fetchall()
        return [label_of(row) for row in rows]

    def label_counts(self) -> list[LabelCounts]:
        with self._connection() as conn:
            rows = conn.execute(sql.LABEL_COUNTS).fetchall()
        return [LabelCounts(model=r[0], kind=r[1], rows=r[2], labelled=r[3], correct=r[4]) for r in rows]

    def open_history(self) -> HistoryStore:
        from caelum_mcp.engine.ledger.sqlite_history import SQLiteHistory

        return SQLiteHistory(self.path)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
