"""The wire code every JSON-over-HTTP backend shares: requests, streams, status mapping, health.

:class:`HttpBackend` posts a body as JSON (or streams the reply), maps a status to the error tree
with the server's own message and ``Retry-After``, parses and validates replies into the backend's
wire models, times a health probe, and turns a failure after the first streamed piece into
:class:`~caelum_mcp.core.errors.StreamInterruptedError`. A backend adds its paths and body shapes.

``limit_s`` (see :mod:`caelum_mcp.engine.backends.base`) is passed to httpx2 as the request's own
timeouts, which costs nothing per request (an event-loop timer per request would).
"""

from __future__ import annotations

import json
import time
from abc import abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from types import TracebackType
from typing import Any, ClassVar, TypeVar

import httpx2
import pydantic_core
from pydantic import BaseModel, ConfigDict, ValidationError

from caelum_mcp.core.errors import BackendError, MalformedResponseError, StreamInterruptedError, error_for_status
from caelum_mcp.core.types import ChatRequest, HealthReport, StreamChunk, TokenLogprob
from caelum_mcp.engine.backends.base import Backend, error_message, retry_after, transport_error

# Top candidates asked per token: confidence reads their entropy (caelum_mcp.engine.calibration); five
# separate a confident token from a coin toss while keeping replies small (~100 bytes a token), and
# every local backend asks for the same number so the signal means the same on each.
TOP_LOGPROBS = 5


class Wire(BaseModel):
    """A reply shape: only the fields we read, since servers add fields between releases.

    ``shape`` names it in errors ("reply is not an OpenAI chat completion"); default: the class
    name without its ``_Wire`` prefix."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    shape: ClassVar[str] = ""


W = TypeVar("W", bound=Wire)


class WireTopLogprob(Wire):
    logprob: float


class WireLogprob(Wire):
    """One output token's logprob and its top candidates (the same shape in Ollama and OpenAI)."""

    token: str
    logprob: float
    top_logprobs: list[WireTopLogprob] | None = None


def token_logprobs(entries: Sequence[WireLogprob]) -> tuple[TokenLogprob, ...]:
    return tuple(
        TokenLogprob(token=e.token, logprob=e.logprob, top=tuple(t.logprob for t in e.top_logprobs or ()))
        for e in entries
    )


def chat_messages(request: ChatRequest) -> list[dict[str, str]]:
    """The ``messages`` list of a chat body (the same in both wire formats)."""
    return [{"role": m.role, "content": m.content} for m in request.messages]


class WireErrors:
    """httpx2's transport exceptions mapped as :func:`translate_transport_errors` maps them, plus a
    body httpx2 could not decode (bad gzip etc.) as MalformedResponseError.

    A class rather than a generator context manager: it is entered on every request, and one
    instance per backend serves them all (it keeps no state between enter and exit).
    """

    __slots__ = ("host",)

    def __init__(self, host: str) -> None:
        self.host = host

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if isinstance(exc, httpx2.TransportError):
            raise transport_error(exc, self.host) from exc
        if isinstance(exc, httpx2.DecodingError):
            raise MalformedResponseError(f"undecodable response body: {exc}", host=self.host) from exc


