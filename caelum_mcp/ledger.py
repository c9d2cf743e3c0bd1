"""The cost ledger: every LLM call as one row in SQLite, and the figures built from those rows.

What a row holds is figures only (path, host, model, tokens, latency, confidence, cost); prompts and
answers are never stored. Claude cost is real usage tokens x the per-model price table; for calls
served locally the ledger also keeps the *counterfactual* cost: what the configured Claude model
would have charged for the same tokens. Savings are the sum of those counterfactual costs.

Durability: the database runs in WAL mode with ``synchronous=FULL`` and every ``record`` is its own
committed transaction, so an entry survives the process being killed right after ``record``
returns (and a power cut); the tool-call rows, which hold no money, survive the process being killed
but skip the wait for the disk. WAL also lets another process (``caelum-mcp status``) read while the
server writes. One connection per ``Ledger``, shared by the event loop and worker threads behind a
lock; writes are a single short INSERT, cheap enough to run on the event loop.

A file at ``path`` that is not a SQLite database, or is damaged, raises
:class:`~caelum_mcp.errors.ConfigError` naming the file and what to do, never a raw sqlite3 error.

The daily Claude budget holds under concurrency: before a Claude call the router *reserves* what the
call may cost (:meth:`Ledger.reserve`: the day's spend, the live reservations and this one are
checked against the budget and the reservation written in one ``BEGIN IMMEDIATE`` transaction, so
two calls, or two processes sharing the data directory, cannot both take the last dollar). When the
call ends its row is written and its reservation removed in one transaction (:meth:`Ledger.settle`).
Every reservation expires: a process that dies mid-call does not hold its share of the budget for
longer than the call could have run.

Each answered model call also names the task kind it was made for, and the ledger keeps running
counts per (model, kind) of the answers and of their confidence to the hundredth
(:meth:`Ledger.kind_figures`): what ``pool_status`` shows as answers and local share per model and
kind. The ``calibration_labels`` table holds labelled outcomes from real use (a Claude audit of a
local answer, an escalation, a benchmark): the answer's raw signals as numbers, whether it was
right, never the prompt or the answers (:meth:`Ledger.add_label`, :meth:`Ledger.labels`); ``caelum-mcp
calibrate`` refits the calibrators from them.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, get_args

import anyio.to_thread
from pydantic import Field, field_validator

from caelum_mcp.embedding_sync import current_sync
from caelum_mcp.errors import BudgetExceededError, ConfigError
from caelum_mcp.llm import CallCost  # re-exported: supervisors read it through ctx.llm
from caelum_mcp.types import Frozen, Usage

log = logging.getLogger(__name__)

SCHEMA_VERSION = 6
_BUSY_TIMEOUT_MS = 5000
_MAX_ERROR_CHARS = 300  # error text is a hint for the operator, not a place for model output
# Sums of float dollars drift by ~1e-16: a call that fits exactly must not be refused for that.
_MONEY_EPSILON = 1e-9

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
    return row.model_copy(update={"ok": False, "error": error[:_MAX_ERROR_CHARS]})


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

    ``signals`` is the answer's :class:`~caelum_mcp.confidence.Signals` as a dict of numbers and
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


_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    task TEXT NOT NULL,
    path TEXT NOT NULL,
    provider TEXT NOT NULL,
    host TEXT NOT NULL,
    model TEXT NOT NULL,
    tier TEXT,
    attempts INTEGER NOT NULL,
    confidence REAL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    cost_usd REAL NOT NULL,
    counterfactual_cost_usd REAL NOT NULL,
    ok INTEGER NOT NULL,
    error TEXT,
    outcome TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_ts ON calls (ts);
"""

# Version 2: which tool call each model call was made for, and the tool calls themselves (a child
# call made through ``call_tool`` names its parent), so that a tool call's cost is one query.
_SCHEMA_V2 = """
ALTER TABLE calls ADD COLUMN call_id TEXT;
CREATE INDEX IF NOT EXISTS calls_call_id ON calls (call_id);
CREATE TABLE IF NOT EXISTS tool_calls (
    id TEXT PRIMARY KEY,
    parent_id TEXT,
    tool TEXT NOT NULL,
    started REAL NOT NULL,
    seconds REAL,
    outcome TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS tool_calls_parent ON tool_calls (parent_id);
CREATE INDEX IF NOT EXISTS tool_calls_started ON tool_calls (started);
"""

# Version 3: Claude calls in flight, each holding what it may cost against the daily budget until
# it is settled (its row written) or released, or until it expires (a process that died mid-call).
_SCHEMA_V3 = """
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    amount_usd REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_expires ON reservations (expires);
"""

