"""Every backend: per-call time limits, Retry-After, and bodies that are not what they should be."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import anyio
import httpx2
import pytest

from caelum_mcp.core.errors import (
    HostDisconnectedError,
    HostOverloadedError,
    HostServerError,
    HostTimeoutError,
    MalformedResponseError,
)
from caelum_mcp.core.types import ChatMessage, ChatRequest
from caelum_mcp.engine.backends.anthropic import AnthropicBackend
from caelum_mcp.engine.backends.base import retry_after
from caelum_mcp.engine.backends.ollama import OllamaBackend
from caelum_mcp.engine.backends.openai import OpenAIBackend
from caelum_mcp.engine.backends.scripted import ScriptedBackend, ScriptedReply

ASK = ChatRequest(model="m", messages=(ChatMessage(role="user", content="hi"),), max_tokens=8)
NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": email.utils.formatdate(NOW + 7, usegmt=True)}, 7.0),
        ({"retry-after": email.utils.formatdate(NOW - 7, usegmt=True)}, 0.0),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "nan"}, None),
        ({}, None),
    ],
)
def test_retry_after_reads_seconds_dates_and_milliseconds(headers: dict[str, str], expected: float | None) -> None:
    value = retry_after(httpx2.Headers(headers), now=NOW)
    assert value == (pytest.approx(expected, abs=1.0) if expected is not None else None)


@pytest.mark.parametrize("cls", [OllamaBackend, OpenAIBackend])
async def test_a_busy_reply_carries_its_retry_after(cls: type[Any]) -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(429, json={"error": "slow down"}, headers={"retry-after": "3"})

    backend = cls("http://127.0.0.1:9", httpx2.AsyncClient(transport=httpx2.MockTransport(handler)), name="h")
    with pytest.raises(HostOverloadedError) as info:
        await backend.chat(ASK)
    assert info.value.retry_after_s == 3.0 and info.value.failover and not info.value.host_fault


@pytest.mark.parametrize("cls", [OllamaBackend, OpenAIBackend])
async def test_limit_s_becomes_the_request_timeouts(cls: type[Any]) -> None:
    seen: list[dict[str, float]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.extensions["timeout"])
        return httpx2.Response(503, json={"error": "busy"})

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler), timeout=httpx2.Timeout(300, connect=5))
    backend = cls("http://127.0.0.1:9", client, name="h")
    for limit in (2.5, 12.0, None):
        with pytest.raises(HostOverloadedError):
            await backend.chat(ASK, limit_s=limit)
    assert seen[0] == {"connect": 2.5, "read": 2.5, "write": 2.5, "pool": 2.5}
    assert seen[1] == {"connect": 5, "read": 12.0, "write": 12.0, "pool": 12.0}  # connect: the client's, shorter
    assert seen[2]["read"] == 300  # no limit: the client's own


@pytest.mark.parametrize("cls", [OllamaBackend, OpenAIBackend])
@pytest.mark.parametrize("body", [b"", b"{not json", b"<html>gateway</html>", b"[]", b"{}"])
async def test_a_200_that_is_not_an_answer_is_a_malformed_response_that_fails_over(cls: type[Any], body: bytes) -> None:
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(lambda r: httpx2.Response(200, content=body)))
    with pytest.raises(MalformedResponseError) as info:
        await cls("http://127.0.0.1:9", client, name="h").chat(ASK)
    assert info.value.failover and info.value.host_fault and info.value.fault == "bad_body"


async def test_a_dropped_connection_is_a_disconnect_not_a_refusal() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.RemoteProtocolError("Server disconnected without sending a response.")

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    with pytest.raises(HostDisconnectedError) as info:
        await OpenAIBackend("http://127.0.0.1:9", client, name="h").chat(ASK)
    assert isinstance(info.value, HostServerError)
    assert info.value.fault == "connect" and info.value.failover and not info.value.opens_breaker


def _claude(handler: Any) -> AnthropicBackend:
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return AnthropicBackend("http://127.0.0.1:9", client, name="claude", api_key="sk-test", max_retries=0)


MESSAGE = {"id": "m", "type": "message", "role": "assistant", "model": "claude-haiku-4-5", "stop_reason": "end_turn"}


@pytest.mark.parametrize(
    "response",
    [
        httpx2.Response(200, content=b"", headers={"content-type": "application/json"}),
        httpx2.Response(200, content=b"", headers={}),
        httpx2.Response(200, content=b"{not json", headers={"content-type": "application/json"}),
        httpx2.Response(200, content=b"<html>proxy</html>", headers={"content-type": "text/html"}),
        httpx2.Response(200, json=[1, 2]),
        httpx2.Response(200, json={"hello": "world"}),
        httpx2.Response(200, json={**MESSAGE, "content": None, "usage": {"input_tokens": 1, "output_tokens": 1}}),
        httpx2.Response(200, json={**MESSAGE, "content": [{"type": "text", "text": "hi"}]}),  # no usage
    ],
)
async def test_a_claude_reply_that_is_not_a_message_is_malformed_never_a_raw_error(response: httpx2.Response) -> None:
    with pytest.raises(MalformedResponseError) as info:
        await _claude(lambda r: response).chat(ASK)
    assert info.value.host == "claude" and "sk-test" not in str(info.value)


async def test_a_hanging_claude_call_ends_at_its_limit() -> None:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        await anyio.sleep(30)
        raise AssertionError("not reached")

    started = time.monotonic()
    with pytest.raises(HostTimeoutError):
        await _claude(handler).chat(ASK, limit_s=0.3)
    assert time.monotonic() - started < 10  # well short of the 30 s hang, with room for a loaded machine


async def test_a_scripted_reply_slower_than_the_limit_times_out() -> None:
    backend = ScriptedBackend([("m", 8.0)], [ScriptedReply("late", delay_s=5), "on time"])
    started = time.monotonic()
    with pytest.raises(HostTimeoutError, match="scripted to take 5 s"):
        await backend.chat(ASK, limit_s=0.2)
    assert time.monotonic() - started < 4  # short of the scripted 5 s, with room for a loaded machine
    assert (await backend.chat(ASK, limit_s=0.2)).content == "on time"
