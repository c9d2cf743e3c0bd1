"""The backend seam: one wire protocol per class.

A backend is told where to connect (``base_url``, credentials) and is handed its HTTP client from
outside, so the pool owns connection reuse and tests can pass an ``httpx2.MockTransport``. Every
failure leaves a backend as a :mod:`caelum_mcp.errors` exception; ``translate_transport_errors``
is the one choke point for the HTTP stack's own exceptions.

Model calls take ``limit_s``: the seconds the call may wait for the host at each step (connect,
send, and each read), which the pool sets from the call's deadline and its first-byte limit. A
non-streamed answer arrives in one read, so for ``chat`` it bounds the whole exchange; for a stream
it bounds the wait for the first piece and between pieces. It is passed to httpx2 as the request's
own timeouts, which costs nothing per request (an event-loop timer per request would).
"""

from __future__ import annotations

import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

import httpx2
import pydantic_core

from caelum_mcp.errors import (
    BackendError,
    BadRequestError,
    HostConnectError,
    HostDisconnectedError,
    HostTimeoutError,
    MalformedResponseError,
    error_for_status,
)
from caelum_mcp.types import (
    ChatRequest,
    ChatResponse,
    EmbedRequest,
    EmbedResponse,
    HealthReport,
    ModelInfo,
    StreamChunk,
)


class Backend(ABC):
    """One wire protocol (Ollama native, OpenAI-compatible, Anthropic Messages)."""

    kind: ClassVar[str]

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
        self._urls: dict[str, httpx2.URL] = {}
        self._json_headers = {"Content-Type": "application/json", **(self.headers() or {})}

    @abstractmethod
    async def chat(self, request: ChatRequest, *, limit_s: float | None = None) -> ChatResponse:
        """One complete answer.

        ``limit_s``: seconds to wait for the host at each step (None: the HTTP client's own
        timeouts); when it passes, :class:`~caelum_mcp.errors.HostTimeoutError`.
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

    # helpers shared by the HTTP backends -------------------------------------------------

    def headers(self) -> dict[str, str] | None:
        """Per-request headers; None (not ``{}``) without a key, which spares httpx2 a merge per call."""
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else None

    def url(self, path: str) -> httpx2.URL:
        """The endpoint ``base_url + path``, parsed once: httpx2 spends ~11 µs parsing a URL string,
        about 2 % of a whole loopback request (bench/pool_overhead.py)."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx2.URL(self.base_url + path)
        return url

    def post_json(self, path: str, body: Any, *, limit_s: float | None = None) -> Awaitable[httpx2.Response]:
        """POST ``body`` as JSON to ``base_url + path`` (``limit_s``: see the module docstring).

        pydantic-core encodes a chat body ~3x faster than the ``json`` module behind httpx2's
        ``json=``; the bytes are the same compact UTF-8 JSON, except that NaN and infinity become
        ``null`` instead of failing (no field we send can hold them).
        """
        return self.client.post(
            self.url(path),
            content=pydantic_core.to_json(body),
            headers=self._json_headers,
            extensions=self.timeouts(limit_s),
        )

    def stream_json(
        self, path: str, body: Any, *, limit_s: float | None = None
    ) -> AbstractAsyncContextManager[httpx2.Response]:
        """``post_json`` with the response streamed: ``async with backend.stream_json(...) as response``."""
        return self.client.stream(
            "POST",
            self.url(path),
            content=pydantic_core.to_json(body),
            headers=self._json_headers,
            extensions=self.timeouts(limit_s),
        )

    def timeouts(self, limit_s: float | None) -> dict[str, Any] | None:
        """The request extensions that bound one request to ``limit_s`` seconds a step (None: the
        client's own timeouts). The connect limit stays the client's when that is shorter."""
        if limit_s is None:
            return None
        limit_s = max(limit_s, 0.001)  # 0 would mean "no wait at all" to some layers, None "forever"
        connect = self.client.timeout.connect
        connect = limit_s if connect is None else min(connect, limit_s)
        return {"timeout": {"connect": connect, "read": limit_s, "write": limit_s, "pool": limit_s}}

    def raise_for_status(self, response: httpx2.Response, body: bytes | None = None) -> None:
        """Turn an HTTP error status into the error tree, with the server's own message (and, for a
        busy host, how long it asked us to wait)."""
        if response.status_code < 400:
            return
        text = (body if body is not None else response.content).decode("utf-8", "replace")
        raise error_for_status(
            response.status_code, error_message(text), host=self.name, retry_after_s=retry_after(response.headers)
        )

    def parse_json(self, response: httpx2.Response) -> Any:
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MalformedResponseError(
                f"expected JSON, got {response.text[:200]!r}", host=self.name, status=response.status_code
            ) from exc


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
    """Map httpx2's transport exceptions to the error tree (the one choke point for them)."""
    try:
        yield
    except BackendError:
        raise
    except httpx2.TimeoutException as exc:
        raise HostTimeoutError(f"timed out ({type(exc).__name__})", host=host) from exc
    except (httpx2.ConnectError, httpx2.ProxyError) as exc:
        raise HostConnectError(f"cannot connect: {exc}", host=host) from exc
    except httpx2.RemoteProtocolError as exc:
        raise HostDisconnectedError(f"connection dropped: {exc}", host=host) from exc
    except httpx2.TransportError as exc:
        raise HostConnectError(f"transport error: {exc}", host=host) from exc


BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make a backend available under its ``kind`` in config."""
    BACKENDS[cls.kind] = cls
    return cls
