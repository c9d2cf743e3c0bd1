"""OllamaBackend against the recorded wire shapes (MockTransport) and a real loopback FakeOllama."""

from __future__ import annotations

import json
import math
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fakes.ollama_server import DEFAULT_SENTENCE, FakeOllama

from caelum_mcp.core.errors import (
    BackendError,
    BadRequestError,
    HostConnectError,
    HostOverloadedError,
    HostServerError,
    HostTimeoutError,
    HostUnavailableError,
    MalformedResponseError,
    ModelNotFoundError,
    StreamInterruptedError,
)
from caelum_mcp.core.types import ChatMessage, ChatRequest, EmbedRequest, StreamChunk, TokenLogprob
from caelum_mcp.engine.backends.ollama import TOP_LOGPROBS, OllamaBackend
from caelum_mcp.engine.backends.registry import backend_class

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ollama"
HOST = "http://gpu-box:11434"
JSON_TYPE = "application/json; charset=utf-8"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str) -> Any:
    return json.loads(fixture(name))


def ask(model: str = "llama3.1:8b", text: str = "Why is the sky blue?", **kw: Any) -> ChatRequest:
    return ChatRequest(model=model, messages=(ChatMessage(role="user", content=text),), **kw)


class Wire:
    """A MockTransport that answers per path and keeps every request the backend sent."""

    def __init__(self, routes: dict[str, httpx2.Response | Callable[[], httpx2.Response]]) -> None:
        self.routes = routes
        self.sent: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.sent.append(request)
        answer = self.routes.get(request.url.path)
        if answer is None:
            return httpx2.Response(404, content=b"404 page not found", headers={"content-type": "text/plain"})
        return answer() if callable(answer) else answer

    def body(self, path: str = "/api/chat") -> Any:
        return json.loads(next(r for r in reversed(self.sent) if r.url.path == path).content)


def reply(name: str, status: int = 200) -> httpx2.Response:
    kind = "application/x-ndjson" if name.endswith(".ndjson") else JSON_TYPE
    kind = "text/plain; charset=utf-8" if name.endswith(".txt") else kind
    return httpx2.Response(status, content=fixture(name), headers={"content-type": kind})


@pytest.fixture
async def wired() -> AsyncIterator[Callable[..., tuple[OllamaBackend, Wire]]]:
    clients: list[httpx2.AsyncClient] = []

    def make(routes: dict[str, Any], **kw: Any) -> tuple[OllamaBackend, Wire]:
        wire = Wire(routes)
        client = httpx2.AsyncClient(transport=httpx2.MockTransport(wire))
        clients.append(client)
        return OllamaBackend(HOST, client, name="gpu-box", **kw), wire

    yield make
    for client in clients:
        await client.aclose()


async def collect(backend: OllamaBackend, request: ChatRequest) -> list[StreamChunk]:
    return [chunk async for chunk in backend.stream(request)]


# chat, non-streaming ------------------------------------------------------------------------


async def test_registered_under_its_kind() -> None:
    assert backend_class("ollama") is OllamaBackend


async def test_chat_maps_reply_and_sends_non_streaming_request(wired: Any) -> None:
    backend, wire = wired({"/api/chat": reply("chat.json")}, keep_alive="10m")
    request = ChatRequest(
        model="llama3.1:8b",
        messages=(
            ChatMessage(role="system", content="You are a concise assistant."),
            ChatMessage(role="user", content="Why is the sky blue? Answer in one sentence."),
        ),
        temperature=0.2,
        max_tokens=256,
        stop=("\n\n",),
    )
    answer = await backend.chat(request)

    expected = fixture_json("chat.json")
    assert answer.content == expected["message"]["content"]
    assert answer.model == "llama3.1:8b"
    assert answer.finish_reason == "stop"
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (33, 25)
    assert answer.thinking is None and answer.logprobs is None

    sent = wire.body()
    assert wire.sent[0].url == f"{HOST}/api/chat"
    assert sent["stream"] is False
    assert sent["think"] is False  # thinking models would otherwise think by default
    assert sent["keep_alive"] == "10m"
    assert sent["options"] == {"temperature": 0.2, "num_predict": 256, "stop": ["\n\n"]}
    assert sent["messages"] == fixture_json("chat.request.json")["messages"]
    assert "format" not in sent and "logprobs" not in sent


