"""The store protocol: every read and write of the ledger, whatever database holds it.

:class:`~caelum_mcp.engine.ledger.Ledger` and the dashboard's history call these; the SQL lives in the
stores alone (:mod:`.sqlite_store` for the file in the data folder, :mod:`.postgres_store` for a
ledger several servers share). Both keep the same promises:

- ``insert``, ``settle`` and ``add_label`` are committed durably before they return;
- ``reserve`` judges today's spend plus the live reservations plus the new one against the limit
  and writes the reservation in one transaction that no other writer (thread, process or server)
  interleaves with; a reservation stops counting at its ``expires``;
- ``settle`` writes the call's row and removes its reservation in one transaction;
- the all-time figures of ``summary`` read running totals kept in the same transaction as each
  row, never a scan of every call.

The helpers below turn the rows both stores read into the models, so the stores differ only in SQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from caelum_mcp.core.llm import CallCost
from caelum_mcp.engine.ledger.models import (
    COLUMNS,
    DAY_S,
    LABEL_COLUMNS,
    TOOL_CALL_COLUMNS,
    BudgetFigures,
    CalibrationLabel,
    DayFigures,
    EmbeddingUsage,
    ExecutionPath,
    HostUsage,
    KindFigures,
    LabelCounts,
    LatencyPoint,
    LedgerEntry,
    LedgerSummary,
    ModelUsage,
    Reservation,
    ToolCallRecord,
    ToolCallSummary,
    Totals,
)


class HistoryStore(Protocol):
    """The dashboard's reads, on a connection of their own that never holds up the writers."""

    def totals(self) -> Totals:
        """Figures over every model call in the ledger."""
        ...

    def daily(self, days: int, now: float) -> list[DayFigures]:
        """Calls, cost and savings per UTC day, the last ``days`` days (today last), zeros included."""
        ...

    def recent_tool_calls(self, limit: int) -> list[ToolCallSummary]:
        """The latest top-level tool calls, newest first."""
        ...

    def tool_call_summary(self, call_id: str) -> ToolCallSummary | None:
        """One tool call (top-level or not) with what its model calls did."""
        ...

    def tool_call(self, call_id: str) -> ToolCallRecord | None: ...

    def children(self, call_id: str, limit: int) -> list[ToolCallRecord]:
        """The tool calls ``call_id`` made through ``call_tool``, oldest first."""
        ...

    def model_calls(self, call_id: str, limit: int) -> list[LedgerEntry]:
        """The model-call rows of ``call_id`` and of every tool call beneath it, oldest first."""
        ...

    def host_latency(self, window_s: float, bucket_s: float, now: float) -> dict[str, list[LatencyPoint]]:
        """Each host's answered-call latency over the last ``window_s``, in buckets (only those with calls)."""
        ...

    def close(self) -> None: ...


class LedgerStore(Protocol):
    """Where the ledger's rows live. Thread-safe; every method is a blocking call (async code
    runs it in a worker thread). Errors reach the caller as :class:`~caelum_mcp.core.errors.ConfigError`
    naming ``location`` and what to do."""

    @property
    def location(self) -> str:
        """The file, or the server and database, for messages: never a password."""
        ...

    def insert(self, entry: LedgerEntry) -> int:
        """Append ``entry``; committed durably before this returns. Returns the row id."""
        ...

    def annotate(self, row_id: int, confidence: float | None, path: ExecutionPath | None) -> None: ...

    def reserve(
        self, amount_usd: float, *, limit_usd: float | None, ttl_s: float, now: float, day: tuple[float, float]
    ) -> tuple[Reservation | None, BudgetFigures]:
        """Hold ``amount_usd`` until ``now + ttl_s`` if today's (``day``) spend plus live
        reservations plus it fit under ``limit_usd`` (None: no limit), atomically across writers."""
        ...

    def settle(self, reservation_id: str, entry: LedgerEntry | None) -> int | None:
        """Write ``entry`` (when given) and remove the reservation in one transaction; the row id."""
        ...

    def budget_figures(self, now: float, day: tuple[float, float]) -> BudgetFigures: ...

    def spend_between(self, start: float, end: float) -> float: ...

    def summary(self, since: float | None, day: tuple[float, float]) -> LedgerSummary:
        """Figures over the calls with ``ts >= since`` (all time, from the running totals, when None)."""
        ...

    def start_tool_call(self, call_id: str, tool: str, parent_id: str | None, started: float) -> None:
        """Note a tool call that began; committed before this returns, without waiting for the disk."""
        ...

    def finish_tool_call(self, call_id: str, seconds: float, outcome: str, error: str | None) -> None: ...

    def tool_calls(self, parent_id: str | None, limit: int) -> list[ToolCallRecord]: ...

    def call_cost(self, call_id: str) -> CallCost: ...

    def recent(self, limit: int) -> list[LedgerEntry]: ...

    def kind_figures(self, bucket: int) -> list[KindFigures]:
        """Per (model, kind, outcome): answers, scored, and those at or above confidence ``bucket``/100."""
        ...

    def add_label(self, label: CalibrationLabel) -> int: ...

    def labels(self, model: str, kind: str, labelled_only: bool) -> list[CalibrationLabel]: ...

    def label_counts(self) -> list[LabelCounts]: ...

    def open_history(self) -> HistoryStore:
        """A reader for the dashboard, on a connection of its own; close it when done."""
        ...

    def close(self) -> None:
        """Close the connection; calling it again does nothing."""
        ...


# --- rows to models, the same for every store -------------------------------------------------


def entry_of(row: Sequence[Any]) -> LedgerEntry:
    """A ``calls`` row read in :data:`~caelum_mcp.engine.ledger.models.COLUMNS` order."""
    data = dict(zip(COLUMNS, row, strict=True))
    data["ok"] = bool(data["ok"])
    return LedgerEntry.model_validate(data)


