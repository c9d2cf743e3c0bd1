"""What the dashboard reads from the cost ledger: the latest tool calls with what their model calls
did, one call's rows, running totals and figures per day, and host latency over time.

The queries belong to the ledger's store (:meth:`caelum_mcp.engine.ledger.store.LedgerStore.open_history`:
SQLite or PostgreSQL); this is the dashboard's handle on them, on a connection of its own that only
reads, so these reads never hold up the server's writes.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType

from caelum_mcp.engine.ledger import Ledger, LedgerEntry, ToolCallRecord
from caelum_mcp.engine.ledger.models import DAY_S, DayFigures, LatencyPoint, ToolCallSummary, Totals
from caelum_mcp.engine.ledger.sqlite_history import SQLiteHistory
from caelum_mcp.engine.ledger.store import HistoryStore

__all__ = ["DAY_S", "DayFigures", "LatencyPoint", "LedgerHistory", "ToolCallSummary", "Totals"]


class LedgerHistory:
    """Read-only views of a ledger: ``source`` is the ledger (its store opens the reader) or the
    path of a SQLite ledger file. Thread-safe; close it when done."""

    def __init__(self, source: Ledger | Path) -> None:
        self._reader: HistoryStore = source.open_history() if isinstance(source, Ledger) else SQLiteHistory(source)

    def totals(self) -> Totals:
        """Figures over every model call in the ledger."""
        return self._reader.totals()

    def daily(self, days: int = 14, now: float | None = None) -> list[DayFigures]:
        """Calls, Claude cost and savings per UTC day, the last ``days`` days (today last), with
        zeros for days without calls."""
        return self._reader.daily(days, time.time() if now is None else now)

    def recent_tool_calls(self, limit: int = 50) -> list[ToolCallSummary]:
        """The latest top-level tool calls, newest first."""
        return self._reader.recent_tool_calls(max(0, limit))

    def tool_call_summary(self, call_id: str) -> ToolCallSummary | None:
        """One tool call (top-level or not) with what its model calls did."""
        return self._reader.tool_call_summary(call_id)

    def tool_call(self, call_id: str) -> ToolCallRecord | None:
        return self._reader.tool_call(call_id)

    def children(self, call_id: str, limit: int = 50) -> list[ToolCallRecord]:
        """The tool calls that ``call_id`` made through ``call_tool``, oldest first."""
        return self._reader.children(call_id, limit)

    def model_calls(self, call_id: str, limit: int = 200) -> list[LedgerEntry]:
        """The model-call rows of ``call_id`` and of every tool call beneath it, oldest first."""
        return self._reader.model_calls(call_id, limit)

    def host_latency(
        self, window_s: float = 3600, bucket_s: float = 300, now: float | None = None
    ) -> dict[str, list[LatencyPoint]]:
        """Each host's answered-call latency over the last ``window_s``, in buckets of ``bucket_s``
        (only buckets with calls)."""
        return self._reader.host_latency(window_s, bucket_s, time.time() if now is None else now)

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> LedgerHistory:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
