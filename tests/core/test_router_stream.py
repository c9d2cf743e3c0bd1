"""The router's streaming path (``LLMTask.on_text``), ``claude_only``, and the model load time.

Scripted hosts stand in for model servers; the Ollama host speaks the recorded wire shapes
(``tests/fixtures/ollama``) through a mock transport. The embedded model's real stream is covered
by tests/integration/test_ai_streaming.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fakes.calibration_tables import calibrated_as_raw

from caelum_mcp.core.errors import HostConnectError, StreamInterruptedError, TaskFailedError, TaskSkippedError
from caelum_mcp.core.llm import LLMTask, TaskKind
from caelum_mcp.core.types import ChatMessage, ChatRequest, StreamChunk, Tier
from caelum_mcp.engine.backends.ollama import OllamaBackend
from caelum_mcp.engine.backends.scripted import ScriptedBackend, ScriptedReply
from caelum_mcp.engine.hosts import CircuitBreaker, Host
from caelum_mcp.engine.ledger import Ledger
from caelum_mcp.engine.router import Router

from .conftest import backend_of, make_config, mock_claude, scripted_host, scripted_pool

ANSWER = json.dumps({"answer": "Paris is the capital of France, on the Seine.", "confidence": 0.9})
OLLAMA_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ollama"


def task(on_text: Any = None, **kw: Any) -> LLMTask:
    return LLMTask(
        name="stream_test",
        kind=kw.pop("kind", TaskKind.GENERAL),
        messages=(ChatMessage(role="user", content="What is the capital of France?"),),
        on_text=on_text,
        allow_claude=kw.pop("allow_claude", False),
        **kw,
    )


class Texts:
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __call__(self, text: str) -> None:
        self.seen.append(text)


async def test_a_streamed_task_reports_growing_text_and_is_recorded_like_any_call(tmp_path: Path) -> None:
    pool = await scripted_pool(scripted_host("gpu", [("qwen3:8b", 8.0)], ScriptedReply(ANSWER, logprob=-0.05)))
    texts = Texts()
    with Ledger(tmp_path / "l.db") as ledger:
        router = Router(pool, ledger, make_config(tmp_path), calibration=calibrated_as_raw())
        streamed = await router.run(task(texts), call_id="c1")
        plain = await router.run(task(), call_id="c2")
        rows = {row.call_id: row for row in ledger.recent(5)}
    assert len(texts.seen) > 3 and texts.seen[-1] == ANSWER
    assert all(a and b.startswith(a) for a, b in zip(texts.seen, texts.seen[1:], strict=False))
    assert streamed.output == plain.output == {"answer": "Paris is the capital of France, on the Seine."}
    assert streamed.execution.path == "local" and streamed.execution.output_tokens == plain.execution.output_tokens
    for field in ("path", "host", "model", "tier", "input_tokens", "output_tokens", "counterfactual_cost_usd"):
        assert getattr(rows["c1"], field) == getattr(rows["c2"], field), field
    assert backend_of(pool.hosts["gpu"]).requests[0].logprobs  # streamed with logprobs, like the plain call


async def test_a_host_that_fails_before_the_first_token_is_failed_over(tmp_path: Path) -> None:
    down = scripted_host("down", [("qwen3:8b", 8.0)], HostConnectError("refused", host="down"))
    up = scripted_host("up", [("qwen3:8b", 8.0)], ScriptedReply(ANSWER, logprob=-0.05))
    pool = await scripted_pool(down, up)
    pool.hosts["down"].latency_ewma_ms, pool.hosts["up"].latency_ewma_ms = 1.0, 50.0  # "down" is tried first
    texts = Texts()
    with Ledger(tmp_path / "l.db") as ledger:
        router = Router(pool, ledger, make_config(tmp_path), calibration=calibrated_as_raw())
        result = await router.run(task(texts), call_id="c")
        rows = ledger.recent(5)
    assert result.execution.host == "up" and result.execution.attempts == 2
    assert texts.seen[-1] == ANSWER
    assert sorted((r.host, r.path) for r in rows) == [("down", "failed"), ("up", "local")]


class BreaksMidStream(ScriptedBackend):
    """A host whose stream breaks after two pieces (a connection lost while generating)."""

    async def stream(self, request: ChatRequest, *, limit_s: float | None = None) -> AsyncGenerator[StreamChunk, None]:
        self.requests.append(request)
        yield StreamChunk(content='{"answer": "Par')
        yield StreamChunk(content="is is")
        raise StreamInterruptedError("connection lost while streaming", host=self.name)


async def test_after_the_first_token_there_is_no_failover_and_the_failure_is_recorded(tmp_path: Path) -> None:
    broken = Host(
        name="broken", backend=BreaksMidStream([("qwen3:8b", 8.0)], name="broken"), breaker=CircuitBreaker(3, 1)
    )
    spare = scripted_host("spare", [("qwen3:8b", 8.0)], ScriptedReply(ANSWER))
    pool = await scripted_pool(broken, spare)
    pool.hosts["broken"].latency_ewma_ms, pool.hosts["spare"].latency_ewma_ms = 1.0, 50.0
    texts = Texts()
    with Ledger(tmp_path / "l.db") as ledger:
        with pytest.raises(TaskFailedError, match="connection lost"):
            await Router(pool, ledger, make_config(tmp_path)).run(task(texts, model="qwen3:8b"), call_id="c")
        (row,) = ledger.recent(5)
    assert texts.seen == ['{"answer": "Par', '{"answer": "Paris is']
    assert backend_of(pool.hosts["spare"]).requests == []  # the half-sent answer was not restarted elsewhere
    assert (row.host, row.path) == ("broken", "failed") and "connection lost" in (row.error or "")


async def test_a_stream_never_goes_below_the_minimum_tier(tmp_path: Path) -> None:
    micro = scripted_host("micro", [("smollm2:135m", 0.135)], ScriptedReply(ANSWER))
    large = scripted_host("large", [("qwen3:30b", 30.0)], ScriptedReply(ANSWER))
    pool = await scripted_pool(micro, large)
    request = ChatRequest(model="", messages=(ChatMessage(role="user", content="hi"),))
    async with aclosing(pool.stream(request, tier=Tier.SMALL, min_tier=Tier.SMALL)) as stream:
        hosts = {sel.host.name async for sel, _ in stream}
    assert hosts == {"large"}  # without min_tier the nearest tier to small here is micro
    async with aclosing(pool.stream(request, tier=Tier.SMALL)) as stream:
        assert {sel.host.name async for sel, _ in stream} == {"micro"}


async def test_claude_only_skips_the_local_pool(tmp_path: Path) -> None:
    local = scripted_host("gpu", [("qwen3:8b", 8.0)], ScriptedReply(ANSWER, logprob=-0.05))
    pool = await scripted_pool(local)
    bodies: list[dict[str, Any]] = []
    claude = mock_claude([json.dumps({"answer": "Paris.", "confidence": 0.95})], bodies)
    with Ledger(tmp_path / "l.db") as ledger:
        config = make_config(tmp_path, **{"claude.api_key": "sk-test"})
        result = await Router(pool, ledger, config, claude=claude).run(task(claude_only=True, allow_claude=True))
        assert result.execution.path == "claude" and result.output == {"answer": "Paris."}
        assert result.execution.cost_usd > 0 and len(bodies) == 1
        assert backend_of(local).requests == []
        with pytest.raises(TaskSkippedError, match="Claude cannot be used: Claude not allowed"):
            await Router(pool, ledger, config, claude=claude).run(task(claude_only=True, allow_claude=False))


@pytest.mark.parametrize(
    ("fixture", "load_ms", "stream"), [("chat.json", 912.387125, False), ("chat_stream.ndjson", 14.502667, True)]
)
async def test_ollama_load_time_reaches_the_execution_record(
    tmp_path: Path, fixture: str, load_ms: float, stream: bool
) -> None:
    body = (OLLAMA_FIXTURES / fixture).read_bytes()
    tags = json.dumps(
        {"models": [{"name": "llama3.1:8b", "model": "llama3.1:8b", "details": {"parameter_size": "8.0B"}}]}
    )

    def answer(request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/api/tags":
            return httpx2.Response(200, content=tags.encode())
        if request.url.path in ("/api/version", "/api/ps"):
            return httpx2.Response(200, json={"version": "0.33.0", "models": []})
        return httpx2.Response(200, content=body)

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(answer)) as http:
        host = Host(name="ollama", backend=OllamaBackend("http://gpu-box:11434", http, name="ollama"))
        pool = await scripted_pool(host)
        with Ledger(tmp_path / "l.db") as ledger:
            result = await Router(pool, ledger, make_config(tmp_path)).run(task(Texts() if stream else None))
    assert result.execution.load_ms == pytest.approx(load_ms)