async def test_request_keep_alive_wins_and_empty_options_are_left_out(wired: Any) -> None:
    backend, wire = wired({"/api/chat": reply("chat.json")}, keep_alive="1h")
    await backend.chat(ask(keep_alive=0))
    assert wire.body()["keep_alive"] == 0
    assert "options" not in wire.body()

    plain, plain_wire = wired({"/api/chat": reply("chat.json")})
    await plain.chat(ask())
    assert "keep_alive" not in plain_wire.body()


async def test_length_limit_is_reported_as_finish_reason(wired: Any) -> None:
    backend, _ = wired({"/api/chat": reply("chat_length.json")})
    answer = await backend.chat(ask(max_tokens=8))
    assert answer.finish_reason == "length"
    assert answer.usage.output_tokens == 8


async def test_think_is_sent_and_thinking_returned(wired: Any) -> None:
    backend, wire = wired({"/api/chat": reply("chat_think.json")})
    answer = await backend.chat(ask("qwen3:4b", "What is 17 * 23?", think=True))
    assert wire.body()["think"] is True
    assert answer.content == fixture_json("chat_think.json")["message"]["content"]
    assert answer.thinking is not None and answer.thinking.startswith("Okay, the user wants 17 times 23.")


async def test_structured_output_sends_schema_as_format(wired: Any) -> None:
    schema = fixture_json("chat_structured.request.json")["format"]
    backend, wire = wired({"/api/chat": reply("chat_structured.json")})
    answer = await backend.chat(ask("qwen3:4b", "Tell me about Canberra.", json_schema=schema, temperature=0))
    assert wire.body()["format"] == schema
    assert wire.body()["options"] == {"temperature": 0}
    assert json.loads(answer.content) == {
        "city": "Canberra",
        "country": "Australia",
        "population": 467194,
        "is_capital": True,
    }


async def test_json_mode_reply_content_is_a_json_string(wired: Any) -> None:
    backend, _ = wired({"/api/chat": reply("chat_json_mode.json")})
    answer = await backend.chat(ask(json_schema={"type": "object"}))
    assert json.loads(answer.content) == {"primary_colors": ["red", "green", "blue"]}


async def test_logprobs_are_requested_and_mapped(wired: Any) -> None:
    backend, wire = wired({"/api/chat": reply("chat_logprobs.json")})
    answer = await backend.chat(ask(logprobs=True))
    assert wire.body()["logprobs"] is True
    assert wire.body()["top_logprobs"] == TOP_LOGPROBS  # the entropy signal needs the alternatives
    assert answer.logprobs == (
        TokenLogprob(token="Paris", logprob=-0.0004729, top=(-0.0004729, -7.8221)),
        TokenLogprob(token=".", logprob=-0.1187, top=(-0.1187, -2.1906)),
    )


async def test_streamed_logprobs_keep_their_top_candidates(wired: Any) -> None:
    lines = [
        {
            "model": "m",
            "message": {"role": "assistant", "content": "Hi"},
            "done": False,
            "logprobs": [
                {
                    "token": "Hi",
                    "logprob": -0.5,
                    "top_logprobs": [{"token": "Hi", "logprob": -0.5}, {"token": "Yo", "logprob": -1.2}],
                }
            ],
        },
        {
            "model": "m",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "logprobs": [{"token": "", "logprob": -0.1}],
        },
    ]
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    stream = httpx2.Response(200, content=body, headers={"content-type": "application/x-ndjson"})
    backend, wire = wired({"/api/chat": stream})
    chunks = await collect(backend, ask(logprobs=True))
    final = chunks[-1].response
    assert wire.body()["top_logprobs"] == TOP_LOGPROBS
    assert final is not None and final.logprobs == (
        TokenLogprob(token="Hi", logprob=-0.5, top=(-0.5, -1.2)),
        TokenLogprob(token="", logprob=-0.1),
    )


async def test_api_key_goes_in_the_header_never_in_errors(wired: Any) -> None:
    backend, wire = wired({"/api/chat": reply("error_model_not_found.json", 404)}, api_key="sekrit-123")
    with pytest.raises(ModelNotFoundError) as caught:
        await backend.chat(ask("llama9:70b"))
    assert wire.sent[0].headers["authorization"] == "Bearer sekrit-123"
    assert "sekrit" not in str(caught.value)


# streaming ----------------------------------------------------------------------------------


