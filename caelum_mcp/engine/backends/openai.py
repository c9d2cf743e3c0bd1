"""The OpenAI-compatible backend: llama.cpp, vLLM, LM Studio and Ollama's ``/v1``.

``base_url`` is the server root; a trailing ``/v1`` is accepted and dropped, because ``/health``
(llama.cpp, vLLM) lives outside it.

Usage follows the neutral convention (Anthropic's): ``input_tokens`` counts only the prompt tokens
that were *not* read from the prompt cache, so ``Usage.total_tokens`` does not count cached tokens
twice. OpenAI's ``prompt_tokens`` includes ``prompt_tokens_details.cached_tokens``; we split it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal

import httpx2
from pydantic import Field

from caelum_mcp.core.errors import MalformedResponseError, error_for_status
from caelum_mcp.core.types import (
    ChatRequest,
    ChatResponse,
    EmbedRequest,
    EmbedResponse,
    ModelInfo,
    StreamChunk,
    TokenLogprob,
    Usage,
    size_from_model_name,
)
from caelum_mcp.engine.backends.base import HostConfigBase, error_message
from caelum_mcp.engine.backends.http import TOP_LOGPROBS, HttpBackend, Wire, WireLogprob, chat_messages, token_logprobs

__all__ = ["TOP_LOGPROBS", "OpenAIBackend", "OpenAIHostConfig"]


class OpenAIHostConfig(HostConfigBase):
    """A ``[[hosts]]`` entry with ``kind = "openai"``: llama.cpp, vLLM, LM Studio, Ollama's ``/v1``."""

    kind: Literal["openai"] = Field(default="openai", description="llama.cpp, vLLM, LM Studio, Ollama's /v1")
    # Files written when one model held every kind's keys may set it; it never reached the wire.
    keep_alive: str | int | None = Field(
        default=None, description="ignored for this kind (only Ollama's native API keeps a model loaded on request)"
    )


# wire shapes (only the fields we read; servers add many more) -------------------------------


class _WireLogprobs(Wire):
    content: list[WireLogprob] | None = None


class _WireMessage(Wire):
    content: str | None = None
    # llama.cpp and vLLM call it reasoning_content; Ollama's /v1 and LM Studio call it reasoning.
    reasoning_content: str | None = None
    reasoning: str | None = None


class _WireChoice(Wire):
    message: _WireMessage
    finish_reason: str | None = None
    logprobs: _WireLogprobs | None = None


class _WireChunkChoice(Wire):
    delta: _WireMessage = _WireMessage()
    finish_reason: str | None = None
    logprobs: _WireLogprobs | None = None


class _WirePromptDetails(Wire):
    cached_tokens: int | None = None


class _WireUsage(Wire):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _WirePromptDetails | None = None


class _WireCompletion(Wire):
    shape = "chat completion"
    model: str = ""
    choices: list[_WireChoice] = Field(min_length=1)
    usage: _WireUsage | None = None


class _WireChunk(Wire):
    shape = "stream event"
    model: str = ""
    choices: list[_WireChunkChoice] = []
    usage: _WireUsage | None = None


class _WireEmbedding(Wire):
    index: int = 0
    embedding: list[float]


class _WireEmbeddings(Wire):
    shape = "embedding list"
    model: str = ""
    data: list[_WireEmbedding]
    usage: _WireUsage | None = None


class _WireModel(Wire):
    id: str
    meta: dict[str, Any] | None = None  # llama.cpp: n_params, n_ctx, n_ctx_train, size, ftype
    max_model_len: int | None = None  # vLLM


class _WireModelList(Wire):
    shape = "model list"
    data: list[_WireModel]


def _usage(wire: _WireUsage | None) -> Usage:
    if wire is None:
        return Usage()
    cached = (wire.prompt_tokens_details.cached_tokens if wire.prompt_tokens_details else None) or 0
    cached = min(cached, wire.prompt_tokens)
    return Usage(
        input_tokens=wire.prompt_tokens - cached,
        output_tokens=wire.completion_tokens,
        cache_read_tokens=cached,
    )


def _logprobs(wire: _WireLogprobs | None) -> tuple[TokenLogprob, ...]:
    return token_logprobs(wire.content) if wire is not None and wire.content else ()


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _model_info(wire: _WireModel) -> ModelInfo:
    meta = wire.meta or {}
    n_params = _int_or_none(meta.get("n_params"))
    parameters_b = n_params / 1e9 if n_params else size_from_model_name(wire.id)
    # The context the server was started with (per slot) is what a request must fit in; the
    # training context is only an upper bound, used when the server does not say.
    context = _int_or_none(meta.get("n_ctx")) or _int_or_none(meta.get("n_ctx_train")) or wire.max_model_len
    quant = meta.get("ftype")
    return ModelInfo(
        name=wire.id,
        parameters_b=parameters_b,
        context_length=context,
        quantization=quant if isinstance(quant, str) else None,
        size_bytes=_int_or_none(meta.get("size")),
    )


