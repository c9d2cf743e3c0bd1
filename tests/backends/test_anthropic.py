"""AnthropicBackend: the real SDK against llama.cpp's /v1/messages, and Anthropic error shapes."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator, Callable

import anthropic
import httpx2
import pytest

from caelum_mcp.core.errors import (
    AuthenticationError,
    BadRequestError,
    HostConnectError,
    HostOverloadedError,
    HostServerError,
    ModelNotFoundError,
    StreamInterruptedError,
)
from caelum_mcp.core.types import ChatRequest, StreamChunk
from caelum_mcp.engine.backends.anthropic import AnthropicBackend
from caelum_mcp.engine.backends.registry import backend_class

# A fake key: the tests look for it in error messages and logs, where it must never appear.
KEY = "sk-ant-test-0123456789abcdef"


def ask(*messages: tuple[str, str], **fields: object) -> ChatRequest:
    turns = [{"role": role, "content": text} for role, text in messages]
    return ChatRequest.model_validate({"model": "claude-haiku-4-5", "messages": turns, "max_tokens": 16, **fields})


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=60) as client:
        yield client


def mock_backend(handler: Callable[[httpx2.Request], httpx2.Response], *, max_retries: int = 2) -> AnthropicBackend:
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return AnthropicBackend("http://127.0.0.1:9", client, name="claude", api_key=KEY, max_retries=max_retries)


def anthropic_error(status: int, kind: str, message: str) -> httpx2.Response:
    # retry-after-ms (which the real API also sends) keeps the SDK's waits between retries short
    return httpx2.Response(
        status,
        json={"type": "error", "error": {"type": kind, "message": message}},
        headers={"retry-after": "0", "retry-after-ms": "1", "request-id": "req_test"},
    )


# the real SDK against llama.cpp's Anthropic-compatible endpoint --------------------------------


@pytest.mark.slow
async def test_chat_through_the_sdk(llama_url: str, http: httpx2.AsyncClient) -> None:
    backend = AnthropicBackend(llama_url, http, api_key="any-key")
    response = await backend.chat(ask(("system", "You answer briefly."), ("user", "What colour is grass?")))
    assert response.content.strip()
    assert response.usage.input_tokens > 0
    assert response.usage.output_tokens > 0
    assert response.finish_reason in ("end_turn", "max_tokens")


@pytest.mark.slow
async def test_stream_through_the_sdk(llama_url: str, http: httpx2.AsyncClient) -> None:
    backend = AnthropicBackend(llama_url, http, api_key="any-key")
    chunks = [c async for c in backend.stream(ask(("user", "Tell me about rivers."), max_tokens=12))]
    pieces = [c for c in chunks if not c.done]
    assert len(pieces) >= 3
    final = chunks[-1]
    assert final.done and final.response is not None
    assert final.response.content == "".join(c.content for c in pieces)
    assert final.response.usage.output_tokens == 12
    assert final.response.finish_reason == "max_tokens"


@pytest.mark.slow
async def test_health_and_models_of_a_messages_server(llama_url: str, http: httpx2.AsyncClient) -> None:
    backend = AnthropicBackend(llama_url, http, api_key="any-key", model="claude-sonnet-4-5")
    assert (await backend.health()).ok
    names = [m.name for m in await backend.list_models()]
    assert any("smollm2" in n.lower() for n in names)
    assert "claude-sonnet-4-5" in names  # the configured model is kept even when not listed


def test_registered_under_its_kind() -> None:
    assert backend_class("anthropic") is AnthropicBackend


# what goes on the wire -------------------------------------------------------------------------


async def test_system_schema_and_turns_on_the_wire() -> None:
    seen: list[dict[str, object]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1/messages"
        # anthropic 2.x sends the key as a bearer token; older releases used x-api-key
        assert KEY in request.headers.get("authorization", request.headers.get("x-api-key", ""))
        seen.append(json.loads(request.content))
        return httpx2.Response(
            200,
            json={
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-haiku-4-5-20251001",
                "content": [
                    {"type": "thinking", "thinking": "plan", "signature": "sig"},
                    {"type": "text", "text": '{"ok": true}'},
                ],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 20,
                    "output_tokens": 5,
                    "cache_read_input_tokens": 100,
                    "cache_creation_input_tokens": None,
                },
            },
        )

    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    request = ask(
        ("system", "Be exact."),
        ("user", "first"),
        ("tool", "lint output"),
        ("assistant", "noted"),
        ("user", "answer"),
        json_schema=schema,
        stop=("END",),
    )
    response = await mock_backend(handler).chat(request)
    body = seen[0]
    assert body["messages"] == [
        {"role": "user", "content": "first\n\nlint output"},
        {"role": "assistant", "content": "noted"},
        {"role": "user", "content": "answer"},
    ]
    # Haiku 4.5 takes structured output: the schema goes (once) as output_config, not into the prompt
    assert body["system"] == "Be exact."
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": anthropic.transform_schema(schema)}}
    assert body["stop_sequences"] == ["END"] and body["max_tokens"] == 16
    assert response.content == '{"ok": true}' and response.thinking == "plan"
    assert response.model == "claude-haiku-4-5-20251001"
    assert response.usage.model_dump() == {
        "input_tokens": 20,
        "output_tokens": 5,
        "cache_read_tokens": 100,
        "cache_write_tokens": 0,
    }


# failures --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [(429, "rate_limit_error"), (529, "overloaded_error"), (503, "api_error")],
)
async def test_busy_is_retried_by_the_sdk_then_overloaded(status: int, kind: str) -> None:
    attempts: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        attempts.append(request)
        return anthropic_error(status, kind, "Slow down, please.")

    with pytest.raises(HostOverloadedError) as info:
        await mock_backend(handler, max_retries=2).chat(ask(("user", "hi")))
    assert len(attempts) == 3
    assert info.value.status == status and info.value.failover
    assert "Slow down, please." in str(info.value)


async def test_refused_key_is_authentication_error_without_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    attempts: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        attempts.append(request)
        # a server that echoes the key back must not get it into our messages either
        return anthropic_error(401, "authentication_error", f"invalid x-api-key {KEY}")

    backend = mock_backend(handler)
    with pytest.raises(AuthenticationError) as info:
        await backend.chat(ask(("user", "hi")))
    assert len(attempts) == 1  # never retried
    assert info.value.status == 401
    assert "invalid x-api-key" in str(info.value)
    assert KEY not in str(info.value)
    report = await backend.health()
    assert not report.ok and KEY not in report.detail
    assert [m.name for m in await backend.list_models()] == []  # no configured model
    assert KEY not in caplog.text


@pytest.mark.parametrize(
    ("status", "kind", "error"),
    [
        (404, "not_found_error", ModelNotFoundError),
        (400, "invalid_request_error", BadRequestError),
        (500, "api_error", HostServerError),
    ],
)
async def test_status_errors_are_mapped(status: int, kind: str, error: type[Exception]) -> None:
    backend = mock_backend(lambda r: anthropic_error(status, kind, "model: claude-9"), max_retries=0)
    with pytest.raises(error, match="model: claude-9"):
        await backend.chat(ask(("user", "hi")))


async def test_connection_refused_is_connect_error(http: httpx2.AsyncClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = AnthropicBackend(f"http://127.0.0.1:{port}", http, api_key=KEY, max_retries=0)
    with pytest.raises(HostConnectError) as info:
        await backend.chat(ask(("user", "hi")))
    assert info.value.failover and KEY not in str(info.value)
    assert not (await backend.health()).ok


async def test_no_key_means_no_call(http: httpx2.AsyncClient) -> None:
    backend = AnthropicBackend("http://127.0.0.1:9", http, api_key=None, model="claude-haiku-4-5")
    with pytest.raises(AuthenticationError):
        await backend.chat(ask(("user", "hi")))
    report = await backend.health()
    assert not report.ok and "no Anthropic API key" in report.detail
    assert [m.name for m in await backend.list_models()] == ["claude-haiku-4-5"]


async def test_stream_error_after_text_is_interrupted() -> None:
    events = [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Hello"}}),
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ]  # fmt: skip
    body = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, text=body, headers={"content-type": "text/event-stream"})

    received: list[StreamChunk] = []
    with pytest.raises(StreamInterruptedError) as info:
        async for chunk in mock_backend(handler).stream(ask(("user", "hi"))):
            received.append(chunk)
    assert [c.content for c in received] == ["Hello"]
    assert "Overloaded" in str(info.value) and not info.value.failover