# Version 4: running totals of the calls per (model, provider, host, outcome, path), kept by
# triggers in the same transaction as each row, so the all-time figures of ``pool_status`` read a
# few dozen rows instead of scanning every call (2.4 s at 1M rows, on the event loop). A database
# written by an older version is summed once when it is opened. Version 5 adds the tier to the
# key (NULL kept as ''), so that embedding work is counted apart from model calls.
_ROLLUP_KEYS = ("model", "provider", "host", "outcome", "path", "tier")
_ROLLUP_SUMS = (
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
    "latency_ms", "cost_usd", "counterfactual_cost_usd",
)  # fmt: skip
_KEYS = ", ".join(_ROLLUP_KEYS)


def _key_of(row: str, key: str) -> str:
    # A key column of a WITHOUT ROWID table cannot hold NULL; a row without a tier has NULL there.
    return f"coalesce({row}.tier, '')" if key == "tier" else f"{row}.{key}"


def _rollup_add(row: str, sign: str) -> str:
    """The statement adding (``sign`` "+") or taking away ("-") the ``row`` ("new"/"old") of calls."""
    if sign == "+":
        values = ", ".join([_key_of(row, k) for k in _ROLLUP_KEYS] + ["1"] + [f"{row}.{c}" for c in _ROLLUP_SUMS])
        updates = ", ".join(["calls = calls + 1"] + [f"{c} = {c} + excluded.{c}" for c in _ROLLUP_SUMS])
        return f"INSERT INTO call_rollup VALUES ({values}) ON CONFLICT ({_KEYS}) DO UPDATE SET {updates};"  # noqa: S608 - fixed column names
    updates = ", ".join(["calls = calls - 1"] + [f"{c} = {c} - {row}.{c}" for c in _ROLLUP_SUMS])
    where = " AND ".join(f"{k} = {_key_of(row, k)}" for k in _ROLLUP_KEYS)
    return f"UPDATE call_rollup SET {updates} WHERE {where};"  # noqa: S608 - fixed column names


_ROLLUP_TOTALS = ", ".join(f"total({c})" if c.endswith(("_ms", "_usd")) else f"sum({c})" for c in _ROLLUP_SUMS)
_ROLLUP_GROUP = ", ".join(_key_of("calls", k) for k in _ROLLUP_KEYS)
_ROLLUP_TABLE = f"""
CREATE TABLE IF NOT EXISTS call_rollup (
    model TEXT NOT NULL, provider TEXT NOT NULL, host TEXT NOT NULL, outcome TEXT NOT NULL, path TEXT NOT NULL,
    tier TEXT NOT NULL,
    calls INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL, cache_write_tokens INTEGER NOT NULL,
    latency_ms REAL NOT NULL, cost_usd REAL NOT NULL, counterfactual_cost_usd REAL NOT NULL,
    PRIMARY KEY ({_KEYS})
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS calls_rollup_insert AFTER INSERT ON calls BEGIN
    {_rollup_add("new", "+")}
END;
CREATE TRIGGER IF NOT EXISTS calls_rollup_delete AFTER DELETE ON calls BEGIN
    {_rollup_add("old", "-")}
END;
CREATE TRIGGER IF NOT EXISTS calls_rollup_update
AFTER UPDATE OF {_KEYS}, {", ".join(_ROLLUP_SUMS)} ON calls BEGIN
    {_rollup_add("old", "-")}
    {_rollup_add("new", "+")}
END;
DELETE FROM call_rollup;
INSERT INTO call_rollup
    SELECT {_ROLLUP_GROUP}, count(*), {_ROLLUP_TOTALS} FROM calls GROUP BY {_ROLLUP_GROUP};
"""  # noqa: S608 - fixed column names
# A version 3 database goes through both: the table of version 4 is replaced at once.
_SCHEMA_V4 = _ROLLUP_TABLE
_SCHEMA_V5 = (
    "DROP TRIGGER IF EXISTS calls_rollup_insert;\nDROP TRIGGER IF EXISTS calls_rollup_delete;\n"
    "DROP TRIGGER IF EXISTS calls_rollup_update;\nDROP TABLE IF EXISTS call_rollup;\n" + _ROLLUP_TABLE
)


# Version 6: the task kind of each call, running counts of the answers per (model, kind, outcome)
# and confidence hundredth (-1: not scored), kept by triggers like the totals above (a confidence
# is annotated after its row is written, so an update moves the row's count between buckets), and
# the labelled outcomes from real use that ``caelum-mcp calibrate`` refits from.
def _kind_bucket(row: str) -> str:
    # + 1e-6: 0.29 * 100 is 28.999999999999996 in binary floating point, and must count as 29.
    return f"CASE WHEN {row}.confidence IS NULL THEN -1 ELSE CAST({row}.confidence * 100 + 1e-6 AS INTEGER) END"


def _kind_counted(row: str) -> str:
    return f"{row}.kind IS NOT NULL AND {row}.outcome != 'failed' AND {row}.tier IS NOT 'embedding'"


def _kind_add(row: str) -> str:
    values = f"{row}.model, {row}.kind, {row}.outcome, {_kind_bucket(row)}, 1"
    return (
        f"INSERT INTO kind_rollup VALUES ({values}) "  # noqa: S608 - fixed column names
        "ON CONFLICT (model, kind, outcome, bucket) DO UPDATE SET answers = answers + 1;"
    )