class HttpBackend(Backend):
    """A backend speaking JSON over the caller's httpx2 client.

    ``protocol`` names the wire format in messages ("a reply does not have the Ollama chat
    shape"); :meth:`probe` is the backend's cheapest request, which :meth:`health` times.
    """

    protocol: ClassVar[str]

    def __init__(
        self,
        base_url: str,
        client: httpx2.AsyncClient,
        *,
        name: str = "",
        api_key: str | None = None,
    ) -> None:
        super().__init__(base_url, client, name=name, api_key=api_key)
        self._urls: dict[str, httpx2.URL] = {}
        self._wire_errors = WireErrors(self.name)
        self._json_headers = {"Content-Type": "application/json", **(self.headers() or {})}

    # requests --------------------------------------------------------------------------------

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

    @asynccontextmanager
    async def open_stream(
        self, path: str, body: Any, *, limit_s: float | None = None
    ) -> AsyncIterator[httpx2.Response]:
        """:meth:`stream_json` whose error status is raised before any line is read."""
        async with self.stream_json(path, body, limit_s=limit_s) as response:
            if response.status_code >= 400:
                self.raise_for_status(response, await response.aread())
            yield response

    async def get_checked(self, path: str) -> httpx2.Response:
        """GET ``base_url + path``; an error status raised as the error tree."""
        with self.wire_errors():
            response = await self.client.get(self.url(path), headers=self.headers())
        self.raise_for_status(response)
        return response

    def timeouts(self, limit_s: float | None) -> dict[str, Any] | None:
        """The request extensions that bound one request to ``limit_s`` seconds a step (None: the
        client's own timeouts). The connect limit stays the client's when that is shorter."""
        if limit_s is None:
            return None
        limit_s = max(limit_s, 0.001)  # 0 would mean "no wait at all" to some layers, None "forever"
        connect = self.client.timeout.connect
        connect = limit_s if connect is None else min(connect, limit_s)
        return {"timeout": {"connect": connect, "read": limit_s, "write": limit_s, "pool": limit_s}}

    # replies ---------------------------------------------------------------------------------

    def wire_errors(self) -> WireErrors:
        """``with backend.wire_errors():`` around an exchange: httpx2's exceptions into the error tree."""
        return self._wire_errors

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

    def validate(self, model: type[W], data: Any, status: int) -> W:
        """``data`` (parsed JSON) as the wire model ``model``, or MalformedResponseError showing it."""
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise self.malformed(model, data, status) from exc

    def validate_json(self, model: type[W], response: httpx2.Response) -> W:
        """The response bytes parsed and validated in one step (pydantic-core): the hot path."""
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise self.malformed(model, response.text, response.status_code) from exc

    def malformed(self, model: type[Wire], data: Any, status: int | None = None) -> MalformedResponseError:
        shown = data[:200] if isinstance(data, str) else json.dumps(data, default=str)[:200]
        shape = model.shape or model.__name__.removeprefix("_Wire").removeprefix("Wire").lower() or "reply"
        article = "an" if self.protocol[:1].lower() in "aeiou" else "a"
        return MalformedResponseError(
            f"reply is not {article} {self.protocol} {shape}: {shown}", host=self.name, status=status
        )

    def check_count(self, asked: int, got: int) -> None:
        """One embedding per input, or the reply is malformed (vectors would pair with the wrong text)."""
        if got != asked:
            raise MalformedResponseError(f"asked for {asked} embeddings, got {got}", host=self.name)

    # streams and health ----------------------------------------------------------------------

    async def guard_stream(self, chunks: AsyncGenerator[StreamChunk, None]) -> AsyncIterator[StreamChunk]:
        """``chunks`` as they come; a failure after one has been passed on is StreamInterruptedError.

        Before that every failure keeps its own class (503 stays HostOverloadedError), so the pool
        may still send the request to another host; after it, the caller has shown output. A
        consumer that stops early closes ``chunks`` (and so its HTTP response) at once.
        """
        started = False
        try:
            async with aclosing(chunks):
                async for chunk in chunks:
                    started = True
                    yield chunk
        except BackendError as exc:
            if started and not isinstance(exc, StreamInterruptedError):
                raise StreamInterruptedError(
                    f"stream broke after output was sent: {exc.detail}", host=self.name, status=exc.status
                ) from exc
            raise

    @abstractmethod
    async def probe(self) -> str | None:
        """The cheapest request that shows the host serves; returns its version when it says one."""

    async def health(self) -> HealthReport:
        """:meth:`probe`, timed; an unreachable or failing host is a report, never an exception."""
        started = time.perf_counter()
        try:
            version = await self.probe()
        except BackendError as exc:
            return HealthReport(ok=False, detail=str(exc))
        except (httpx2.HTTPError, httpx2.InvalidURL) as exc:
            # Outside the transport errors (redirect loops, a bad base URL): still only "unhealthy".
            return HealthReport(ok=False, detail=f"{self.name}: {type(exc).__name__}: {exc}")
        return HealthReport(ok=True, version=version, latency_ms=(time.perf_counter() - started) * 1000.0)
