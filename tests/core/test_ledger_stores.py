"""The store protocol's promises, the same cases on both stores: the SQLite file and a real
PostgreSQL server the suite starts (skipped, saying what to install, where its binaries are missing)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fakes.postgres import postgres_server, postgres_url  # noqa: F401 - fixtures

from caelum_mcp.core.errors import BudgetExceededError, ConfigError
from caelum_mcp.engine.ledger import BudgetGuard, CalibrationLabel, Ledger, LedgerEntry, LedgerSummary
from caelum_mcp.serving.dashboard.history import LedgerHistory

NOON = datetime(2026, 3, 14, 12, 0, tzinfo=UTC).timestamp()


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a fresh ledger lives: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.sqlite3")
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def ledger(location: str) -> Iterator[Ledger]:
    with Ledger(location) as opened:
        yield opened


def raw(location: str, statement: str, *params: Any) -> None:
    """Run ``statement`` on the store's database directly, as a user pruning rows by hand would."""
    if "://" not in location:
        with sqlite3.connect(location) as conn:
            conn.execute(statement, params)
        return
    import psycopg

    with psycopg.connect(location, autocommit=True) as conn:
        conn.execute(statement.replace("?", "%s"), params)  # type: ignore[arg-type]


def row(**overrides: Any) -> LedgerEntry:
    fields: dict[str, Any] = {
        "ts": NOON, "task": "delegate_task", "path": "local", "provider": "ollama", "host": "gpu-1",
        "model": "qwen3:8b", "tier": "full", "attempts": 1, "confidence": None, "input_tokens": 1000,
        "output_tokens": 200, "latency_ms": 500.0, "cost_usd": 0.0, "counterfactual_cost_usd": 0.006, "kind": "qa",
    }  # fmt: skip
    fields.update(overrides)
    return LedgerEntry(**fields)


def claude(cost: float, **overrides: Any) -> LedgerEntry:
    return row(path="claude", provider="anthropic", host="claude", model="claude-sonnet-4-5", tier=None,
               cost_usd=cost, counterfactual_cost_usd=cost, **overrides)  # fmt: skip


def fill(ledger: Ledger) -> list[int]:
    rows = [
        ledger.record(row()),
        ledger.record(row(host="gpu-2", model="qwen3:4b", input_tokens=50, latency_ms=120.0)),
        ledger.record(row(host="gpu-2", cache_read_tokens=7, cache_write_tokens=3, ts=NOON - 86_400)),
        ledger.record(claude(0.125)),
        ledger.record(claude(0.5, ts=NOON - 3600)),
        ledger.record(row(path="failed", ok=False, error="timed out", output_tokens=0, counterfactual_cost_usd=0)),
        ledger.record(row(ok=False, error="bad body", host="gpu-2")),
        ledger.record(row(tier=None)),
        ledger.record(row(tier="embedding", model="nomic-embed-text", output_tokens=0, counterfactual_cost_usd=0)),
    ]
    ledger.annotate(rows[1], confidence=0.2, path="local_low_confidence")
    ledger.annotate(rows[0], confidence=0.95)
    return rows


def same_figures(running: LedgerSummary, scanned: LedgerSummary) -> None:
    lists = {"by_model", "by_host", "since", "embedding"}
    assert running.model_dump(exclude=lists) == pytest.approx(scanned.model_dump(exclude=lists))
    assert running.embedding.model_dump() == pytest.approx(scanned.embedding.model_dump())
    for key in ("by_model", "by_host"):
        x, y = running.model_dump()[key], scanned.model_dump()[key]
        assert len(x) == len(y) and all(p == pytest.approx(q) for p, q in zip(x, y, strict=True)), key


def test_the_running_totals_equal_a_scan_after_inserts_annotations_and_deletes(ledger: Ledger, location: str) -> None:
    rows = fill(ledger)
    running = ledger.summary(now=NOON)
    assert (running.calls, running.claude_calls, running.failed_calls, running.low_confidence_calls) == (8, 2, 2, 1)
    assert (running.local_calls, running.embedding.rows, running.embedding.input_tokens) == (4, 1, 1000)
    assert running.claude_cost_usd == pytest.approx(0.625) and running.claude_spend_today_usd == pytest.approx(0.625)
    same_figures(running, ledger.summary(since=0.0, now=NOON))
    raw(location, "DELETE FROM calls WHERE id IN (?, ?, ?)", rows[3], rows[2], rows[8])
    after = ledger.summary(now=NOON)
    assert (after.calls, after.claude_calls, after.embedding.rows) == (6, 1, 0)
    same_figures(after, ledger.summary(since=0.0, now=NOON))
    assert ledger.summary(since=NOON - 60, now=NOON).claude_calls == 0  # the 0.5 one is an hour old


