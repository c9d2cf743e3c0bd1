"""The host pool: where local LLM work runs.

A :class:`Host` is one server (an Ollama daemon, a llama.cpp / vLLM / LM Studio server) reached
through one backend. The :class:`Pool` picks a host and a model for each request:

- candidates are enabled hosts whose circuit breaker lets a request through and that serve the
  wanted model, or a model of the wanted tier (falling back to the nearest tier that exists);
- among them, the fewest outstanding requests relative to the host's concurrency limit wins,
  ties broken by the latency EWMA;
- every host has its own concurrency limit (Ollama runs ``OLLAMA_NUM_PARALLEL`` requests, default
  1, and silently queues the rest, so the client must bound it);
- a connect error, timeout, 5xx or 503 before the first token fails over to another host, at most
  ``max_attempts`` hosts; after output has been streamed the error goes to the caller;
- consecutive failures open a host's breaker; after a cooldown one half-open probe (a request or
  the background health check) decides whether it closes again.

Works the same with one host or fifty.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

import anyio

from caelum_mcp.backends.base import Backend
from caelum_mcp.errors import (
    AllHostsFailedError,
    BackendError,
    HostConnectError,
    NoHostAvailableError,
    StreamInterruptedError,
)
from caelum_mcp.types import (
    SIZE_TIERS,
    ChatRequest,
    ChatResponse,
    EmbedRequest,
    EmbedResponse,
    HealthReport,
    ModelInfo,
    StreamChunk,
    Tier,
    size_from_model_name,
    tier_for_size,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

CODE_MARKERS = ("coder", "code", "starcoder", "codellama", "devstral", "codestral", "codegemma")
EMBED_MARKERS = ("embed", "bge", "e5-", "minilm", "nomic-bert")


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    """Consecutive failures open the breaker; after ``cooldown_s`` one probe may pass."""

    failure_threshold: int = 3
    cooldown_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    _probe_in_flight: bool = False

    def allows(self) -> bool:
        """Whether a request may go to this host now (does not claim the probe)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and self.clock() - self.opened_at >= self.cooldown_s:
            return True
        return self.state is BreakerState.HALF_OPEN and not self._probe_in_flight

    def on_dispatch(self) -> None:
        if self.state is BreakerState.OPEN and self.clock() - self.opened_at >= self.cooldown_s:
            self.state = BreakerState.HALF_OPEN
        if self.state is BreakerState.HALF_OPEN:
            self._probe_in_flight = True

    def record_success(self) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._probe_in_flight = False

    def record_failure(self, *, force_open: bool = False) -> None:
        self.failures += 1
        self._probe_in_flight = False
        if force_open or self.state is BreakerState.HALF_OPEN or self.failures >= self.failure_threshold:
            self.state = BreakerState.OPEN
            self.opened_at = self.clock()


@dataclass
class Host:
    """One server in the pool; mutable state is owned by the pool."""

    name: str
    backend: Backend
    max_concurrency: int = 1
    enabled: bool = True
    allowed_models: tuple[str, ...] = ()
    tier_overrides: dict[str, Tier] = field(default_factory=dict)
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    models: dict[str, ModelInfo] = field(default_factory=dict)
    outstanding: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    served: int = 0
    failed: int = 0
    latency_ewma_ms: float | None = None
    last_health: HealthReport | None = None
    last_error: str | None = None
    embedded: bool = False
    _limiter: anyio.CapacityLimiter | None = None
    _tiers: dict[str, frozenset[Tier]] = field(default_factory=dict)
    _tiers_key: tuple[int, int, int] = (0, 0, 0)

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.max_concurrency)
        return self._limiter

    @property
    def kind(self) -> str:
        return self.backend.kind

    @property
    def load(self) -> float:
        return self.outstanding / self.max_concurrency

    def tiers_of(self, model: str, global_overrides: dict[str, Tier]) -> frozenset[Tier]:
        """Every tier a model counts as: its size tier plus ``code`` / ``embedding`` (memoised).

        Selection asks this for every model of every host on every request, so the answer is
        kept until the host's models or either override table change.
        """
        key = (id(self.models), len(self.tier_overrides), len(global_overrides))
        if key != self._tiers_key:
            self._tiers = {}
            self._tiers_key = key
        tiers = self._tiers.get(model)
        if tiers is None:
            tiers = self._tiers[model] = frozenset(self._compute_tiers(model, global_overrides))
        return tiers

    def _compute_tiers(self, model: str, global_overrides: dict[str, Tier]) -> set[Tier]:
        override = self.tier_overrides.get(model) or global_overrides.get(model)
        if override is not None:
            return {override}
        info = self.models.get(model)
        text = " ".join([model, *(info.families if info else ()), (info.family or "") if info else ""]).lower()
        caps = set(info.capabilities) if info else set()
        if "embedding" in caps or any(m in text for m in EMBED_MARKERS):
            return {Tier.EMBEDDING}
        tiers: set[Tier] = set()
        size = info.parameters_b if info and info.parameters_b else size_from_model_name(model)
        tiers.add(tier_for_size(size) if size else Tier.SMALL)
        if any(m in model.lower() for m in CODE_MARKERS):
            tiers.add(Tier.CODE)
        return tiers