def _kind_take(row: str) -> str:
    return (
        "UPDATE kind_rollup SET answers = answers - 1 "  # noqa: S608 - fixed column names
        f"WHERE model = {row}.model AND kind = {row}.kind AND outcome = {row}.outcome "
        f"AND bucket = {_kind_bucket(row)};"
    )


_KIND_WATCHED = "model, kind, outcome, tier, confidence"
_SCHEMA_V6 = f"""
ALTER TABLE calls ADD COLUMN kind TEXT;
CREATE TABLE IF NOT EXISTS kind_rollup (
    model TEXT NOT NULL, kind TEXT NOT NULL, outcome TEXT NOT NULL, bucket INTEGER NOT NULL,
    answers INTEGER NOT NULL,
    PRIMARY KEY (model, kind, outcome, bucket)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS calls_kind_insert AFTER INSERT ON calls WHEN {_kind_counted("new")} BEGIN
    {_kind_add("new")}
END;
CREATE TRIGGER IF NOT EXISTS calls_kind_delete AFTER DELETE ON calls WHEN {_kind_counted("old")} BEGIN
    {_kind_take("old")}
END;
CREATE TRIGGER IF NOT EXISTS calls_kind_update_old AFTER UPDATE OF {_KIND_WATCHED} ON calls
WHEN {_kind_counted("old")} BEGIN
    {_kind_take("old")}
END;
CREATE TRIGGER IF NOT EXISTS calls_kind_update_new AFTER UPDATE OF {_KIND_WATCHED} ON calls
WHEN {_kind_counted("new")} BEGIN
    {_kind_add("new")}
END;
CREATE TABLE IF NOT EXISTS calibration_labels (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    signals TEXT NOT NULL,
    label INTEGER,
    source TEXT NOT NULL,
    claude_model TEXT,
    agreement TEXT
);
CREATE INDEX IF NOT EXISTS calibration_labels_pair ON calibration_labels (model, kind, label);
"""

# version -> statements that bring a database from version-1 to version. Version 1 is the base.
_MIGRATIONS: dict[int, str] = {
    1: _SCHEMA_V1, 2: _SCHEMA_V2, 3: _SCHEMA_V3, 4: _SCHEMA_V4, 5: _SCHEMA_V5, 6: _SCHEMA_V6,
}  # fmt: skip


def _statements(script: str) -> Iterator[str]:
    """The statements of ``script`` one by one (a trigger's body holds semicolons of its own)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if pending.strip():
        yield pending


# The row's columns, in LedgerEntry's field order (checked at import: a field added to the model
# must be added here and to a migration).
_COLUMNS = (
    "ts", "task", "path", "provider", "host", "model", "tier", "attempts", "confidence",
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "latency_ms",
    "cost_usd", "counterfactual_cost_usd", "ok", "error", "call_id", "kind",
)  # fmt: skip
assert _COLUMNS == tuple(LedgerEntry.model_fields)
assert LOCAL_PATHS | {"claude", "failed"} == set(get_args(ExecutionPath))

_INSERT = """
    INSERT INTO calls (ts, task, path, provider, host, model, tier, attempts, confidence,
                       input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
                       latency_ms, cost_usd, counterfactual_cost_usd, ok, error, call_id, kind, outcome)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""

_SELECT_RECENT = """
    SELECT ts, task, path, provider, host, model, tier, attempts, confidence,
           input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
           latency_ms, cost_usd, counterfactual_cost_usd, ok, error, call_id, kind
    FROM calls ORDER BY ts DESC, id DESC LIMIT ?"""

_SPEND_BETWEEN = "SELECT total(cost_usd) FROM calls WHERE ts >= ? AND ts < ?"

# Per (model, kind, outcome): answers, those scored, those at or above a confidence hundredth.
_KIND_FIGURES = """
    SELECT model, kind, outcome, sum(answers), coalesce(sum(CASE WHEN bucket >= 0 THEN answers END), 0),
           coalesce(sum(CASE WHEN bucket >= ? THEN answers END), 0)
    FROM kind_rollup WHERE answers > 0
    GROUP BY model, kind, outcome ORDER BY sum(answers) DESC, model, kind, outcome"""

_LABEL_COLUMNS = ("ts", "model", "kind", "signals", "label", "source", "claude_model", "agreement")
assert _LABEL_COLUMNS == tuple(CalibrationLabel.model_fields)
_SELECT_LABELS = """
    SELECT ts, model, kind, signals, label, source, claude_model, agreement
    FROM calibration_labels WHERE model = ? AND kind = ? {labelled} ORDER BY ts, id"""
_LABEL_COUNTS = """
    SELECT model, kind, count(*), count(label), coalesce(sum(label), 0)
    FROM calibration_labels GROUP BY model, kind ORDER BY count(label) DESC, model, kind"""
