"""Ollama's native API (``/api/chat``, ``/api/tags``, ``/api/ps``, ``/api/embed``, ``/api/version``).

Wire facts this module relies on (Ollama v0.32/v0.33, see ``notes/ollama-api.md``):

- ``/api/chat`` streams by default, so ``"stream": false`` is always sent for :meth:`chat`.
- Thinking models think when ``think`` is left out; we send ``think: false`` unless asked, so a
  plain request never pays for hidden reasoning tokens.
- An error before the first streamed byte arrives as a real HTTP status; after output has started
  it arrives as one more ndjson line ``{"error": ...}`` with status 200.
- Durations are nanoseconds; token counts are ``prompt_eval_count`` / ``eval_count``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, Literal, Self

import httpx2
from pydantic import Field

from caelum_mcp.core.errors import (
    BackendError,
    HostOverloadedError,
    HostUnavailableError,
    MalformedResponseError,
    error_for_status,
)
from caelum_mcp.core.types import (
    ChatRequest,
    ChatResponse,
    EmbedRequest,
    EmbedResponse,
    ModelInfo,
    StreamChunk,
    TokenLogprob,
    Usage,
    parse_parameter_size,
    size_from_model_name,
)
from caelum_mcp.engine.backends.base import HostConfigBase, error_message, retry_after
from caelum_mcp.engine.backends.http import TOP_LOGPROBS, HttpBackend, Wire, WireLogprob, chat_messages, token_logprobs

__all__ = ["TOP_LOGPROBS", "OllamaBackend", "OllamaHostConfig"]

# Ollama answers 499 "request canceled" only for a request still queued for its scheduler when the
# caller (in practice a proxy that timed out) gave up: the host was saturated, so treat it as busy.
_STATUS_REQUEST_CANCELED = 499


class OllamaHostConfig(HostConfigBase):
    """A ``[[hosts]]`` entry with ``kind = "ollama"`` (the default kind)."""

    kind: Literal["ollama"] = Field(default="ollama", description="Ollama's native API, the default")
    keep_alive: str | int | None = Field(default=None, description="Ollama keep_alive, e.g. '10m' or -1")


class _WireMessage(Wire):
    role: str = "assistant"
    content: str = ""
    thinking: str | None = None


class _WireChat(Wire):
    shape = "chat reply"
    model: str = ""
    message: _WireMessage | None = None
    done: bool = False
    done_reason: str | None = None
    prompt_eval_count: int = 0
    eval_count: int = 0
    load_duration: int | None = None  # nanoseconds
    logprobs: list[WireLogprob] | None = None
    error: str | None = None

    @property
    def load_ms(self) -> float | None:
        return None if self.load_duration is None else self.load_duration / 1e6


class _WireDetails(Wire):
    family: str | None = None
    families: list[str] | None = None
    parameter_size: str | None = None
    quantization_level: str | None = None
    context_length: int | None = None


class _WireModel(Wire):
    name: str = ""
    model: str = ""
    size: int | None = None
    details: _WireDetails = _WireDetails()
    capabilities: list[str] | None = None


class _WireModelList(Wire):
    shape = "model list"
    models: list[_WireModel]


class _WireVersion(Wire):
    shape = "version reply"
    version: str


class _WireEmbed(Wire):
    shape = "embedding reply"
    model: str = ""
    embeddings: list[list[float]]
    prompt_eval_count: int = 0


class OllamaBackend(HttpBackend):
    """A host speaking Ollama's native HTTP API.

    ``keep_alive`` (Go duration string or seconds) is sent with requests that do not set their
    own, so a pool can keep its models resident longer than Ollama's 5-minute default.
    """

    kind = "ollama"
    protocol = "Ollama"
    config_model = OllamaHostConfig

    def __init__(
        self,
        base_url: str,
        client: httpx2.AsyncClient,
        *,
        name: str = "",
        api_key: str | None = None,
        keep_alive: str | int | None = None,
    ) -> None:
        super().__init__(base_url, client, name=name, api_key=api_key)
        self.keep_alive = keep_alive

    @classmethod
    def from_config(cls, config: HostConfigBase, *, http: httpx2.AsyncClient, environ: Mapping[str, str]) -> Self:
        host = OllamaHostConfig.of(config)
        return cls(host.url, http, name=host.name, api_key=host.api_key(environ), keep_alive=host.keep_alive)

    # requests ------------------------------------------------------------------------------

    def chat_payload(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """The ``/api/chat`` body for ``request`` (public so tests and tools can inspect it)."""
        payload: dict[str, Any] = {
            "model": request.model,
            "messages": chat_messages(request),
            "stream": stream,
            "think": bool(request.think),
        }
        if request.json_schema is not None:
            payload["format"] = request.json_schema
        keep_alive = request.keep_alive if request.keep_alive is not None else self.keep_alive
        if keep_alive is not None:
            payload["keep_alive"] = keep_alive
        options: dict[str, Any] = {}
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.max_tokens is not None:
            options["num_predict"] = request.max_tokens
        if request.stop:
            options["stop"] = list(request.stop)
        if options:
            payload["options"] = options
        if request.logprobs:
            payload["logprobs"] = True
            # The top candidates per token give confidence its entropy signal (Ollama allows 0..20).
            payload["top_logprobs"] = TOP_LOGPROBS
        return payload

    async def chat(self, request: ChatRequest, *, limit_s: float | None = None) -> ChatResponse:
        payload = self.chat_payload(request, stream=False)
        with self.wire_errors():
            response = await self.post_json("/api/chat", payload, limit_s=limit_s)
        self.raise_for_status(response)
        wire = self.validate(_WireChat, self.parse_json(response), response.status_code)
        if wire.error is not None:
            raise error_for_status(500, wire.error, host=self.name)
        if wire.message is None:
            raise MalformedResponseError("chat reply has no 'message'", host=self.name)
        return ChatResponse(
            model=wire.model or request.model,
            content=wire.message.content,
            thinking=wire.message.thinking or None,
            finish_reason=wire.done_reason,
            usage=Usage(input_tokens=wire.prompt_eval_count, output_tokens=wire.eval_count),
            logprobs=_logprobs(wire.logprobs),
            load_ms=wire.load_ms,
        )

    def stream(self, request: ChatRequest, *, limit_s: float | None = None) -> AsyncIterator[StreamChunk]:
        """Stream ``/api/chat``; failures after the first yielded chunk are StreamInterruptedError."""
        return self.guard_stream(self._stream(request, limit_s))

    async def _stream(self, request: ChatRequest, limit_s: float | None) -> AsyncGenerator[StreamChunk, None]:
        payload = self.chat_payload(request, stream=True)
        content: list[str] = []
        thinking: list[str] = []
        logprobs: list[WireLogprob] = []
        with self.wire_errors():
            async with self.open_stream("/api/chat", payload, limit_s=limit_s) as response:
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    wire = self.validate(_WireChat, _json_line(line, self.name), response.status_code)
                    if wire.error is not None:
                        # An in-stream error has no status of its own; Ollama's non-streaming
                        # path reports the same failures as 500.
                        raise error_for_status(500, wire.error, host=self.name)
                    piece = wire.message or _WireMessage()
                    content.append(piece.content)
                    thinking.append(piece.thinking or "")
                    logprobs.extend(wire.logprobs or ())
                    if wire.done:
                        final = ChatResponse(
                            model=wire.model or request.model,
                            content="".join(content),
                            thinking="".join(thinking) or None,
                            finish_reason=wire.done_reason,
                            usage=Usage(input_tokens=wire.prompt_eval_count, output_tokens=wire.eval_count),
                            logprobs=_logprobs(logprobs),
                            load_ms=wire.load_ms,
                        )
                        yield StreamChunk(
                            content=piece.content, thinking=piece.thinking or "", done=True, response=final
                        )
                        return
                    if piece.content or piece.thinking:
                        yield StreamChunk(content=piece.content, thinking=piece.thinking or "")
        raise MalformedResponseError("chat stream ended without a final 'done' chunk", host=self.name)

    async def list_models(self) -> list[ModelInfo]:
        """Installed models (``/api/tags``), with ``loaded`` set from ``/api/ps`` when it answers."""
        tags = await self._get_models("/api/tags")
        try:
            running = await self._get_models("/api/ps")
        except BackendError:
            # /api/ps only refines the list; a host that lists its models is still usable.
            running = []
        loaded = {label for m in running for label in (m.name, m.model) if label}
        return [_model_info(m, loaded=bool({m.name, m.model} & loaded)) for m in tags]

    async def probe(self) -> str | None:
        response = await self.get_checked("/api/version")
        return self.validate(_WireVersion, self.parse_json(response), response.status_code).version

    async def embed(self, request: EmbedRequest, *, limit_s: float | None = None) -> EmbedResponse:
        payload: dict[str, Any] = {"model": request.model, "input": list(request.inputs)}
        if request.dimensions is not None:
            payload["dimensions"] = request.dimensions
        if self.keep_alive is not None:
            payload["keep_alive"] = self.keep_alive
        with self.wire_errors():
            response = await self.post_json("/api/embed", payload, limit_s=limit_s)
        self.raise_for_status(response)
        wire = self.validate(_WireEmbed, self.parse_json(response), response.status_code)
        self.check_count(len(request.inputs), len(wire.embeddings))
        return EmbedResponse(
            model=wire.model or request.model,
            embeddings=tuple(tuple(vector) for vector in wire.embeddings),
            usage=Usage(input_tokens=wire.prompt_eval_count),
        )

    # helpers -------------------------------------------------------------------------------

    def raise_for_status(self, response: httpx2.Response, body: bytes | None = None) -> None:
        """The shared status table, plus two Ollama specifics (499, and gin's plain-text 404)."""
        status = response.status_code
        if status < 400:
            return
        raw = body if body is not None else response.content
        text = raw.decode("utf-8", "replace")
        if status == _STATUS_REQUEST_CANCELED:
            raise HostOverloadedError(
                error_message(text), host=self.name, status=status, retry_after_s=retry_after(response.headers)
            )
        if status == 404 and not text.lstrip().startswith("{"):
            # Ollama's own 404s are JSON ("model 'x' not found"); a text/plain "404 page not found"
            # means this URL is not an Ollama API at all (wrong base URL or server kind).
            raise HostUnavailableError(
                f"no Ollama API at {response.request.url.path}: {text.strip()[:200]}",
                host=self.name,
                status=status,
            )
        super().raise_for_status(response, raw)

    async def _get_models(self, path: str) -> list[_WireModel]:
        response = await self.get_checked(path)
        return self.validate(_WireModelList, self.parse_json(response), response.status_code).models


def _json_line(line: str, host: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise MalformedResponseError(f"bad ndjson line {line[:200]!r}", host=host) from exc


def _logprobs(entries: list[WireLogprob] | None) -> tuple[TokenLogprob, ...] | None:
    return token_logprobs(entries) if entries else None


def _model_info(model: _WireModel, *, loaded: bool) -> ModelInfo:
    name = model.name or model.model
    details = model.details
    parameters_b = parse_parameter_size(details.parameter_size)
    if parameters_b is None:
        # Imported or custom models can lack parameter_size; the tag often still says "8b".
        parameters_b = size_from_model_name(name)
    return ModelInfo(
        name=name,
        parameters_b=parameters_b,
        family=details.family or None,
        families=tuple(details.families or ()),
        capabilities=tuple(model.capabilities or ()),
        context_length=details.context_length,
        quantization=details.quantization_level or None,
        size_bytes=model.size,
        loaded=loaded,
    )