async def test_stream_yields_pieces_then_a_done_chunk_with_the_whole_answer(wired: Any) -> None:
    backend, wire = wired({"/api/chat": reply("chat_stream.ndjson")})
    chunks = await collect(backend, ask())

    assert wire.body()["stream"] is True and wire.body()["think"] is False
    *pieces, last = chunks
    assert all(not c.done and c.content for c in pieces)
    assert last.done and last.response is not None
    expected = fixture_json("chat.json")["message"]["content"]
    assert "".join(c.content for c in chunks) == expected
    assert last.response.content == expected
    assert last.response.finish_reason == "stop"
    assert (last.response.usage.input_tokens, last.response.usage.output_tokens) == (33, 24)


async def test_stream_with_thinking_keeps_thinking_apart(wired: Any) -> None:
    backend, _ = wired({"/api/chat": reply("chat_think_stream.ndjson")})
    chunks = await collect(backend, ask("qwen3:4b", think=True))
    final = chunks[-1].response
    assert final is not None
    assert final.content == fixture_json("chat_think.json")["message"]["content"]
    assert final.thinking == "".join(c.thinking for c in chunks)
    assert final.thinking.startswith("Okay, the user wants 17 times 23.")
    assert chunks[0].thinking == "Okay" and chunks[0].content == ""


async def test_stream_tool_call_chunk_without_text_is_not_yielded(wired: Any) -> None:
    backend, _ = wired({"/api/chat": reply("chat_tools_stream.ndjson")})
    chunks = await collect(backend, ask("qwen3-coder:30b"))
    assert len(chunks) == 1 and chunks[0].done
    assert chunks[0].response is not None and chunks[0].response.usage.input_tokens == 318


async def test_error_line_after_output_is_a_stream_interruption(wired: Any) -> None:
    backend, _ = wired({"/api/chat": reply("error_midstream.ndjson")})
    seen: list[str] = []
    with pytest.raises(StreamInterruptedError) as caught:
        async for chunk in backend.stream(ask()):
            seen.append(chunk.content)
    assert seen == ["The", " sky", " appears", " blue"]
    assert "an error was encountered while running the model: unexpected EOF" in str(caught.value)
    assert caught.value.failover is False


async def test_error_line_before_any_output_may_fail_over(wired: Any) -> None:
    line = b'{"error":"llama runner process has terminated: exit status 2"}\n'
    backend, _ = wired({"/api/chat": httpx2.Response(200, content=line)})
    with pytest.raises(HostServerError, match="exit status 2") as caught:
        await collect(backend, ask())
    assert caught.value.failover is True


@pytest.mark.parametrize(
    ("name", "status", "error"),
    [
        ("error_busy.json", 503, HostOverloadedError),
        ("error_model_not_found.json", 404, ModelNotFoundError),
        ("error_internal.json", 500, HostServerError),
        ("error_think_unsupported.json", 400, BadRequestError),
    ],
)
async def test_stream_error_status_raises_before_the_first_chunk(
    wired: Any, name: str, status: int, error: type[BackendError]
) -> None:
    backend, _ = wired({"/api/chat": reply(name, status)})
    stream = backend.stream(ask())
    with pytest.raises(error) as caught:
        await anext(stream)
    assert fixture_json(name)["error"] in str(caught.value)
    assert caught.value.status == status


class BrokenStream(httpx2.AsyncByteStream):
    """Sends ``head`` and then loses the connection."""

    def __init__(self, head: bytes) -> None:
        self.head = head

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.head
        raise httpx2.ReadError("connection reset by peer")


async def test_connection_lost_mid_stream_is_an_interruption(wired: Any) -> None:
    head = b"".join(fixture("chat_stream.ndjson").splitlines(keepends=True)[:3])
    backend, _ = wired({"/api/chat": lambda: httpx2.Response(200, stream=BrokenStream(head))})
    with pytest.raises(StreamInterruptedError, match="connection reset") as caught:
        await collect(backend, ask())
    assert isinstance(caught.value.__cause__, HostConnectError)


async def test_stream_without_done_chunk(wired: Any) -> None:
    partial = b"".join(fixture("chat_stream.ndjson").splitlines(keepends=True)[:2])
    backend, _ = wired({"/api/chat": httpx2.Response(200, content=partial)})
    with pytest.raises(StreamInterruptedError, match="without a final 'done' chunk"):
        await collect(backend, ask())
    empty, _ = wired({"/api/chat": httpx2.Response(200, content=b"")})
    with pytest.raises(MalformedResponseError, match="without a final 'done' chunk"):
        await collect(empty, ask())


