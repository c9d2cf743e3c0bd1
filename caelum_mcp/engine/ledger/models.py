"""What the ledger holds and returns: a model call's row, the budget's figures, tool calls, the
summaries, calibration labels and the dashboard's views, as immutable models. No SQL here: the
stores (:mod:`caelum_mcp.engine.ledger.store`) read and write them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

from pydantic import Field, field_validator

from caelum_mcp.core.types import Frozen, Usage

MAX_ERROR_CHARS = 300  # error text is a hint for the operator, not a place for model output
# Sums of float dollars drift by ~1e-16: a call that fits exactly must not be refused for that.
MONEY_EPSILON = 1e-9

ExecutionPath = Literal["local", "claude", "local_low_confidence", "failed"]
Outcome = Literal["local", "claude", "failed"]
LabelSource = Literal["audit", "escalation", "bench"]
LOCAL_PATHS: frozenset[str] = frozenset({"local", "local_low_confidence"})


class LedgerEntry(Frozen):
    """One LLM call (or one task that failed to get an answer), figures only."""

    ts: float = Field(description="Unix seconds, UTC.")
    task: str
    path: ExecutionPath
    provider: str = Field(description='Backend kind: "ollama", "openai", "anthropic" or "".')
    host: str
    model: str
    tier: str | None
    attempts: int = Field(ge=0)
    confidence: float | None = Field(ge=0, le=1)
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    cache_read_tokens: int = Field(default=0, ge=0)
    cache_write_tokens: int = Field(default=0, ge=0)
    latency_ms: float = Field(ge=0)
    cost_usd: float = Field(ge=0, description="Real money spent (Claude calls); 0 for local calls.")
    counterfactual_cost_usd: float = Field(
        ge=0, description="What the configured Claude model would have cost for these tokens."
    )
    ok: bool = True
    error: str | None = None
    call_id: str | None = Field(default=None, description="The tool call the model call was made for.")
    kind: str | None = Field(default=None, description="The task kind the call was made for (None: not known).")

    @property
    def outcome(self) -> Outcome:
        """How the call counts in the figures: failed when its path says so or ``ok`` is false."""
        if self.path == "failed" or not self.ok:
            return "failed"
        return "claude" if self.path == "claude" else "local"

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens


def model_call_row(
    *,
    task: str,
    path: ExecutionPath,
    provider: str,
    host: str,
    model: str,
    tier: str | None,
    usage: Usage,
    latency_ms: float,
    cost: float,
    counterfactual: float,
    attempts: int = 1,
    call_id: str | None = None,
    kind: str | None = None,
) -> LedgerEntry:
    """The row of one answered model call (local or Claude); ``kind`` is the task kind it was for."""
    return LedgerEntry(
        ts=time.time(),
        task=task,
        path=path,
        provider=provider,
        host=host,
        model=model,
        tier=tier,
        attempts=attempts,
        confidence=None,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        latency_ms=max(0.0, latency_ms),
        cost_usd=cost,
        counterfactual_cost_usd=counterfactual,
        call_id=call_id,
        kind=kind,
    )


def failed_call_row(
    *,
    task: str,
    error: str,
    provider: str = "",
    host: str = "",
    model: str = "",
    tier: str | None = None,
    attempts: int = 1,
    latency_ms: float = 0.0,
    call_id: str | None = None,
) -> LedgerEntry:
    """The row of a model call (or a whole attempt) that produced no answer."""
    row = model_call_row(
        task=task,
        path="failed",
        provider=provider,
        host=host,
        model=model,
        tier=tier,
        usage=Usage(),
        latency_ms=latency_ms,
        cost=0.0,
        counterfactual=0.0,
        attempts=attempts,
        call_id=call_id,
    )
    return row.model_copy(update={"ok": False, "error": error[:MAX_ERROR_CHARS]})


class Reservation(Frozen):
    """Part of the daily Claude budget held by one call in flight, until settled or released."""

    id: str
    amount_usd: float = Field(ge=0)
    expires: float = Field(description="Unix seconds after which it no longer counts.")


class BudgetFigures(Frozen):
    """The day's Claude money at one instant: spent (rows) and held by calls in flight."""

    spent_usd: float
    reserved_usd: float


class ToolCallChange(Frozen):
    """What an observer hears when a tool call starts (``tool`` set) or ends (``outcome`` set)."""

    call_id: str
    tool: str | None = None
    parent_id: str | None = None
    outcome: str | None = None


LedgerObserver = Callable[["LedgerEntry | ToolCallChange"], None]


class ToolCallRecord(Frozen):
    """One external tool call, as the ledger keeps it (children name their parent)."""

    id: str
    parent_id: str | None
    tool: str
    started: float
    seconds: float | None
    outcome: str | None
    error: str | None


class ModelUsage(Frozen):
    model: str
    provider: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    counterfactual_cost_usd: float
    mean_latency_ms: float


class HostUsage(Frozen):
    host: str
    calls: int
    failures: int
    mean_latency_ms: float


class EmbeddingUsage(Frozen):
    """Embedding work, apart from model calls: a query's embedding is a row, and so is a whole
    background sync of a project's index (its batches summed, see :func:`embedding_sync`)."""

    rows: int
    failed: int
    input_tokens: int
    seconds: float = Field(description="time spent embedding, every batch summed")