_RESERVED = "SELECT total(amount_usd) FROM reservations WHERE expires > ?"

_CALL_TREE_COST = """
    WITH RECURSIVE tree(id) AS (
        SELECT ? UNION SELECT t.id FROM tool_calls t JOIN tree ON t.parent_id = tree.id
    )
    SELECT count(*), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),
           total(cost_usd), total(counterfactual_cost_usd)
    FROM calls WHERE call_id IN (SELECT id FROM tree)"""

# ``outcome`` ('local' | 'claude' | 'failed') is derived from path and ok when a row is written, so
# that every figure below is a plain filter on one column.
_TOTALS = """
    SELECT count(*),
           coalesce(sum(outcome = 'local'), 0),
           coalesce(sum(outcome = 'local' AND path = 'local_low_confidence'), 0),
           coalesce(sum(outcome = 'claude'), 0),
           coalesce(sum(outcome = 'failed'), 0),
           coalesce(sum(input_tokens), 0),
           coalesce(sum(output_tokens), 0),
           coalesce(sum(cache_read_tokens), 0),
           coalesce(sum(cache_write_tokens), 0),
           coalesce(sum(CASE WHEN outcome = 'local' THEN total_tokens END), 0),
           coalesce(sum(CASE WHEN outcome = 'claude' THEN total_tokens END), 0),
           total(cost_usd),
           total(CASE WHEN outcome = 'local' THEN counterfactual_cost_usd END)
    FROM (SELECT *, input_tokens + output_tokens + cache_read_tokens + cache_write_tokens AS total_tokens
          FROM calls WHERE {ts} >= ? AND tier IS NOT 'embedding')"""

_BY_MODEL = """
    SELECT model, provider, count(*), sum(input_tokens), sum(output_tokens), total(cost_usd),
           total(counterfactual_cost_usd), avg(latency_ms)
    FROM calls WHERE {ts} >= ? AND model != ''
    GROUP BY model, provider ORDER BY count(*) DESC, model, provider"""

# A host's mean latency is that of its model calls when it made any: a background sync's embedding
# row holds the whole sync's time.
_BY_HOST = """
    SELECT host, count(*), sum(outcome = 'failed'),
           coalesce(avg(CASE WHEN tier IS NOT 'embedding' THEN latency_ms END), avg(latency_ms))
    FROM calls WHERE {ts} >= ? AND host != ''
    GROUP BY host ORDER BY count(*) DESC, host"""

# All time: the same figures from the running totals (``call_rollup``, one row per group).
_ALL_TIME_TOTALS = """
    SELECT coalesce(sum(calls), 0),
           coalesce(sum(CASE WHEN outcome = 'local' THEN calls END), 0),
           coalesce(sum(CASE WHEN outcome = 'local' AND path = 'local_low_confidence' THEN calls END), 0),
           coalesce(sum(CASE WHEN outcome = 'claude' THEN calls END), 0),
           coalesce(sum(CASE WHEN outcome = 'failed' THEN calls END), 0),
           coalesce(sum(input_tokens), 0),
           coalesce(sum(output_tokens), 0),
           coalesce(sum(cache_read_tokens), 0),
           coalesce(sum(cache_write_tokens), 0),
           coalesce(sum(CASE WHEN outcome = 'local' THEN total_tokens END), 0),
           coalesce(sum(CASE WHEN outcome = 'claude' THEN total_tokens END), 0),
           total(cost_usd),
           total(CASE WHEN outcome = 'local' THEN counterfactual_cost_usd END)
    FROM (SELECT *, input_tokens + output_tokens + cache_read_tokens + cache_write_tokens AS total_tokens
          FROM call_rollup WHERE calls > 0 AND tier != 'embedding')"""

_ALL_TIME_BY_MODEL = """
    SELECT model, provider, sum(calls), sum(input_tokens), sum(output_tokens), total(cost_usd),
           total(counterfactual_cost_usd), total(latency_ms) / sum(calls)
    FROM call_rollup WHERE model != '' AND calls > 0
    GROUP BY model, provider ORDER BY sum(calls) DESC, model, provider"""

_ALL_TIME_BY_HOST = """
    SELECT host, sum(calls), sum(CASE WHEN outcome = 'failed' THEN calls ELSE 0 END),
           coalesce(total(CASE WHEN tier != 'embedding' THEN latency_ms END)
                    / nullif(sum(CASE WHEN tier != 'embedding' THEN calls ELSE 0 END), 0),
                    total(latency_ms) / sum(calls))
    FROM call_rollup WHERE host != '' AND calls > 0
    GROUP BY host ORDER BY sum(calls) DESC, host"""

_EMBEDDING = """
    SELECT count(*), coalesce(sum(outcome = 'failed'), 0), coalesce(sum(input_tokens), 0), total(latency_ms)
    FROM calls WHERE {ts} >= ? AND tier = 'embedding'"""
