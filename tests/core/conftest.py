"""Helpers for pool and router tests: real hosts over real HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx2
import pytest

from caelum_mcp.engine.backends.anthropic import AnthropicBackend
from caelum_mcp.engine.backends.openai import OpenAIBackend
from caelum_mcp.engine.backends.scripted import ScriptedBackend
from caelum_mcp.engine.config import Config, load_config
from caelum_mcp.engine.hosts import CircuitBreaker, Host
from caelum_mcp.engine.ledger import Ledger
from caelum_mcp.engine.pool import Pool


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    return load_config(None, environ={}, overrides={"data_dir": str(tmp_path), "implicit_ollama": False, **overrides})


def openai_host(name: str, url: str, http: httpx2.AsyncClient, *, limit: int = 1, cooldown: float = 0.5) -> Host:
    return Host(
        name=name,
        backend=OpenAIBackend(url, http, name=name),
        max_concurrency=limit,
        breaker=CircuitBreaker(failure_threshold=2, cooldown_s=cooldown),
    )


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    client = httpx2.AsyncClient(timeout=httpx2.Timeout(60, connect=2), trust_env=False)
    yield client
    await client.aclose()


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    led = Ledger(tmp_path / "ledger.sqlite3")
    yield led  # type: ignore[misc]
    led.close()


def claude_on_llama(llama_url: str, http: httpx2.AsyncClient) -> AnthropicBackend:
    """The real anthropic SDK talking HTTP to llama.cpp's Anthropic-style /v1/messages.

    llama.cpp ignores the structured-output parameter, so the schema goes into the system prompt.
    """
    return AnthropicBackend(
        llama_url,
        http,
        name="claude",
        api_key="sk-test-not-a-real-key",
        model="claude-sonnet-5-5",
        structured_output="off",
    )


async def single_host_pool(llama_url: str, http: httpx2.AsyncClient) -> Pool:
    pool = Pool([openai_host("embedded", llama_url, http, limit=2)])
    await pool.refresh_all()
    return pool


def scripted_host(
    name: str,
    models: Sequence[tuple[str, float]],
    replies: Any = None,
    *,
    limit: int = 1,
) -> Host:
    """A pool host answered by a :class:`ScriptedBackend` (no HTTP, no model)."""
    return Host(
        name=name,
        backend=ScriptedBackend(models, replies, name=name),
        max_concurrency=limit,
        breaker=CircuitBreaker(failure_threshold=2, cooldown_s=0.5),
    )


async def scripted_pool(*hosts: Host) -> Pool:
    pool = Pool(list(hosts))
    await pool.refresh_all()
    return pool


def backend_of(host: Host) -> ScriptedBackend:
    assert isinstance(host.backend, ScriptedBackend)
    return host.backend


def mock_claude(
    answers: Sequence[str],
    bodies: list[dict[str, Any]],
    *,
    model: str = "claude-sonnet-5-5",
    usage: tuple[int, int] = (500, 40),
) -> AnthropicBackend:
    """Claude over the real anthropic SDK; a mock transport answers in the Messages API's wire shape,
    one answer per call (the last repeats), and keeps each request body in ``bodies``."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        bodies.append(json.loads(request.content))
        text = answers[min(len(bodies), len(answers)) - 1]
        message = {
            "id": f"msg_{len(bodies)}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
        }
        return httpx2.Response(200, json=message)

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return AnthropicBackend("http://127.0.0.1:9", client, name="claude", api_key="sk-test", model=model, max_retries=0)
