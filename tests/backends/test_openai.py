"""OpenAIBackend against the real llama.cpp server, and failure shapes through a mock transport."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

import anyio
import httpx2
import jsonschema
import pytest

from caelum_mcp.core.errors import (
    HostConnectError,
    HostOverloadedError,
    HostServerError,
    MalformedResponseError,
    ModelNotFoundError,
    StreamInterruptedError,
)
from caelum_mcp.core.types import ChatRequest, EmbedRequest, StreamChunk, TokenLogprob
from caelum_mcp.engine.backends.openai import TOP_LOGPROBS, OpenAIBackend
from caelum_mcp.engine.backends.registry import backend_class

MODEL = "smollm2"  # llama.cpp serves one model and ignores the name


def ask(text: str, **fields: object) -> ChatRequest:
    base = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 16}
    return ChatRequest.model_validate({**base, "temperature": 0.0, **fields})


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=60) as client:
        yield client


def dead_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mock_backend(handler: Callable[[httpx2.Request], httpx2.Response]) -> OpenAIBackend:
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return OpenAIBackend("http://gpu-box:8080", client, name="gpu-box")


# the real llama.cpp server ---------------------------------------------------------------------


@pytest.mark.slow
async def test_chat_answers_with_usage(llama_url: str, http: httpx2.AsyncClient) -> None:
    backend = OpenAIBackend(llama_url, http)
    response = await backend.chat(ask("Name one colour of the sky."))
    assert response.content.strip()
    assert response.finish_reason in ("stop", "length")
    assert response.usage.output_tokens > 0
    # prompt tokens are split into fresh and cached ones; together they are the whole prompt
    assert response.usage.input_tokens + response.usage.cache_read_tokens > 5
    assert response.logprobs is None  # not asked for


@pytest.mark.slow
async def test_json_schema_output_is_valid_json(llama_url: str, http: httpx2.AsyncClient) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    backend = OpenAIBackend(llama_url, http)
    response = await backend.chat(ask("Describe a person as JSON.", json_schema=schema, max_tokens=48))
    data = json.loads(response.content)
    jsonschema.validate(data, schema)


@pytest.mark.slow
async def test_logprobs_are_returned_per_token(llama_url: str, http: httpx2.AsyncClient) -> None:
    backend = OpenAIBackend(llama_url, http)
    response = await backend.chat(ask("Count: one, two,", logprobs=True, max_tokens=8))
    assert response.logprobs
    assert len(response.logprobs) == response.usage.output_tokens
    assert all(lp.logprob <= 0 for lp in response.logprobs)
    assert all(lp.token for lp in response.logprobs)
    # llama.cpp lists the top candidates per token; confidence reads their entropy
    assert all(len(lp.top) == TOP_LOGPROBS and max(lp.top) <= 0 for lp in response.logprobs)


@pytest.mark.slow
async def test_stream_pieces_add_up_to_final_response(llama_url: str, http: httpx2.AsyncClient) -> None:
    backend = OpenAIBackend(llama_url, http)
    chunks = [c async for c in backend.stream(ask("Tell me about the sea.", max_tokens=12))]
    pieces = [c for c in chunks if not c.done]
    assert len(pieces) >= 3
    final = chunks[-1]
    assert final.done and final.response is not None
    assert [c for c in chunks if c.done] == [final]
    assert final.response.content == "".join(c.content for c in pieces)
    assert final.response.usage.output_tokens == 12
    assert final.response.finish_reason == "length"


@pytest.mark.slow
async def test_list_models_reads_llama_cpp_metadata(llama_url: str, http: httpx2.AsyncClient) -> None:
    # a base URL ending in /v1 (as users copy it from docs) works the same
    backend = OpenAIBackend(llama_url + "/v1/", http)
    models = await backend.list_models()
    smol = [m for m in models if "smollm2" in m.name.lower()]
    assert len(smol) == 1
    assert smol[0].parameters_b == pytest.approx(0.13, abs=0.01)
    assert smol[0].context_length is not None and smol[0].context_length >= 512
    assert smol[0].quantization == "Q4_1"


@pytest.mark.slow
async def test_health_of_live_server(llama_url: str, http: httpx2.AsyncClient) -> None:
    report = await OpenAIBackend(llama_url, http).health()
    assert report.ok, report.detail
    assert report.latency_ms is not None and report.latency_ms >= 0


async def test_dead_port_is_unhealthy_and_chat_fails_over(http: httpx2.AsyncClient) -> None:
    backend = OpenAIBackend(f"http://127.0.0.1:{dead_port()}", http)
    report = await backend.health()
    assert not report.ok
    assert "connect" in report.detail
    with pytest.raises(HostConnectError) as info:
        await backend.chat(ask("hello"))
    assert info.value.failover


def test_registered_under_its_kind() -> None:
    assert backend_class("openai") is OpenAIBackend


# wire shapes through a mock transport ----------------------------------------------------------


async def test_request_body_carries_schema_logprobs_and_stop() -> None:
    seen: list[dict[str, object]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1/chat/completions"
        seen.append(json.loads(request.content))
        reply = {
            "model": "qwen3:8b",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "{}", "reasoning_content": "hmm"},
                }
            ],
            "usage": {
                "prompt_tokens": 10,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 4},
            },
        }
        return httpx2.Response(200, json=reply)

    schema = {"type": "object"}
    response = await mock_backend(handler).chat(ask("x", json_schema=schema, logprobs=True, stop=("\n\n",)))
    body = seen[0]
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }
    assert body["logprobs"] is True and body["top_logprobs"] == TOP_LOGPROBS
    assert body["stop"] == ["\n\n"] and body["max_tokens"] == 16 and body["stream"] is False
    assert response.thinking == "hmm"
    assert response.logprobs == ()  # asked for, none sent
    assert (response.usage.input_tokens, response.usage.cache_read_tokens) == (6, 4)
    assert response.usage.output_tokens == 2


async def test_body_is_utf8_json_with_the_key_header() -> None:
    """Prompts in any language arrive intact; the key rides in the header, once per request."""
    sent: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        reply = {"model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}
        return httpx2.Response(200, json=reply)

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    backend = OpenAIBackend("http://gpu-box:8080/v1", client, name="gpu-box", api_key="sk-local-1")
    prompt = "Résumé du code, 日本語 too, and an emoji 🚀"
    for _ in range(2):  # the second request reuses the parsed URL and headers
        assert (await backend.chat(ask(prompt))).content == "ok"
    for request in sent:
        assert str(request.url) == "http://gpu-box:8080/v1/chat/completions"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["authorization"] == "Bearer sk-local-1"
        assert request.headers["content-length"] == str(len(request.content))
        assert prompt.encode() in request.content  # raw UTF-8, not \u escapes
        assert json.loads(request.content)["messages"][-1]["content"] == prompt


async def test_503_is_overloaded_and_fails_over() -> None:
    body = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
    backend = mock_backend(lambda r: httpx2.Response(503, json=body))
    with pytest.raises(HostOverloadedError) as info:
        await backend.chat(ask("x"))
    assert info.value.status == 503 and info.value.failover
    assert "Loading model" in str(info.value)
    report = await backend.health()
    assert not report.ok and "Loading model" in report.detail


@pytest.mark.parametrize(
    "body",
    [
        # llama.cpp
        {"error": {"code": 404, "message": "model 'qwen9' not found", "type": "not_found_error"}},
        # OpenAI / vLLM
        {
            "error": {
                "message": "model 'qwen9' not found",
                "type": "invalid_request_error",
                "param": None,
                "code": "model_not_found",
            }
        },
    ],
)
async def test_404_keeps_the_server_message(body: dict[str, object]) -> None:
    backend = mock_backend(lambda r: httpx2.Response(404, json=body))
    with pytest.raises(ModelNotFoundError) as info:
        await backend.chat(ask("x"))
    assert info.value.detail == "model 'qwen9' not found"
    assert info.value.host == "gpu-box" and info.value.status == 404


async def test_500_is_a_server_error() -> None:
    body = {"error": {"code": 500, "message": "failed to decode", "type": "server_error"}}
    with pytest.raises(HostServerError, match="failed to decode"):
        await mock_backend(lambda r: httpx2.Response(500, json=body)).chat(ask("x"))


@pytest.mark.parametrize(
    "response",
    [
        httpx2.Response(200, text="<html>proxy login</html>"),
        httpx2.Response(200, json={"object": "chat.completion", "choices": []}),
    ],
)
async def test_reply_without_the_documented_shape_is_malformed(response: httpx2.Response) -> None:
    with pytest.raises(MalformedResponseError):
        await mock_backend(lambda r: response).chat(ask("x"))


def sse(*events: dict[str, object] | str) -> list[bytes]:
    return [f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events]


def delta(text: str) -> dict[str, object]:
    return {"model": "m", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


class BrokenStream(httpx2.AsyncByteStream):
    """Sends some events, then the connection drops."""

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            yield part
        raise httpx2.ReadError("connection reset by peer")


async def test_break_after_content_is_stream_interrupted() -> None:
    stream = BrokenStream(sse(delta("Hel"), delta("lo")))
    backend = mock_backend(lambda r: httpx2.Response(200, stream=stream))
    received: list[StreamChunk] = []
    with pytest.raises(StreamInterruptedError) as info:
        async for chunk in backend.stream(ask("x")):
            received.append(chunk)
    assert [c.content for c in received] == ["Hel", "lo"]
    assert not info.value.failover


async def test_break_before_content_fails_over() -> None:
    backend = mock_backend(lambda r: httpx2.Response(200, stream=BrokenStream([b": keep-alive\n\n"])))
    with pytest.raises(HostConnectError):
        async for _ in backend.stream(ask("x")):
            pass


async def test_stream_error_status_before_first_chunk_is_mapped() -> None:
    body = {"error": {"code": 503, "message": "no slot available", "type": "unavailable_error"}}
    backend = mock_backend(lambda r: httpx2.Response(503, json=body))
    with pytest.raises(HostOverloadedError, match="no slot available"):
        async for _ in backend.stream(ask("x")):
            pass


async def test_stream_aggregates_usage_and_logprobs() -> None:
    seen: list[dict[str, object]] = []
    top = [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}, {"token": "Yo", "logprob": -1.5, "bytes": [89, 111]}]
    lp = {"content": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": top}]}
    events = sse(
        {"model": "m", "choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": lp}]},
        {"model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"model": "m", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 1}},
        "[DONE]",
    )

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        return httpx2.Response(200, content=b"".join(events))

    chunks = [c async for c in mock_backend(handler).stream(ask("x", logprobs=True))]
    assert seen[0]["stream_options"] == {"include_usage": True}
    final = chunks[-1].response
    assert final is not None and final.content == "Hi" and final.finish_reason == "stop"
    assert final.usage.input_tokens == 9 and final.usage.output_tokens == 1
    assert final.logprobs == (TokenLogprob(token="Hi", logprob=-0.5, top=(-0.5, -1.5)),)


async def test_top_logprobs_are_kept_per_token() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        entries = [
            {
                "token": "A",
                "logprob": -0.1,
                "top_logprobs": [{"token": "A", "logprob": -0.1}, {"token": "B", "logprob": -2.4}],
            },
            {"token": "!", "logprob": -0.3},  # a server may leave the list out
        ]
        choice = {"index": 0, "finish_reason": "stop", "message": {"content": "A!"}, "logprobs": {"content": entries}}
        return httpx2.Response(200, json={"model": "m", "choices": [choice]})

    response = await mock_backend(handler).chat(ask("x", logprobs=True))
    assert response.logprobs == (
        TokenLogprob(token="A", logprob=-0.1, top=(-0.1, -2.4)),
        TokenLogprob(token="!", logprob=-0.3),
    )


async def test_health_falls_back_to_models_without_health_endpoint() -> None:
    """Ollama's /v1 and LM Studio have no /health; /v1/models answering means alive."""
    paths: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        paths.append(request.url.path)
        if request.url.path == "/v1/models":
            return httpx2.Response(200, json={"object": "list", "data": [{"id": "qwen3:8b"}]})
        return httpx2.Response(404, text="404 page not found")

    backend = mock_backend(handler)
    assert (await backend.health()).ok
    assert paths == ["/health", "/v1/models"]
    models = await backend.list_models()
    assert models[0].name == "qwen3:8b" and models[0].parameters_b == 8.0


