"""The pool's backend for an embedded llama.cpp server (:mod:`caelum_mcp.embedded`): it restarts the
server's child process when a call finds it dead.

Kept apart from :mod:`caelum_mcp.embedded`, which is also the child's program: the child need not
import the HTTP client and the backends.
"""

from __future__ import annotations

import logging
import time

import httpx2

from caelum_mcp.backends.openai import OpenAIBackend
from caelum_mcp.embedded import EmbeddedServer, EmbeddedUnavailableError
from caelum_mcp.errors import HostUnavailableError
from caelum_mcp.types import ChatRequest, ChatResponse, EmbedRequest, EmbedResponse, HealthReport, ModelInfo

log = logging.getLogger(__name__)

# After a restart that failed, calls fail at once for this long rather than each trying again
# (a start that fails can take the whole start timeout).
RESTART_BACKOFF_S = 10.0


class EmbeddedBackend(OpenAIBackend):
    """The OpenAI-compatible backend of an :class:`EmbeddedServer`: a call or health check that
    finds the child process dead starts it again (same port) before it is sent, so the first
    call after a crash is served rather than failed. A restart that fails raises
    :class:`~caelum_mcp.errors.HostUnavailableError` saying why (the pool fails over, and the
    host's ``last_error`` says it), and is not tried again for :data:`RESTART_BACKOFF_S`."""

    def __init__(self, server: EmbeddedServer, client: httpx2.AsyncClient, *, name: str) -> None:
        if server.url is None:
            raise ValueError("start the embedded server before making its backend")
        super().__init__(server.url, client, name=name)
        self.server = server
        self.restarts = 0
        self._failed: tuple[float, str] | None = None  # when the last restart failed, and why

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
        return await super().embed(request, limit_s=limit_s)