@dataclass(frozen=True)
class Selection:
    host: Host
    model: str
    tier: Tier


@dataclass(frozen=True)
class PoolResult:
    """One answer from the pool, with where it came from."""

    response: ChatResponse
    host: str
    provider: str
    model: str
    tier: Tier
    attempts: int
    latency_ms: float
    errors: tuple[str, ...] = ()


class Pool:
    """Load-balanced, health-checked set of hosts. See the module docstring for the policy."""

    def __init__(
        self,
        hosts: list[Host] | None = None,
        *,
        max_attempts: int = 3,
        ewma_alpha: float = 0.3,
        request_timeout_s: float = 300.0,
        tier_overrides: dict[str, Tier] | None = None,
    ) -> None:
        self.hosts: dict[str, Host] = {}
        self.max_attempts = max_attempts
        self.ewma_alpha = ewma_alpha
        self.request_timeout_s = request_timeout_s
        self.tier_overrides = dict(tier_overrides or {})
        for host in hosts or []:
            self.add_host(host)

    # membership ------------------------------------------------------------------------------

    def add_host(self, host: Host) -> None:
        if host.name in self.hosts:
            raise ValueError(f"a host named {host.name!r} is already in the pool")
        self.hosts[host.name] = host

    async def remove_host(self, name: str) -> None:
        host = self.hosts.pop(name, None)
        if host is not None:
            await host.backend.aclose()

    def set_enabled(self, name: str, enabled: bool) -> Host:
        host = self.get(name)
        host.enabled = enabled
        if enabled:
            host.breaker.record_success()
        log.info("host %s %s", name, "enabled" if enabled else "disabled")
        return host

    def get(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            known = ", ".join(sorted(self.hosts)) or "none"
            raise NoHostAvailableError(f"no host named {name!r} (hosts: {known})") from None

    # discovery and health ----------------------------------------------------------------------

    async def refresh_host(self, host: Host) -> HealthReport:
        """Probe one host; on success refresh its model list. Updates breaker state."""
        report = await host.backend.health()
        host.last_health = report
        if report.ok:
            try:
                models = await host.backend.list_models()
            except BackendError as exc:
                host.last_error = str(exc)
                host.breaker.record_failure()
                return report
            allowed = set(host.allowed_models)
            host.models = {m.name: m for m in models if not allowed or m.name in allowed}
            host.breaker.record_success()
            host.last_error = None
        else:
            if host.breaker.state is not BreakerState.OPEN:
                log.warning("host %s (%s) is not reachable: %s", host.name, host.backend.base_url, report.detail)
            host.last_error = report.detail
            host.breaker.record_failure(force_open=True)
        return report

    async def refresh_all(self) -> None:
        async with anyio.create_task_group() as tg:
            for host in list(self.hosts.values()):
                if host.enabled:
                    tg.start_soon(self.refresh_host, host)

    async def run_health_checks(self, interval_s: float) -> None:
        """Background loop: probe every enabled host each ``interval_s`` seconds, forever."""
        while True:
            await anyio.sleep(interval_s)
            try:
                await self.refresh_all()
            except Exception:  # a probe must never kill the loop
                log.exception("health check round failed")

    def healthy_hosts(self) -> list[Host]:
        return [h for h in self.hosts.values() if h.enabled and h.breaker.state is BreakerState.CLOSED]

    def available_tiers(self) -> set[Tier]:
        tiers: set[Tier] = set()
        for host in self.hosts.values():
            if host.enabled:
                for model in host.models:
                    tiers |= host.tiers_of(model, self.tier_overrides)
        return tiers

    # selection -----------------------------------------------------------------------------------

    def _candidates(self, tier: Tier | None, model: str | None, exclude: set[str]) -> list[Selection]:
        out: list[Selection] = []
        for host in self.hosts.values():
            if not host.enabled or host.name in exclude or not host.breaker.allows():
                continue
            for name in host.models:
                tiers = host.tiers_of(name, self.tier_overrides)
                if model is not None:
                    if name == model or name.split(":")[0] == model:
                        out.append(Selection(host, name, min(tiers, key=_tier_rank)))
                elif (tier is None and Tier.EMBEDDING not in tiers) or tier in tiers:
                    out.append(Selection(host, name, tier or min(tiers, key=_tier_rank)))
        return out

    def select(
        self, *, tier: Tier | None = None, model: str | None = None, exclude: set[str] | None = None
    ) -> Selection:
        """The best host and model for a request; nearest tier when the wanted one is missing."""
        exclude = exclude or set()
        candidates = self._candidates(tier, model, exclude)
        if not candidates and model is None and tier in SIZE_TIERS:
            for alt in _nearest_tiers(tier):
                candidates = self._candidates(alt, None, exclude)
                if candidates:
                    break
        if not candidates:
            wanted = f"model {model!r}" if model else f"tier {tier.value if tier else 'any'}"
            known = self.describe_models()
            raise NoHostAvailableError(
                f"no enabled, healthy host serves {wanted} (hosts and models: {known}); "
                "check `caelum-mcp doctor`, start a host, or ask for another tier or model"
            )
        return min(candidates, key=self._rank)

    def _rank(self, sel: Selection) -> tuple[int, float, float, int, str]:
        host = sel.host
        info = host.models.get(sel.model)
        ewma = host.latency_ewma_ms if host.latency_ewma_ms is not None else 0.0
        # A host whose cooldown is over gets the one probe request first, so a recovered host
        # rejoins at once instead of waiting for the next background health check.
        probe = 0 if host.breaker.state is not BreakerState.CLOSED else 1
        # a model already loaded on the host avoids a swap that would stall its other requests
        loaded = 0 if info and info.loaded else 1
        return (probe, host.load, ewma, loaded, host.name)

    def describe_models(self) -> str:
        parts = []
        for h in self.hosts.values():
            state = "disabled" if not h.enabled else h.breaker.state.value
            parts.append(f"{h.name}[{state}]: {', '.join(h.models) or 'no models'}")
        return "; ".join(parts) or "no hosts configured"

    # requests ------------------------------------------------------------------------------------

    async def _failover(
        self, call: Callable[[Selection], Awaitable[T]], *, tier: Tier | None, model: str | None
    ) -> tuple[Selection, T, int, float, list[BaseException]]:
        """Run ``call`` on the best host; on a host failure, on the next best, at most
        ``max_attempts`` hosts. Returns the selection, the result, the attempt number, the latency
        in ms and the failures before it; raises the request's own error or AllHostsFailedError."""
        exclude: set[str] = set()
        errors: list[BaseException] = []
        for attempt in range(1, self.max_attempts + 1):
            try:
                sel = self.select(tier=tier, model=model, exclude=exclude)
            except NoHostAvailableError:
                if errors:
                    break
                raise
            started = time.perf_counter()
            try:
                async with self._dispatch(sel.host):
                    result = await call(sel)
            except BackendError as exc:
                self._on_failure(sel.host, exc)
                if not exc.failover:
                    raise
                errors.append(exc)
                exclude.add(sel.host.name)
                continue
            latency = (time.perf_counter() - started) * 1000
            self._on_success(sel.host, latency)
            return sel, result, attempt, latency, errors
        raise AllHostsFailedError(f"all {len(errors)} attempt(s) failed", errors)

    async def chat(self, request: ChatRequest, *, tier: Tier | None = None, model: str | None = None) -> PoolResult:
        """Run one chat on the best host, failing over before any output on host failures.

        The deadline is the HTTP client's read timeout (pool.request_timeout_s): a non-streamed
        answer arrives in one read, so it bounds the whole call without the cost of an event-loop
        timer per request (bench/pool_overhead.py).
        """

        def call(sel: Selection) -> Awaitable[ChatResponse]:
            return sel.host.backend.chat(request.model_copy(update={"model": sel.model}))

        sel, response, attempt, latency, errors = await self._failover(
            call, tier=tier, model=model or (request.model or None)
        )
        return PoolResult(
            response=response,
            host=sel.host.name,
            provider=sel.host.kind,
            model=sel.model,
            tier=sel.tier,
            attempts=attempt,
            latency_ms=latency,
            errors=tuple(str(e) for e in errors),
        )

    async def stream(
        self, request: ChatRequest, *, tier: Tier | None = None, model: str | None = None
    ) -> AsyncIterator[tuple[Selection, StreamChunk]]:
        """Stream from the best host; fails over only until the first chunk has been yielded."""
        exclude: set[str] = set()
        errors: list[BaseException] = []
        for _attempt in range(self.max_attempts):
            try:
                sel = self.select(tier=tier, model=model or (request.model or None), exclude=exclude)
            except NoHostAvailableError:
                if errors:
                    break
                raise
            started = time.perf_counter()
            yielded = False
            try:
                async with self._dispatch(sel.host):
                    stream = sel.host.backend.stream(request.model_copy(update={"model": sel.model}))
                    async for chunk in stream:
                        yielded = True
                        yield sel, chunk
            except BackendError as exc:
                self._on_failure(sel.host, exc)
                if yielded:
                    if isinstance(exc, StreamInterruptedError):
                        raise
                    raise StreamInterruptedError(str(exc), host=sel.host.name) from exc
                if not exc.failover:
                    raise
                errors.append(exc)
                exclude.add(sel.host.name)
                continue
            self._on_success(sel.host, (time.perf_counter() - started) * 1000)
            return
        raise AllHostsFailedError(f"all {len(errors)} attempt(s) failed", errors)

    async def embed(self, request: EmbedRequest, *, model: str | None = None) -> tuple[str, EmbedResponse]:
        def call(sel: Selection) -> Awaitable[EmbedResponse]:
            return sel.host.backend.embed(request.model_copy(update={"model": sel.model}))

        tier = Tier.EMBEDDING if model is None else None
        sel, response, _, _, _ = await self._failover(call, tier=tier, model=model)
        return sel.host.name, response

    # bookkeeping ---------------------------------------------------------------------------------

    def _dispatch(self, host: Host) -> _Dispatch:
        return _Dispatch(host)

    def _on_success(self, host: Host, latency_ms: float | None) -> None:
        host.served += 1
        host.breaker.record_success()
        host.last_error = None
        if latency_ms is not None and math.isfinite(latency_ms):
            prev = host.latency_ewma_ms
            a = self.ewma_alpha
            host.latency_ewma_ms = latency_ms if prev is None else a * latency_ms + (1 - a) * prev

    def _on_failure(self, host: Host, exc: BackendError) -> None:
        host.failed += 1
        host.last_error = str(exc)
        if exc.failover:  # the host, not the request, is at fault
            host.breaker.record_failure(force_open=_is_connect_failure(exc))
        log.warning("host %s failed: %s", host.name, exc)

    async def aclose(self) -> None:
        for host in self.hosts.values():
            await host.backend.aclose()


class _Dispatch:
    """Counts a request against a host and holds one of its concurrency slots."""

    def __init__(self, host: Host) -> None:
        self.host = host

    async def __aenter__(self) -> None:
        host = self.host
        host.outstanding += 1
        host.breaker.on_dispatch()
        try:
            # A free slot is taken without yielding to the event loop: the yield inside
            # CapacityLimiter.acquire() costs ~15% of throughput at 8 callers (bench/pool_overhead.py).
            host.limiter.acquire_nowait()
        except anyio.WouldBlock:
            try:
                await host.limiter.acquire()
            except BaseException:
                host.outstanding -= 1
                raise
        host.in_flight += 1
        host.peak_in_flight = max(host.peak_in_flight, host.in_flight)

    async def __aexit__(self, *exc: object) -> None:
        host = self.host
        host.in_flight -= 1
        host.outstanding -= 1
        host.limiter.release()


def _tier_rank(tier: Tier) -> int:
    order = {Tier.MICRO: 0, Tier.SMALL: 1, Tier.FULL: 2, Tier.LARGE: 3, Tier.CODE: 4, Tier.EMBEDDING: 5}
    return order[tier]


def _nearest_tiers(tier: Tier) -> list[Tier]:
    """Other size tiers, nearest first, larger before smaller at equal distance."""
    idx = SIZE_TIERS.index(tier)
    return sorted(
        (t for t in SIZE_TIERS if t is not tier),
        key=lambda t: (abs(SIZE_TIERS.index(t) - idx), -SIZE_TIERS.index(t)),
    )


def larger_tiers(tier: Tier) -> list[Tier]:
    if tier not in SIZE_TIERS:
        return []
    return list(SIZE_TIERS[SIZE_TIERS.index(tier) + 1 :])


def _is_connect_failure(exc: BackendError) -> bool:
    return isinstance(exc, HostConnectError)