_ALL_TIME_EMBEDDING = """
    SELECT coalesce(sum(calls), 0), coalesce(sum(CASE WHEN outcome = 'failed' THEN calls END), 0),
           coalesce(sum(input_tokens), 0), total(latency_ms)
    FROM call_rollup WHERE tier = 'embedding' AND calls > 0"""
# Through the parent index (and the start-time one for a window): top-level calls only.
_TOOL_CALLS = "SELECT count(*) FROM tool_calls WHERE parent_id IS NULL AND {started} >= ?"
_ALL_TIME_TOOL_CALLS = "SELECT count(*) FROM tool_calls WHERE parent_id IS NULL"

# The summary queries: over a recent window through the ``ts`` index, over all time from the totals.
_SUMMARY_QUERIES = {
    True: (
        *(q.format(ts="ts") for q in (_TOTALS, _BY_MODEL, _BY_HOST, _EMBEDDING)),
        _TOOL_CALLS.format(started="started"),
    ),
    False: (_ALL_TIME_TOTALS, _ALL_TIME_BY_MODEL, _ALL_TIME_BY_HOST, _ALL_TIME_EMBEDDING, _ALL_TIME_TOOL_CALLS),
}


def utc_day_bounds(now: float) -> tuple[float, float]:
    """Start and end (unix seconds) of the UTC calendar day containing ``now``."""
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp(), (day + timedelta(days=1)).timestamp()


