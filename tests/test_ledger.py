"""The cost ledger on real SQLite files: arithmetic, figures, durability, concurrency, budget."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from caelum_mcp.core.errors import BudgetExceededError, ConfigError
from caelum_mcp.core.pricing import ModelPrice, cost_usd, price_for
from caelum_mcp.core.types import Usage
from caelum_mcp.engine.ledger import SCHEMA_VERSION, BudgetGuard, Ledger, LedgerEntry, LedgerSummary
from caelum_mcp.engine.ledger.sqlite_store import SQLiteStore

SONNET = ModelPrice(input=3.0, output=15.0, cache_read=0.30, cache_write=3.75)
NOON = datetime(2026, 3, 14, 12, 0, tzinfo=UTC).timestamp()


def entry(**overrides: Any) -> LedgerEntry:
    fields: dict[str, Any] = {
        "ts": NOON,
        "task": "delegate_task",
        "path": "local",
        "provider": "ollama",
        "host": "gpu-1",
        "model": "qwen3:8b",
        "tier": "full",
        "attempts": 1,
        "confidence": 0.9,
        "input_tokens": 1000,
        "output_tokens": 200,
        "latency_ms": 500.0,
        "cost_usd": 0.0,
        "counterfactual_cost_usd": 0.006,
    }
    fields.update(overrides)
    return LedgerEntry(**fields)


def claude_entry(cost: float, **overrides: Any) -> LedgerEntry:
    fields: dict[str, Any] = {
        "path": "claude",
        "provider": "anthropic",
        "host": "",
        "model": "claude-sonnet-4-5",
        "tier": None,
        "cost_usd": cost,
        "counterfactual_cost_usd": cost,
    }
    fields.update(overrides)
    return entry(**fields)


def run_child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, check=False)


# --- cost arithmetic -------------------------------------------------------------------------


def test_one_million_input_tokens_at_three_dollars_costs_three_dollars() -> None:
    assert cost_usd(Usage(input_tokens=1_000_000), SONNET) == 3.00
    assert cost_usd(Usage(output_tokens=1_000_000), SONNET) == 15.00


def test_mixed_usage_prices_every_token_kind_exactly() -> None:
    usage = Usage(input_tokens=1234, output_tokens=567, cache_read_tokens=10_000, cache_write_tokens=2048)
    # 1234*3 + 567*15 + 10000*0.30 + 2048*3.75 = 3702 + 8505 + 3000 + 7680 = 22887 micro-dollars
    assert cost_usd(usage, SONNET) == 0.022887
    assert cost_usd(Usage(), SONNET) == 0.0


def test_decimal_prices_do_not_pick_up_binary_rounding() -> None:
    # 0.1 + 0.2 in binary floats is 0.30000000000000004; a price table must not drift like that.
    price = ModelPrice(input=0.1, output=0.2)
    assert cost_usd(Usage(input_tokens=1_000_000, output_tokens=1_000_000), price) == 0.3


def test_prices_must_be_finite_and_non_negative() -> None:
    with pytest.raises(ValidationError):
        ModelPrice(input=-1.0, output=1.0)
    with pytest.raises(ValidationError):
        ModelPrice(input=float("inf"), output=1.0)
    with pytest.raises(ValidationError):
        ModelPrice(input=1.0, output=1.0, surprise=2.0)  # type: ignore[call-arg]


def test_price_for_matches_dated_model_ids_by_longest_prefix() -> None:
    haiku = ModelPrice(input=1.0, output=5.0)
    table = {"claude-sonnet-4-5": SONNET, "claude-haiku-4-5": haiku, "claude": ModelPrice(input=9, output=9)}
    assert price_for("claude-sonnet-4-5", table) is SONNET
    assert price_for("claude-haiku-4-5-20251001", table) is haiku
    assert price_for("claude-opus-4-1", table) is table["claude"]
    assert price_for("gpt-4o", table) is None


# --- recording and figures -------------------------------------------------------------------


def test_summary_figures_from_recorded_calls(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        ledger.record(entry(counterfactual_cost_usd=0.006, latency_ms=400.0))
        ledger.record(entry(counterfactual_cost_usd=0.004, latency_ms=600.0, host="gpu-2"))
        ledger.record(entry(path="local_low_confidence", confidence=0.4, counterfactual_cost_usd=0.002, host="gpu-2"))
        ledger.record(
            claude_entry(0.05, input_tokens=2000, output_tokens=300, cache_read_tokens=100, latency_ms=2000.0)
        )
        ledger.record(
            entry(path="failed", ok=False, error="all hosts failed", counterfactual_cost_usd=0.0, host="gpu-2")
        )
        s = ledger.summary(now=NOON)

    assert (s.calls, s.local_calls, s.low_confidence_calls, s.claude_calls, s.failed_calls) == (5, 3, 1, 1, 1)
    assert s.local_share == 0.75
    assert s.savings_usd == pytest.approx(0.012)  # counterfactual of the three local calls only
    assert s.claude_cost_usd == pytest.approx(0.05)
    assert s.claude_spend_today_usd == pytest.approx(0.05)
    assert s.input_tokens == 4 * 1000 + 2000
    assert s.output_tokens == 4 * 200 + 300
    assert s.cache_read_tokens == 100
    assert s.local_tokens == 3 * 1200
    assert s.claude_tokens == 2400

    by_model = {m.model: m for m in s.by_model}
    assert set(by_model) == {"qwen3:8b", "claude-sonnet-4-5"}
    assert by_model["qwen3:8b"].calls == 4 and by_model["qwen3:8b"].provider == "ollama"
    assert by_model["qwen3:8b"].cost_usd == 0.0
    assert by_model["qwen3:8b"].counterfactual_cost_usd == pytest.approx(0.012)
    assert by_model["claude-sonnet-4-5"].cost_usd == pytest.approx(0.05)
    assert by_model["claude-sonnet-4-5"].mean_latency_ms == 2000.0
    assert s.by_model[0].model == "qwen3:8b"  # busiest first

    by_host = {h.host: h for h in s.by_host}
    assert set(by_host) == {"gpu-1", "gpu-2"}  # the Claude call has no host
    assert (by_host["gpu-1"].calls, by_host["gpu-1"].failures) == (1, 0)
    assert (by_host["gpu-2"].calls, by_host["gpu-2"].failures) == (3, 1)
    assert by_host["gpu-2"].mean_latency_ms == pytest.approx((600 + 500 + 500) / 3)


def test_a_call_marked_not_ok_counts_as_failed_whatever_its_path(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        ledger.record(entry(ok=False, error="timeout", counterfactual_cost_usd=0.5))
        s = ledger.summary()
    assert (s.local_calls, s.failed_calls, s.savings_usd, s.local_share) == (0, 1, 0.0, 0.0)


def test_empty_ledger_summary_is_all_zero(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        s = ledger.summary()
    assert (s.calls, s.local_share, s.savings_usd, s.claude_cost_usd) == (0, 0.0, 0.0, 0.0)
    assert s.by_model == [] and s.by_host == []


def test_summary_since_leaves_out_older_calls(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        ledger.record(entry(ts=NOON - 3600, counterfactual_cost_usd=1.0))
        ledger.record(entry(ts=NOON, counterfactual_cost_usd=0.25))
        s = ledger.summary(since=NOON - 60)
    assert (s.calls, s.savings_usd, s.since) == (1, 0.25, NOON - 60)


def test_recent_returns_newest_first_without_prompt_text(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        for i in range(5):
            ledger.record(entry(ts=NOON + i, task=f"task-{i}"))
        ledger.record(entry(ts=NOON + 9, path="failed", ok=False, error="x" * 5000))
        recent = ledger.recent(3)
    assert [e.ts for e in recent] == [NOON + 9, NOON + 4, NOON + 3]
    assert recent[1] == entry(ts=NOON + 4, task="task-4")
    assert recent[0].error is not None and len(recent[0].error) <= 300
    columns = {r[1] for r in sqlite3.connect(tmp_path / "ledger.db").execute("PRAGMA table_info(calls)")}
    assert not columns & {"prompt", "messages", "content", "answer"}


def test_entry_fields_are_validated() -> None:
    with pytest.raises(ValidationError):
        entry(path="somewhere")
    with pytest.raises(ValidationError):
        entry(input_tokens=-1)
    with pytest.raises(ValidationError):
        entry(confidence=1.5)


# --- persistence and concurrency -------------------------------------------------------------


def test_figures_survive_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "ledger.db"
    ledger = Ledger(path)
    ledger.record(entry())
    ledger.record(claude_entry(0.125))
    ledger.close()
    ledger.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        ledger.record(entry())

    with Ledger(path) as reopened:
        s = reopened.summary(now=NOON)
        assert (s.calls, s.local_calls, s.claude_calls, s.claude_cost_usd) == (2, 1, 1, 0.125)
        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


KILL_AFTER_RECORD = """
import os, signal, sys
from pathlib import Path
from caelum_mcp.engine.ledger import Ledger, LedgerEntry
ledger = Ledger(Path(sys.argv[1]))
for i in range(int(sys.argv[2])):
    ledger.record(LedgerEntry(
        ts=1773489600.0 + i, task="delegate_task", path="claude", provider="anthropic", host="",
        model="claude-sonnet-4-5", tier=None, attempts=1, confidence=0.9, input_tokens=100,
        output_tokens=10, latency_ms=1.0, cost_usd=0.01, counterfactual_cost_usd=0.01,
    ))
