"""The cost ledger: every LLM call as one row, and the figures built from those rows.

What a row holds is figures only (path, host, model, tokens, latency, confidence, cost); prompts and
answers are never stored. Claude cost is real usage tokens x the per-model price table; for calls
served locally the ledger also keeps the *counterfactual* cost: what the configured Claude model
would have charged for the same tokens. Savings are the sum of those counterfactual costs.

Where the rows live is a store (:mod:`.store`, the protocol that owns every query, the dashboard's
included): a SQLite file in the data folder by default (:mod:`.sqlite_store`: WAL, every row
committed durably before ``record`` returns), or a PostgreSQL database several servers share
(``[ledger] url = "postgresql://…"``, :mod:`.postgres_store`). Each migrates its schema when opened.

The daily Claude budget holds under concurrency: before a Claude call the router *reserves* what the
call may cost (:meth:`Ledger.reserve`: the day's spend, the live reservations and this one are
checked against the budget and the reservation written in one transaction no other writer
interleaves with: SQLite's ``BEGIN IMMEDIATE``, PostgreSQL's transaction-scoped advisory lock, so
two calls, two processes or two servers cannot both take the last dollar). When the call ends its
row is written and its reservation removed in one transaction (:meth:`Ledger.settle`). Every
reservation expires: a process that dies mid-call does not hold its share of the budget for longer
than the call could have run.

Each answered model call also names the task kind it was made for, and the ledger keeps running
counts per (model, kind) of the answers and of their confidence to the hundredth
(:meth:`Ledger.kind_figures`): what ``pool_status`` shows as answers and local share per model and
kind. The ``calibration_labels`` table holds labelled outcomes from real use (a Claude audit of a
local answer, an escalation, a benchmark): the answer's raw signals as numbers, whether it was
right, never the prompt or the answers (:meth:`Ledger.add_label`, :meth:`Ledger.labels`); ``caelum-mcp
calibrate`` refits the calibrators from them.
"""

from __future__ import annotations

from caelum_mcp.core.llm import CallCost  # re-exported: supervisors read it through ctx.llm
from caelum_mcp.engine.ledger.core import Ledger, open_store
from caelum_mcp.engine.ledger.guard import BudgetGuard
from caelum_mcp.engine.ledger.models import (
    LOCAL_PATHS,
    BudgetFigures,
    CalibrationLabel,
    DayFigures,
    EmbeddingUsage,
    ExecutionPath,
    HostUsage,
    KindFigures,
    LabelCounts,
    LabelSource,
    LatencyPoint,
    LedgerEntry,
    LedgerObserver,
    LedgerSummary,
    ModelUsage,
    Outcome,
    Reservation,
    ToolCallChange,
    ToolCallRecord,
    ToolCallSummary,
    Totals,
    failed_call_row,
    model_call_row,
    utc_day_bounds,
)
from caelum_mcp.engine.ledger.sqlite_schema import SCHEMA_VERSION
from caelum_mcp.engine.ledger.sqlite_sql import INSERT as _INSERT  # bench/faults.py bulk-fills a SQLite ledger
from caelum_mcp.engine.ledger.store import HistoryStore, LedgerStore

__all__ = [
    "LOCAL_PATHS",
    "SCHEMA_VERSION",
    "_INSERT",
    "BudgetFigures",
    "BudgetGuard",
    "CalibrationLabel",
    "CallCost",
    "DayFigures",
    "EmbeddingUsage",
    "ExecutionPath",
    "HistoryStore",
    "HostUsage",
    "KindFigures",
    "LabelCounts",
    "LabelSource",
    "LatencyPoint",
    "Ledger",
    "LedgerEntry",
    "LedgerObserver",
    "LedgerStore",
    "LedgerSummary",
    "ModelUsage",
    "Outcome",
    "Reservation",
    "ToolCallChange",
    "ToolCallRecord",
    "ToolCallSummary",
    "Totals",
    "failed_call_row",
    "model_call_row",
    "open_store",
    "utc_day_bounds",
]
