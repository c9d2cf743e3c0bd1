"""The Anthropic (Claude) backend, on the official ``anthropic`` SDK over the caller's httpx2 client.

The SDK does its own retries (408/409/429/5xx and connection errors, honouring ``retry-after``), so
this backend adds none; ``max_retries`` bounds them. Its exceptions are mapped to the error tree in
one place, :func:`translate_sdk_errors`.

Structured output: a request's ``json_schema`` is sent once, as the Messages API's
``output_config.format`` (the SDK's structured-output parameter, with the schema made strict by
``anthropic.transform_schema``) for models that support it — Claude Opus 4.1, Sonnet 4.5 and
Haiku 4.5 and everything later — and otherwise as one paragraph of the system prompt
(:func:`json_instruction`). ``structured_output`` = ``"on"`` / ``"off"`` forces either way (an
Anthropic-compatible local server such as llama.cpp's ``/v1/messages`` ignores the parameter). The
router validates and repairs the JSON in both cases.

``ChatRequest.temperature`` is not sent: anthropic 2.x's ``messages.create`` has no such parameter
(current Claude models fix their sampling). ``logprobs`` are not offered by the Messages API.

The API key is passed to the SDK explicitly. With no key the backend refuses to call at all, rather
than letting the SDK pick up credentials from the environment or profiles on disk on its own.

Faults are contained here: a reply whose body is empty, is not JSON or is not a Message (the SDK
hands back whatever it parsed, unvalidated) is a :class:`MalformedResponseError`, never a raw
``json.JSONDecodeError`` or ``AttributeError``. ``limit_s`` bounds a whole call, the SDK's own
retries included.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import anthropic
import anyio
import httpx2
from anthropic.types import AssistantMessageParam, Message, MessageParam, UserMessageParam

from caelum_mcp.core.errors import (
    AuthenticationError,
    BackendError,
    BadRequestError,
    HostConnectError,
    HostDisconnectedError,
    HostTimeoutError,
    MalformedResponseError,
    StreamInterruptedError,
    error_for_status,
)
from caelum_mcp.core.types import (
    ChatRequest,
    ChatResponse,
    HealthReport,
    ModelInfo,
    StreamChunk,
    Usage,
)
from caelum_mcp.engine.backends.base import (
    Backend,
    error_message,
    retry_after,
    translate_transport_errors,
)

log = logging.getLogger(__name__)

# The Messages API requires max_tokens; used when the request leaves it open.
DEFAULT_MAX_TOKENS = 4096
# Anthropic lists a few dozen models; the cap only guards against a server that pages forever.
_MAX_LISTED_MODELS = 500
_HEALTH_TIMEOUT_S = 10.0


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


@contextmanager
def translate_sdk_errors(host: str, api_key: str | None) -> Iterator[None]:
    """Map the anthropic SDK's exceptions to the error tree (the one choke point for them).

    Status errors go through the same status table as every other backend (429/503/529 are
    overload, 404 a missing model, 401/403 credentials, 400/413/422 a bad request, other 5xx a
    server error). The key is removed from every message in case a server echoes it.
    """
    try:
        yield
    except BackendError:
        raise
    except anthropic.APITimeoutError as exc:
        raise HostTimeoutError("timed out", host=host) from exc
    except anthropic.APIConnectionError as exc:
        if isinstance(exc.__cause__, httpx2.RemoteProtocolError):  # connected, then cut mid-reply
            raise HostDisconnectedError(f"connection dropped: {exc.__cause__}", host=host) from exc
        raise HostConnectError(f"cannot connect: {_redact(exc.message, api_key)}", host=host) from exc
    except anthropic.APIStatusError as exc:
        body = exc.body
        text = json.dumps(body) if isinstance(body, dict) else exc.response.text
        message = _redact(error_message(text), api_key)
        raise error_for_status(
            exc.status_code, message, host=host, retry_after_s=retry_after(exc.response.headers)
        ) from exc
    except anthropic.APIResponseValidationError as exc:
        raise MalformedResponseError(
            f"unexpected reply: {_redact(exc.message, api_key)}", host=host, status=exc.status_code
        ) from exc
    except anthropic.AnthropicError as exc:
        raise BackendError(_redact(str(exc), api_key), host=host) from exc
    except httpx2.HTTPError as exc:
        # The SDK wraps transport errors of a request, but not those while a stream is read.
        with translate_transport_errors(host):
            raise
        raise BackendError(f"{type(exc).__name__}: {_redact(str(exc), api_key)}", host=host) from exc
    except ValueError as exc:
        # The SDK parses a 200's body without guarding it: an empty or cut body, or one that is not
        # JSON, surfaces as json.JSONDecodeError (a ValueError).
        raise MalformedResponseError(
            f"reply body is not a JSON Message: {_redact(str(exc), api_key)[:200]}", host=host
        ) from exc


def _usage(usage: anthropic.types.Usage | None) -> Usage:
    if usage is None:
        return Usage()
    return Usage(
        input_tokens=usage.input_tokens or 0,
        output_tokens=usage.output_tokens or 0,
        cache_read_tokens=usage.cache_read_input_tokens or 0,
        cache_write_tokens=usage.cache_creation_input_tokens or 0,
    )


def _response(message: object, request: ChatRequest, host: str) -> ChatResponse:
    """The neutral response of a Messages API reply, checked: the SDK does not validate replies, so
    a body of the wrong shape arrives as a string, a list or a Message with ``content=None``."""
    content = getattr(message, "content", None)
    if not isinstance(message, Message) or not isinstance(content, list):
        shown = str(message)[:200]
        raise MalformedResponseError(f"reply is not a Messages API message: {shown!r}", host=host)
    if message.usage is None:
        # Without usage the call cannot be priced; a reply that hides its cost is not usable.
        raise MalformedResponseError("reply has no 'usage'", host=host)
    text = "".join(str(getattr(b, "text", "") or "") for b in content if getattr(b, "type", None) == "text")
    thinking = "".join(str(getattr(b, "thinking", "") or "") for b in content if getattr(b, "type", None) == "thinking")
    return ChatResponse(
        model=message.model or request.model,
        content=text,
        thinking=thinking or None,
        finish_reason=message.stop_reason,
        usage=_usage(message.usage),
    )


# family -> the first (major, minor) version with structured outputs
_STRUCTURED_SINCE = {"opus": (4, 1), "sonnet": (4, 5), "haiku": (4, 5)}
_MODEL_VERSION = re.compile(r"^claude-(opus|sonnet|haiku)-(\d+)(?:-(\d{1,2}))?(?:-|$)")


def supports_structured_output(model: str) -> bool:
    """Whether ``model`` takes ``output_config.format`` (Opus 4.1+, Sonnet 4.5+, Haiku 4.5+).

    Unknown names (older ``claude-3-…`` ids, other servers' models) get the system-prompt form.
    """
    m = _MODEL_VERSION.match(model)
    if m is None:
        return False
    version = (int(m.group(2)), int(m.group(3) or 0))
    return version >= _STRUCTURED_SINCE[m.group(1)]


def json_instruction(schema: dict[str, Any]) -> str:
    """The system-prompt paragraph that asks for structured output."""
    return (
        "Answer with only a JSON object that matches this JSON schema: no prose, no code fences.\n"
        f"JSON schema:\n{json.dumps(schema, indent=None, sort_keys=True)}"
    )


class AnthropicBackend(Backend):
    """Claude through the Messages API (or any server that speaks it, such as llama.cpp)."""

    kind = "anthropic"

    def __init__(
        self,
        base_url: str,
        client: httpx2.AsyncClient,
        *,
        name: str = "",
        api_key: str | None = None,
        model: str | None = None,
        max_retries: int = 2,
        timeout_s: float = 120,
        structured_output: Literal["auto", "on", "off"] = "auto",
    ) -> None:
        root = base_url.rstrip("/")
        if root.endswith("/v1"):
            root = root[: -len("/v1")]  # the SDK appends /v1/... itself
        super().__init__(root, client, name=name, api_key=api_key)
        self.model = model
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.structured_output = structured_output
        self._sdk: anthropic.AsyncAnthropic | None = None
        if api_key:
            self._sdk = anthropic.AsyncAnthropic(
                api_key=api_key,
                base_url=self.base_url or None,  # empty: the SDK's own default endpoint
                max_retries=max_retries,
                timeout=timeout_s,
                http_client=client,
            )

    def _client(self) -> anthropic.AsyncAnthropic:
        if self._sdk is None:
            raise AuthenticationError("no Anthropic API key is configured", host=self.name)
        return self._sdk

    @contextmanager
    def _errors(self) -> Iterator[None]:
        with translate_sdk_errors(self.name, self._api_key):
            yield

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        system = [m.content for m in request.messages if m.role == "system"]
        output_config: dict[str, Any] | None = None
        if request.json_schema is not None:
            if self.uses_structured_output(request.model):
                schema = anthropic.transform_schema(request.json_schema)
                output_config = {"format": {"type": "json_schema", "schema": schema}}
            else:
                system.append(json_instruction(request.json_schema))
        # The Messages API wants user/assistant turns; tool output is something the user side saw.
        turns: list[tuple[str, list[str]]] = []
        for m in request.messages:
            if m.role == "system":
                continue
            role = "assistant" if m.role == "assistant" else "user"
            if turns and turns[-1][0] == role:
                turns[-1][1].append(m.content)
            else:
                turns.append((role, [m.content]))
        if not turns:
            raise BadRequestError("a chat needs at least one user message", host=self.name)
        messages: list[MessageParam] = []
        for role, parts in turns:
            text = "\n\n".join(parts)
            if role == "assistant":
                messages.append(AssistantMessageParam(role="assistant", content=text))
            else:
                messages.append(UserMessageParam(role="user", content=text))
        params: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
            "messages": messages,
        }
        if system:
            params["system"] = "\n\n".join(system)
        if request.stop:
            params["stop_sequences"] = list(request.stop)
        if output_config is not None:
            params["output_config"] = output_config
        return params

    def uses_structured_output(self, model: str) -> bool:
        """Whether a schema for ``model`` goes into ``output_config`` (else into the system prompt)."""
        if self.structured_output == "auto":
            return supports_structured_output(model)
        return self.structured_output == "on"

    async def chat(self, request: ChatRequest, *, limit_s: float | None = None) -> ChatResponse:
        """One answer; ``limit_s`` bounds the whole call, the SDK's retries included."""
        sdk = self._client()
        params = self._params(request)
        if limit_s is not None:
            params["timeout"] = max(0.001, min(limit_s, self.timeout_s))
        with self._errors(), self._within(limit_s):
            message = await sdk.messages.create(**params)
        return _response(message, request, self.name)

    @contextmanager
    def _within(self, limit_s: float | None) -> Iterator[None]:
        """Bound a call and the SDK's retries to ``limit_s`` seconds (HostTimeoutError after)."""
        if limit_s is None:
            yield
            return
        try:
            with anyio.fail_after(max(limit_s, 0.0)):
                yield
        except TimeoutError as exc:
            raise HostTimeoutError(f"no answer within {limit_s:.3g} s", host=self.name) from exc

    async def stream(self, request: ChatRequest, *, limit_s: float | None = None) -> AsyncIterator[StreamChunk]:
        """Text and thinking pieces; errors after the first piece become ``StreamInterruptedError``."""
        sdk = self._client()
        params = self._params(request)
        if limit_s is not None:
            params["timeout"] = max(0.001, min(limit_s, self.timeout_s))
        started = False
        try:
            with self._errors():
                async with sdk.messages.stream(**params) as events:
                    async for event in events:
                        if event.type == "text" and event.text:
                            started = True
                            yield StreamChunk(content=event.text)
                        elif event.type == "thinking" and event.thinking:
                            started = True
                            yield StreamChunk(thinking=event.thinking)
                    try:
                        final = await events.get_final_message()
                    except AssertionError as exc:  # the SDK asserts that a message_start came
                        raise MalformedResponseError("stream ended before a message started", host=self.name) from exc
                    if final.stop_reason is None:  # no message_delta: the events stopped early
                        raise MalformedResponseError("stream ended before the message was complete", host=self.name)
        except BackendError as exc:
            if started and not isinstance(exc, StreamInterruptedError):
                raise StreamInterruptedError(
                    f"stream broke after output was sent: {exc.detail}", host=self.name, status=exc.status
                ) from exc
            raise
        yield StreamChunk(done=True, response=_response(final, request, self.name))

    async def list_models(self) -> list[ModelInfo]:
        """The models the key may use, plus the configured one (it may be an alias the list lacks).

        A failure to list is not fatal: discovery falls back to the configured model only.
        """
        configured = [ModelInfo(name=self.model, family="claude")] if self.model else []
        if self._sdk is None:
            return configured
        found: list[ModelInfo] = []
        try:
            with self._errors():
                async for info in self._sdk.models.list():
                    found.append(
                        ModelInfo(
                            name=info.id,
                            family="claude" if info.id.startswith("claude") else None,
                            context_length=getattr(info, "max_input_tokens", None),
                        )
                    )
                    if len(found) >= _MAX_LISTED_MODELS:
                        break
        except BackendError as exc:
            log.info("cannot list models of %s, using the configured model: %s", self.name, exc)
            return configured
        names = {m.name for m in found}
        return found + [m for m in configured if m.name not in names]

    async def health(self) -> HealthReport:
        """Reachable and the key accepted, checked with a model listing (costs no tokens)."""
        if self._sdk is None:
            return HealthReport(ok=False, detail=f"{self.name}: no Anthropic API key is configured")
        probe = self._sdk.with_options(max_retries=0, timeout=min(self.timeout_s, _HEALTH_TIMEOUT_S))
        start = time.perf_counter()
        try:
            with self._errors():
                await probe.models.list(limit=1)
        except BackendError as exc:
            # A server without a model listing (404) still answered, with our key.
            if exc.status != 404:
                return HealthReport(ok=False, detail=str(exc))
        return HealthReport(ok=True, latency_ms=(time.perf_counter() - start) * 1000)
