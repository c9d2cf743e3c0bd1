"""What the dashboard shows, as one JSON document: the pool's hosts, the day's budget, the local and
Claude share, figures per day, the latest tool calls, and per model and task kind the answers, local
share, labels and calibration (:func:`~caelum_mcp.engine.status.kind_table`); plus one call's execution record.

Built from the running state (pool, ledger summary, config), the ledger's history
(:class:`~caelum_mcp.serving.dashboard.history.LedgerHistory`) and the execution records the telemetry
kept. Blocking (SQLite reads): call it from a worker thread.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field

from caelum_mcp import __version__
from caelum_mcp.core.llm import ExecutionRecord
from caelum_mcp.core.types import Frozen
from caelum_mcp.engine.ledger import LedgerEntry, ToolCallRecord
from caelum_mcp.engine.status import HostStatus, KindStatus, host_status
from caelum_mcp.serving.app import AppState
from caelum_mcp.serving.dashboard.history import DayFigures, LatencyPoint, LedgerHistory, ToolCallSummary
from caelum_mcp.serving.dashboard.telemetry import Telemetry

LATENCY_WINDOW_S = 3600
LATENCY_BUCKET_S = 300
DAYS_SHOWN = 14


class HostView(Frozen):
    status: HostStatus
    latency: list[LatencyPoint] = Field(description="answered-call latency over the last hour, 5-minute buckets")


class BudgetView(Frozen):
    claude_configured: bool
    claude_enabled: bool
    model: str
    limit_usd: float | None = Field(description="the daily budget; None: no limit")
    spent_usd: float
    reserved_usd: float


class ShareView(Frozen):
    """Tool calls, model calls and embedding work, each counted apart."""

    tool_calls: int = Field(description="tool calls made by a client")
    calls: int = Field(description="model calls (embedding work is not one)")
    local_calls: int
    low_confidence_calls: int
    claude_calls: int
    failed_calls: int
    local_share: float
    claude_cost_usd: float
    savings_usd: float
    local_tokens: int
    claude_tokens: int
    embedding_rows: int = Field(description="embedding work: a background index sync, or a query, is one")
    embedding_failed: int
    embedding_tokens: int


class CallView(Frozen):
    """One row of the tool-call table."""

    id: str = Field(description="the request id (the ledger's call id)")
    tool: str
    started: float
    seconds: float | None
    outcome: str | None
    error: str | None
    path: str = Field(description="local, claude, local_low_confidence, failed or none")
    host: str | None
    model: str | None
    confidence: float | None = Field(description="the lowest confidence of its LLM answers, when known")
    model_calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    savings_usd: float


class Snapshot(Frozen):
    version: str
    generated: float
    uptime_s: float
    threshold: float
    tiers_available: list[str]
    embedded: str
    hosts: list[HostView]
    budget: BudgetView
    share: ShareView
    daily: list[DayFigures]
    calls: list[CallView]
    kinds: list[KindStatus] = Field(
        default_factory=list, description="per model and task kind: answers, local share, measured accuracy"
    )


class CallDetail(Frozen):
    """A tool call's execution record: the call, its LLM answers (when this process served it),
    every model call beneath it as the ledger holds it, and the tool calls it made."""

    call: ToolCallRecord
    summary: CallView | None
    executions: list[ExecutionRecord]
    model_calls: list[LedgerEntry]
    children: list[ToolCallRecord]


def call_view(summary: ToolCallSummary, executions: tuple[ExecutionRecord, ...]) -> CallView:
    """The table row: the ledger's figures, refined by the execution records when known (which
    alone know confidence and whether a local answer was below the threshold)."""
    path, host, model, confidence = summary.path, summary.host, summary.model, None
    if executions:
        paths = {e.path for e in executions}
        path = next(p for p in ("claude", "local_low_confidence", "local") if p in paths)
        last = executions[-1]
        host, model = last.host, last.model
        confidence = round(min(e.confidence for e in executions), 3)
    return CallView(
        id=summary.id,
        tool=summary.tool,
        started=summary.started,
        seconds=summary.seconds,
        outcome=summary.outcome,
        error=summary.error,
        path=path,
        host=host,
        model=model,
        confidence=confidence,
        model_calls=summary.model_calls,
        input_tokens=summary.input_tokens,
        output_tokens=summary.output_tokens,
        cost_usd=round(summary.cost_usd, 6),
        savings_usd=round(summary.savings_usd, 6),
    )


def build_snapshot(state: AppState, telemetry: Telemetry, history: LedgerHistory, recent: int) -> Snapshot:
    """Everything the page shows. Reads only what changed in the ledger since the last snapshot, the
    last hour's rows, the latest ``recent`` tool calls and today's spend (all through indexes)."""
    now = time.time()
    admin, pool, config = state.pool_admin, state.pool, state.config
    figures = state.ledger.budget_figures(now)
    latency = history.host_latency(LATENCY_WINDOW_S, LATENCY_BUCKET_S, now)
    summary = history.totals()
    claude = config.claude
    return Snapshot(
        version=__version__,
        generated=now,
        uptime_s=round(now - admin.started_at, 1),
        threshold=config.router.confidence_threshold,
        tiers_available=sorted(t.value for t in pool.available_tiers()),
        embedded=admin.embedded_note() or config.embedded,
        hosts=[HostView(status=host_status(h, pool), latency=latency.get(h.name, [])) for h in pool.hosts.values()],
        budget=BudgetView(
            claude_configured=admin.claude_configured,
            claude_enabled=claude.enabled,
            model=claude.model,
            limit_usd=claude.daily_budget_usd,
            spent_usd=round(figures.spent_usd, 6),
            reserved_usd=round(figures.reserved_usd, 6),
        ),
        share=ShareView(
            tool_calls=summary.tool_calls,
            calls=summary.calls,
            local_calls=summary.local_calls,
            low_confidence_calls=summary.low_confidence_calls,
            claude_calls=summary.claude_calls,
            failed_calls=summary.failed_calls,
            local_share=round(summary.local_share, 4),
            claude_cost_usd=summary.claude_cost_usd,
            savings_usd=summary.savings_usd,
            local_tokens=summary.local_tokens,
            claude_tokens=summary.claude_tokens,
            embedding_rows=summary.embedding_rows,
            embedding_failed=summary.embedding_failed,
            embedding_tokens=summary.embedding_tokens,
        ),
        daily=history.daily(DAYS_SHOWN, now),
        calls=[call_view(c, telemetry.executions(c.id)) for c in history.recent_tool_calls(recent)],
        kinds=admin.kinds(),
    )


def build_call_detail(telemetry: Telemetry, history: LedgerHistory, call_id: str) -> CallDetail | None:
    call = history.tool_call(call_id)
    if call is None:
        return None
    executions = telemetry.executions(call_id)
    summary = history.tool_call_summary(call_id)
    return CallDetail(
        call=call,
        summary=call_view(summary, executions) if summary is not None else None,
        executions=list(executions),
        model_calls=history.model_calls(call_id),
        children=history.children(call_id),
    )


def as_json(model: Frozen) -> dict[str, Any]:
    return model.model_dump(mode="json")
