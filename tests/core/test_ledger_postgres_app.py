"""A server configured with ``[ledger] url`` keeps its ledger in PostgreSQL: ``pool_status`` and the
dashboard read the rows every server sharing the database wrote, and no SQLite file is made."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fakes import postgres
from fakes.cli_runs import cli_env, run_cli
from mcp import Client

from caelum_mcp.core.types import Usage
from caelum_mcp.engine.config import Config, load_config
from caelum_mcp.engine.ledger import Ledger, LedgerEntry, model_call_row
from caelum_mcp.serving.app import open_app
from caelum_mcp.serving.dashboard.snapshot import build_snapshot
from caelum_mcp.serving.dashboard.telemetry import Telemetry
from caelum_mcp.serving.server import create_server

# Fixtures: the session's PostgreSQL server, and a database of its own for each test.
postgres_server = postgres.postgres_server
postgres_url = postgres.postgres_url

pytestmark = pytest.mark.slow


def config_for(tmp_path: Path, url: str, **overrides: Any) -> Config:
    return load_config(
        None,
        environ={},
        overrides={
            "data_dir": str(tmp_path / "data"),
            "embedded": "off",
            "allowed_roots": [str(tmp_path)],
            "hosts": [],
            "implicit_ollama": False,
            "ledger": {"url": url},
            **overrides,
        },
    )


def answered(host: str, *, cost: float = 0.0, call_id: str | None = None) -> LedgerEntry:
    return model_call_row(
        task="delegate_task", path="claude" if cost else "local", provider="anthropic" if cost else "ollama",
        host=host, model="qwen3:8b" if not cost else "claude-sonnet-4-5", tier=None if cost else "full",
        usage=Usage(input_tokens=300, output_tokens=40), latency_ms=90.0, cost=cost, counterfactual=0.002,
        call_id=call_id, kind="qa",
    )  # fmt: skip


async def test_pool_status_counts_what_another_server_wrote_to_the_shared_ledger(
    tmp_path: Path, postgres_url: str
) -> None:
    with Ledger(postgres_url) as other_server:
        other_server.record(answered("gpu-a"))
        other_server.record(answered("claude", cost=0.004))
    server, holder = create_server(config_for(tmp_path, postgres_url))
    async with Client(server) as client:
        res = await client.call_tool("pool_status", {})
        assert not res.is_error, res.content
        ledger = res.structured_content["ledger"]
        assert (ledger["calls"], ledger["local_calls"], ledger["claude_calls"]) == (2, 1, 1)
        assert ledger["claude_spend_today_usd"] == pytest.approx(0.004)
        assert holder.require().ledger.path is None
    assert not (tmp_path / "data" / "ledger.sqlite3").exists()


async def test_the_dashboard_shows_the_shared_ledger(tmp_path: Path, postgres_url: str) -> None:
    with Ledger(postgres_url) as other_server:
        other_server.start_tool_call("call-from-b", "delegate_task")
        other_server.record(answered("gpu-b", call_id="call-from-b"))
        other_server.finish_tool_call("call-from-b", seconds=0.2, outcome="ok")
    async with open_app(config_for(tmp_path, postgres_url), health_loop=False) as state:
        telemetry = Telemetry()
        with telemetry.watching(state):
            history = telemetry.history
            assert history is not None
            first = build_snapshot(state, telemetry, history, 50)
            assert (first.share.calls, first.share.tool_calls) == (1, 1)
            assert [c.id for c in first.calls] == ["call-from-b"] and first.calls[0].host == "gpu-b"
            assert first.daily[-1].local_calls == 1
            state.ledger.record(answered("claude", cost=0.01))  # this server's own row
            second = build_snapshot(state, telemetry, history, 50)
            assert (second.share.calls, second.share.claude_calls) == (2, 1)
            assert second.budget.spent_usd == pytest.approx(0.01)
            assert second.daily[-1].cost_usd == pytest.approx(0.01) and second.generated <= time.time()


def test_the_status_command_reads_the_shared_ledger_and_hides_its_password(tmp_path: Path, postgres_url: str) -> None:
    with Ledger(postgres_url) as other_server:
        other_server.record(answered("gpu-a"))
    with_password = postgres_url.replace("caelum_test@", "caelum_test:s3cret@")  # trust: any password is taken
    env = cli_env(tmp_path, CAELUM_LEDGER__URL=with_password)
    run = run_cli(("status",), env=env, cwd=tmp_path, timeout_s=60)
    assert run.code == 0, run
    assert "calls: 1 (local 1" in run.out and "caelum_test:***@127.0.0.1" in run.out, run
    assert "s3cret" not in run.out + run.err
