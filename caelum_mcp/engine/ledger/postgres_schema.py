"""The PostgreSQL ledger's schema and its migrations: version N's statements bring a database from
N-1 to N, run when a store opens it, under a transaction-scoped advisory lock so that several
servers starting at once migrate it once.

Version 1 holds what the SQLite ledger reached at its version 6: the calls, the tool calls, the
budget reservations, the running totals per (model, provider, host, outcome, path, tier) and per
(model, kind, outcome, confidence hundredth) kept by one trigger in the same transaction as each
row (an insert, an annotation, a row pruned by hand), and the calibration labels.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

# pg_advisory_xact_lock keys (any 64-bit numbers no other user of the database takes): the schema's
# migration, and the budget's reservations ('caelum' in ASCII, and its successor).
MIGRATION_LOCK = 0x6361656C756D
BUDGET_LOCK = 0x6361656C756E

_ROLLUP_KEYS = ("model", "provider", "host", "outcome", "path", "tier")
_ROLLUP_SUMS = (
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
    "latency_ms", "cost_usd", "counterfactual_cost_usd",
)  # fmt: skip


def _key(row: str, key: str) -> str:
    # A row without a tier counts under '' (a key column of the totals holds no NULL).
    return f"coalesce({row}.tier, '')" if key == "tier" else f"{row}.{key}"


def _rollup_take(row: str) -> str:
    sums = ", ".join(f"{c} = call_rollup.{c} - {row}.{c}" for c in _ROLLUP_SUMS)
    where = " AND ".join(f"call_rollup.{k} = {_key(row, k)}" for k in _ROLLUP_KEYS)
    return f"UPDATE call_rollup SET calls = call_rollup.calls - 1, {sums} WHERE {where};"  # noqa: S608 - fixed names


def _rollup_add(row: str) -> str:
    values = ", ".join([_key(row, k) for k in _ROLLUP_KEYS] + ["1"] + [f"{row}.{c}" for c in _ROLLUP_SUMS])
    sums = ", ".join(f"{c} = call_rollup.{c} + excluded.{c}" for c in _ROLLUP_SUMS)
    return (
        f"INSERT INTO call_rollup VALUES ({values}) ON CONFLICT ({', '.join(_ROLLUP_KEYS)}) "  # noqa: S608
        f"DO UPDATE SET calls = call_rollup.calls + 1, {sums};"
    )


def _bucket(row: str) -> str:
    # + 1e-6: 0.29 * 100 is 28.999999999999996 in binary floating point, and must count as 29.
    return f"CASE WHEN {row}.confidence IS NULL THEN -1 ELSE floor({row}.confidence * 100 + 1e-6)::integer END"


def _counted(row: str) -> str:
    return f"{row}.kind IS NOT NULL AND {row}.outcome <> 'failed' AND {row}.tier IS DISTINCT FROM 'embedding'"


def _kind_take(row: str) -> str:
    return (
        f"IF {_counted(row)} THEN UPDATE kind_rollup SET answers = kind_rollup.answers - 1 "  # noqa: S608
        f"WHERE kind_rollup.model = {row}.model AND kind_rollup.kind = {row}.kind "
        f"AND kind_rollup.outcome = {row}.outcome AND kind_rollup.bucket = {_bucket(row)}; END IF;"
    )


def _kind_add(row: str) -> str:
    return (
        f"IF {_counted(row)} THEN INSERT INTO kind_rollup VALUES ({row}.model, {row}.kind, {row}.outcome, "  # noqa: S608
        f"{_bucket(row)}, 1) ON CONFLICT (model, kind, outcome, bucket) "
        "DO UPDATE SET answers = kind_rollup.answers + 1; END IF;"
    )


_SCHEMA_V1 = f"""
CREATE TABLE IF NOT EXISTS calls (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts double precision NOT NULL,
    task text NOT NULL,
    path text NOT NULL,
    provider text NOT NULL,
    host text NOT NULL,
    model text NOT NULL,
    tier text,
    attempts integer NOT NULL,
    confidence double precision,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cache_read_tokens bigint NOT NULL,
    cache_write_tokens bigint NOT NULL,
    latency_ms double precision NOT NULL,
    cost_usd double precision NOT NULL,
    counterfactual_cost_usd double precision NOT NULL,
    ok integer NOT NULL,
    error text,
    call_id text,
    kind text,
    outcome text NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_ts ON calls (ts);
CREATE INDEX IF NOT EXISTS calls_call_id ON calls (call_id);
CREATE TABLE IF NOT EXISTS tool_calls (
    id text PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    parent_id text,
    tool text NOT NULL,
    started double precision NOT NULL,
    seconds double precision,
    outcome text,
    error text
);
CREATE INDEX IF NOT EXISTS tool_calls_parent ON tool_calls (parent_id);
CREATE INDEX IF NOT EXISTS tool_calls_started ON tool_calls (started, seq);
CREATE TABLE IF NOT EXISTS reservations (
    id text PRIMARY KEY,
    created double precision NOT NULL,
    expires double precision NOT NULL,
    amount_usd double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_expires ON reservations (expires);
CREATE TABLE IF NOT EXISTS call_rollup (
    model text NOT NULL, provider text NOT NULL, host text NOT NULL, outcome text NOT NULL, path text NOT NULL,
    tier text NOT NULL,
    calls bigint NOT NULL,
    input_tokens bigint NOT NULL, output_tokens bigint NOT NULL,
    cache_read_tokens bigint NOT NULL, cache_write_tokens bigint NOT NULL,
    latency_ms double precision NOT NULL, cost_usd double precision NOT NULL,
    counterfactual_cost_usd double precision NOT NULL,
    PRIMARY KEY ({", ".join(_ROLLUP_KEYS)})
);
CREATE TABLE IF NOT EXISTS kind_rollup (
    model text NOT NULL, kind text NOT NULL, outcome text NOT NULL, bucket integer NOT NULL,
    answers bigint NOT NULL,
    PRIMARY KEY (model, kind, outcome, bucket)
);
CREATE OR REPLACE FUNCTION caelum_calls_rollup() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    -- Every writer locks the totals' rows in one order (call_rollup, then kind_rollup; old, then
    -- new), so two servers writing at once wait for each other instead of deadlocking.
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        {_rollup_take("OLD")}
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        {_rollup_add("NEW")}
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        {_kind_take("OLD")}
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        {_kind_add("NEW")}
    END IF;
    RETURN NULL;
END
$body$;
DROP TRIGGER IF EXISTS calls_rollup ON calls;
CREATE TRIGGER calls_rollup AFTER INSERT OR UPDATE OR DELETE ON calls
    FOR EACH ROW EXECUTE FUNCTION caelum_calls_rollup();
CREATE TABLE IF NOT EXISTS calibration_labels (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts double precision NOT NULL,
    model text NOT NULL,
    kind text NOT NULL,
    signals text NOT NULL,
    label integer,
    source text NOT NULL,
    claude_model text,
    agreement text
);
CREATE INDEX IF NOT EXISTS calibration_labels_pair ON calibration_labels (model, kind, label);
"""

# version -> the script that brings a database from version-1 to version (run as one statement
# list by the server: the trigger's body holds semicolons of its own, inside dollar quotes).
MIGRATIONS: dict[int, str] = {1: _SCHEMA_V1}
