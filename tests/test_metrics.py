"""``/metrics`` read with the real Prometheus text parser, before and after tool calls: every counter
moves by what the calls did (as the ledger recorded them), and the gauges say what the pool is.

The server is the real HTTP app on loopback with scripted hosts (see
``integration/dashboard_server.py``).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fakes.calibration_tables import write_calibrated_as_raw
from integration.dashboard_server import seed_ledger, serving, two_hosts
from mcp import Client
from prometheus_client.parser import text_string_to_metric_families

from caelum_mcp.core.errors import HostConnectError
from caelum_mcp.engine.backends.scripted import ScriptedBackend
from caelum_mcp.engine.hosts import CircuitBreaker, Host
from caelum_mcp.engine.ledger import Ledger

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def scrape(base: str, headers: dict[str, str] | None = None) -> Samples:
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.get(f"{base}/metrics", headers=headers or {})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


async def calls(mcp_url: str, arguments: Iterable[dict[str, Any]]) -> list[Any]:
    results = []
    async with Client(mcp_url) as client:
        for args in arguments:
            results.append(await client.call_tool("delegate_task", args))
    return results


async def test_counters_move_by_what_the_calls_did(tmp_path: Path) -> None:
    seed_ledger(tmp_path / "data" / "ledger.sqlite3", days=2)
    # Both models measured and their raw score found calibrated: one answer clears, one does not.
    write_calibrated_as_raw(tmp_path / "data")
    async with serving(tmp_path, two_hosts()) as served:
        before = await scrape(served.base)
        results = await calls(
            served.mcp,
            [
                {"prompt": "2+2?", "model": "qwen3:8b"},
                {"prompt": "3+3?", "model": "qwen3:8b"},
                {"prompt": "4+4?", "model": "llama3.2:3b"},
                {"prompt": "5+5?", "model": "qwen3:8b", "max_tokens": 1},  # refused: below the minimum
            ],
        )
        after = await scrape(served.base)
        with Ledger(served.ledger_path) as ledger:
            rows = [r for r in ledger.recent(20) if r.call_id is not None]

    ok, refused = results[:3], results[3]
    assert not any(r.is_error for r in ok) and refused.is_error
    assert delta(before, after, "caelum_tool_calls_total", tool="delegate_task", outcome="ok") == 3
    assert delta(before, after, "caelum_tool_calls_total", tool="delegate_task", outcome="error") == 1
    assert delta(before, after, "caelum_tool_call_duration_seconds_count", tool="delegate_task") == 4

    a = {"host": "gpu-a", "model": "qwen3:8b"}
    b = {"host": "gpu-b", "model": "llama3.2:3b"}
    assert delta(before, after, "caelum_llm_calls_total", **a, tier="full", path="local", outcome="ok") == 2
    assert delta(before, after, "caelum_llm_calls_total", **b, tier="small", path="local", outcome="ok") == 1
    assert delta(before, after, "caelum_llm_call_duration_seconds_count", **a, path="local") == 2
    assert delta(before, after, "caelum_llm_call_duration_seconds_count", **b, path="local") == 1
    for labels in (a, b):
        mine = [r for r in rows if r.host == labels["host"]]
        tokens_in = sum(r.input_tokens for r in mine)
        tokens_out = sum(r.output_tokens for r in mine)
        assert tokens_in > 0 and tokens_out > 0
        assert delta(before, after, "caelum_llm_tokens_total", **labels, direction="input") == tokens_in
        assert delta(before, after, "caelum_llm_tokens_total", **labels, direction="output") == tokens_out
        saved = sum(r.counterfactual_cost_usd for r in mine)
        assert delta(before, after, "caelum_counterfactual_cost_usd_total", model=labels["model"]) == pytest.approx(
            saved
        )
    assert delta(before, after, "caelum_claude_cost_usd_total", model="claude-sonnet-5-5") == 0  # none this process

    confidences = {
        r.structured_content["execution"]["path"]: r.structured_content["execution"]["confidence"]  # type: ignore[index]
        for r in ok
    }
    assert set(confidences) == {"local", "local_low_confidence"}
    assert delta(before, after, "caelum_llm_confidence_count", path="local") == 2
    assert delta(before, after, "caelum_llm_confidence_count", path="local_low_confidence") == 1
    assert delta(before, after, "caelum_llm_confidence_sum", path="local_low_confidence") == pytest.approx(
        confidences["local_low_confidence"]
    )
    assert delta(before, after, "caelum_llm_confidence_bucket", path="local_low_confidence", le="0.75") == 1
    assert delta(before, after, "caelum_llm_confidence_bucket", path="local", le="0.75") == 0

    # gauges: what the pool and the budget are now
    assert value(after, "caelum_host_max_concurrency", host="gpu-a") == 2
    assert value(after, "caelum_host_max_concurrency", host="gpu-b") == 1
    assert value(after, "caelum_host_in_flight", host="gpu-a") == 0
    assert value(after, "caelum_host_breaker_state", host="gpu-a", state="closed") == 1
    assert value(after, "caelum_host_up", host="gpu-b") == 1
    assert value(after, "caelum_claude_budget_used_usd") == pytest.approx(0.405)  # seeded: one call today
    assert value(after, "caelum_claude_budget_limit_usd") == 5.0


async def test_a_failing_host_shows_as_an_open_breaker_and_failed_calls(tmp_path: Path) -> None:
    broken = Host(
        name="gpu-x",
        backend=ScriptedBackend(
            [("qwen3:8b", 8.2)], HostConnectError("connection refused", host="gpu-x"), name="gpu-x"
        ),
        breaker=CircuitBreaker(failure_threshold=1, cooldown_s=600),
    )
    async with serving(tmp_path, [broken]) as served:
        before = await scrape(served.base)
        (result,) = await calls(served.mcp, [{"prompt": "hi", "model": "qwen3:8b"}])
        after = await scrape(served.base)
    assert result.is_error
    assert delta(before, after, "caelum_tool_calls_total", tool="delegate_task", outcome="error") == 1
    # the pool's failure row names the host; the model is unknown there ("-")
    failed = {"host": "gpu-x", "model": "-", "tier": "-", "path": "failed", "outcome": "failed"}
    assert delta(before, after, "caelum_llm_calls_total", **failed) == 1
    assert value(before, "caelum_host_breaker_state", host="gpu-x", state="closed") == 1
    assert value(after, "caelum_host_breaker_state", host="gpu-x", state="open") == 1
    assert value(after, "caelum_host_up", host="gpu-x") == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_metrics_on_their_own_loopback_port_need_no_token(tmp_path: Path) -> None:
    port = free_port()
    async with serving(tmp_path, two_hosts(), token="metrics-test-token-4e1f", **{"metrics.port": port}) as served:
        async with httpx2.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{served.base}/metrics")).status_code == 401
        samples = await scrape(f"http://127.0.0.1:{port}")
        assert value(samples, "caelum_host_up", host="gpu-a") == 1
        with_token = await scrape(served.base, {"authorization": "Bearer metrics-test-token-4e1f"})
        assert value(with_token, "caelum_host_up", host="gpu-a") == 1
    with pytest.raises(httpx2.TransportError):  # closed with the server
        httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
