"""Helpers for pool and router tests: real hosts over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from caelum_mcp.backends.anthropic import AnthropicBackend
from caelum_mcp.backends.openai import OpenAIBackend
from caelum_mcp.config import Config, load_config
from caelum_mcp.ledger import Ledger
from caelum_mcp.pool import CircuitBreaker, Host, Pool


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    return load_config(None, environ={}, overrides={"data_dir": str(tmp_path), **overrides})


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
    """The real anthropic SDK talking HTTP to llama.cpp's Anthropic-style /v1/messages."""
    return AnthropicBackend(llama_url, http, name="claude", api_key="sk-test-not-a-real-key", model="claude-sonnet-5-5")


async def single_host_pool(llama_url: str, http: httpx2.AsyncClient) -> Pool:
    pool = Pool([openai_host("embedded", llama_url, http, limit=2)])
    await pool.refresh_all()
    return pool
