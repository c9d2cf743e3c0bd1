"""The PostgreSQL store's queries: the SQLite store's, in PostgreSQL's dialect (``%s`` parameters,
``FILTER`` for the counts, sums cast back to bigint: psycopg reads a numeric as a Decimal)."""

from __future__ import annotations

ENTRY_COLUMNS = """ts, task, path, provider, host, model, tier, attempts, confidence,
           input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
           latency_ms, cost_usd, counterfactual_cost_usd, ok, error, call_id, kind"""

INSERT = f"""
    INSERT INTO calls ({ENTRY_COLUMNS}, outcome)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    RETURNING id"""  # noqa: S608 - fixed column names

SELECT_RECENT = f"SELECT {ENTRY_COLUMNS} FROM calls ORDER BY ts DESC, id DESC LIMIT %s"  # noqa: S608

SPEND_BETWEEN = "SELECT coalesce(sum(cost_usd), 0) FROM calls WHERE ts >= %s AND ts < %s"

# One statement, so one snapshot: a settle committing between two reads would otherwise be seen as
# neither spent nor held.
BUDGET = f"""
    SELECT ({SPEND_BETWEEN}),
           (SELECT coalesce(sum(amount_usd), 0) FROM reservations WHERE expires > %s)"""  # noqa: S608

KIND_FIGURES = """
    SELECT model, kind, outcome, sum(answers)::bigint,
           coalesce(sum(answers) FILTER (WHERE bucket >= 0), 0)::bigint,
           coalesce(sum(answers) FILTER (WHERE bucket >= %s), 0)::bigint
    FROM kind_rollup WHERE answers > 0
    GROUP BY model, kind, outcome ORDER BY sum(answers) DESC, model, kind, outcome"""

SELECT_LABELS = """
    SELECT ts, model, kind, signals, label, source, claude_model, agreement
    FROM calibration_labels WHERE model = %s AND kind = %s {labelled} ORDER BY ts, id"""
LABEL_COUNTS = """
    SELECT model, kind, count(*), count(label), coalesce(sum(label), 0)::bigint
    FROM calibration_labels GROUP BY model, kind ORDER BY count(label) DESC, model, kind"""

TREE = """
    WITH RECURSIVE tree(id) AS (
        SELECT %s::text UNION SELECT t.id FROM tool_calls t JOIN tree ON t.parent_id = tree.id
    )"""
CALL_TREE_COST = f"""{TREE}
    SELECT count(*), coalesce(sum(input_tokens), 0)::bigint, coalesce(sum(output_tokens), 0)::bigint,
           coalesce(sum(cost_usd), 0), coalesce(sum(counterfactual_cost_usd), 0)
    FROM calls WHERE call_id IN (SELECT id FROM tree)"""  # noqa: S608

_TOTAL_TOKENS = "input_tokens + output_tokens + cache_read_tokens + cache_write_tokens"
# The 13 figures of a summary over rows carrying a count: ``calls`` for the running totals, 1 each
# for the calls themselves.
_FIGURES = """
    SELECT coalesce(sum({n}), 0)::bigint,
           coalesce(sum({n}) FILTER (WHERE outcome = 'local'), 0)::bigint,
           coalesce(sum({n}) FILTER (WHERE outcome = 'local' AND path = 'local_low_confidence'), 0)::bigint,
           coalesce(sum({n}) FILTER (WHERE outcome = 'claude'), 0)::bigint,
           coalesce(sum({n}) FILTER (WHERE outcome = 'failed'), 0)::bigint,
           coalesce(sum(input_tokens), 0)::bigint,
           coalesce(sum(output_tokens), 0)::bigint,
           coalesce(sum(cache_read_tokens), 0)::bigint,
           coalesce(sum(cache_write_tokens), 0)::bigint,
           coalesce(sum({tokens}) FILTER (WHERE outcome = 'local'), 0)::bigint,
           coalesce(sum({tokens}) FILTER (WHERE outcome = 'claude'), 0)::bigint,
           coalesce(sum(cost_usd), 0),
           coalesce(sum(counterfactual_cost_usd) FILTER (WHERE outcome = 'local'), 0)
    FROM {source}"""