print("done", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_entries_survive_sigkill_right_after_record(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    proc = run_child(KILL_AFTER_RECORD, str(path), "7")
    assert proc.stdout.strip() == "done", proc.stderr[-2000:]
    assert proc.returncode == -signal.SIGKILL
    with Ledger(path) as ledger:
        s = ledger.summary()
    assert (s.calls, s.claude_calls) == (7, 7)
    assert s.claude_cost_usd == pytest.approx(0.07)


def test_a_second_connection_reads_while_the_writer_is_open(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as writer, Ledger(path) as reader:
        writer.record(entry())
        assert reader.summary().calls == 1
        writer.record(claude_entry(0.02))
        assert reader.summary().claude_calls == 1
        assert [e.path for e in reader.recent()] == ["claude", "local"]


READ_SUMMARY = """
import sys
from pathlib import Path
from caelum_mcp.engine.ledger import Ledger
with Ledger(Path(sys.argv[1])) as ledger:
    print(ledger.summary().model_dump_json())
"""


def test_another_process_reads_while_this_one_holds_the_ledger_open(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as writer:
        writer.record(entry())
        writer.record(claude_entry(0.5))
        proc = run_child(READ_SUMMARY, str(path))
        assert proc.returncode == 0, proc.stderr[-2000:]
        figures = json.loads(proc.stdout)
        assert (figures["calls"], figures["claude_cost_usd"]) == (2, 0.5)
        writer.record(entry())  # the writer still writes after the reader has come and gone
        assert writer.summary().calls == 3


def test_threads_share_one_ledger_without_losing_entries(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:

        def work(n: int) -> None:
            for i in range(20):
                ledger.record(entry(ts=NOON + n * 100 + i))
                ledger.summary()

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert ledger.summary().calls == 80


# --- daily spend and budget ------------------------------------------------------------------


def test_claude_spend_today_counts_only_the_current_utc_day(tmp_path: Path) -> None:
    midnight = datetime(2026, 3, 14, tzinfo=UTC).timestamp()
    with Ledger(tmp_path / "ledger.db") as ledger:
        ledger.record(claude_entry(1.0, ts=midnight - 1))  # 23:59:59 yesterday
        ledger.record(claude_entry(0.25, ts=midnight))  # 00:00:00 today
        ledger.record(claude_entry(0.5, ts=midnight + 86399))  # 23:59:59 today
        ledger.record(claude_entry(2.0, ts=midnight + 86400))  # tomorrow
        ledger.record(entry(ts=midnight + 10, counterfactual_cost_usd=3.0))  # local: no real spend
        assert ledger.claude_spend_today(now=midnight + 3600) == 0.75
        assert ledger.claude_spend_today(now=midnight - 3600) == 1.0
        assert ledger.summary(now=midnight + 3600).claude_spend_today_usd == 0.75


def test_budget_guard_blocks_at_and_over_the_cap(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        guard = BudgetGuard(ledger, 1.0, clock=lambda: NOON)
        assert guard.check() is None
        ledger.record(claude_entry(0.60))
        assert guard.check() is None
        assert guard.remaining_today() == pytest.approx(0.40)
        ledger.record(claude_entry(0.40))
        reason = guard.check()
        assert reason is not None
        assert "$1.00" in reason and "spent today" in reason and "daily_budget_usd" in reason
        ledger.record(claude_entry(0.02))
        reason = guard.check()
        assert reason is not None and "$1.00" in reason and "$1.02" in reason
        with pytest.raises(BudgetExceededError, match=r"\$1\.02"):
            guard.enforce()
        # Tomorrow (UTC) the same ledger allows Claude again.
        assert BudgetGuard(ledger, 1.0, clock=lambda: NOON + 86400).check() is None


def test_budget_guard_counts_the_estimated_cost_of_the_next_call(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        ledger.record(claude_entry(0.90))
        guard = BudgetGuard(ledger, 1.0, clock=lambda: NOON)
        assert guard.check(0.05) is None
        reason = guard.check(0.20)
        assert reason is not None and "$0.90" in reason and "$0.20" in reason


def test_no_budget_is_unlimited_and_zero_budget_blocks_claude(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        ledger.record(claude_entry(500.0))
        unlimited = BudgetGuard(ledger, None, clock=lambda: NOON)
        assert unlimited.check(1000.0) is None
        assert unlimited.remaining_today() is None
        assert BudgetGuard(ledger, 0.0, clock=lambda: NOON).check() is not None
        with pytest.raises(ConfigError, match="daily_budget_usd"):
            BudgetGuard(ledger, -1.0)


# --- bad files -------------------------------------------------------------------------------


def test_a_file_that_is_not_sqlite_gives_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    with pytest.raises(ConfigError) as info:
        Ledger(path)
    message = str(info.value)
    assert str(path) in message and "move the file aside" in message
    assert path.read_bytes().startswith(b"these are my notes")  # never overwritten


def test_a_ledger_from_a_newer_version_is_refused_not_downgraded(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    raw.close()
    with pytest.raises(ConfigError, match="newer caelum-mcp"):
        Ledger(path)


def test_a_directory_in_the_way_gives_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "ledger.db").mkdir()
    with pytest.raises(ConfigError, match=r"ledger\.db is a folder"):
        Ledger(tmp_path / "ledger.db")


# --- budget reservations ---------------------------------------------------------------------


def test_a_reservation_holds_its_share_of_the_budget_until_settled(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        guard = BudgetGuard(ledger, 1.0, clock=lambda: NOON)
        first = guard.reserve(0.6, ttl_s=60)
        assert guard.remaining_today() == pytest.approx(0.4)
        with pytest.raises(BudgetExceededError, match=r"\$0\.60 held by Claude calls in flight.*\$0\.50"):
            guard.reserve(0.5, ttl_s=60)
        assert guard.check(0.5) is not None and guard.check(0.4) is None
        # settled at its real cost: the row and the end of the reservation in one transaction
        ledger.settle(first, claude_entry(0.3))
        figures = ledger.budget_figures(now=NOON)
        assert (figures.spent_usd, figures.reserved_usd) == (pytest.approx(0.3), 0)
        second = guard.reserve(0.5, ttl_s=60)
        ledger.release(second)  # the call was never made
        assert ledger.budget_figures(now=NOON).reserved_usd == 0
        assert ledger.summary(now=NOON).claude_calls == 1


def test_a_reservation_of_a_process_that_died_lapses(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        BudgetGuard(ledger, 1.0, clock=lambda: NOON).reserve(0.9, ttl_s=10)
        with pytest.raises(BudgetExceededError):
            BudgetGuard(ledger, 1.0, clock=lambda: NOON + 5).reserve(0.5, ttl_s=10)
        BudgetGuard(ledger, 1.0, clock=lambda: NOON + 11).reserve(0.5, ttl_s=10)


def test_unlimited_and_zero_budgets_with_reservations(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        held = BudgetGuard(ledger, None, clock=lambda: NOON).reserve(500.0, ttl_s=60)
        assert held.amount_usd == 500.0
        with pytest.raises(BudgetExceededError, match=r"budget of \$0\.00 reached"):
            BudgetGuard(ledger, 0.0, clock=lambda: NOON).reserve(0.001, ttl_s=60)


RESERVE_UNTIL_REFUSED = """
import sys
from pathlib import Path
from caelum_mcp.core.errors import BudgetExceededError
from caelum_mcp.engine.ledger import BudgetGuard, Ledger
granted = 0
with Ledger(Path(sys.argv[1])) as ledger:
    guard = BudgetGuard(ledger, 1.0)
    for _ in range(40):
        try:
            guard.reserve(0.05, ttl_s=600)
        except BudgetExceededError:
            continue
        granted += 1
print(granted)
"""


def test_two_ledgers_on_one_file_never_reserve_past_the_budget(tmp_path: Path) -> None:
    """Two connections (as two processes sharing a data directory have) racing for the last dollars."""
    path = tmp_path / "ledger.db"
    granted = [0, 0]
    with Ledger(path) as one, Ledger(path) as two:
        start = threading.Barrier(2)

        def work(index: int, ledger: Ledger) -> None:
            guard = BudgetGuard(ledger, 1.0)
            start.wait()
            for _ in range(40):
                try:
                    guard.reserve(0.05, ttl_s=600)
                except BudgetExceededError:
                    continue
                granted[index] += 1

        threads = [threading.Thread(target=work, args=(i, led)) for i, led in enumerate((one, two))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert sum(granted) == 20  # $1.00 / $0.05, however the two interleaved
        assert one.budget_figures().reserved_usd == pytest.approx(1.0)


def test_two_processes_never_reserve_past_the_budget(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger(path).close()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", RESERVE_UNTIL_REFUSED, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [child.communicate(timeout=120) for child in children]
    assert all(child.returncode == 0 for child in children), [err[-2000:] for _, err in outputs]
    assert sum(int(out) for out, _ in outputs) == 20
    with Ledger(path) as ledger:
        assert ledger.budget_figures().reserved_usd == pytest.approx(1.0)


def test_tool_call_rows_are_committed_at_once_and_money_rows_stay_fully_durable(tmp_path: Path) -> None:
    """Tool-call bookkeeping skips the fsync (it holds no money) but is committed before the call
    returns, visible to another reader; the connection is back to ``synchronous=FULL`` for the
    model-call rows that follow."""
    ledger = Ledger(tmp_path / "ledger.db")
    try:
        ledger.start_tool_call("c1", "query_data")
        with sqlite3.connect(tmp_path / "ledger.db") as reader:
            assert reader.execute("SELECT tool, outcome FROM tool_calls WHERE id = 'c1'").fetchall() == [
                ("query_data", None)
            ]
        ledger.finish_tool_call("c1", seconds=0.5, outcome="ok")
        with sqlite3.connect(tmp_path / "ledger.db") as reader:
            assert reader.execute("SELECT outcome FROM tool_calls WHERE id = 'c1'").fetchall() == [("ok",)]
        assert isinstance(ledger.store, SQLiteStore)
        with ledger.store._connection() as conn:
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        ledger.close()


# --- all-time figures from running totals -----------------------------------------------------
# ``pool_status`` read every call for its all-time figures: 2.4 s at 1M rows, on the event loop.


def fill(ledger: Ledger) -> list[int]:
    """Calls of every kind: local, low-confidence, Claude, failed, several hosts and models."""
    rows = [
        ledger.record(entry()),
        ledger.record(entry(host="gpu-2", model="qwen3:4b", input_tokens=50, latency_ms=120.0)),
        ledger.record(entry(host="gpu-2", cache_read_tokens=7, cache_write_tokens=3, ts=NOON - 86_400)),
        ledger.record(claude_entry(0.125)),
        ledger.record(claude_entry(0.5, ts=NOON - 3600)),
        ledger.record(entry(path="failed", ok=False, error="timed out", output_tokens=0, counterfactual_cost_usd=0)),
        ledger.record(entry(ok=False, error="bad body", host="gpu-2")),
        ledger.record(entry(model="", host="", input_tokens=0, output_tokens=0, counterfactual_cost_usd=0)),
        ledger.record(entry(tier=None)),  # a row without a tier (NULL) is in the totals' key as ''
        ledger.record(entry(tier="embedding", model="nomic-embed-text", output_tokens=0, counterfactual_cost_usd=0)),
    ]
    ledger.annotate(rows[1], confidence=0.2, path="local_low_confidence")
    ledger.annotate(rows[0], confidence=0.95)
    return rows


def assert_same_figures(running: LedgerSummary, scanned: LedgerSummary) -> None:
    lists = {"by_model", "by_host", "since", "embedding"}
    a, b = running.model_dump(exclude=lists), scanned.model_dump(exclude=lists)
    assert a == pytest.approx(b)
    assert running.embedding.model_dump() == pytest.approx(scanned.embedding.model_dump())
    for key in ("by_model", "by_host"):
        x, y = running.model_dump()[key], scanned.model_dump()[key]
        assert len(x) == len(y) and all(p == pytest.approx(q) for p, q in zip(x, y, strict=True)), key


def test_all_time_figures_never_scan_the_calls(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        fill(ledger)
        statements: list[str] = []
        assert isinstance(ledger.store, SQLiteStore) and ledger.store._conn is not None
        ledger.store._conn.set_trace_callback(statements.append)
        ledger.summary()
        ledger.store._conn.set_trace_callback(None)
        reads = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "WITH"))]
        assert len(reads) >= 3
        with sqlite3.connect(ledger.path) as raw:
            for sql in reads:
                # the traced text has its values bound; an infinite one is written "Inf", which does not parse
                plan = [row[3] for row in raw.execute("EXPLAIN QUERY PLAN " + sql.replace("Inf", "9e999"))]
                # a whole-table pass over the calls is what took 2.4 s at 1M rows
                assert not [step for step in plan if step.startswith("SCAN calls")], (sql, plan)


def test_running_totals_equal_a_scan_of_the_rows_after_inserts_updates_and_deletes(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        rows = fill(ledger)
        running = ledger.summary(now=NOON)
        assert (running.calls, running.claude_calls, running.failed_calls, running.low_confidence_calls) == (9, 2, 2, 1)
        assert (running.embedding.rows, running.embedding.input_tokens) == (1, 1000)
        assert_same_figures(running, ledger.summary(since=0.0, now=NOON))
        with sqlite3.connect(ledger.path) as raw:  # e.g. a user pruning old rows by hand
            raw.execute("DELETE FROM calls WHERE id IN (?, ?, ?)", (rows[3], rows[2], rows[9]))
        after = ledger.summary(now=NOON)
        assert (after.calls, after.claude_calls, after.embedding.rows) == (7, 1, 0)
        assert_same_figures(after, ledger.summary(since=0.0, now=NOON))
        assert after.claude_cost_usd == pytest.approx(0.5)


def test_a_ledger_written_before_the_totals_is_summed_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        fill(ledger)
        expected = ledger.summary(since=0.0, now=NOON)
    with sqlite3.connect(path) as raw:  # what version 3 left on disk: the rows, no totals
        for trigger in ("calls_rollup_insert", "calls_rollup_delete", "calls_rollup_update"):
            raw.execute(f"DROP TRIGGER {trigger}")
        raw.execute("DROP TABLE call_rollup")
        for trigger in ("calls_kind_insert", "calls_kind_delete", "calls_kind_update_old", "calls_kind_update_new"):
            raw.execute(f"DROP TRIGGER {trigger}")  # and nothing of version 6
        raw.execute("DROP TABLE kind_rollup")
        raw.execute("DROP TABLE calibration_labels")
        raw.execute("ALTER TABLE calls DROP COLUMN kind")
        raw.execute("UPDATE schema_version SET version = 3")
    with Ledger(path) as reopened:
        assert_same_figures(reopened.summary(now=NOON), expected)
        reopened.record(claude_entry(0.25))
        assert reopened.summary(now=NOON).claude_cost_usd == pytest.approx(0.875)
