"""FaultHost, the scriptable fake host: its APIs, its queue and how it spreads faults."""

from __future__ import annotations

import time

import anyio
import httpx2
import pytest

from caelum_mcp.core.errors import HostTimeoutError, MalformedResponseError
from caelum_mcp.core.types import ChatMessage, ChatRequest
from caelum_mcp.engine.backends.anthropic import AnthropicBackend
from caelum_mcp.engine.backends.ollama import OllamaBackend
from caelum_mcp.engine.backends.openai import OpenAIBackend
from fakes.fault_host import Fault, FaultHost

ASK = ChatRequest(model="", messages=(ChatMessage(role="user", content="hi"),), max_tokens=16)


@pytest.fixture
async def http() -> httpx2.AsyncClient:
    async with httpx2.AsyncClient(timeout=10, trust_env=False) as client:
        yield client  # type: ignore[misc]


@pytest.mark.parametrize("api", ["ollama", "openai", "anthropic"])
async def test_each_api_lists_answers_and_streams(api: str, http: httpx2.AsyncClient) -> None:
    with FaultHost(api, usage=(12, 3)) as host:  # type: ignore[arg-type]
        if api == "anthropic":
            backend: object = AnthropicBackend(host.url, http, name="fake", api_key="sk-test", max_retries=0)
        else:
            backend = {"ollama": OllamaBackend, "openai": OpenAIBackend}[api](host.url, http, name="fake")
        models = await backend.list_models()  # type: ignore[attr-defined]
        request = ASK.model_copy(update={"model": models[0].name})
        answer = await backend.chat(request)  # type: ignore[attr-defined]
        assert answer.content and (answer.usage.input_tokens, answer.usage.output_tokens) == (12, 3)
        chunks = [c async for c in backend.stream(request)]  # type: ignore[attr-defined]
        assert chunks[-1].done and chunks[-1].response is not None
        assert chunks[-1].response.content == answer.content
        assert (host.chats, host.served) == (2, 2)


async def test_faults_are_spread_evenly_and_can_stop_after_a_count(http: httpx2.AsyncClient) -> None:
    with FaultHost(fault=Fault("malformed", fraction=1 / 3)) as host:
        backend = OpenAIBackend(host.url, http, name="fake")
        model = (await backend.list_models())[0].name
        outcomes = []
        for _ in range(9):
            try:
                await backend.chat(ASK.model_copy(update={"model": model}))
                outcomes.append("ok")
            except MalformedResponseError:
                outcomes.append("bad")
        assert outcomes == ["ok", "ok", "bad"] * 3
        host.fault = Fault("empty", count=2)
        results = []
        for _ in range(4):
            try:
                await backend.chat(ASK.model_copy(update={"model": model}))
                results.append("ok")
            except MalformedResponseError:
                results.append("bad")
        assert results == ["bad", "bad", "ok", "ok"]


async def test_the_host_queue_serves_slots_at_a_time(http: httpx2.AsyncClient) -> None:
    with FaultHost(delay_s=0.1, slots=2) as host:
        backend = OpenAIBackend(host.url, http, name="fake")
        request = ASK.model_copy(update={"model": (await backend.list_models())[0].name})
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(backend.chat, request)
        assert host.max_in_flight == 2
        assert time.monotonic() - started >= 0.2  # two rounds of two


async def test_a_hanging_request_ends_when_the_host_stops(http: httpx2.AsyncClient) -> None:
    host = FaultHost(fault=Fault("hang"))
    host.start()
    backend = OpenAIBackend(host.url, http, name="fake")
    request = ASK.model_copy(update={"model": (await backend.list_models())[0].name})
    with pytest.raises(HostTimeoutError):
        await backend.chat(request, limit_s=0.2)
    started = time.monotonic()
    host.stop()  # a request still hanging there must not keep the host from stopping
    assert time.monotonic() - started < 5
