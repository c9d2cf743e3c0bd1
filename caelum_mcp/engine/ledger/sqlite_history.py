"""The dashboard's reads of a SQLite ledger, through a connection of its own (``query_only``): in WAL
mode these reads never wait for, or hold up, the server's writes.

The dashboard asks for the totals on every change and every 2 s, and a ledger grows for ever: so
totals and days are kept here and brought up to date from the rows added since the last look
(``calls`` is append-only and one writer commits at a time, so its row ids only grow in commit
order), whoever wrote them: this process or another one sharing the data folder. Only the first
look reads the whole table. Every other query reads through an index: the latest tool calls by
start time, a call's rows by call id, the last hour.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from caelum_mcp.engine.ledger import sqlite_sql as sql
from caelum_mcp.engine.ledger.models import (
    DayFigures,
    LatencyPoint,
    LedgerEntry,
    ToolCallRecord,
    ToolCallSummary,
    Totals,
)
from caelum_mcp.engine.ledger.sqlite_store import translated_errors
from caelum_mcp.engine.ledger.store import DayFigureFold, entry_of, latency_of, summary_of_tool_call, tool_call_of


class SQLiteHistory:
    """Read-only views of the ledger file at ``path``. Thread-safe; close it when done."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        with translated_errors(path):
            self._conn = sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA query_only = ON")
        self._seen_id = 0
        self._seen_tool_rowid = 0
        self._fold = DayFigureFold()

    def _catch_up(self) -> None:
        """Fold the rows added since the last look into the per-day figures (caller holds the lock)."""
        conn = self._conn
        conn.execute("BEGIN")
        try:
            newest_tool = conn.execute("SELECT coalesce(max(rowid), 0) FROM tool_calls").fetchone()[0]
            if newest_tool > self._seen_tool_rowid:
                found = conn.execute(sql.NEW_TOOL_CALLS, (self._seen_tool_rowid, newest_tool)).fetchone()[0]
                self._fold.tool_calls += int(found)
                self._seen_tool_rowid = newest_tool
            newest = conn.execute("SELECT coalesce(max(id), 0) FROM calls").fetchone()[0]
            if newest <= self._seen_id:
                return
            rows = conn.execute(sql.NEW_ROWS_BY_DAY, (self._seen_id, newest)).fetchall()
        finally:
            conn.execute("COMMIT")
        self._fold.fold(rows)
        self._seen_id = newest

    def totals(self) -> Totals:
        with self._lock, translated_errors(self.path):
            self._catch_up()
            return self._fold.totals()

    def daily(self, days: int, now: float) -> list[DayFigures]:
        with self._lock, translated_errors(self.path):
            self._catch_up()
            return self._fold.daily(days, now)

    def recent_tool_calls(self, limit: int) -> list[ToolCallSummary]:
        with self._lock, translated_errors(self.path):
            rows = self._conn.execute(sql.RECENT_TOOL_CALLS, (limit,)).fetchall()
        return [summary_of_tool_call(row) for row in rows]

    def tool_call_summary(self, call_id: str) -> ToolCallSummary | None:
        with self._lock, translated_errors(self.path):
            row = self._conn.execute(sql.ONE_TOOL_CALL, (call_id,)).fetchone()
        return None if row is None else summary_of_tool_call(row)

    def tool_call(self, call_id: str) -> ToolCallRecord | None:
        with self._lock, translated_errors(self.path):
            row = self._conn.execute(sql.SELECT_TOOL_CALL + " WHERE id = ?", (call_id,)).fetchone()
        return None if row is None else tool_call_of(row)

    def children(self, call_id: str, limit: int) -> list[ToolCallRecord]:
        with self._lock, translated_errors(self.path):
            rows = self._conn.execute(
                sql.SELECT_TOOL_CALL + " WHERE parent_id = ? ORDER BY started, rowid LIMIT ?", (call_id, limit)
            ).fetchall()
        return [tool_call_of(row) for row in rows]

    def model_calls(self, call_id: str, limit: int) -> list[LedgerEntry]:
        with self._lock, translated_errors(self.path):
            rows = self._conn.execute(sql.TREE_ROWS, (call_id, limit)).fetchall()
        return [entry_of(row) for row in rows]

    def host_latency(self, window_s: float, bucket_s: float, now: float) -> dict[str, list[LatencyPoint]]:
        start = now - window_s
        with self._lock, translated_errors(self.path):
            rows = self._conn.execute(sql.HOST_LATENCY, (start, bucket_s, start)).fetchall()
        return latency_of(rows, start, bucket_s)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