def test_recent_rows_come_back_as_written_newest_first(ledger: Ledger) -> None:
    ledger.record(row(ts=NOON - 5, call_id="c1", error=None))
    ledger.record(claude(0.01, ts=NOON, call_id="c2"))
    newest, older = ledger.recent(2)
    assert (newest.path, newest.cost_usd, newest.call_id, newest.ok) == ("claude", 0.01, "c2", True)
    assert older == row(ts=NOON - 5, call_id="c1")
    assert ledger.recent(0) == []


def test_kind_figures_follow_annotations_to_the_hundredth(ledger: Ledger) -> None:
    first = ledger.record(row())
    second = ledger.record(row())
    ledger.record(row(kind=None))  # not counted: no kind
    ledger.record(row(tier="embedding"))  # not counted: embedding work
    ledger.annotate(first, confidence=0.29)  # 0.29 * 100 is 28.999...: still the 29th hundredth
    ledger.annotate(second, confidence=1.7)  # clamped to 1
    (figures,) = ledger.kind_figures(0.29)
    assert (figures.model, figures.kind, figures.outcome) == ("qwen3:8b", "qa", "local")
    assert (figures.answers, figures.scored, figures.cleared) == (2, 2, 2)
    (figures,) = ledger.kind_figures(0.3)
    assert figures.cleared == 1


def test_a_reservation_holds_until_settled_or_past_its_deadline(ledger: Ledger) -> None:
    now = time.time()
    held, figures = ledger.reserve(0.25, limit_usd=1.0, ttl_s=60, now=now)
    assert held is not None and figures.reserved_usd == 0
    refused, figures = ledger.reserve(0.8, limit_usd=1.0, ttl_s=60, now=now)
    assert refused is None and figures.reserved_usd == pytest.approx(0.25)
    assert ledger.budget_figures(now).reserved_usd == pytest.approx(0.25)
    assert ledger.budget_figures(now + 61).reserved_usd == 0  # a dead holder's share lapses
    rowid = ledger.settle(held, claude(0.2, ts=now))
    assert rowid is not None
    assert ledger.budget_figures(now) == ledger.budget_figures(now).model_copy(
        update={"spent_usd": pytest.approx(0.2), "reserved_usd": 0.0}
    )
    exact, _ = ledger.reserve(0.8, limit_usd=1.0, ttl_s=60, now=now)  # 0.2 + 0.8 fits exactly
    assert exact is not None
    ledger.release(exact)
    assert ledger.budget_figures(now).reserved_usd == 0


