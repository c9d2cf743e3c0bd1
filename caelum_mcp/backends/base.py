"""The backend seam: one wire protocol per class.

A backend is told where to connect (``base_url``, credentials) and is handed its HTTP client from
outside, so the pool owns connection reuse and tests can pass an ``httpx2.MockTransport``. Every
failure leaves a backend as a :mod:`caelum_mcp.errors` exception; ``translate_transport_errors``
is the one choke point for the HTTP stack's own exceptions.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any, ClassVar

import httpx2
import pydantic_core

from caelum_mcp.errors import (
    BackendError,
    BadRequestError,
    HostConnectError,
    HostServerError,
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
    async def chat(self, request: ChatRequest) -> ChatResponse:
        """One complete answer."""

    @abstractmethod
    def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        """The answer in pieces; the last chunk has ``done=True`` and the whole response."""

    @abstractmethod
    async def list_models(self) -> list[ModelInfo]:
        """The models this host serves."""

    @abstractmethod
    async def health(self) -> HealthReport:
        """A cheap liveness probe; never raises for an unreachable host."""

    async def embed(self, request: EmbedRequest) -> EmbedResponse:
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

    def post_json(self, path: str, body: Any) -> Awaitable[httpx2.Response]:
        """POST ``body`` as JSON to ``base_url + path``.

        pydantic-core encodes a chat body ~3x faster than the ``json`` module behind httpx2's
        ``json=``; the bytes are the same compact UTF-8 JSON, except that NaN and infinity become
        ``null`` instead of failing (no field we send can hold them).
        """
        return self.client.post(self.url(path), content=pydantic_core.to_json(body), headers=self._json_headers)

    def stream_json(self, path: str, body: Any) -> AbstractAsyncContextManager[httpx2.Response]:
        """``post_json`` with the response streamed: ``async with backend.stream_json(...) as response``."""
        return self.client.stream(
            "POST", self.url(path), content=pydantic_core.to_json(body), headers=self._json_headers
        )

    def raise_for_status(self, response: httpx2.Response, body: bytes | None = None) -> None:
        """Turn an HTTP error status into the error tree, with the server's own message."""
        if response.status_code < 400:
            return
        text = (body if body is not None else response.content).decode("utf-8", "replace")
        raise error_for_status(response.status_code, error_message(text), host=self.name)

    def parse_json(self, response: httpx2.Response) -> Any:
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MalformedResponseError(
                f"expected JSON, got {response.text[:200]!r}", host=self.name, status=response.status_code
            ) from exc


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
        raise HostServerError(f"connection dropped: {exc}", host=host) from exc
    except httpx2.TransportError as exc:
        raise HostConnectError(f"transport error: {exc}", host=host) from exc


BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make a backend available under its ``kind`` in config."""
    BACKENDS[cls.kind] = cls
    return cls