class LedgerSummary(Frozen):
    """Figures over the ledger (since ``since`` when given).

    ``calls`` and the figures beside it are model calls (prompts answered or not); embedding work
    is counted apart in ``embedding`` and tool calls in ``tool_calls``. A call counts as failed
    when its path is ``failed`` or ``ok`` is false; local and Claude counts are of the calls that
    did not fail, so ``calls = local + claude + failed``. Local means served by a local host,
    confident or not (``low_confidence_calls`` says how many were not).
    """

    tool_calls: int = Field(description="tool calls made by a client (not those a tool made through another)")
    calls: int
    local_calls: int
    low_confidence_calls: int
    claude_calls: int
    failed_calls: int
    local_share: float = Field(description="local / (local + claude); 0 when there were none.")
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    local_tokens: int
    claude_tokens: int
    claude_cost_usd: float = Field(description="Real money spent, every call counted.")
    savings_usd: float = Field(description="Counterfactual Claude cost of the calls served locally.")
    claude_spend_today_usd: float
    embedding: EmbeddingUsage
    by_model: list[ModelUsage]
    by_host: list[HostUsage]
    since: float | None


# Agreement detail is field names and flags: field names longer than this, or more of them, are cut.
_MAX_DETAIL_NAMES = 12
_MAX_DETAIL_NAME_CHARS = 80


class CalibrationLabel(Frozen):
    """One labelled outcome of a local answer: its raw signals and whether it was right.

    ``signals`` is the answer's :class:`~caelum_mcp.core.confidence.Signals` as a dict of numbers and
    flags only (anything else is refused, so no prompt or answer text can be stored); ``label`` is
    None when the reference answer could not be read (Claude's reply was not valid), so the row
    counts as seen but not as labelled. ``agreement`` says how the answers compared: flags, counts
    and the names of the schema fields that differed, never their values.
    """

    ts: float = Field(description="Unix seconds, UTC.")
    model: str = Field(min_length=1)
    kind: str = Field(min_length=1)
    signals: dict[str, float | int | bool | None]
    label: bool | None
    source: LabelSource
    claude_model: str | None = None
    agreement: dict[str, Any] | None = None

    @field_validator("signals", mode="before")
    @classmethod
    def _numbers_only(cls, value: Any) -> Any:
        if isinstance(value, dict):
            text = [k for k, v in value.items() if v is not None and not isinstance(v, bool | int | float)]
            if text:
                raise ValueError(f"signals hold numbers and flags only; {', '.join(map(str, text[:5]))} are not")
        return value

    @field_validator("agreement")
    @classmethod
    def _bounded_detail(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        detail: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(item, list | tuple):
                detail[key] = [str(n)[:_MAX_DETAIL_NAME_CHARS] for n in item[:_MAX_DETAIL_NAMES]]
            elif item is None or isinstance(item, bool | int | float):
                detail[key] = item
            else:
                raise ValueError(f"agreement detail {key!r} must be a flag, a number or a list of field names")
        return detail


class LabelCounts(Frozen):
    """The labelled outcomes the ledger holds for one (model, kind)."""

    model: str
    kind: str
    rows: int = Field(description="outcomes recorded, labelled or not")
    labelled: int = Field(description="outcomes with a label (the reference answer was readable)")
    correct: int = Field(description="labelled outcomes that were right")


class KindFigures(Frozen):
    """One model's answers for one task kind, from the running counts.

    ``scored`` answers had a confidence recorded; ``cleared`` of those reached the threshold asked
    for (read to the hundredth: a threshold of 0.755 counts as 0.76).
    """

    model: str
    kind: str
    outcome: Literal["local", "claude"]
    answers: int
    scored: int
    cleared: int


def utc_day_bounds(now: float) -> tuple[float, float]:
    """Start and end (unix seconds) of the UTC calendar day containing ``now``."""
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp(), (day + timedelta(days=1)).timestamp()


# The row's columns, in LedgerEntry's field order (checked at import: a field added to the model
# must be added here, to each store's insert and to a migration of each).
COLUMNS = (
    "ts", "task", "path", "provider", "host", "model", "tier", "attempts", "confidence",
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "latency_ms",
    "cost_usd", "counterfactual_cost_usd", "ok", "error", "call_id", "kind",
)  # fmt: skip
assert COLUMNS == tuple(LedgerEntry.model_fields)
assert LOCAL_PATHS | {"claude", "failed"} == set(get_args(ExecutionPath))
LABEL_COLUMNS = ("ts", "model", "kind", "signals", "label", "source", "claude_model", "agreement")
assert LABEL_COLUMNS == tuple(CalibrationLabel.model_fields)
TOOL_CALL_COLUMNS = ("id", "parent_id", "tool", "started", "seconds", "outcome", "error")
assert TOOL_CALL_COLUMNS == tuple(ToolCallRecord.model_fields)

DAY_S = 86400


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
    """Every model call in the ledger, counted as :class:`~caelum_mcp.engine.ledger.LedgerSummary` does:
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
