"""ScriptedBackend: the in-process backend that router and pool tests script their hosts with."""

from __future__ import annotations

import math
import time
from contextlib import aclosing

import anyio
import anyio.lowlevel
import pytest

from caelum_mcp.core.errors import AllHostsFailedError, HostConnectError, HostOverloadedError, HostTimeoutError
from caelum_mcp.core.types import ChatMessage, ChatRequest, EmbedRequest, StreamChunk, Tier, Usage
from caelum_mcp.engine.backends.registry import backend_class
from caelum_mcp.engine.backends.scripted import ScriptedBackend, ScriptedReply
from caelum_mcp.engine.hosts import Host
from caelum_mcp.engine.pool import Pool

MODELS = [("qwen3:8b", 8.0)]


def ask(text: str = "hi", *, model: str = "qwen3:8b", logprobs: bool = False) -> ChatRequest:
    return ChatRequest(model=model, messages=(ChatMessage(role="user", content=text),), logprobs=logprobs)


async def collect(backend: ScriptedBackend, request: ChatRequest) -> list[StreamChunk]:
    async with aclosing(backend.stream(request)) as stream:
        return [chunk async for chunk in stream]


async def test_registered_and_lists_its_models() -> None:
    backend = ScriptedBackend([("qwen3:8b", 8.0), ("nomic-embed-text", None)], name="box")
    assert backend_class("scripted") is ScriptedBackend
    assert backend.name == "box"
    assert backend.base_url == "scripted://box"
    models = await backend.list_models()
    assert [(m.name, m.parameters_b, m.family) for m in models] == [
        ("qwen3:8b", 8.0, "qwen3"),
        ("nomic-embed-text", None, "nomic-embed-text"),
    ]
    await backend.aclose()


async def test_default_reply_and_model_from_request() -> None:
    response = await ScriptedBackend(MODELS).chat(ask(model="anything"))
    assert response.content == '{"answer": "ok"}'
    assert response.model == "anything"
    assert response.finish_reason == "stop"


async def test_fixed_replies_in_order_then_last_repeats() -> None:
    backend = ScriptedBackend(MODELS, ["one", ScriptedReply("two", finish_reason="length")])
    answers = [await backend.chat(ask(f"q{i}")) for i in range(4)]
    assert [a.content for a in answers] == ["one", "two", "two", "two"]
    assert answers[1].finish_reason == "length"
    assert [r.messages[0].content for r in backend.requests] == ["q0", "q1", "q2", "q3"]


async def test_a_single_string_is_one_reply_not_a_sequence_of_characters() -> None:
    backend = ScriptedBackend(MODELS, "hello")
    assert [(await backend.chat(ask())).content for _ in range(2)] == ["hello", "hello"]


def test_empty_script_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        ScriptedBackend(MODELS, [])


async def test_callable_replies_sync_and_async() -> None:
    def echo(request: ChatRequest) -> str:
        return request.messages[-1].content.upper()

    async def later(request: ChatRequest) -> ScriptedReply:
        await anyio.lowlevel.checkpoint()
        return ScriptedReply(f"async {request.model}")

    assert (await ScriptedBackend(MODELS, echo).chat(ask("shout"))).content == "SHOUT"
    mixed = ScriptedBackend(MODELS, [later, "plain", echo])
    assert [(await mixed.chat(ask("x"))).content for _ in range(4)] == ["async qwen3:8b", "plain", "X", "X"]


async def test_delay_is_cancellable() -> None:
    backend = ScriptedBackend(MODELS, [ScriptedReply("slow", delay_s=30)])
    started = time.perf_counter()
    with anyio.move_on_after(0.05) as scope:
        await backend.chat(ask())
    assert scope.cancelled_caught
    assert time.perf_counter() - started < 5
    with anyio.move_on_after(0.05) as scope:
        await collect(backend, ask())
    assert scope.cancelled_caught  # the stream too, between its chunks
    assert len(backend.requests) == 2


async def test_short_delay_is_waited_for() -> None:
    backend = ScriptedBackend(MODELS, [ScriptedReply("ok", delay_s=0.05)])
    started = time.perf_counter()
    assert (await backend.chat(ask())).content == "ok"
    assert time.perf_counter() - started >= 0.04


async def test_logprobs_only_when_requested_and_scripted() -> None:
    backend = ScriptedBackend(MODELS, [ScriptedReply("abcdefghij", logprob=-0.25), "no logprob"])
    assert (await backend.chat(ask())).logprobs is None  # not requested
    backend = ScriptedBackend(MODELS, [ScriptedReply("abcdefghij", logprob=-0.25), "no logprob"])
    response = await backend.chat(ask(logprobs=True))
    assert response.logprobs is not None
    assert [(t.token, t.logprob) for t in response.logprobs] == [("abcd", -0.25), ("efgh", -0.25), ("ij", -0.25)]
    assert (await backend.chat(ask(logprobs=True))).logprobs is None  # requested, not scripted


async def test_per_token_logprobs_and_top_candidates_can_be_scripted() -> None:
    reply = ScriptedReply("abcdefghij", token_logprobs=(-0.1, -2.0), top=(-0.1, -2.5))
    response = await ScriptedBackend(MODELS, [reply]).chat(ask(logprobs=True))
    assert response.logprobs is not None
    # the last scripted logprob repeats for the tokens beyond the list
    assert [(t.token, t.logprob, t.top) for t in response.logprobs] == [
        ("abcd", -0.1, (-0.1, -2.5)),
        ("efgh", -2.0, (-0.1, -2.5)),
        ("ij", -2.0, (-0.1, -2.5)),
    ]