async def test_stream_garbage_line_is_malformed(wired: Any) -> None:
    backend, _ = wired({"/api/chat": httpx2.Response(200, content=b"<html>proxy error</html>\n")})
    with pytest.raises(MalformedResponseError, match="proxy error"):
        await collect(backend, ask())


# every error fixture ------------------------------------------------------------------------

CHAT_ERRORS: list[tuple[str, int, type[BackendError]]] = [
    ("error_model_not_found.json", 404, ModelNotFoundError),
    ("error_busy.json", 503, HostOverloadedError),
    ("error_missing_body.json", 400, BadRequestError),
    ("error_invalid_json.json", 400, BadRequestError),
    ("error_model_required.json", 400, BadRequestError),
    ("error_invalid_model_name.json", 400, BadRequestError),
    ("error_think_unsupported.json", 400, BadRequestError),
    ("error_tools_unsupported.json", 400, BadRequestError),
    ("error_chat_unsupported.json", 400, BadRequestError),
    ("error_top_logprobs.json", 400, BadRequestError),
    ("error_internal.json", 500, HostServerError),
    ("error_pull_not_found.json", 500, HostServerError),
    ("error_request_canceled.json", 499, HostOverloadedError),
    ("error_method_not_allowed.txt", 405, BadRequestError),
    ("error_route_not_found.txt", 404, HostUnavailableError),
]
EMBED_ERRORS: list[tuple[str, int, type[BackendError]]] = [
    ("error_model_not_found_embed.json", 404, ModelNotFoundError),
    ("error_input_too_long.json", 400, BadRequestError),
]


def test_every_error_fixture_is_covered() -> None:
    covered = {name for name, _, _ in CHAT_ERRORS + EMBED_ERRORS} | {"error_midstream.ndjson"}
    assert covered == {p.name for p in FIXTURES.glob("error_*")}


def server_message(name: str) -> str:
    text = fixture(name).decode()
    return json.loads(text)["error"] if name.endswith(".json") else text.strip()


@pytest.mark.parametrize(("name", "status", "error"), CHAT_ERRORS)
async def test_chat_error_fixture_maps_to_error_class(
    wired: Any, name: str, status: int, error: type[BackendError]
) -> None:
    backend, _ = wired({"/api/chat": reply(name, status)})
    with pytest.raises(BackendError) as caught:
        await backend.chat(ask())
    assert type(caught.value) is error
    assert caught.value.status == status and caught.value.host == "gpu-box"
    assert server_message(name) in str(caught.value)
    # Only failures about this host (not about the request) may be retried elsewhere.
    assert caught.value.failover is (status not in (400, 405))


@pytest.mark.parametrize(("name", "status", "error"), EMBED_ERRORS)
async def test_embed_error_fixture_maps_to_error_class(
    wired: Any, name: str, status: int, error: type[BackendError]
) -> None:
    backend, _ = wired({"/api/embed": reply(name, status)})
    with pytest.raises(error) as caught:
        await backend.embed(EmbedRequest(model="mxbai-embed-large:latest", inputs=("x",)))
    assert server_message(name) in str(caught.value)


async def test_non_json_success_body_is_malformed(wired: Any) -> None:
    backend, _ = wired({"/api/chat": httpx2.Response(200, content=b"Ollama is running")})
    with pytest.raises(MalformedResponseError, match="Ollama is running"):
        await backend.chat(ask())
    wrong, _ = wired({"/api/chat": httpx2.Response(200, json={"model": "x", "done": True})})
    with pytest.raises(MalformedResponseError, match="no 'message'"):
        await wrong.chat(ask())


def raising(exc: Exception) -> Callable[[], httpx2.Response]:
    def answer() -> httpx2.Response:
        raise exc

    return answer


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (httpx2.ConnectError("connection refused"), HostConnectError),
        (httpx2.ReadTimeout("timed out"), HostTimeoutError),
        (httpx2.RemoteProtocolError("peer closed connection"), HostServerError),
    ],
)
async def test_transport_failures_map_to_host_errors(wired: Any, exc: Exception, error: type[BackendError]) -> None:
    backend, _ = wired({"/api/chat": raising(exc), "/api/tags": raising(exc)})
    with pytest.raises(error):
        await backend.chat(ask())
    with pytest.raises(error):
        await collect(backend, ask())
    with pytest.raises(error):
        await backend.list_models()


