"""The pool's backend for an embedded llama.cpp server (:mod:`caelum_mcp.embedded.server`): it restarts the
server's child process when a call finds it dead, and spreads a batch of embeddings over the
server's single-thread instances (:func:`embed_across`).

Kept apart from :mod:`caelum_mcp.embedded.server`, which is also the child's program: the child need not
import the HTTP client and the backends.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import httpx2

from caelum_mcp.core.errors import HostUnavailableError, MalformedResponseError
from caelum_mcp.core.types import ChatRequest, ChatResponse, EmbedRequest, EmbedResponse, HealthReport, ModelInfo, Usage
from caelum_mcp.embedded.server import EmbeddedServer, EmbeddedUnavailableError
from caelum_mcp.engine.backends.openai import OpenAIBackend

log = logging.getLogger(__name__)

# After a restart that failed, calls fail at once for this long rather than each trying again
# (a start that fails can take the whole start timeout).
RESTART_BACKOFF_S = 10.0


class Embeds(Protocol):
    async def embed(self, request: EmbedRequest, *, limit_s: float | None = None) -> EmbedResponse: ...


# The first instance redoes an extra instance's piece once it has run this many times as long as
# the first instance took for as many inputs (an extra one runs niced: a busy machine can starve it).
BACKUP_AFTER = 1.5


@dataclass(eq=False)
class _Piece:
    start: int
    size: int
    owner: int
    began: float
    done: bool = False
    backed_up: bool = False
    finished: anyio.Event = field(default_factory=anyio.Event)
    runs: list[anyio.CancelScope] = field(default_factory=list)


async def embed_across(
    instances: Sequence[Embeds], request: EmbedRequest, *, limit_s: float | None, host: str = ""
) -> EmbedResponse:
    """``request``'s inputs embedded by ``instances`` (servers of one model) at once, in order.

    Each instance takes the next piece of the inputs when it is free, a piece being the remainder
    over twice the number of instances (at least one input): big pieces first (few requests),
    small ones at the end, so that an instance slowed down by other work (or by its lower
    priority) takes fewer pieces and the batch ends at about the same time everywhere. The first
    instance takes the first piece; one input (a query) goes to it alone. When no piece is left,
    the first instance redoes a piece another instance has held for :data:`BACKUP_AFTER` times
    as long as the first needs for it (whichever answers first is kept, the other request is
    cancelled), so that a starved instance never holds the batch up. The first error ends the
    batch and is raised as it is (the pool counts it against the host); ``limit_s`` bounds the
    whole batch.
    """
    if not instances:
        raise ValueError("embed_across needs at least one instance")
    inputs = request.inputs
    deadline = None if limit_s is None else time.monotonic() + limit_s
    vectors: list[tuple[float, ...] | None] = [None] * len(inputs)
    tokens = [0]
    models: list[str] = []
    pieces: list[_Piece] = []
    first_rate: list[float] = []  # seconds per input of the first instance's pieces
    failures: list[Exception] = []

    async def run(piece: _Piece, index: int, batch: anyio.CancelScope) -> None:
        """One request for ``piece`` to instance ``index``; the first answer for a piece is kept."""
        left = None if deadline is None else max(0.001, deadline - time.monotonic())
        began = time.monotonic()
        answer: EmbedResponse | None = None
        with anyio.CancelScope() as scope:
            piece.runs.append(scope)
            try:
                answer = await instances[index].embed(
                    request.model_copy(update={"inputs": inputs[piece.start : piece.start + piece.size]}), limit_s=left
                )
            except Exception as exc:  # raised below, as it is, once the other pieces are stopped
                if not piece.done:
                    failures.append(exc)
                    batch.cancel()
                return
        if answer is None or piece.done:  # the other request for this piece answered first
            return
        if len(answer.embeddings) != piece.size:
            failures.append(
                MalformedResponseError(f"asked for {piece.size} embeddings, got {len(answer.embeddings)}", host=host)
            )
            batch.cancel()
            return
        piece.done = True
        piece.finished.set()
        for other in piece.runs:
            if other is not scope:
                other.cancel()
        vectors[piece.start : piece.start + piece.size] = answer.embeddings
        tokens[0] += answer.usage.input_tokens
        models.append(answer.model)
        if index == 0:
            first_rate.append((time.monotonic() - began) / piece.size)

    async def work(index: int, batch: anyio.CancelScope) -> None:
        while True:
            taken = sum(p.size for p in pieces)
            if taken < len(inputs):
                size = max(1, math.ceil((len(inputs) - taken) / (2 * len(instances))))
                piece = _Piece(taken, size, index, time.monotonic())
                pieces.append(piece)
                await run(piece, index, batch)
                continue
            if index != 0 or not first_rate:
                return
            pending = [p for p in pieces if not p.done and not p.backed_up and p.owner != 0]
            if not pending:
                return
            oldest = min(pending, key=lambda p: p.began)
            due = oldest.began + BACKUP_AFTER * max(first_rate) * oldest.size - time.monotonic()
            if due > 0:
                with anyio.move_on_after(due):
                    await oldest.finished.wait()
                continue
            oldest.backed_up = True
            await run(oldest, 0, batch)

    async with anyio.create_task_group() as group:
        for index in range(min(len(instances), max(1, len(inputs)))):
            group.start_soon(work, index, group.cancel_scope)
    if failures:
        raise failures[0]
    return EmbedResponse(
        model=models[0] if models else request.model,
        embeddings=tuple(v for v in vectors if v is not None),
        usage=Usage(input_tokens=tokens[0]),
    )


class EmbeddedBackend(OpenAIBackend):
    """The OpenAI-compatible backend of an :class:`EmbeddedServer`: a call or health check that
    finds the child process dead starts it again (same port) before it is sent, so the first
    call after a crash is served rather than failed. A restart that fails raises
    :class:`~caelum_mcp.core.errors.HostUnavailableError` saying why (the pool fails over, and the
    host's ``last_error`` says it), and is not tried again for :data:`RESTART_BACKOFF_S`.

    A server of several instances (:attr:`EmbeddedServer.urls`) gets each batch of embeddings
    spread over them (:func:`embed_across`); the rest goes to the first."""

    def __init__(self, server: EmbeddedServer, client: httpx2.AsyncClient, *, name: str) -> None:
        if server.url is None:
            raise ValueError("start the embedded server before making its backend")
        super().__init__(server.url, client, name=name)
        self.server = server
        self.restarts = 0
        self._failed: tuple[float, str] | None = None  # when the last restart failed, and why
        self._client = client
        self._instances: list[OpenAIBackend] = []
        self._instance_urls: list[str] = []

    def instances(self) -> list[OpenAIBackend]:
        """One backend per instance of the server, the first first (rebuilt if the ports moved)."""
        urls = list(self.server.urls) or [self.server.url or self.base_url]
        if urls != self._instance_urls:
            self._instances = [OpenAIBackend(url, self._client, name=self.name) for url in urls]
            self._instance_urls = urls
        return self._instances

    async def ensure_running(self) -> None:
        """Restart the child if it exited; raise HostUnavailableError when it cannot be."""
        if self.server.running:
            return
        if self._failed is not None and time.monotonic() - self._failed[0] < RESTART_BACKOFF_S:
            raise HostUnavailableError(self._failed[1], host=self.name)
        log.warning("embedded %s process exited; restarting it", self.name)
        try:
            await self.server.astart()
        except EmbeddedUnavailableError as exc:
            why = f"the embedded model's process exited and could not be restarted: {exc}"
            self._failed = (time.monotonic(), why)
            log.error("%s: %s", self.name, why)
            raise HostUnavailableError(why, host=self.name) from exc
        self._failed = None
        self.restarts += 1
        log.info("embedded %s restarted at %s", self.name, self.server.url)

    async def health(self) -> HealthReport:
        try:
            await self.ensure_running()
        except HostUnavailableError as exc:
            return HealthReport(ok=False, detail=str(exc))
        return await super().health()

    async def list_models(self) -> list[ModelInfo]:
        await self.ensure_running()
        return await super().list_models()

    async def chat(self, request: ChatRequest, *, limit_s: float | None = None) -> ChatResponse:
        await self.ensure_running()
        return await super().chat(request, limit_s=limit_s)

    async def embed(self, request: EmbedRequest, *, limit_s: float | None = None) -> EmbedResponse:
        await self.ensure_running()
        instances = self.instances()
        if len(instances) == 1 or len(request.inputs) <= 1:
            return await instances[0].embed(request, limit_s=limit_s)
        return await embed_across(instances, request, limit_s=limit_s, host=self.name)