def test_threads_on_one_ledger_never_reserve_past_the_budget(ledger: Ledger) -> None:
    guard = BudgetGuard(ledger, 0.05)
    granted: list[object] = []
    refused: list[BudgetExceededError] = []

    def take() -> None:
        try:
            granted.append(guard.reserve(0.01, ttl_s=60))
        except BudgetExceededError as exc:
            refused.append(exc)

    threads = [threading.Thread(target=take) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert (len(granted), len(refused)) == (5, 7)
    assert "would be exceeded" in str(refused[0])


def test_tool_calls_and_the_cost_of_a_call_tree(ledger: Ledger) -> None:
    ledger.start_tool_call("parent", "run_workflow")
    ledger.start_tool_call("child", "delegate_task", parent_id="parent")
    ledger.record(row(call_id="parent", input_tokens=100))
    ledger.record(claude(0.03, call_id="child", input_tokens=200))
    ledger.finish_tool_call("child", seconds=0.5, outcome="error", error="x" * 1000)
    (child,) = ledger.tool_calls(parent_id="parent")
    assert (child.id, child.outcome, child.seconds, len(child.error or "")) == ("child", "error", 0.5, 300)
    assert [c.id for c in ledger.tool_calls()] == ["parent"]
    cost = ledger.call_cost("parent")
    assert (cost.model_calls, cost.input_tokens, cost.cost_usd) == (2, 300, pytest.approx(0.03))
    assert ledger.summary().tool_calls == 1  # top-level calls only


def test_labels_round_trip_and_are_counted(ledger: Ledger) -> None:
    def label(value: bool | None, ts: float) -> CalibrationLabel:
        return CalibrationLabel(ts=ts, model="m", kind="qa", signals={"raw": 0.5, "grounded": True}, label=value,
                                source="audit", agreement={"differing": ["a"]})  # fmt: skip

    for i, value in enumerate((True, False, None, True)):
        ledger.add_label(label(value, NOON + i))
    assert [x.label for x in ledger.labels("m", "qa")] == [True, False, True]
    everything = ledger.labels("m", "qa", labelled_only=False)
    assert len(everything) == 4 and everything[0] == label(True, NOON)
    (counts,) = ledger.label_counts()
    assert (counts.rows, counts.labelled, counts.correct) == (4, 3, 2)


def test_the_dashboard_history_agrees_with_the_ledger(ledger: Ledger) -> None:
    now = time.time()
    ledger.start_tool_call("t1", "delegate_task")
    ledger.start_tool_call("t1-child", "query_data", parent_id="t1")
    ledger.record(row(ts=now - 30, call_id="t1", latency_ms=100.0))
    ledger.record(row(ts=now - 20, call_id="t1-child", host="gpu-2", latency_ms=300.0))
    ledger.record(claude(0.02, ts=now - 86_400 * 2))
    with LedgerHistory(ledger) as history:
        for _ in range(2):  # before and after more rows arrive
            summary, totals = ledger.summary(), history.totals()
            assert (totals.calls, totals.local_calls, totals.claude_calls, totals.tool_calls) == (
                summary.calls, summary.local_calls, summary.claude_calls, summary.tool_calls,
            )  # fmt: skip
            assert totals.claude_cost_usd == pytest.approx(summary.claude_cost_usd)
            assert totals.savings_usd == pytest.approx(summary.savings_usd)
            days = history.daily(3, now)
            assert [d.claude_calls for d in days] == [1, 0, 0] and days[-1].local_calls >= 2
            ledger.record(row(ts=now, call_id="t1", host="gpu-2", latency_ms=200.0))
        (top,) = history.recent_tool_calls(10)
        assert (top.id, top.model_calls, top.path, top.host) == ("t1", 4, "local", "gpu-2")
        assert [c.id for c in history.children("t1")] == ["t1-child"]
        assert [r.call_id for r in history.model_calls("t1")] == ["t1", "t1-child", "t1", "t1"]
        one = history.tool_call_summary("t1-child")
        assert one is not None and one.model_calls == 1
        assert history.tool_call("nope") is None and history.tool_call_summary("nope") is None
        latency = history.host_latency(3600, 300, now)
        assert sorted(latency) == ["gpu-1", "gpu-2"]
        assert sum(p.calls for p in latency["gpu-2"]) == 3


def test_a_store_written_by_a_newer_version_is_refused(location: str) -> None:
    Ledger(location).close()
    raw(location, "UPDATE schema_version SET version = 999")
    with pytest.raises(ConfigError, match="newer caelum-mcp"):
        Ledger(location)


def test_two_ledgers_on_one_store_see_each_others_rows(location: str) -> None:
    with Ledger(location) as first, Ledger(location) as second:  # two servers on one ledger
        first.record(claude(0.25, ts=time.time()))
        held, figures = second.reserve(0.8, limit_usd=1.0, ttl_s=60)
        assert held is None and figures.spent_usd == pytest.approx(0.25)
        assert second.summary().claude_calls == 1


def test_an_unreachable_postgresql_names_it_without_its_password() -> None:
    pytest.importorskip("psycopg")
    import socket

    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConfigError) as info:
        Ledger(f"postgresql://caelum:hunter2@127.0.0.1:{port}/caelum?sslmode=disable")
    message = str(info.value)
    assert f"postgresql://caelum:***@127.0.0.1:{port}/caelum" in message and "[ledger] url" in message
    assert "hunter2" not in message and info.value.__cause__ is None


def test_a_url_of_another_database_is_refused() -> None:
    with pytest.raises(ConfigError, match="postgresql://"):
        Ledger("mysql://caelum:hunter2@127.0.0.1/caelum")


def test_the_location_of_a_postgresql_ledger_hides_its_password(request: pytest.FixtureRequest) -> None:
    with_password = str(request.getfixturevalue("postgres_url")).replace(
        "caelum_test@", "caelum_test:s3cret@"
    )  # trust: any password is taken
    with Ledger(with_password) as ledger:
        assert "s3cret" not in ledger.location and ledger.location.startswith("postgresql://caelum_test:***@")
        assert ledger.path is None
        ledger.record(row())
        assert ledger.recent(1)[0].host == "gpu-1"


def test_a_dropped_postgresql_connection_is_reopened_by_the_next_call(request: pytest.FixtureRequest) -> None:
    import psycopg

    url = str(request.getfixturevalue("postgres_url"))
    with Ledger(url) as ledger:
        ledger.record(row())
        with psycopg.connect(url, autocommit=True) as admin:  # the server restarted, or a DBA ended the session
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'caelum-mcp' AND pid <> pg_backend_pid()"
            )
        with pytest.raises(ConfigError, match=r"\[ledger\] url"):
            ledger.record(row())  # never retried: it may have committed before the connection dropped
        ledger.record(row())
        assert ledger.summary().calls == 2


def test_where_postgresql_is_missing_its_tests_are_skipped_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import fakes.postgres

    monkeypatch.setattr(fakes.postgres, "find_binaries", lambda: None)
    with pytest.raises(pytest.skip.Exception, match=r"apt-get install postgresql"), fakes.postgres.running_postgres():
        pass