async def test_scripted_exceptions_are_raised_each_time() -> None:
    busy = HostOverloadedError("busy", host="box", status=503)
    backend = ScriptedBackend(MODELS, [busy, HostTimeoutError("slow", host="box"), "fine"])
    with pytest.raises(HostOverloadedError) as caught:
        await backend.chat(ask())
    assert caught.value is busy
    assert caught.value.status == 503
    with pytest.raises(HostTimeoutError):
        await collect(backend, ask())  # raised before the first chunk, as is
    assert (await backend.chat(ask())).content == "fine"
    assert len(backend.requests) == 3


async def test_a_function_may_return_an_exception_to_raise() -> None:
    def picky(request: ChatRequest) -> str | BaseException:
        return HostOverloadedError("no", host="box") if "bad" in request.messages[0].content else "yes"

    backend = ScriptedBackend(MODELS, picky)
    with pytest.raises(HostOverloadedError):
        await backend.chat(ask("bad"))
    assert (await backend.chat(ask("good"))).content == "yes"


async def test_usage_is_deterministic() -> None:
    backend = ScriptedBackend(MODELS, ["x" * 10, "", ScriptedReply("given", usage=Usage(input_tokens=7))])
    request = ChatRequest(
        model="m",
        messages=(ChatMessage(role="system", content="a" * 9), ChatMessage(role="user", content="b" * 8)),
    )
    first = await backend.chat(request)
    assert (first.usage.input_tokens, first.usage.output_tokens) == (17 // 4, 10 // 4)
    empty = await backend.chat(ask("a"))
    assert (empty.usage.input_tokens, empty.usage.output_tokens) == (1, 0)  # at least one input token
    assert (await backend.chat(ask())).usage == Usage(input_tokens=7)
    again = ScriptedBackend(MODELS, ["x" * 10])
    assert (await again.chat(request)).usage == first.usage


async def test_stream_pieces_join_to_the_content_and_end_done() -> None:
    content = "The quick brown fox jumps over the lazy dog."
    backend = ScriptedBackend(MODELS, [ScriptedReply(content, delay_s=0.02, logprob=-0.1)])
    chunks = await collect(backend, ask(logprobs=True))
    *pieces, last = chunks
    assert len(pieces) == math.ceil(len(content) / 8)
    assert all(not c.done and 0 < len(c.content) <= 8 for c in pieces)
    assert "".join(c.content for c in pieces) == content
    assert last.done and last.content == ""
    assert last.response is not None
    assert last.response == await ScriptedBackend(MODELS, [ScriptedReply(content, logprob=-0.1)]).chat(
        ask(logprobs=True)
    )


async def test_stream_of_empty_content_is_only_the_final_chunk() -> None:
    chunks = await collect(ScriptedBackend(MODELS, [""]), ask())
    assert len(chunks) == 1
    assert chunks[0].done and chunks[0].response is not None and chunks[0].response.content == ""


async def test_embed_is_deterministic_and_unit_length() -> None:
    backend = ScriptedBackend([("nomic-embed-text", 0.137)], embedding_dims=16)
    request = EmbedRequest(model="nomic-embed-text", inputs=("alpha", "beta", "alpha"))
    response = await backend.embed(request)
    a, b, a_again = response.embeddings
    assert len(a) == 16
    assert a == a_again and a != b
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0) for v in response.embeddings)
    assert response.usage.input_tokens == max(len("alphabetaalpha") // 4, 1)
    assert (await ScriptedBackend([]).embed(request)).embeddings[0] != a  # 8 dimensions by default
    assert len((await backend.embed(EmbedRequest(model="m", inputs=("x",), dimensions=4))).embeddings[0]) == 4
    assert backend.embed_requests[0] == request


async def test_health_toggles() -> None:
    backend = ScriptedBackend(MODELS)
    report = await backend.health()
    assert (report.ok, report.version, report.latency_ms) == (True, "scripted", 0.0)
    backend.healthy = False
    report = await backend.health()
    assert not report.ok and "down" in report.detail
    with pytest.raises(HostConnectError):
        await backend.list_models()
    with pytest.raises(HostConnectError):
        await backend.chat(ask())
    assert backend.requests == []  # a host that is down never received it
    backend.healthy = True
    assert [m.name for m in await backend.list_models()] == ["qwen3:8b"]
    assert (await backend.chat(ask())).content == '{"answer": "ok"}'


async def test_behind_a_real_pool_discovers_tiers_and_fails_over() -> None:
    busy = ScriptedBackend(MODELS, [HostOverloadedError("queue full", host="a", status=503)], name="a")
    calm = ScriptedBackend([("qwen3:8b", 8.0), ("llama3.2:1b", 1.2)], ["from b"], name="b")
    pool = Pool([Host(name="a", backend=busy), Host(name="b", backend=calm)])
    await pool.refresh_all()
    assert pool.available_tiers() == {Tier.FULL, Tier.MICRO}
    result = await pool.chat(ChatRequest(model="", messages=(ChatMessage(role="user", content="hi"),)), tier=Tier.FULL)
    assert (result.host, result.model, result.tier, result.attempts) == ("b", "qwen3:8b", Tier.FULL, 2)
    assert result.response.content == "from b"
    assert result.response.model == "qwen3:8b"  # the pool addressed the request to b's model
    assert len(result.errors) == 1 and "queue full" in result.errors[0]
    assert [r.model for r in busy.requests] == ["qwen3:8b"]
    calm.healthy = False
    with pytest.raises(AllHostsFailedError):
        await pool.chat(ask(model=""), tier=Tier.FULL)
    await pool.aclose()
