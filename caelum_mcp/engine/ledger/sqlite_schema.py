"""The SQLite ledger's schema and its migrations: version N's statements bring a file from N-1 to N.

A file is migrated when it is opened (:class:`~caelum_mcp.engine.ledger.sqlite_store.SQLiteStore`), in one
``BEGIN IMMEDIATE`` transaction, so two processes opening a fresh file at once do not both create it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

SCHEMA_VERSION = 6

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
MIGRATIONS: dict[int, str] = {
    1: _SCHEMA_V1, 2: _SCHEMA_V2, 3: _SCHEMA_V3, 4: _SCHEMA_V4, 5: _SCHEMA_V5, 6: _SCHEMA_V6,
}  # fmt: skip


def statements(script: str) -> Iterator[str]:
    """The statements of ``script`` one by one (a trigger's body holds semicolons of its own)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if pending.strip():
        yield pending
