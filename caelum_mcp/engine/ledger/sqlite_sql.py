"""The SQLite store's queries (the schema they read is in :mod:`.sqlite_schema`)."""

from __future__ import annotations

INSERT = """
    INSERT INTO calls (ts, task, path, provider, host, model, tier, attempts, confidence,
                       input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
                       latency_ms, cost_usd, counterfactual_cost_usd, ok, error, call_id, kind, outcome)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""

SELECT_RECENT = """
    SELECT ts, task, path, provider, host, model, tier, attempts, confidence,
           input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
           latency_ms, cost_usd, counterfactual_cost_usd, ok, error, call_id, kind
    FROM calls ORDER BY ts DESC, id DESC LIMIT ?"""

SPEND_BETWEEN = "SELECT total(cost_usd) FROM calls WHERE ts >= ? AND ts < ?"

# Per (model, kind, outcome): answers, those scored, those at or above a confidence hundredth.
KIND_FIGURES = """
    SELECT model, kind, outcome, sum(answers), coalesce(sum(CASE WHEN bucket >= 0 THEN answers END), 0),
           coalesce(sum(CASE WHEN bucket >= ? THEN answers END), 0)
    FROM kind_rollup WHERE answers > 0
    GROUP BY model, kind, outcome ORDER BY sum(answers) DESC, model, kind, outcome"""

SELECT_LABELS = """
    SELECT ts, model, kind, signals, label, source, claude_model, agreement
    FROM calibration_labels WHERE model = ? AND kind = ? {labelled} ORDER BY ts, id"""
LABEL_COUNTS = """
    SELECT model, kind, count(*), count(label), coalesce(sum(label), 0)
    FROM calibration_labels GROUP BY model, kind ORDER BY count(label) DESC, model, kind"""
RESERVED = "SELECT total(amount_usd) FROM reservations WHERE expires > ?"

CALL_TREE_COST = """
    WITH RECURSIVE tree(id) AS (
        SELECT ? UNION SELECT t.id FROM tool_calls t JOIN tree ON t.parent_id = tree.id
    )
    SELECT count(*), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),
           total(cost_usd), total(counterfactual_cost_usd)
    FROM calls WHERE call_id IN (SELECT id FROM tree)"""

# ``outcome`` ('local' | 'claude' | 'failed') is derived from path and ok when a row is written, so
# that every figure below is a plain filter on one column.
TOTALS = """
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

BY_MODEL = """
    SELECT model, provider, count(*), sum(input_tokens), sum(output_tokens), total(cost_usd),
           total(counterfactual_cost_usd), avg(latency_ms)
    FROM calls WHERE {ts} >= ? AND model != ''
    GROUP BY model, provider ORDER BY count(*) DESC, model, provider"""

# A host's mean latency is that of its model calls when it made any: a background sync's embedding
# row holds the whole sync's time.
BY_HOST = """
    SELECT host, count(*), sum(outcome = 'failed'),
           coalesce(avg(CASE WHEN tier IS NOT 'embedding' THEN latency_ms END), avg(latency_ms))
    FROM calls WHERE {ts} >= ? AND host != ''
    GROUP BY host ORDER BY count(*) DESC, host"""