class Ledger:
    """The persistent record of LLM calls. Thread-safe; usable as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._observers: tuple[LedgerObserver, ...] = ()
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
        with self._translate_errors():
            # isolation_level=None: autocommit, so each INSERT commits on return; transactions
            # that need more than one statement are opened explicitly.
            conn = sqlite3.connect(
                self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            try:
                self._setup(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn

    def _setup(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        # The first statement that reads the file: a non-SQLite file fails here.
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("cost ledger %s runs in %s mode, not WAL; concurrent readers may block", self.path, mode)
        conn.execute("PRAGMA synchronous = FULL")
        # IMMEDIATE: two processes opening a fresh file at once must not both create the schema.
        conn.execute("BEGIN IMMEDIATE")
        try:
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
                for statement in _statements(_MIGRATIONS[version]):
                    conn.execute(statement)
            if current < SCHEMA_VERSION:
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _translate_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "locked" in text or "busy" in text:
                fix = "another process holds a write lock on it for too long; stop it or retry"
            else:
                fix = "check that the file and its folder are readable and writable and the disk has space"
            raise ConfigError(f"cost ledger {self.path}: {text}; {fix}") from exc
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"cost ledger {self.path} is not a usable SQLite database ({exc}); move the file "
                "aside (e.g. rename it to .bak) and a fresh ledger will be created, or point the "
                "ledger path at another file"
            ) from exc

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise RuntimeError(f"cost ledger {self.path} is closed")
            with self._translate_errors():
                yield self._conn

    def add_observer(self, observer: LedgerObserver) -> Callable[[], None]:
        """Call ``observer`` after each model-call row is committed and each tool call starts or
        ends, in the writing thread (a worker thread for :meth:`arecord`): it must be quick and
        thread-safe. Its exceptions are logged, never raised to the writer. Returns the remover."""
        with self._lock:
            self._observers = (*self._observers, observer)

        def remove() -> None:
            with self._lock:
                self._observers = tuple(o for o in self._observers if o is not observer)

        return remove

    def _notify(self, event: LedgerEntry | ToolCallChange) -> None:
        for observer in self._observers:
            try:
                observer(event)
            except Exception:
                log.exception("ledger observer %r failed", observer)

    def record(self, entry: LedgerEntry) -> int:
        """Append ``entry``; committed (durably) before this returns. Returns the row id."""
        with self._connection() as conn:
            rowid = self._insert(conn, entry)
        self._notify(entry)
        return rowid

    def record_embedding(self, entry: LedgerEntry) -> int | None:
        """Append an embedding request's row; inside
        :func:`~caelum_mcp.embedding_sync.embedding_sync` an answered one is added to the sync's
        single row for its host and model instead (written when the sync ends; None then)."""
        tally = current_sync()
        if tally is None or not entry.ok:
            return self.record(entry)
        key = (id(self), entry.host, entry.model)
        held = tally.pending.get(key)
        if held is None:
            tally.pending[key] = (self.record, entry.model_copy(update={"task": tally.task}))
            return None
        total: LedgerEntry = held[1]
        tally.pending[key] = (
            self.record,
            total.model_copy(
                update={
                    "ts": entry.ts,
                    "attempts": total.attempts + entry.attempts,
                    "input_tokens": total.input_tokens + entry.input_tokens,
                    "output_tokens": total.output_tokens + entry.output_tokens,
                    "latency_ms": total.latency_ms + entry.latency_ms,
                }
            ),
        )
        return None

    def annotate(self, row_id: int, *, confidence: float | None = None, path: ExecutionPath | None = None) -> None:
        """Add what is known only after a call's row was written: the confidence its answer scored,
        and ``local_low_confidence`` when that answer was handed back below the threshold."""
        with self._connection() as conn:
            conn.execute(
                "UPDATE calls SET confidence = coalesce(?, confidence), path = coalesce(?, path) WHERE id = ?",
                (None if confidence is None else min(1.0, max(0.0, confidence)), path, row_id),
            )

    def kind_figures(self, threshold: float) -> list[KindFigures]:
        """Each model's answers per task kind, all time, from the running counts (a few rows):
        how many, how many were scored, and how many reached ``threshold`` (to the hundredth)."""
        bucket = math.ceil(min(1.0, max(0.0, threshold)) * 100 - 1e-6)
        with self._connection() as conn:
            rows = conn.execute(_KIND_FIGURES, (bucket,)).fetchall()
        return [
            KindFigures(model=r[0], kind=r[1], outcome=r[2], answers=r[3], scored=r[4], cleared=r[5])
            for r in rows
            if r[2] in ("local", "claude")
        ]

    def add_label(self, label: CalibrationLabel) -> int:
        """Append one labelled outcome; committed (durably) before this returns. Returns its id."""
        values = (
            label.ts,
            label.model,
            label.kind,
            json.dumps(label.signals, sort_keys=True),
            None if label.label is None else int(label.label),
            label.source,
            label.claude_model,
            None if label.agreement is None else json.dumps(label.agreement, sort_keys=True),
        )
        with self._connection() as conn:
            rowid = conn.execute(
                "INSERT INTO calibration_labels (ts, model, kind, signals, label, source, claude_model, agreement) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            ).lastrowid
        assert rowid is not None
        return rowid

    async def aadd_label(self, label: CalibrationLabel) -> int:
        """:meth:`add_label` from async code (the commit runs in a worker thread)."""
        return await anyio.to_thread.run_sync(self.add_label, label)

    def labels(self, model: str, kind: str, *, labelled_only: bool = True) -> list[CalibrationLabel]:
        """The outcomes recorded for (``model``, ``kind``), oldest first (through the pair's index);
        only those with a label unless ``labelled_only`` is false."""
        sql = _SELECT_LABELS.format(labelled="AND label IS NOT NULL" if labelled_only else "")
        with self._connection() as conn:
            rows = conn.execute(sql, (model, kind)).fetchall()
        return [_label_of(row) for row in rows]

    def label_counts(self) -> list[LabelCounts]:
        """Per (model, kind): outcomes recorded, labelled, and right; most labelled first."""
        with self._connection() as conn:
            rows = conn.execute(_LABEL_COUNTS).fetchall()
        return [LabelCounts(model=r[0], kind=r[1], rows=r[2], labelled=r[3], correct=r[4]) for r in rows]

    async def arecord(self, entry: LedgerEntry) -> int:
        """:meth:`record` from async code: the commit (an fsync, ~0.3 ms) runs in a worker thread, so
        the event loop serves other requests meanwhile. Committed when this returns; a cancelled
        caller still waits for the write to finish."""
        return await anyio.to_thread.run_sync(self.record, entry)

    @staticmethod
    def _insert(conn: sqlite3.Connection, entry: LedgerEntry) -> int:
        error = entry.error[:_MAX_ERROR_CHARS] if entry.error else entry.error
        values = [getattr(entry, name) for name in _COLUMNS]
        values[_COLUMNS.index("error")] = error
        values[_COLUMNS.index("ok")] = int(entry.ok)
        values.append(entry.outcome)
        rowid = conn.execute(_INSERT, values).lastrowid
        assert rowid is not None
        return rowid

    def reserve(
        self, amount_usd: float, *, limit_usd: float | None, ttl_s: float, now: float | None = None
    ) -> tuple[Reservation | None, BudgetFigures]:
        """Hold ``amount_usd`` of today's Claude budget, if it fits: atomically across connections
        and processes (one ``BEGIN IMMEDIATE`` transaction). Returns the reservation (None when it
        would not fit under ``limit_usd``; None as the limit means no limit) and the figures it was
        judged on. The reservation lapses after ``ttl_s`` unless settled or released first."""
        now = time.time() if now is None else now
        start, end = utc_day_bounds(now)
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM reservations WHERE expires <= ?", (now,))
                spent = float(conn.execute(_SPEND_BETWEEN, (start, end)).fetchone()[0])
                reserved = float(conn.execute(_RESERVED, (now,)).fetchone()[0])
                figures = BudgetFigures(spent_usd=spent, reserved_usd=reserved)
                if limit_usd is not None and spent + reserved + amount_usd > limit_usd + _MONEY_EPSILON:
                    conn.execute("COMMIT")  # the expired rows stay deleted
                    return None, figures
                reservation = Reservation(id=uuid.uuid4().hex, amount_usd=amount_usd, expires=now + ttl_s)
                conn.execute(
                    "INSERT INTO reservations (id, created, expires, amount_usd) VALUES (?, ?, ?, ?)",
                    (reservation.id, now, reservation.expires, amount_usd),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return reservation, figures

    def settle(self, reservation: Reservation, entry: LedgerEntry | None = None) -> int | None:
        """End a reservation: write the call's row (when given) and remove the reservation in one
        transaction, so the money is never counted twice or not at all. Returns the row id."""
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                rowid = None if entry is None else self._insert(conn, entry)
                conn.execute("DELETE FROM reservations WHERE id = ?", (reservation.id,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        if entry is not None:
            self._notify(entry)
        return rowid

    def release(self, reservation: Reservation) -> None:
        """Give a reservation back unused (the call was never made)."""
        self.settle(reservation, None)

    def budget_figures(self, now: float | None = None) -> BudgetFigures:
        """Today's Claude spend and what live reservations hold, from one snapshot."""
        now = time.time() if now is None else now
        start, end = utc_day_bounds(now)
        with self._connection() as conn:
            conn.execute("BEGIN")
            try:
                spent = float(conn.execute(_SPEND_BETWEEN, (start, end)).fetchone()[0])
                reserved = float(conn.execute(_RESERVED, (now,)).fetchone()[0])
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        return BudgetFigures(spent_usd=spent, reserved_usd=reserved)

    def claude_spend_today(self, now: float | None = None) -> float:
        """Real money spent on the UTC calendar day containing ``now`` (default: the present)."""
        start, end = utc_day_bounds(time.time() if now is None else now)
        with self._connection() as conn:
            return float(conn.execute(_SPEND_BETWEEN, (start, end)).fetchone()[0])

    def summary(self, since: float | None = None, *, now: float | None = None) -> LedgerSummary:
        """Figures over every call with ``ts >= since`` (all calls when ``since`` is None).

        All time reads the running totals (a few rows), a window the calls in it through the
        ``ts`` index; either is a blocking read, so async code calls it in a worker thread."""
        params: tuple[float, ...] = (since,) if since is not None else ()
        totals_sql, by_model_sql, by_host_sql, embedding_sql, tool_calls_sql = _SUMMARY_QUERIES[since is not None]
        start, end = utc_day_bounds(time.time() if now is None else now)
        with self._connection() as conn:
            # One read transaction: every figure comes from the same snapshot of the file.
            conn.execute("BEGIN")
            try:
                t = conn.execute(totals_sql, params).fetchone()
                models = conn.execute(by_model_sql, params).fetchall()
                hosts = conn.execute(by_host_sql, params).fetchall()
                embedding = conn.execute(embedding_sql, params).fetchone()
                tool_calls = int(conn.execute(tool_calls_sql, params).fetchone()[0])
                today = conn.execute(_SPEND_BETWEEN, (start, end)).fetchone()[0]
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        local, claude = int(t[1]), int(t[3])
        return LedgerSummary(
            tool_calls=tool_calls,
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
            claude_spend_today_usd=today,
            embedding=EmbeddingUsage(
                rows=embedding[0], failed=embedding[1], input_tokens=embedding[2], seconds=round(embedding[3] / 1000, 3)
            ),
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
                for m in models
            ],
            by_host=[HostUsage(host=h[0], calls=h[1], failures=h[2], mean_latency_ms=h[3]) for h in hosts],
            since=since,
        )

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

    def start_tool_call(self, call_id: str, tool: str, *, parent_id: str | None = None) -> None:
        """Note that an external tool call began (a child names its parent)."""
        with self._bookkeeping() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO tool_calls (id, parent_id, tool, started) VALUES (?, ?, ?, ?)",
                (call_id, parent_id, tool, time.time()),
            )
        self._notify(ToolCallChange(call_id=call_id, tool=tool, parent_id=parent_id))

    def finish_tool_call(self, call_id: str, *, seconds: float, outcome: str, error: str | None = None) -> None:
        """Note how an external tool call ended: ``ok``, ``error`` or ``cancelled``."""
        with self._bookkeeping() as conn:
            conn.execute(
                "UPDATE tool_calls SET seconds = ?, outcome = ?, error = ? WHERE id = ?",
                (seconds, outcome, error[:_MAX_ERROR_CHARS] if error else None, call_id),
            )
        self._notify(ToolCallChange(call_id=call_id, outcome=outcome))

    def tool_calls(self, *, parent_id: str | None = None, limit: int = 50) -> list[ToolCallRecord]:
        """The latest tool calls (children of ``parent_id`` when given, else top-level ones), newest first."""
        with self._connection() as conn:
            # ``IS ?`` matches NULL too: no parent means the top-level calls.
            rows = conn.execute(
                "SELECT id, parent_id, tool, started, seconds, outcome, error FROM tool_calls "
                # +parent_id: walk the start-time index newest first and stop at the limit, rather
                # than gather every match through the parent index and sort (55 ms -> 1 ms at 50k).
                "WHERE +parent_id IS ? ORDER BY started DESC, rowid DESC LIMIT ?",
                (parent_id, limit),
            ).fetchall()
        fields = ("id", "parent_id", "tool", "started", "seconds", "outcome", "error")
        return [ToolCallRecord.model_validate(dict(zip(fields, row, strict=True))) for row in rows]

    def call_cost(self, call_id: str) -> CallCost:
        """What the model calls of tool call ``call_id`` and of every call beneath it cost."""
        with self._connection() as conn:
            row = conn.execute(_CALL_TREE_COST, (call_id,)).fetchone()
        return CallCost(
            model_calls=row[0],
            input_tokens=row[1],
            output_tokens=row[2],
            cost_usd=row[3],
            counterfactual_cost_usd=row[4],
        )

    def recent(self, limit: int = 20) -> list[LedgerEntry]:
        """The last ``limit`` entries, newest first."""
        with self._connection() as conn:
            rows = conn.execute(_SELECT_RECENT, (max(0, limit),)).fetchall()
        return [LedgerEntry.model_validate(dict(zip(_COLUMNS, row, strict=True))) for row in rows]

    def close(self) -> None:
        """Close the connection; calling it again does nothing."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _label_of(row: tuple[Any, ...]) -> CalibrationLabel:
    data = dict(zip(_LABEL_COLUMNS, row, strict=True))
    data["signals"] = json.loads(data["signals"])
    data["label"] = None if data["label"] is None else bool(data["label"])
    data["agreement"] = None if data["agreement"] is None else json.loads(data["agreement"])
    return CalibrationLabel.model_validate(data)


def _money(value: float) -> str:
    # Cents when that is exact enough to read; finer when a sub-cent figure would round away.
    if math.isclose(value, round(value, 2), abs_tol=1e-9):
        return f"${value:,.2f}"
    return f"${value:,.4f}"


class BudgetGuard:
    """Decides whether a Claude call may happen under the daily (UTC) budget.

    ``daily_budget_usd=None`` means unlimited; ``0`` means Claude is never called.
    """

    def __init__(
        self,
        ledger: Ledger,
        daily_budget_usd: float | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if daily_budget_usd is not None and (daily_budget_usd < 0 or math.isnan(daily_budget_usd)):
            raise ConfigError(
                f"[claude].daily_budget_usd = {daily_budget_usd} is invalid; use a number >= 0, "
                "or leave it out for no limit"
            )
        self.ledger = ledger
        self.daily_budget_usd = daily_budget_usd
        self._clock = clock

    def remaining_today(self) -> float | None:
        """USD left today (never below 0), net of what Claude calls in flight hold; None when
        there is no budget."""
        if self.daily_budget_usd is None:
            return None
        figures = self.ledger.budget_figures(self._clock())
        return max(0.0, self.daily_budget_usd - figures.spent_usd - figures.reserved_usd)

    def check(self, estimated_cost_usd: float = 0.0) -> str | None:
        """None when a Claude call costing up to ``estimated_cost_usd`` is allowed now; else why not.

        A snapshot, for planning: only :meth:`reserve` makes the money the call's.
        """
        if self.daily_budget_usd is None:
            return None
        return self._refusal(self.ledger.budget_figures(self._clock()), estimated_cost_usd)

    def reserve(self, cost_usd: float, *, ttl_s: float) -> Reservation:
        """Hold ``cost_usd`` of today's budget for one call (settle or release it when the call
        ends; it lapses after ``ttl_s``). Raises :class:`BudgetExceededError` saying why when the
        day's spend plus what calls in flight hold plus this would pass the budget."""
        reservation, figures = self.ledger.reserve(
            max(0.0, cost_usd), limit_usd=self.daily_budget_usd, ttl_s=ttl_s, now=self._clock()
        )
        if reservation is None:
            raise BudgetExceededError(self._refusal(figures, cost_usd) or "daily Claude budget reached")
        return reservation

    def enforce(self, estimated_cost_usd: float = 0.0) -> None:
        """Raise :class:`BudgetExceededError` with the reason when :meth:`check` refuses."""
        reason = self.check(estimated_cost_usd)
        if reason is not None:
            raise BudgetExceededError(reason)

    def _refusal(self, figures: BudgetFigures, cost_usd: float) -> str | None:
        budget = self.daily_budget_usd
        if budget is None:
            return None
        spent, held = figures.spent_usd, figures.reserved_usd
        advice = "raise [claude].daily_budget_usd or wait until 00:00 UTC"
        if spent >= budget:
            return f"daily Claude budget of {_money(budget)} reached: {_money(spent)} spent today (UTC); {advice}"
        if spent + held + max(0.0, cost_usd) > budget + _MONEY_EPSILON:
            in_flight = f" + {_money(held)} held by Claude calls in flight" if held > 0 else ""
            return (
                f"daily Claude budget of {_money(budget)} would be exceeded: {_money(spent)} spent "
                f"today (UTC){in_flight} + up to {_money(cost_usd)} for this call; {advice}"
            )
        return None
