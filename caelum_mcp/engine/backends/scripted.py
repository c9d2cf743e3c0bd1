"""A scripted, in-process backend for deterministic tests of the pool, the router and above.

No HTTP and no model: every answer is scripted, so a test states exactly what each host says, how
long it takes, how sure it is and how it fails. Put one behind a real :class:`~caelum_mcp.engine.hosts.Host`
and the pool's selection, failover and breakers run unchanged::

    from caelum_mcp.engine.backends.scripted import ScriptedBackend, ScriptedReply
    from caelum_mcp.core.errors import HostOverloadedError

    busy = ScriptedBackend([("qwen3:8b", 8.0)], [HostOverloadedError("busy", host="a", status=503)], name="a")
    calm = ScriptedBackend([("qwen3:8b", 8.0)], ["first", ScriptedReply("second", delay_s=0.1, logprob=-0.2)])
    pool = Pool([Host(name="a", backend=busy), Host(name="b", backend=calm)])
    await pool.refresh_all()
    result = await pool.chat(request, tier=Tier.FULL)  # fails over from a to b: "first"
    assert calm.requests[0].messages == request.messages

``replies`` is a sequence answered in order (the last one repeats once it is used up), or one
function called with each request. A reply is a string (the content), a :class:`ScriptedReply`, an
exception instance to raise, or, inside a sequence, a function (sync or async) returning one of them.

Token counts are made up but fixed: one token per four characters. A call's ``limit_s`` is
honoured like a real host's timeout: a reply scripted to take longer raises
:class:`~caelum_mcp.core.errors.HostTimeoutError` once the limit has passed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import anyio
import httpx2

from caelum_mcp.core.errors import HostConnectError, HostTimeoutError
from caelum_mcp.core.types import (
    ChatRequest,
    ChatResponse,
    EmbedRequest,
    EmbedResponse,
    HealthReport,
    ModelInfo,
    StreamChunk,
    TokenLogprob,
    Usage,
)
from caelum_mcp.engine.backends.base import Backend

CHARS_PER_TOKEN = 4
STREAM_CHUNK_CHARS = 8
DEFAULT_REPLY = '{"answer": "ok"}'


@dataclass(frozen=True, slots=True)
class ScriptedReply:
    """One scripted answer.

    ``logprob`` is given to every output token (None: the host returns no logprobs);
    ``token_logprobs`` instead gives the tokens one each, in order (the last repeats when the reply
    has more tokens), for a reply whose weakest token matters; ``top`` is every token's top-k
    candidate logprobs (:attr:`~caelum_mcp.core.types.TokenLogprob.top`). ``usage`` replaces the computed
    token counts; ``delay_s`` is slept (cancellably) before answering, spread over the chunks when
    streamed.
    """

    content: str
    delay_s: float = 0.0
    logprob: float | None = None
    token_logprobs: tuple[float, ...] | None = None
    top: tuple[float, ...] = ()
    finish_reason: str = "stop"
    usage: Usage | None = None


Reply: TypeAlias = str | ScriptedReply | BaseException
ReplyFunction: TypeAlias = Callable[[ChatRequest], Reply | Awaitable[Reply]]
ModelSpec: TypeAlias = ModelInfo | tuple[str, float | None]


def _refuse(request: httpx2.Request) -> httpx2.Response:
    raise AssertionError(f"ScriptedBackend does not do HTTP (asked for {request.method} {request.url})")


class ScriptedBackend(Backend):
    """Answers from a script; records every request in ``requests`` / ``embed_requests``."""

    kind = "scripted"

    def __init__(
        self,
        models: Sequence[ModelSpec],
        replies: Sequence[Reply | ReplyFunction] | ReplyFunction | Reply | None = None,
        *,
        name: str = "scripted",
        healthy: bool = True,
        embedding_dims: int = 8,
        client: httpx2.AsyncClient | None = None,
    ) -> None:
        # The base class wants a client; by default it gets one whose transport refuses every
        # request, so the shared HTTP helpers stay typed and nothing can reach the network.
        self._owns_client = client is None
        if client is None:
            client = httpx2.AsyncClient(transport=httpx2.MockTransport(_refuse), trust_env=False)
        super().__init__(f"scripted://{name}", client, name=name)
        self.models = [m if isinstance(m, ModelInfo) else _model_info(*m) for m in models]
        if replies is None:
            replies = [DEFAULT_REPLY]
        elif isinstance(replies, str | ScriptedReply | BaseException) or callable(replies):
            replies = [replies]  # one reply (or function) for every request
        if not replies:
            raise ValueError("replies must not be empty; leave it out for the default reply")
        self._script: list[Reply | ReplyFunction] = list(replies)
        self._next = 0
        self.healthy = healthy
        self.embedding_dims = embedding_dims
        self.requests: list[ChatRequest] = []
        self.embed_requests: list[EmbedRequest] = []

    # chat ------------------------------------------------------------------------------------

    async def chat(self, request: ChatRequest, *, limit_s: float | None = None) -> ChatResponse:
        reply = await self._reply(request)
        await self._wait(reply.delay_s, limit_s)  # also a checkpoint, like a real request
        return self._response(request, reply)

    async def stream(self, request: ChatRequest, *, limit_s: float | None = None) -> AsyncGenerator[StreamChunk, None]:
        reply = await self._reply(request)
        pieces = _pieces(reply.content, STREAM_CHUNK_CHARS)
        pause = reply.delay_s / max(len(pieces), 1)
        if not pieces:
            await self._wait(pause, limit_s)
        for piece in pieces:
            await self._wait(pause, limit_s)
            yield StreamChunk(content=piece)
        yield StreamChunk(done=True, response=self._response(request, reply))

    async def _wait(self, delay_s: float, limit_s: float | None) -> None:
        """Sleep ``delay_s``; past ``limit_s``, time out as a real host's request would."""
        if limit_s is None or delay_s <= limit_s:
            await anyio.sleep(delay_s)
            return
        await anyio.sleep(max(limit_s, 0.0))
        raise HostTimeoutError(f"no answer within {limit_s:.3g} s (scripted to take {delay_s:g} s)", host=self.name)

    async def _reply(self, request: ChatRequest) -> ScriptedReply:
        """The next scripted reply for ``request``; raises it when it is an exception."""
        self._check_up()
        self.requests.append(request)
        item = self._script[min(self._next, len(self._script) - 1)]
        self._next += 1
        if callable(item):
            result = item(request)
            item = await result if isinstance(result, Awaitable) else result
        if isinstance(item, BaseException):
            raise item.with_traceback(None)  # the same instance each time, without old frames
        return item if isinstance(item, ScriptedReply) else ScriptedReply(item)

    def _response(self, request: ChatRequest, reply: ScriptedReply) -> ChatResponse:
        logprobs = None
        if request.logprobs and (reply.token_logprobs or reply.logprob is not None):
            tokens = _pieces(reply.content, CHARS_PER_TOKEN)
            given = reply.token_logprobs or (reply.logprob or 0.0,)
            logprobs = tuple(
                TokenLogprob(token=t, logprob=given[min(i, len(given) - 1)], top=reply.top)
                for i, t in enumerate(tokens)
            )
        usage = reply.usage or Usage(
            input_tokens=_input_tokens(m.content for m in request.messages),
            output_tokens=_output_tokens(reply.content),
        )
        return ChatResponse(
            model=request.model,
            content=reply.content,
            finish_reason=reply.finish_reason,
            usage=usage,
            logprobs=logprobs,
        )

    # models, health, embeddings --------------------------------------------------------------

    async def list_models(self) -> list[ModelInfo]:
        self._check_up()
        return list(self.models)

    async def health(self) -> HealthReport:
        detail = "" if self.healthy else f"{self.name}: scripted as down"
        return HealthReport(ok=self.healthy, version="scripted", latency_ms=0.0, detail=detail)

    async def embed(self, request: EmbedRequest, *, limit_s: float | None = None) -> EmbedResponse:
        self._check_up()
        self.embed_requests.append(request)
        dims = request.dimensions or self.embedding_dims
        return EmbedResponse(
            model=request.model,
            embeddings=tuple(_unit_vector(text, dims) for text in request.inputs),
            usage=Usage(input_tokens=_input_tokens(request.inputs)),
        )

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    def _check_up(self) -> None:
        """A host scripted as down refuses everything, like one whose port is closed."""
        if not self.healthy:
            raise HostConnectError("cannot connect: scripted as down", host=self.name)


def _model_info(name: str, parameters_b: float | None) -> ModelInfo:
    return ModelInfo(name=name, parameters_b=parameters_b, family=name.split(":", 1)[0])


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _input_tokens(texts: Iterable[str]) -> int:
    return max(sum(len(t) for t in texts) // CHARS_PER_TOKEN, 1)


def _output_tokens(content: str) -> int:
    return max(len(content) // CHARS_PER_TOKEN, 1) if content else 0


def _unit_vector(text: str, dims: int) -> tuple[float, ...]:
    """A fixed unit vector for ``text``: two hash bytes per component, mapped to [-1, 1]."""
    digest = hashlib.shake_256(text.encode()).digest(2 * dims)
    raw = [int.from_bytes(digest[i : i + 2], "big") / 32767.5 - 1.0 for i in range(0, 2 * dims, 2)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return tuple(x / norm for x in raw)
