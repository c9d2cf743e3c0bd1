"""The dashboard's reads of the ledger agree with the ledger's own figures, and stay right as rows
are added (the totals are kept up to date from the new rows only), from any writer."""

from __future__ import annotations

import time
from pathlib import Path

from caelum_mcp.core.types import Usage
from caelum_mcp.engine.ledger import Ledger, LedgerEntry, failed_call_row, model_call_row
from caelum_mcp.serving.dashboard.history import LedgerHistory

from .dashboard_server import seed_ledger


def local_row(call_id: str | None, tokens: int, ts: float) -> LedgerEntry:
    row = model_call_row(
        task="t", path="local", provider="ollama", host="gpu-a", model="qwen3:8b", tier="full",
        usage=Usage(input_tokens=tokens, output_tokens=10), latency_ms=120, cost=0.0, counterfactual=0.003,
        call_id=call_id,
    )  # fmt: skip
    return row.model_copy(update={"ts": ts})


def test_totals_and_days_match_the_ledger_and_follow_new_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    now = time.time()
    seed_ledger(path, days=9, now=now)
    with LedgerHistory(path) as history, Ledger(path) as ledger:
        for _ in range(2):  # before and after rows are added by another connection
            summary, totals = ledger.summary(), history.totals()
            assert (totals.calls, totals.local_calls, totals.claude_calls, totals.failed_calls) == (
                summary.calls,
                summary.local_calls,
                summary.claude_calls,
                summary.failed_calls,
            )
            assert (totals.local_tokens, totals.claude_tokens) == (summary.local_tokens, summary.claude_tokens)
            assert abs(totals.claude_cost_usd - summary.claude_cost_usd) < 1e-6
            assert abs(totals.savings_usd - summary.savings_usd) < 1e-6
            assert abs(totals.local_share - summary.local_share) < 1e-9
            days = history.daily(14, now)
            assert len(days) == 14 and days[-1].claude_calls >= 1 and days[0].local_calls == 0
            assert abs(sum(d.cost_usd for d in days) - summary.claude_cost_usd) < 1e-6
            ledger.record(local_row(None, 500, now))
            ledger.record(failed_call_row(task="t", error="boom", host="gpu-b"))
        assert history.totals().calls == ledger.summary().calls


def test_a_tool_calls_row_counts_its_childrens_model_calls(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    now = time.time()
    with Ledger(path) as ledger:
        ledger.start_tool_call("parent0000000001", "run_workflow")
        ledger.start_tool_call("child00000000001", "delegate_task", parent_id="parent0000000001")
        ledger.record(local_row("parent0000000001", 100, now))
        ledger.record(local_row("child00000000001", 200, now + 1))
        ledger.finish_tool_call("child00000000001", seconds=0.5, outcome="ok")
        ledger.start_tool_call("other00000000001", "pool_status")
    with LedgerHistory(path) as history:
        recent = history.recent_tool_calls(10)
        assert [c.id for c in recent] == ["other00000000001", "parent0000000001"]  # top-level only, newest first
        other, parent = recent
        assert (other.model_calls, other.path, other.outcome) == (0, "none", None)  # still running
        assert (parent.model_calls, parent.input_tokens, parent.path, parent.host) == (2, 300, "local", "gpu-a")
        assert abs(parent.savings_usd - 0.006) < 1e-9
        assert [c.tool for c in history.children("parent0000000001")] == ["delegate_task"]
        assert [r.call_id for r in history.model_calls("parent0000000001")] == [
            "parent0000000001",
            "child00000000001",
        ]
        one = history.tool_call_summary("child00000000001")
        assert one is not None and one.model_calls == 1 and one.outcome == "ok"
        assert history.tool_call("nope") is None


def embedding_row(tokens: int, *, ok: bool = True) -> LedgerEntry:
    if not ok:
        return failed_call_row(task="embed", error="down", host="embed", model="nomic-embed-text", tier="embedding")
    return model_call_row(
        task="embed", path="local", provider="ollama", host="embed", model="nomic-embed-text", tier="embedding",
        usage=Usage(input_tokens=tokens), latency_ms=900, cost=0.0, counterfactual=0.0,
    )  # fmt: skip


def test_tool_calls_model_calls_and_embedding_work_are_counted_apart(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    now = time.time()
    with Ledger(path) as ledger, LedgerHistory(path) as history:
        ledger.start_tool_call("search0000000001", "search_knowledge")
        ledger.start_tool_call("child00000000001", "delegate_task", parent_id="search0000000001")
        ledger.record(local_row("child00000000001", 100, now))
        for tokens in (40, 60):
            ledger.record(embedding_row(tokens))
        ledger.record(embedding_row(0, ok=False))
        # a whole background sync on the chat host: one row holding ten minutes of batches
        ledger.record(embedding_row(10).model_copy(update={"host": "gpu-a", "latency_ms": 600_000.0}))
        for summary in (ledger.summary(), ledger.summary(since=now - 60)):  # all time (running totals), a window
            assert (summary.tool_calls, summary.calls, summary.local_calls, summary.failed_calls) == (1, 1, 1, 0)
            assert (summary.embedding.rows, summary.embedding.failed, summary.embedding.input_tokens) == (4, 1, 110)
            assert summary.local_tokens == 110  # the model call's tokens only
            hosts = {h.host: h for h in summary.by_host}
            assert hosts["gpu-a"].mean_latency_ms == 120  # its model calls' latency, not the sync's ten minutes
            assert hosts["embed"].mean_latency_ms == 600  # a host that only embeds: its requests' mean
        totals = history.totals()
        assert (totals.tool_calls, totals.calls, totals.local_calls, totals.failed_calls) == (1, 1, 1, 0)
        assert (totals.embedding_rows, totals.embedding_failed, totals.embedding_tokens) == (4, 1, 110)
        # a summed embedding sync's time is no host's call latency
        assert [p.calls for p in history.host_latency(now=now + 1)["gpu-a"]] == [1]
        assert "embed" not in history.host_latency(now=now + 1)