TOTALS = _FIGURES.format(
    n="1", tokens=_TOTAL_TOKENS, source="calls WHERE ts >= %s AND tier IS DISTINCT FROM 'embedding'"
)
ALL_TIME_TOTALS = _FIGURES.format(
    n="calls", tokens=_TOTAL_TOKENS, source="call_rollup WHERE calls > 0 AND tier <> 'embedding'"
)

BY_MODEL = """
    SELECT model, provider, count(*), sum(input_tokens)::bigint, sum(output_tokens)::bigint,
           coalesce(sum(cost_usd), 0), coalesce(sum(counterfactual_cost_usd), 0), avg(latency_ms)
    FROM calls WHERE ts >= %s AND model <> ''
    GROUP BY model, provider ORDER BY count(*) DESC, model, provider"""
ALL_TIME_BY_MODEL = """
    SELECT model, provider, sum(calls)::bigint, sum(input_tokens)::bigint, sum(output_tokens)::bigint,
           coalesce(sum(cost_usd), 0), coalesce(sum(counterfactual_cost_usd), 0), sum(latency_ms) / sum(calls)
    FROM call_rollup WHERE model <> '' AND calls > 0
    GROUP BY model, provider ORDER BY sum(calls) DESC, model, provider"""

# A host's mean latency is that of its model calls when it made any: a background sync's embedding
# row holds the whole sync's time.
BY_HOST = """
    SELECT host, count(*), count(*) FILTER (WHERE outcome = 'failed'),
           coalesce(avg(latency_ms) FILTER (WHERE tier IS DISTINCT FROM 'embedding'), avg(latency_ms))
    FROM calls WHERE ts >= %s AND host <> ''
    GROUP BY host ORDER BY count(*) DESC, host"""
ALL_TIME_BY_HOST = """
    SELECT host, sum(calls)::bigint, coalesce(sum(calls) FILTER (WHERE outcome = 'failed'), 0)::bigint,
           coalesce(sum(latency_ms) FILTER (WHERE tier <> 'embedding')
                    / nullif(sum(calls) FILTER (WHERE tier <> 'embedding'), 0),
                    sum(latency_ms) / sum(calls))
    FROM call_rollup WHERE host <> '' AND calls > 0
    GROUP BY host ORDER BY sum(calls) DESC, host"""

EMBEDDING = """
    SELECT count(*), count(*) FILTER (WHERE outcome = 'failed'), coalesce(sum(input_tokens), 0)::bigint,
           coalesce(sum(latency_ms), 0)
    FROM calls WHERE ts >= %s AND tier = 'embedding'"""
ALL_TIME_EMBEDDING = """
    SELECT coalesce(sum(calls), 0)::bigint, coalesce(sum(calls) FILTER (WHERE outcome = 'failed'), 0)::bigint,
           coalesce(sum(input_tokens), 0)::bigint, coalesce(sum(latency_ms), 0)
    FROM call_rollup WHERE tier = 'embedding' AND calls > 0"""
TOOL_CALLS = "SELECT count(*) FROM tool_calls WHERE parent_id IS NULL AND started >= %s"
ALL_TIME_TOOL_CALLS = "SELECT count(*) FROM tool_calls WHERE parent_id IS NULL"

# Over a recent window through the ``ts`` index, over all time from the running totals.
SUMMARY_QUERIES = {
    True: (TOTALS, BY_MODEL, BY_HOST, EMBEDDING, TOOL_CALLS),
    False: (ALL_TIME_TOTALS, ALL_TIME_BY_MODEL, ALL_TIME_BY_HOST, ALL_TIME_EMBEDDING, ALL_TIME_TOOL_CALLS),
}

START_TOOL_CALL = """
    INSERT INTO tool_calls (id, parent_id, tool, started) VALUES (%s, %s, %s, %s)
    ON CONFLICT (id) DO UPDATE SET parent_id = excluded.parent_id, tool = excluded.tool,
        started = excluded.started, seconds = NULL, outcome = NULL, error = NULL"""