def entry_values(entry: LedgerEntry, error: str | None) -> list[Any]:
    """``entry``'s values in :data:`COLUMNS` order, then its outcome (how every store inserts it)."""
    values: list[Any] = [getattr(entry, name) for name in COLUMNS]
    values[COLUMNS.index("error")] = error
    values[COLUMNS.index("ok")] = int(entry.ok)
    values.append(entry.outcome)
    return values


def tool_call_of(row: Sequence[Any]) -> ToolCallRecord:
    return ToolCallRecord.model_validate(dict(zip(TOOL_CALL_COLUMNS, row, strict=True)))


def summary_of_tool_call(row: Sequence[Any]) -> ToolCallSummary:
    return ToolCallSummary.model_validate(dict(zip(ToolCallSummary.model_fields, row, strict=True)))


def label_values(label: CalibrationLabel) -> tuple[Any, ...]:
    """``label``'s values in :data:`LABEL_COLUMNS` order, its signals and detail as JSON text."""
    return (
        label.ts,
        label.model,
        label.kind,
        json.dumps(label.signals, sort_keys=True),
        None if label.label is None else int(label.label),
        label.source,
        label.claude_model,
        None if label.agreement is None else json.dumps(label.agreement, sort_keys=True),
    )


def label_of(row: Sequence[Any]) -> CalibrationLabel:
    data = dict(zip(LABEL_COLUMNS, row, strict=True))
    data["signals"] = json.loads(data["signals"])
    data["label"] = None if data["label"] is None else bool(data["label"])
    data["agreement"] = None if data["agreement"] is None else json.loads(data["agreement"])
    return CalibrationLabel.model_validate(data)


def kind_figures_of(rows: Iterable[Sequence[Any]]) -> list[KindFigures]:
    return [
        KindFigures(model=r[0], kind=r[1], outcome=r[2], answers=r[3], scored=r[4], cleared=r[5])
        for r in rows
        if r[2] in ("local", "claude")
    ]


def call_cost_of(row: Sequence[Any]) -> CallCost:
    return CallCost(
        model_calls=row[0], input_tokens=row[1], output_tokens=row[2], cost_usd=row[3], counterfactual_cost_usd=row[4]
    )


@dataclass(frozen=True, slots=True)
class SummaryRows:
    """What a summary reads, in one snapshot: the totals row (13 figures), per model, per host,
    embedding work, top-level tool calls and today's Claude spend."""

    totals: Sequence[Any]
    models: Sequence[Sequence[Any]]
    hosts: Sequence[Sequence[Any]]
    embedding: Sequence[Any]
    tool_calls: int
    today: float

    def summary(self, since: float | None) -> LedgerSummary:
        t, e = self.totals, self.embedding
        local, claude = int(t[1]), int(t[3])
        return LedgerSummary(
            tool_calls=self.tool_calls,
            calls=t[0],
            local_calls=local,
            low_confidence_calls=t[2],
            claude_calls=claude,
            failed_calls=t[4],
            local_share=local / (local + claude) if local + claude else 0.0,
            input_tokens=t[5],
            output_tokens=t[6],
            cache_read_tokens=t[7],
            cache_write_tokens=t[8],
            local_tokens=t[9],
            claude_tokens=t[10],
            claude_cost_usd=t[11],
            savings_usd=t[12],
            claude_spend_today_usd=self.today,
            embedding=EmbeddingUsage(rows=e[0], failed=e[1], input_tokens=e[2], seconds=round(e[3] / 1000, 3)),
            by_model=[
                ModelUsage(
                    model=m[0],
                    provider=m[1],
                    calls=m[2],
                    input_tokens=m[3],
                    output_tokens=m[4],
                    cost_usd=m[5],
                    counterfactual_cost_usd=m[6],
                    mean_latency_ms=m[7],
                )
                for m in self.models
            ],
            by_host=[HostUsage(host=h[0], calls=h[1], failures=h[2], mean_latency_ms=h[3]) for h in self.hosts],
            since=since,
        )


# --- the dashboard's per-day figures ----------------------------------------------------------


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


class DayFigureFold:
    """Figures per UTC day (days since the epoch) folded from grouped rows: (day, outcome, is
    embedding, count, low-confidence count, tokens, cost, counterfactual cost). A store may keep
    one and fold in only the rows added since its last look."""

    def __init__(self) -> None:
        self.days: dict[int, _Day] = {}
        self.tool_calls = 0

    def fold(self, rows: Iterable[Sequence[Any]]) -> None:
        for day, outcome, embedding, count, low, tokens, cost, counterfactual in rows:
            acc = self.days.setdefault(int(day), _Day())
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

    def totals(self) -> Totals:
        days = list(self.days.values())
        return Totals(
            tool_calls=self.tool_calls,
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

    def daily(self, days: int, now: float) -> list[DayFigures]:
        today = int(now // DAY_S)
        out = []
        for day in range(today - days + 1, today + 1):
            date = datetime.fromtimestamp(day * DAY_S, UTC).date().isoformat()
            acc = self.days.get(day)
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


def latency_of(rows: Iterable[Sequence[Any]], start: float, bucket_s: float) -> dict[str, list[LatencyPoint]]:
    """Rows of (host, bucket, calls, mean, max) as each host's points."""
    out: dict[str, list[LatencyPoint]] = {}
    for host, bucket, calls, mean, peak in rows:
        point = LatencyPoint(start=start + bucket * bucket_s, calls=calls, mean_ms=round(mean, 1), max_ms=peak)
        out.setdefault(host, []).append(point)
    return out
