"""What the dashboard reads from the cost ledger: the latest tool calls with what their model calls
did, one call's rows, running totals and figures per day, and host latency over time.

Read through a connection of its own (``query_only``): the ledger runs in WAL mode, so these reads
never wait for, or hold up, the server's writes. The queries know the ledger's tables
(:mod:`caelum_mcp.ledger`: ``calls`` and ``tool_calls``, schema version 3 or later) and only read.

The dashboard asks for the totals on every change and every 2 s, and a ledger grows for ever: so
totals and days are kept here and brought up to date from the rows added since the last look
(``calls`` is append-only; its row ids only grow), whoever wrote them: this process or another one
sharing the data directory. Only the first look reads the whole table. Every other query reads
through an index: the latest tool calls by start time, a call's rows by call id, the last hour.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from pydantic import Field

from caelum_mcp.ledger import LedgerEntry, ToolCallRecord
from caelum_mcp.types import Frozen

DAY_S = 86400

# The tool calls in ``picked`` ({selection}: the latest top-level ones, or one by id) with what the
# model calls of each, and of every call beneath it, did. ``+parent_id`` keeps the planner on the
# start-time index: the parent index would visit every top-level call to find the latest 50.
_TOOL_CALL_SUMMARIES = """
    WITH RECURSIVE picked AS (
        SELECT id, tool, started, seconds, outcome, error FROM tool_calls {selection}
    ),
    tree(root, id) AS (
        SELECT id, id FROM picked
        UNION SELECT tree.root, t.id FROM tool_calls t JOIN tree ON t.parent_id = tree.id
    )
    SELECT p.id, p.tool, p.started, p.seconds, p.outcome, p.error,
           count(c.id),
           coalesce(sum(c.outcome = 'local'), 0),
           coalesce(sum(c.outcome = 'claude'), 0),
           coalesce(sum(c.outcome = 'failed'), 0),
           coalesce(sum(c.input_tokens + c.cache_read_tokens + c.cache_write_tokens), 0),
           coalesce(sum(c.output_tokens), 0),
           total(c.cost_usd),
           total(CASE WHEN c.outcome = 'local' THEN c.counterfactual_cost_usd END),
           (SELECT a.host FROM tree t2 JOIN calls a ON a.call_id = t2.id
            WHERE t2.root = p.id AND a.outcome != 'failed' ORDER BY a.ts DESC, a.id DESC LIMIT 1),
           (SELECT a.model FROM tree t2 JOIN calls a ON a.call_id = t2.id
            WHERE t2.root = p.id AND a.outcome != 'failed' ORDER BY a.ts DESC, a.id DESC LIMIT 1)
    FROM picked p JOIN tree ON tree.root = p.id LEFT JOIN calls c ON c.call_id = tree.id
    GROUP BY p.id ORDER BY p.started DESC"""
_RECENT_TOOL_CALLS = _TOOL_CALL_SUMMARIES.format(
    selection="WHERE +parent_id IS NULL ORDER BY started DESC, rowid DESC LIMIT ?"
)
_ONE_TOOL_CALL = _TOOL_CALL_SUMMARIES.format(selection="WHERE id = ?")

_TREE_ROWS = """
    WITH RECURSIVE tree(id) AS (
        SELECT ? UNION SELECT t.id FROM tool_calls t JOIN tree ON t.parent_id = tree.id
    )
    SELECT ts, task, path, provider, host, model, tier, attempts, confidence,
           input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
           latency_ms, cost_usd, counterfactual_cost_usd, ok, error, call_id, kind
    FROM calls WHERE call_id IN (SELECT id FROM tree) ORDER BY ts, id LIMIT ?"""

# Rows added since the last look, per UTC day (days since the epoch: UTC has no DST), outcome and
# whether they are embedding work (counted apart from model calls).
_NEW_ROWS_BY_DAY = """
    SELECT CAST(ts / 86400 AS INTEGER), outcome, tier IS 'embedding', count(*),
           coalesce(sum(path = 'local_low_confidence'), 0),
           coalesce(sum(input_tokens + output_tokens + cache_read_tokens + cache_write_tokens), 0),
           total(cost_usd), total(counterfactual_cost_usd)
    FROM calls WHERE id > ? AND id <= ? GROUP BY 1, 2, 3"""
# Top-level tool calls added since the last look (``tool_calls`` rows are only added, so their
# rowids only grow too).
_NEW_TOOL_CALLS = "SELECT count(*) FROM tool_calls WHERE rowid > ? AND rowid <= ? AND parent_id IS NULL"

_HOST_LATENCY = """
    SELECT host, CAST((ts - ?) / ? AS INTEGER) AS bucket, count(*), avg(latency_ms), max(latency_ms)
    FROM calls WHERE ts >= ? AND host != '' AND outcome != 'failed' AND latency_ms > 0
          AND tier IS NOT 'embedding'
    GROUP BY host, bucket ORDER BY host, bucket"""

_ENTRY_FIELDS = tuple(LedgerEntry.model_fields)
_TOOL_CALL_FIELDS = ("id", "parent_id", "tool", "started", "seconds", "outcome", "error")
_SELECT_TOOL_CALL = "SELECT id, parent_id, tool, started, seconds, outcome, error FROM tool_calls"


class ToolCallSummary(Frozen):
    """One tool call with what its model calls (its children's included) did."""

    id: str = Field(description="the call id: the request id in the logs and the ledger rows")
    tool: str
    started: float
    seconds: float | None = Field(description="None while it runs")
    outcome: str | None = Field(description="ok, error or cancelled; None while it runs")
    error: str | None
    model_calls: int
    local_calls: int
    claude_calls: int
    failed_calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    savings_usd: float
    host: str | None = Field(description="where the last answered model call ran")
    model: str | None

    @property
    def path(self) -> str:
        """claude when any answer came from Claude, local when any came from the pool, failed when
        every model call failed, none when it made none."""
        if self.claude_calls:
            return "claude"
        if self.local_calls:
            return "local"
        return "failed" if self.failed_calls else "none"


class DayFigures(Frozen):
    day: str = Field(description="the UTC date, YYYY-MM-DD")
    local_calls: int = 0
    claude_calls: int = 0
    failed_calls: int = 0
    cost_usd: float = 0.0
    savings_usd: float = 0.0


class Totals(Frozen):
    """Every model call in the ledger, counted as :class:`~caelum_mcp.ledger.LedgerSummary` does:
    tool calls and embedding work apart from model calls."""

    tool_calls: int = 0
    calls: int = 0
    local_calls: int = 0
    low_confidence_calls: int = 0
    claude_calls: int = 0
    failed_calls: int = 0
    local_tokens: int = 0
    claude_tokens: int = 0
    claude_cost_usd: float = 0.0
    savings_usd: float = 0.0
    embedding_rows: int = 0
    embedding_failed: int = 0
    embedding_tokens: int = 0

    @property
    def local_share(self) -> float:
        answered = self.local_calls + self.claude_calls
        return self.local_calls / answered if answered else 0.0


class LatencyPoint(Frozen):
    start: float = Field(description="start of the bucket, Unix seconds")
    calls: int
    mean_ms: float
    max_ms: float


@dataclass
class _Day:
    local: int = 0
    low: int = 0
    claude: int = 0
    failed: int = 0
    local_tokens: int = 0
    claude_tokens: int = 0
    cost: float = 0.0
    savings: float = 0.0
    embedding: int = 0
    embedding_failed: int = 0
    embedding_tokens: int = 0


class LedgerHistory:
    """Read-only views of the ledger file at ``path``. Thread-safe; close it when done."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA query_only = ON")
        self._seen_id = 0
        self._seen_tool_rowid = 0
        self._tool_calls = 0
        self._days: dict[int, _Day] = {}

    # running totals ----------------------------------------------------------------------------

    def _catch_up(self) -> None:
        """Fold the rows added since the last look into the per-day figures (caller holds the lock)."""
        self._conn.execute("BEGIN")
        try:
            newest_tool = self._conn.execute("SELECT coalesce(max(rowid), 0) FROM tool_calls").fetchone()[0]
            if newest_tool > self._seen_tool_rowid:
                found = self._conn.execute(_NEW_TOOL_CALLS, (self._seen_tool_rowid, newest_tool)).fetchone()[0]
                self._tool_calls += int(found)
                self._seen_tool_rowid = newest_tool
            newest = self._conn.execute("SELECT coalesce(max(id), 0) FROM calls").fetchone()[0]
            if newest <= self._seen_id:
                return
            rows = self._conn.execute(_NEW_ROWS_BY_DAY, (self._seen_id, newest)).fetchall()
        finally:
            self._conn.execute("COMMIT")
        for day, outcome, embedding, count, low, tokens, cost, counterfactual in rows:
            acc = self._days.setdefault(int(day), _Day())
            acc.cost += cost  # every call's real money counts, failed ones included
            if embedding:
                acc.embedding += count
                acc.embedding_tokens += tokens
                acc.embedding_failed += count if outcome == "failed" else 0
            elif outcome == "local":
                acc.local += count
                acc.low += low
                acc.local_tokens += tokens
                acc.savings += counterfactual
            elif outcome == "claude":
                acc.claude += count
                acc.claude_tokens += tokens
            else:
                acc.failed += count
        self._seen_id = newest

    def totals(self) -> Totals:
        """Figures over every model call in the ledger."""
        with self._lock:
            self._catch_up()
            days = list(self._days.values())
            tool_calls = self._tool_calls
        return Totals(
            tool_calls=tool_calls,
            calls=sum(d.local + d.claude + d.failed for d in days),
            local_calls=sum(d.local for d in days),
            low_confidence_calls=sum(d.low for d in days),
            claude_calls=sum(d.claude for d in days),
            failed_calls=sum(d.failed for d in days),
            local_tokens=sum(d.local_tokens for d in days),
            claude_tokens=sum(d.claude_tokens for d in days),
            claude_cost_usd=round(sum(d.cost for d in days), 6),
            savings_usd=round(sum(d.savings for d in days), 6),
            embedding_rows=sum(d.embedding for d in days),
            embedding_failed=sum(d.embedding_failed for d in days),
            embedding_tokens=sum(d.embedding_tokens for d in days),
        )

    def daily(self, days: int = 14, now: float | None = None) -> list[DayFigures]:
        """Calls, Claude cost and savings per UTC day, the last ``days`` days (today last), with
        zeros for days without calls."""
        today = int((time.time() if now is None else now) // DAY_S)
        with self._lock:
            self._catch_up()
            picked = [(day, self._days.get(day)) for day in range(today - days + 1, today + 1)]
        out = []
        for day, acc in picked:
            date = datetime.fromtimestamp(day * DAY_S, UTC).date().isoformat()
            if acc is None:
                out.append(DayFigures(day=date))
                continue
            out.append(
                DayFigures(
                    day=date,
                    local_calls=acc.local,
                    claude_calls=acc.claude,
                    failed_calls=acc.failed,
                    cost_usd=round(acc.cost, 6),
                    savings_usd=round(acc.savings, 6),
                )
            )
        return out

    # tool calls --------------------------------------------------------------------------------

    def recent_tool_calls(self, limit: int = 50) -> list[ToolCallSummary]:
        """The latest top-level tool calls, newest first."""
        fields = tuple(ToolCallSummary.model_fields)
        with self._lock:
            rows = self._conn.execute(_RECENT_TOOL_CALLS, (max(0, limit),)).fetchall()
        return [ToolCallSummary.model_validate(dict(zip(fields, row, strict=True))) for row in rows]

    def tool_call_summary(self, call_id: str) -> ToolCallSummary | None:
        """One tool call (top-level or not) with what its model calls did."""
        fields = tuple(ToolCallSummary.model_fields)
        with self._lock:
            row = self._conn.execute(_ONE_TOOL_CALL, (call_id,)).fetchone()
        return None if row is None else ToolCallSummary.model_validate(dict(zip(fields, row, strict=True)))

    def tool_call(self, call_id: str) -> ToolCallRecord | None:
        with self._lock:
            row = self._conn.execute(_SELECT_TOOL_CALL + " WHERE id = ?", (call_id,)).fetchone()
        return None if row is None else ToolCallRecord.model_validate(dict(zip(_TOOL_CALL_FIELDS, row, strict=True)))

    def children(self, call_id: str, limit: int = 50) -> list[ToolCallRecord]:
        """The tool calls that ``call_id`` made through ``call_tool``, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                _SELECT_TOOL_CALL + " WHERE parent_id = ? ORDER BY started, rowid LIMIT ?",
                (call_id, limit),
            ).fetchall()
        return [ToolCallRecord.model_validate(dict(zip(_TOOL_CALL_FIELDS, r, strict=True))) for r in rows]

    def model_calls(self, call_id: str, limit: int = 200) -> list[LedgerEntry]:
        """The model-call rows of ``call_id`` and of every tool call beneath it, oldest first."""
        with self._lock:
            rows = self._conn.execute(_TREE_ROWS, (call_id, limit)).fetchall()
        return [LedgerEntry.model_validate(dict(zip(_ENTRY_FIELDS, row, strict=True))) for row in rows]

    # hosts -------------------------------------------------------------------------------------

    def host_latency(
        self, window_s: float = 3600, bucket_s: float = 300, now: float | None = None
    ) -> dict[str, list[LatencyPoint]]:
        """Each host's answered-call latency over the last ``window_s``, in buckets of ``bucket_s``
        (only buckets with calls)."""
        now = time.time() if now is None else now
        start = now - window_s
        with self._lock:
            rows = self._conn.execute(_HOST_LATENCY, (start, bucket_s, start)).fetchall()
        out: dict[str, list[LatencyPoint]] = {}
        for host, bucket, calls, mean, peak in rows:
            point = LatencyPoint(start=start + bucket * bucket_s, calls=calls, mean_ms=round(mean, 1), max_ms=peak)
            out.setdefault(host, []).append(point)
        return out

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> LedgerHistory:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