SELECT_TOOL_CALL = "SELECT id, parent_id, tool, started, seconds, outcome, error FROM tool_calls"

# --- the dashboard's reads ---------------------------------------------------------------------

_TOOL_CALL_SUMMARIES = """
    WITH RECURSIVE picked AS (
        SELECT id, tool, started, seconds, outcome, error, seq FROM tool_calls {selection}
    ),
    tree(root, id) AS (
        SELECT id, id FROM picked
        UNION SELECT tree.root, t.id FROM tool_calls t JOIN tree ON t.parent_id = tree.id
    )
    SELECT p.id, p.tool, p.started, p.seconds, p.outcome, p.error,
           count(c.id),
           count(c.id) FILTER (WHERE c.outcome = 'local'),
           count(c.id) FILTER (WHERE c.outcome = 'claude'),
           count(c.id) FILTER (WHERE c.outcome = 'failed'),
           coalesce(sum(c.input_tokens + c.cache_read_tokens + c.cache_write_tokens), 0)::bigint,
           coalesce(sum(c.output_tokens), 0)::bigint,
           coalesce(sum(c.cost_usd), 0),
           coalesce(sum(c.counterfactual_cost_usd) FILTER (WHERE c.outcome = 'local'), 0),
           (SELECT a.host FROM tree t2 JOIN calls a ON a.call_id = t2.id
            WHERE t2.root = p.id AND a.outcome <> 'failed' ORDER BY a.ts DESC, a.id DESC LIMIT 1),
           (SELECT a.model FROM tree t2 JOIN calls a ON a.call_id = t2.id
            WHERE t2.root = p.id AND a.outcome <> 'failed' ORDER BY a.ts DESC, a.id DESC LIMIT 1)
    FROM picked p JOIN tree ON tree.root = p.id LEFT JOIN calls c ON c.call_id = tree.id
    GROUP BY p.id, p.tool, p.started, p.seconds, p.outcome, p.error, p.seq
    ORDER BY p.started DESC, p.seq DESC"""
RECENT_TOOL_CALLS = _TOOL_CALL_SUMMARIES.format(
    selection="WHERE parent_id IS NULL ORDER BY started DESC, seq DESC LIMIT %s"
)
ONE_TOOL_CALL = _TOOL_CALL_SUMMARIES.format(selection="WHERE id = %s")

TREE_ROWS = f"""{TREE}
    SELECT {ENTRY_COLUMNS}
    FROM calls WHERE call_id IN (SELECT id FROM tree) ORDER BY ts, id LIMIT %s"""  # noqa: S608

# The dashboard's figures per UTC day (days since the epoch) over the days it shows, through the
# ``ts`` index; its all-time totals come from the running totals (one "day", -1).
DAYS_SINCE = f"""
    SELECT floor(ts / 86400)::bigint, outcome, tier IS NOT DISTINCT FROM 'embedding', count(*),
           count(*) FILTER (WHERE path = 'local_low_confidence'),
           coalesce(sum({_TOTAL_TOKENS}), 0)::bigint,
           coalesce(sum(cost_usd), 0), coalesce(sum(counterfactual_cost_usd), 0)
    FROM calls WHERE ts >= %s GROUP BY 1, 2, 3"""  # noqa: S608
ALL_TIME_FOLD = f"""
    SELECT -1, outcome, tier = 'embedding', sum(calls)::bigint,
           coalesce(sum(calls) FILTER (WHERE path = 'local_low_confidence'), 0)::bigint,
           coalesce(sum({_TOTAL_TOKENS}), 0)::bigint,
           coalesce(sum(cost_usd), 0), coalesce(sum(counterfactual_cost_usd), 0)
    FROM call_rollup WHERE calls > 0 GROUP BY 1, 2, 3"""  # noqa: S608

HOST_LATENCY = """
    SELECT host, floor((ts - %s) / %s)::bigint AS bucket, count(*), avg(latency_ms), max(latency_ms)
    FROM calls WHERE ts >= %s AND host <> '' AND outcome <> 'failed' AND latency_ms > 0
          AND tier IS DISTINCT FROM 'embedding'
    GROUP BY host, bucket ORDER BY host, bucket"""
