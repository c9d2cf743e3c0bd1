"""The backend seam: one wire protocol per class, and the settings a ``[[hosts]]`` entry gives it.

A backend is told where to connect (``base_url``, credentials) and is handed its HTTP client from
outside, so the pool owns connection reuse and tests can pass an ``httpx2.MockTransport``. Every
failure leaves a backend as a :mod:`caelum_mcp.core.errors` exception; :func:`transport_error` is the
one mapping of the HTTP stack's own exceptions (``translate_transport_errors`` applies it). The
wire code the HTTP backends share (requests, streaming, status mapping) is
:class:`caelum_mcp.engine.backends.http.HttpBackend`; which backends exist is
:mod:`caelum_mcp.engine.backends.registry`.

Model calls take ``limit_s``: the seconds the call may wait for the host at each step (connect,
send, and each read), which the pool sets from the call's deadline and its first-byte limit. A
non-streamed answer arrives in one read, so for ``chat`` it bounds the whole exchange; for a stream
it bounds the wait for the first piece and between pieces.
"""

from __future__ import annotations

import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from typing import ClassVar, Self
from urllib.parse import urlsplit

import httpx2
from pydantic import BaseModel, ConfigDict, Field, field_validator

from caelum_mcp.core.errors import (
    BackendError,
    BadRequestError,
    HostConnectError,
    HostDisconnectedError,
    HostTimeoutError,
)
from caelum_mcp.core.types import (
    ChatRequest,
    ChatResponse,
    EmbedRequest,
    EmbedResponse,
    HealthReport,
    ModelInfo,
    StreamChunk,
    Tier,
)


class HostConfigBase(BaseModel):
    """What every ``[[hosts]]`` entry says, whatever its kind; each kind's model adds its own keys.

    A kind's model sets ``kind`` to a ``Literal`` of its name (defaulting to it) and is its backend's
    ``config_model``; the config file picks the model by ``kind`` (:data:`caelum_mcp.engine.config.HostConfig`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="a short unique name, e.g. 'gpu-1'")
    kind: str = Field(description="the backend that talks to this host ('ollama' when left out)")
    url: str = Field(description="the server root, e.g. 'http://127.0.0.1:11434'")
    max_concurrency: int = Field(
        default=1, ge=1, le=256, description="requests in flight at once (Ollama: OLLAMA_NUM_PARALLEL)"
    )
    enabled: bool = True
    api_key_env: str | None = Field(
        default=None, description="name of the environment variable holding this host's API key"
    )
    models: tuple[str, ...] = Field(
        default=(), description="serve only these models (default: every model the host lists)"
    )
    tiers: dict[str, Tier] = Field(default_factory=dict, description="model name -> tier, for this host only")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as 'http://127.0.0.1:11434'")
        return value.rstrip("/")

    def api_key(self, environ: Mapping[str, str]) -> str | None:
        return environ.get(self.api_key_env) if self.api_key_env else None

    @classmethod
    def of(cls, config: HostConfigBase) -> Self:
        """``config`` as this kind's model; a host of another kind is a programming error, said plainly."""
        if not isinstance(config, cls):
            raise TypeError(f"host {config.name!r} is of kind {config.kind!r}, not a {cls.__name__}")
        return config


class Backend(ABC):
    """One wire protocol (Ollama native, OpenAI-compatible, Anthropic Messages).

    ``config_model`` is the ``[[hosts]]`` model of a backend a config file can name (None: built
    only in code, as Claude's and the scripted one are); :meth:`from_config` builds it from one.
    """

    kind: ClassVar[str]
    config_model: ClassVar[type[HostConfigBase] | None] = None

    def __init__(
        self,
        base_url: str,
        client: httpx2.AsyncClient,
        *,
        name: str = "",
        api_key: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = client
        self.name = name or self.base_url
        self._api_key = api_key

    @classmethod
    def from_config(cls, config: HostConfigBase, *, http: httpx2.AsyncClient, environ: Mapping[str, str]) -> Self:
        """The backend a ``[[hosts]]`` entry describes, on the shared client ``http``; ``environ``
        holds the API key the entry names. A kind with settings of its own overrides this."""
        return cls(config.url, http, name=config.name, api_key=config.api_key(environ))

    @abstractmethod
    async def chat(self, request: ChatRequest, *, limit_s: float | None = None) -> ChatResponse:
        """One complete answer.

        ``limit_s``: seconds to wait for the host at each step (None: the HTTP client's own
        timeouts); when it passes, :class:`~caelum_mcp.core.errors.HostTimeoutError`.
        """

    @abstractmethod
    def stream(self, request: ChatRequest, *, limit_s: float | None = None) -> AsyncIterator[StreamChunk]:
        """The answer in pieces; the last chunk has ``done=True`` and the whole response.

        ``limit_s`` bounds the wait for the first piece and between pieces.
        """

    @abstractmethod
    async def list_models(self) -> list[ModelInfo]:
        """The models this host serves."""

    @abstractmethod
    async def health(self) -> HealthReport:
        """A cheap liveness probe; never raises for an unreachable host."""

    async def embed(self, request: EmbedRequest, *, limit_s: float | None = None) -> EmbedResponse:
        raise BadRequestError(f"{self.kind} backend does not serve embeddings", host=self.name)

    async def aclose(self) -> None:
        """Release what the backend itself opened (the HTTP client belongs to the caller)."""
        return None


def retry_after(headers: httpx2.Headers, *, now: float | None = None) -> float | None:
    """Seconds a server asked us to wait: ``Retry-After`` as seconds or an HTTP date, or Anthropic's
    ``retry-after-ms``; None when it did not say (or said something unreadable). Never negative."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return max(0.0, value)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP date is always GMT
            return None
        value = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, value) if math.isfinite(value) else None


def error_message(text: str) -> str:
    """The human message inside any of the error bodies we know, else the raw text (shortened).

    Ollama: ``{"error": "..."}``; OpenAI: ``{"error": {"message": ...}}``; Anthropic:
    ``{"type": "error", "error": {"type", "message"}}``; llama.cpp: ``{"error": {"code", "message"}}``.
    """
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return text.strip()[:500] or "empty response body"
    if isinstance(data, dict):
        err = data.get("error", data.get("message"))
        if isinstance(err, str):
            return err
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
    return text.strip()[:500]


@contextmanager
def translate_transport_errors(host: str) -> Iterator[None]:
    """Map httpx2's transport exceptions to the error tree (:func:`transport_error`) inside the block."""
    try:
        yield
    except httpx2.TransportError as exc:
        raise transport_error(exc, host) from exc


def transport_error(exc: httpx2.TransportError, host: str) -> BackendError:
    """The error-tree exception for one of httpx2's transport exceptions."""
    if isinstance(exc, httpx2.TimeoutException):
        return HostTimeoutError(f"timed out ({type(exc).__name__})", host=host)
    if isinstance(exc, httpx2.ConnectError | httpx2.ProxyError):
        return HostConnectError(f"cannot connect: {exc}", host=host)
    if isinstance(exc, httpx2.RemoteProtocolError):
        return HostDisconnectedError(f"connection dropped: {exc}", host=host)
    return HostConnectError(f"transport error: {exc}", host=host)