# listing, health, embeddings ----------------------------------------------------------------


async def test_list_models_reads_tags_and_marks_loaded_from_ps(wired: Any) -> None:
    backend, _ = wired({"/api/tags": reply("tags.json"), "/api/ps": reply("ps.json")})
    models = {m.name: m for m in await backend.list_models()}
    assert list(models) == ["qwen3-coder:30b", "qwen3:4b", "llama3.1:8b", "nomic-embed-text:latest"]
    assert {n for n, m in models.items() if m.loaded} == {"qwen3:4b", "nomic-embed-text:latest"}
    coder = models["qwen3-coder:30b"]
    assert coder.parameters_b == 30.5 and coder.family == "qwen3moe" and coder.families == ("qwen3moe",)
    assert coder.capabilities == ("completion", "tools") and coder.context_length == 262144
    assert coder.quantization == "Q4_K_M" and coder.size_bytes == 18556701140
    embed = models["nomic-embed-text:latest"]
    assert embed.parameters_b == pytest.approx(0.137) and embed.capabilities == ("embedding",)
    assert models["qwen3:4b"].capabilities == ("completion", "tools", "thinking")


async def test_list_models_survives_a_failing_ps(wired: Any) -> None:
    backend, _ = wired({"/api/tags": reply("tags.json"), "/api/ps": reply("error_internal.json", 500)})
    models = await backend.list_models()
    assert len(models) == 4 and not any(m.loaded for m in models)


async def test_list_models_empty_and_failing(wired: Any) -> None:
    empty, _ = wired({"/api/tags": reply("tags_empty.json"), "/api/ps": reply("ps_empty.json")})
    assert await empty.list_models() == []
    busy, _ = wired({"/api/tags": reply("error_busy.json", 503)})
    with pytest.raises(HostOverloadedError, match="server busy"):
        await busy.list_models()


async def test_model_without_parameter_size_falls_back_to_its_name(wired: Any) -> None:
    tags = {"models": [{"name": "my-tune:8b", "model": "my-tune:8b", "size": 1, "details": {}}]}
    backend, _ = wired({"/api/tags": httpx2.Response(200, json=tags), "/api/ps": reply("ps_empty.json")})
    [model] = await backend.list_models()
    assert model.parameters_b == 8.0 and model.family is None


async def test_health_reports_version_and_latency(wired: Any) -> None:
    backend, wire = wired({"/api/version": reply("version.json")})
    report = await backend.health()
    assert report.ok and report.version == "0.33.0-rc2"
    assert report.latency_ms is not None and report.latency_ms >= 0
    assert wire.sent[0].method == "GET"


@pytest.mark.parametrize(
    "answer",
    [reply("error_internal.json", 500), raising(httpx2.ConnectError("refused")), httpx2.Response(200)],
)
async def test_health_never_raises(wired: Any, answer: Any) -> None:
    backend, _ = wired({"/api/version": answer})
    report = await backend.health()
    assert not report.ok and report.detail.startswith("gpu-box: ")


async def test_embed_two_inputs(wired: Any) -> None:
    backend, wire = wired({"/api/embed": reply("embed.json")}, keep_alive="5m")
    inputs = tuple(fixture_json("embed.request.json")["input"])
    result = await backend.embed(EmbedRequest(model="nomic-embed-text:latest", inputs=inputs))
    assert wire.body("/api/embed") == {
        "model": "nomic-embed-text:latest",
        "input": list(inputs),
        "keep_alive": "5m",
    }
    assert len(result.embeddings) == 2 and all(len(v) == 768 for v in result.embeddings)
    assert result.usage.input_tokens == 17


async def test_embed_dimensions(wired: Any) -> None:
    backend, wire = wired({"/api/embed": reply("embed_dimensions.json")})
    request = EmbedRequest(model="nomic-embed-text:latest", inputs=("why is the sky blue?",), dimensions=8)
    result = await backend.embed(request)
    assert wire.body("/api/embed")["dimensions"] == 8
    [vector] = result.embeddings
    assert len(vector) == 8 and math.isclose(math.hypot(*vector), 1.0, abs_tol=1e-6)
    assert result.usage.input_tokens == 10