class OpenAIBackend(HttpBackend):
    """Chat, streaming, model discovery and embeddings over the OpenAI ``/v1`` wire format."""

    kind = "openai"
    protocol = "OpenAI"
    config_model = OpenAIHostConfig

    def __init__(
        self,
        base_url: str,
        client: httpx2.AsyncClient,
        *,
        name: str = "",
        api_key: str | None = None,
    ) -> None:
        root = base_url.rstrip("/")
        if root.endswith("/v1"):
            root = root[: -len("/v1")]
        super().__init__(root, client, name=name, api_key=api_key)

    # chat ------------------------------------------------------------------------------------

    def _chat_body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": request.model, "messages": chat_messages(request), "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        if request.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": request.json_schema, "strict": True},
            }
        if request.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = TOP_LOGPROBS
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop"] = list(request.stop)
        return body

    async def chat(self, request: ChatRequest, *, limit_s: float | None = None) -> ChatResponse:
        with self.wire_errors():
            response = await self.post_json(
                "/v1/chat/completions", self._chat_body(request, stream=False), limit_s=limit_s
            )
        self.raise_for_status(response)
        wire = self.validate_json(_WireCompletion, response)
        choice = wire.choices[0]
        return ChatResponse(
            model=wire.model or request.model,
            content=choice.message.content or "",
            thinking=choice.message.reasoning_content or choice.message.reasoning or None,
            finish_reason=choice.finish_reason,
            usage=_usage(wire.usage),
            logprobs=_logprobs(choice.logprobs) if request.logprobs else None,
        )

    def stream(self, request: ChatRequest, *, limit_s: float | None = None) -> AsyncIterator[StreamChunk]:
        """Server-sent events; errors after the first piece become ``StreamInterruptedError``."""
        return self.guard_stream(self._stream(request, limit_s))

    async def _stream(self, request: ChatRequest, limit_s: float | None) -> AsyncGenerator[StreamChunk, None]:
        content: list[str] = []
        thinking: list[str] = []
        logprobs: list[TokenLogprob] = []
        model, finish_reason, usage, done = request.model, None, Usage(), False
        with self.wire_errors():
            body = self._chat_body(request, stream=True)
            async with self.open_stream("/v1/chat/completions", body, limit_s=limit_s) as response:
                async for line in response.aiter_lines():
                    payload = self._sse_payload(line)
                    if payload is None:
                        continue
                    if payload == "[DONE]":
                        done = True
                        break
                    wire = self.validate(_WireChunk, self._sse_json(payload), response.status_code)
                    model = wire.model or model
                    if wire.usage is not None:
                        usage = _usage(wire.usage)
                    for choice in wire.choices[:1]:
                        finish_reason = choice.finish_reason or finish_reason
                        logprobs.extend(_logprobs(choice.logprobs))
                        piece = choice.delta.content or ""
                        thought = choice.delta.reasoning_content or choice.delta.reasoning or ""
                        if piece or thought:
                            content.append(piece)
                            thinking.append(thought)
                            yield StreamChunk(content=piece, thinking=thought)
        if not done and finish_reason is None:
            raise MalformedResponseError("stream ended before the answer was finished", host=self.name)
        yield StreamChunk(
            done=True,
            response=ChatResponse(
                model=model,
                content="".join(content),
                thinking="".join(thinking) or None,
                finish_reason=finish_reason,
                usage=usage,
                logprobs=tuple(logprobs) if request.logprobs else None,
            ),
        )

    @staticmethod
    def _sse_payload(line: str) -> str | None:
        """The data of one SSE line; ``error:`` lines (llama.cpp) are passed on as data too."""
        for field in ("data:", "error:"):
            if line.startswith(field):
                return line[len(field) :].strip()
        return None  # blank separators, comments, event names

    def _sse_json(self, payload: str) -> Any:
        try:
            data = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise MalformedResponseError(f"bad stream event {payload[:200]!r}", host=self.name) from exc
        if isinstance(data, dict) and "error" in data:
            # An error reported inside the event stream, e.g. llama.cpp's context overflow.
            err = data["error"]
            code = _int_or_none(err.get("code")) if isinstance(err, dict) else None
            status = code if code is not None and code >= 400 else 500
            raise error_for_status(status, error_message(payload), host=self.name)
        return data

    # models, health, embeddings --------------------------------------------------------------

    async def list_models(self) -> list[ModelInfo]:
        response = await self.get_checked("/v1/models")
        wire = self.validate(_WireModelList, self.parse_json(response), response.status_code)
        return [_model_info(m) for m in wire.data]

    async def probe(self) -> str | None:
        """``/health`` where the server has one (llama.cpp, vLLM), else ``/v1/models``."""
        with self.wire_errors():
            response = await self.client.get(self.url("/health"), headers=self.headers())
            if response.status_code == 404:
                response = await self.client.get(self.url("/v1/models"), headers=self.headers())
        # llama.cpp answers 503 "Loading model" until it can serve.
        self.raise_for_status(response)
        return None

    async def embed(self, request: EmbedRequest, *, limit_s: float | None = None) -> EmbedResponse:
        body: dict[str, Any] = {"model": request.model, "input": list(request.inputs)}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        with self.wire_errors():
            response = await self.post_json("/v1/embeddings", body, limit_s=limit_s)
        self.raise_for_status(response)
        wire = self.validate(_WireEmbeddings, self.parse_json(response), response.status_code)
        self.check_count(len(request.inputs), len(wire.data))
        vectors = sorted(wire.data, key=lambda item: item.index)
        return EmbedResponse(
            model=wire.model or request.model,
            embeddings=tuple(tuple(v.embedding) for v in vectors),
            usage=_usage(wire.usage),
        )