# All time: the same figures from the running totals (``call_rollup``, one row per group).
ALL_TIME_TOTALS = """
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

ALL_TIME_BY_MODEL = """
    SELECT model, provider, sum(calls), sum(input_tokens), sum(output_tokens), total(cost_usd),
           total(counterfactual_cost_usd), total(latency_ms) / sum(calls)
    FROM call_rollup WHERE model != '' AND calls > 0
    GROUP BY model, provider ORDER BY sum(calls) DESC, model, provider"""

ALL_TIME_BY_HOST = """
    SELECT host, sum(calls), sum(CASE WHEN outcome = 'failed' THEN calls ELSE 0 END),
           coalesce(total(CASE WHEN tier != 'embedding' THEN latency_ms END)
                    / nullif(sum(CASE WHEN tier != 'embedding' THEN calls ELSE 0 END), 0),
                    total(latency_ms) / sum(calls))
    FROM call_rollup WHERE host != '' AND calls > 0
    GROUP BY host ORDER BY sum(calls) DESC, host"""

EMBEDDING = """
    SELECT count(*), coalesce(sum(outcome = 'failed'), 0), coalesce(sum(input_tokens), 0), total(latency_ms)
    FROM calls WHERE {ts} >= ? AND tier = 'embedding'"""
ALL_TIME_EMBEDDING = """
    SELECT coalesce(sum(calls), 0), coalesce(sum(CASE WHEN outcome = 'failed' THEN calls END), 0),
           coalesce(sum(input_tokens), 0), total(latency_ms)
    FROM call_rollup WHERE tier = 'embedding' AND calls > 0"""
# Through the parent index (and the start-time one for a window): top-level calls only.
TOOL_CALLS = "SELECT count(*) FROM tool_calls WHERE parent_id IS NULL AND {started} >= ?"
ALL_TIME_TOOL_CALLS = "SELECT count(*) FROM tool_calls WHERE parent_id IS NULL"

# The summary queries: over a recent window through the ``ts`` index, over all time from the totals.
SUMMARY_QUERIES = {
    True: (
        *(q.format(ts="ts") for q in (TOTALS, BY_MODEL, BY_HOST, EMBEDDING)),
        TOOL_CALLS.format(started="started"),
    ),
    False: (ALL_TIME_TOTALS, ALL_TIME_BY_MODEL, ALL_TIME_BY_HOST, ALL_TIME_EMBEDDING, ALL_TIME_TOOL_CALLS),
}


# --- the dashboard's reads ---------------------------------------------------------------------

# The tool calls in ``picked`` ({selection}: the latest top-level ones, or one by id) with what the
# model calls of each, and of every call beneath it, did. ``+parent_id`` keeps the planner on the
# start-time index: the parent index would visit every top-level call to find the latest 50.
TOOL_CALL_SUMMARIES = """
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
RECENT_TOOL_CALLS = TOOL_CALL_SUMMARIES.format(
    selection="WHERE +parent_id IS NULL ORDER BY started DESC, rowid DESC LIMIT ?"
)
ONE_TOOL_CALL = TOOL_CALL_SUMMARIES.format(selection="WHERE id = ?")

TREE_ROWS = """
    WITH RECURSIVE tree(id) AS (
        SELECT ? UNION SELECT t.id FROM tool_calls t JOIN tree ON t.parent_id = tree.id
    )
    SELECT ts, task, path, provider, host, model, tier, attempts, confidence,
           input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
           latency_ms, cost_usd, counterfactual_cost_usd, ok, error, call_id, kind
    FROM calls WHERE call_id IN (SELECT id FROM tree) ORDER BY ts, id LIMIT ?"""

# Rows added since the last look, per UTC day (days since the epoch: UTC has no DST), outcome and
# whether they are embedding work (counted apart from model calls).
NEW_ROWS_BY_DAY = """
    SELECT CAST(ts / 86400 AS INTEGER), outcome, tier IS 'embedding', count(*),
           coalesce(sum(path = 'local_low_confidence'), 0),
           coalesce(sum(input_tokens + output_tokens + cache_read_tokens + cache_write_tokens), 0),
           total(cost_usd), total(counterfactual_cost_usd)
    FROM calls WHERE id > ? AND id <= ? GROUP BY 1, 2, 3"""
# Top-level tool calls added since the last look (``tool_calls`` rows are only added, so their
# rowids only grow too).
NEW_TOOL_CALLS = "SELECT count(*) FROM tool_calls WHERE rowid > ? AND rowid <= ? AND parent_id IS NULL"

HOST_LATENCY = """
    SELECT host, CAST((ts - ?) / ? AS INTEGER) AS bucket, count(*), avg(latency_ms), max(latency_ms)
    FROM calls WHERE ts >= ? AND host != '' AND outcome != 'failed' AND latency_ms > 0
          AND tier IS NOT 'embedding'
    GROUP BY host, bucket ORDER BY host, bucket"""
SELECT_TOOL_CALL = "SELECT id, parent_id, tool, started, seconds, outcome, error FROM tool_calls"