async def test_embed_empty_input(wired: Any) -> None:
    backend, wire = wired({"/api/embed": reply("embed_empty_input.json")})
    result = await backend.embed(EmbedRequest(model="nomic-embed-text:latest", inputs=()))
    assert wire.body("/api/embed")["input"] == []
    assert result.embeddings == () and result.usage.input_tokens == 0


async def test_embed_count_mismatch_is_malformed(wired: Any) -> None:
    backend, _ = wired({"/api/embed": reply("embed_dimensions.json")})
    with pytest.raises(MalformedResponseError, match="asked for 2 embeddings, got 1"):
        await backend.embed(EmbedRequest(model="nomic-embed-text:latest", inputs=("a", "b")))


# real loopback HTTP through FakeOllama -------------------------------------------------------


@pytest.fixture
def fake() -> Any:
    with FakeOllama() as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(5.0)) as c:
        yield c


async def test_loopback_chat_and_stream(fake: FakeOllama, client: httpx2.AsyncClient) -> None:
    backend = OllamaBackend(fake.url, client, keep_alive="30m")
    answer = await backend.chat(ask())
    assert answer.content == DEFAULT_SENTENCE and answer.finish_reason == "stop"
    assert answer.usage.output_tokens == len(DEFAULT_SENTENCE.split()) and answer.usage.input_tokens > 0
    body = fake.last_body()
    assert body["stream"] is False and body["think"] is False and body["keep_alive"] == "30m"

    chunks = await collect(backend, ask())
    assert chunks[-1].done and chunks[-1].response is not None
    assert "".join(c.content for c in chunks) == chunks[-1].response.content == DEFAULT_SENTENCE
    assert fake.count("/api/chat") == 2


async def test_loopback_structured_output(fake: FakeOllama, client: httpx2.AsyncClient) -> None:
    schema = fixture_json("chat_structured.request.json")["format"]
    answer = await OllamaBackend(fake.url, client).chat(ask("qwen3:4b", json_schema=schema))
    data = json.loads(answer.content)
    assert set(data) == set(schema["required"]) and isinstance(data["population"], int)


async def test_loopback_busy_host(fake: FakeOllama, client: httpx2.AsyncClient) -> None:
    backend = OllamaBackend(fake.url, client)
    fake.fail = "busy"
    with pytest.raises(HostOverloadedError, match="maximum pending requests exceeded"):
        await backend.chat(ask())
    with pytest.raises(HostOverloadedError):
        await collect(backend, ask())
    fake.fail = None
    assert (await backend.chat(ask())).content == DEFAULT_SENTENCE


async def test_loopback_midstream_failure(fake: FakeOllama, client: httpx2.AsyncClient) -> None:
    fake.fail = "midstream"
    seen: list[StreamChunk] = []
    with pytest.raises(StreamInterruptedError, match="unexpected EOF"):
        async for chunk in OllamaBackend(fake.url, client).stream(ask()):
            seen.append(chunk)
    assert len(seen) == 3 and not any(c.done for c in seen)


async def test_loopback_list_models_sees_what_was_loaded(fake: FakeOllama, client: httpx2.AsyncClient) -> None:
    backend = OllamaBackend(fake.url, client)
    assert not any(m.loaded for m in await backend.list_models())
    await backend.chat(ask("qwen3:4b"))
    loaded = [m.name for m in await backend.list_models() if m.loaded]
    assert loaded == ["qwen3:4b"]
    embedded = await backend.embed(EmbedRequest(model="nomic-embed-text:latest", inputs=("a", "b"), dimensions=16))
    assert [len(v) for v in embedded.embeddings] == [16, 16]


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_dead_host(client: httpx2.AsyncClient) -> None:
    backend = OllamaBackend(f"http://127.0.0.1:{dead_port()}", client, name="dead")
    with pytest.raises(HostConnectError) as caught:
        await backend.chat(ask())
    assert caught.value.failover is True and caught.value.host == "dead"
    with pytest.raises(HostConnectError):
        await collect(backend, ask())
    report = await backend.health()
    assert report.ok is False and "cannot connect" in report.detail


async def test_host_that_dies_between_requests(client: httpx2.AsyncClient) -> None:
    fake = FakeOllama()
    backend = OllamaBackend(fake.start(), client)
    assert (await backend.health()).ok
    fake.stop()  # also cuts the kept-alive connection the client would otherwise reuse
    assert not (await backend.health()).ok
    with pytest.raises(HostConnectError):
        await backend.chat(ask())
    fake.start()
    assert (await backend.health()).ok
    fake.stop()
