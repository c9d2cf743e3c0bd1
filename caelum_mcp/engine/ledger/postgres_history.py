"""The dashboard's reads of a PostgreSQL ledger, on a read-only connection of its own.

Several servers write at once, so row ids do not commit in order (a row with a smaller id can
commit after a larger one was seen): the SQLite reader's "fold in the rows after the last id seen"
would miss rows for ever. Here the all-time totals come from the running totals the trigger keeps
(a few dozen rows) and the days from the ``ts`` index over the days shown.
"""

from __future__ import annotations

from caelum_mcp.engine.ledger import postgres_sql as sql
from caelum_mcp.engine.ledger.models import (
    DAY_S,
    DayFigures,
    LatencyPoint,
    LedgerEntry,
    ToolCallRecord,
    ToolCallSummary,
    Totals,
)
from caelum_mcp.engine.ledger.postgres_conn import PgConnection
from caelum_mcp.engine.ledger.store import DayFigureFold, entry_of, latency_of, summary_of_tool_call, tool_call_of


class PostgresHistory:
    """Read-only views of the ledger in the database at ``url``. Thread-safe; close it when done."""

    def __init__(self, url: str) -> None:
        self._db = PgConnection(url, read_only=True)

    def totals(self) -> Totals:
        fold = DayFigureFold()
        with self._db.use() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            fold.fold(conn.execute(sql.ALL_TIME_FOLD).fetchall())
            row = conn.execute(sql.ALL_TIME_TOOL_CALLS).fetchone()
        fold.tool_calls = int(row[0]) if row else 0
        return fold.totals()

    def daily(self, days: int, now: float) -> list[DayFigures]:
        first = (int(now // DAY_S) - days + 1) * DAY_S
        fold = DayFigureFold()
        with self._db.use() as conn:
            fold.fold(conn.execute(sql.DAYS_SINCE, (first,)).fetchall())
        return fold.daily(days, now)

    def recent_tool_calls(self, limit: int) -> list[ToolCallSummary]:
        with self._db.use() as conn:
            rows = conn.execute(sql.RECENT_TOOL_CALLS, (limit,)).fetchall()
        return [summary_of_tool_call(row) for row in rows]

    def tool_call_summary(self, call_id: str) -> ToolCallSummary | None:
        with self._db.use() as conn:
            row = conn.execute(sql.ONE_TOOL_CALL, (call_id,)).fetchone()
        return None if row is None else summary_of_tool_call(row)

    def tool_call(self, call_id: str) -> ToolCallRecord | None:
        with self._db.use() as conn:
            row = conn.execute(sql.SELECT_TOOL_CALL + " WHERE id = %s", (call_id,)).fetchone()
        return None if row is None else tool_call_of(row)

    def children(self, call_id: str, limit: int) -> list[ToolCallRecord]:
        with self._db.use() as conn:
            rows = conn.execute(
                sql.SELECT_TOOL_CALL + " WHERE parent_id = %s ORDER BY started, seq LIMIT %s", (call_id, limit)
            ).fetchall()
        return [tool_call_of(row) for row in rows]

    def model_calls(self, call_id: str, limit: int) -> list[LedgerEntry]:
        with self._db.use() as conn:
            rows = conn.execute(sql.TREE_ROWS, (call_id, limit)).fetchall()
        return [entry_of(row) for row in rows]

    def host_latency(self, window_s: float, bucket_s: float, now: float) -> dict[str, list[LatencyPoint]]:
        start = now - window_s
        with self._db.use() as conn:
            rows = conn.execute(sql.HOST_LATENCY, (start, bucket_s, start)).fetchall()
        return latency_of(rows, start, bucket_s)

    def close(self) -> None:
        self._db.close()