async def test_embeddings_follow_the_index_order() -> None:
    reply = {
        "object": "list",
        "model": "nomic-embed-text",
        "data": [
            {"object": "embedding", "index": 1, "embedding": [0.0, 1.0]},
            {"object": "embedding", "index": 0, "embedding": [1.0, 0.0]},
        ],
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }

    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1/embeddings"
        assert json.loads(request.content)["input"] == ["a", "b"]
        return httpx2.Response(200, json=reply)

    result = await mock_backend(handler).embed(EmbedRequest(model="nomic-embed-text", inputs=("a", "b")))
    assert result.embeddings == ((1.0, 0.0), (0.0, 1.0))
    assert result.usage.input_tokens == 4


async def test_an_undecodable_body_is_malformed_not_an_http_library_error() -> None:
    # A proxy that says gzip and sends something else: before the shared HTTP base only the Ollama
    # backend mapped this, and httpx2's DecodingError escaped the OpenAI one past the error tree.
    garbled = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    backend = mock_backend(lambda r: httpx2.Response(200, headers=garbled, content=b"not gzip at all"))
    with pytest.raises(MalformedResponseError, match="undecodable"):
        await backend.chat(ask("x"))
    report = await backend.health()
    assert not report.ok and "undecodable" in report.detail


class HeldStream(httpx2.AsyncByteStream):
    """Sends its events, then holds the connection open (a model still generating); records its close."""

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            yield part
        await anyio.sleep_forever()

    async def aclose(self) -> None:
        self.closed = True


async def test_a_consumer_that_stops_early_closes_the_response() -> None:
    # The pool stops reading a stream whose caller went away; the host must see the connection
    # close then (it stops generating), not whenever the garbage collector finalises the generator.
    held = HeldStream(sse(delta("Hel"), delta("lo")))
    backend = mock_backend(lambda r: httpx2.Response(200, stream=held))
    async with aclosing(backend.stream(ask("x"))) as chunks:
        async for chunk in chunks:
            assert chunk.content == "Hel"
            break
    assert held.closed
