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
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, TypeVar

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
    _limiter: anyio.Semaphore | None = None
    _tiers: dict[str, frozenset[Tier]] = field(default_factory=dict)
    _tiers_key: tuple[int, int, int] = (0, 0, 0)

    @property
    def limiter(self) -> anyio.Semaphore:
        """The host's request slots: FIFO like a CapacityLimiter, but with no per-call task lookup
        (0.12 µs per take-and-give-back against 0.78 µs)."""
        if self._limiter is None:
            self._limiter = anyio.Semaphore(self.max_concurrency, max_value=self.max_concurrency)
        return self._limiter

    @property
    def kind(self) -> str:
        return self.backend.kind

    # A request's slot. Taking a free one never yields to the event loop (the yield inside an anyio
    # acquire() cost ~15 % of throughput at 8 callers, bench/pool_overhead.py), and
    # these are plain methods rather than an async context manager for the same reason:
    #     if not host.try_claim(): await host.claim_waiting()
    #     try: ... finally: host.release()

    def try_claim(self) -> bool:
        """Count a request against this host and take a free slot; False when none is free.

        The request counts as outstanding either way (so selection sees the queue); a False must be
        followed by ``claim_waiting``.
        """
        self.outstanding += 1
        self.breaker.on_dispatch()
        try:
            self.limiter.acquire_nowait()
        except anyio.WouldBlock:
            return False
        self._took_slot()
        return True

    async def claim_waiting(self) -> None:
        """Wait for a slot after ``try_claim`` said none was free; uncounts the request if cancelled."""
        try:
            await self.limiter.acquire()
        except BaseException:
            self.outstanding -= 1
            raise
        self._took_slot()

    def _took_slot(self) -> None:
        self.in_flight += 1
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight

    def release(self) -> None:
        """Give back the slot taken by ``try_claim``/``claim_waiting``."""
        self.in_flight -= 1
        self.outstanding -= 1
        self.limiter.release()

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


class Selection(NamedTuple):
    """Where one request goes: a host, one of its models, and the tier it serves there."""

    host: Host
    model: str
    tier: Tier


class Eligible(NamedTuple):
    """A model that could serve a request now, where, its size tier and whether it is a code model."""

    model: str
    host: str
    size: Tier
    code: bool


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

    def _best(
        self, tier: Tier | None, model: str | None, exclude: Collection[str], min_rank: int = 0
    ) -> Selection | None:
        """The best-ranked host and model serving ``tier`` (or ``model``), or None.

        ``min_rank`` > 0 leaves out models whose size tier ranks below it (see :func:`model_size_rank`).
        One pass without intermediate objects: this runs on every request (bench/pool_overhead.py).
        """
        best: tuple[Host, str, frozenset[Tier]] | None = None
        best_rank: tuple[int, float, float, int, str] | None = None
        overrides = self.tier_overrides
        for host in self.hosts.values():
            if not host.enabled or host.name in exclude or not host.breaker.allows():
                continue
            # A host whose cooldown is over gets the one probe request first, so a recovered host
            # rejoins at once instead of waiting for the next background health check.
            probe = 0 if host.breaker.state is not BreakerState.CLOSED else 1
            ewma = host.latency_ewma_ms if host.latency_ewma_ms is not None else 0.0
            load = host.outstanding / host.max_concurrency
            for name, info in host.models.items():
                tiers = host.tiers_of(name, overrides)
                if model is not None:
                    if name != model and name.split(":")[0] != model:
                        continue
                elif tier is None:
                    if Tier.EMBEDDING in tiers:
                        continue
                elif tier not in tiers:
                    continue
                if min_rank and model_size_rank(tiers) < min_rank:
                    continue
                # a model already loaded on the host avoids a swap that would stall its other requests
                rank = (probe, load, ewma, 0 if info.loaded else 1, host.name)
                if best_rank is None or rank < best_rank:
                    best, best_rank = (host, name, tiers), rank
        if best is None:
            return None
        host, name, tiers = best
        return Selection(host, name, tier if model is None and tier is not None else min(tiers, key=_tier_rank))

    def select(
        self,
        *,
        tier: Tier | None = None,
        model: str | None = None,
        exclude: Collection[str] = (),
        min_tier: Tier | None = None,
    ) -> Selection:
        """The best host and model for a request; nearest tier when the wanted one is missing.

        Ranking: a half-open host's probe first, then fewest outstanding requests relative to the
        host's limit, then the latency EWMA, then a model already loaded, then the host name.
        ``min_tier`` (a size tier) rules out smaller models, the nearest-tier fallback included.
        """
        min_rank = _TIER_ORDER[min_tier] if min_tier in SIZE_TIERS else 0
        sel = self._best(tier, model, exclude, min_rank)
        if sel is None and model is None and tier in SIZE_TIERS:
            for alt in _nearest_tiers(tier):
                if _TIER_ORDER[alt] < min_rank:
                    continue
                sel = self._best(alt, None, exclude, min_rank)
                if sel is not None:
                    break
        if sel is None:
            wanted = f"model {model!r}" if model else f"tier {tier.value if tier else 'any'}"
            if min_rank:
                wanted += f" (at least {min_tier})"
            known = self.describe_models()
            raise NoHostAvailableError(
                f"no enabled, healthy host serves {wanted} (hosts and models: {known}); "
                "check `caelum-mcp doctor`, start a host, or ask for another tier or model"
            )
        return sel

    def eligible_models(self, *, min_tier: Tier | None = None, code: bool = False) -> list[Eligible]:
        """Models that could serve a chat now: on an enabled host whose breaker lets requests through,
        not embedding models, of size tier ``min_tier`` or larger, and code models if ``code``."""
        min_rank = _TIER_ORDER[min_tier] if min_tier in SIZE_TIERS else 0
        found = []
        for host in self.hosts.values():
            if not host.enabled or not host.breaker.allows():
                continue
            for name in host.models:
                tiers = host.tiers_of(name, self.tier_overrides)
                if Tier.EMBEDDING in tiers or (code and Tier.CODE not in tiers):
                    continue
                rank = model_size_rank(tiers)
                if rank >= min_rank:
                    found.append(Eligible(name, host.name, SIZE_TIERS[rank], Tier.CODE in tiers))
        return found

    def describe_models(self) -> str:
        parts = []
        for h in self.hosts.values():
            state = "disabled" if not h.enabled else h.breaker.state.value
            parts.append(f"{h.name}[{state}]: {', '.join(h.models) or 'no models'}")
        return "; ".join(parts) or "no hosts configured"

    # requests ------------------------------------------------------------------------------------

    async def _failover(
        self,
        call: Callable[[Selection], Awaitable[T]],
        *,
        tier: Tier | None,
        model: str | None,
        min_tier: Tier | None = None,
    ) -> tuple[Selection, T, int, float, list[BaseException]]:
        """Run ``call`` on the best host; on a host failure, on the next best, at most
        ``max_attempts`` hosts. Returns the selection, the result, the attempt number, the latency
        in ms and the failures before it; raises the request's own error or AllHostsFailedError."""
        exclude: set[str] = set()
        errors: list[BaseException] = []
        for attempt in range(1, self.max_attempts + 1):
            try:
                sel = self.select(tier=tier, model=model, exclude=exclude, min_tier=min_tier)
            except NoHostAvailableError:
                if errors:
                    break
                raise
            host = sel.host
            started = time.perf_counter()
            if not host.try_claim():
                await host.claim_waiting()
            try:
                result = await call(sel)
            except BackendError as exc:
                self._on_failure(host, exc)
                if not exc.failover:
                    raise
                errors.append(exc)
                exclude.add(host.name)
                continue
            finally:
                host.release()
            latency = (time.perf_counter() - started) * 1000
            self._on_success(host, latency)
            return sel, result, attempt, latency, errors
        raise AllHostsFailedError(f"all {len(errors)} attempt(s) failed", errors)

    async def chat(
        self,
        request: ChatRequest,
        *,
        tier: Tier | None = None,
        model: str | None = None,
        min_tier: Tier | None = None,
    ) -> PoolResult:
        """Run one chat on the best host, failing over before any output on host failures.

        The deadline is the HTTP client's read timeout (pool.request_timeout_s): a non-streamed
        answer arrives in one read, so it bounds the whole call without the cost of an event-loop
        timer per request (bench/pool_overhead.py).
        """

        def call(sel: Selection) -> Awaitable[ChatResponse]:
            return sel.host.backend.chat(request.for_model(sel.model))

        sel, response, attempt, latency, errors = await self._failover(
            call, tier=tier, model=model or (request.model or None), min_tier=min_tier
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
        """Stream from the best host; fails over only until the first chunk has been yielded.

        The host's slot is held until the stream ends or is closed: a caller that may stop early
        should use ``async with contextlib.aclosing(pool.stream(...))``.
        """
        exclude: set[str] = set()
        errors: list[BaseException] = []
        for _attempt in range(self.max_attempts):
            try:
                sel = self.select(tier=tier, model=model or (request.model or None), exclude=exclude)
            except NoHostAvailableError:
                if errors:
                    break
                raise
            host = sel.host
            started = time.perf_counter()
            yielded = False
            if not host.try_claim():
                await host.claim_waiting()
            try:
                stream = host.backend.stream(request.for_model(sel.model))
                async for chunk in stream:
                    yielded = True
                    yield sel, chunk
            except BackendError as exc:
                self._on_failure(host, exc)
                if yielded:
                    if isinstance(exc, StreamInterruptedError):
                        raise
                    raise StreamInterruptedError(str(exc), host=host.name) from exc
                if not exc.failover:
                    raise
                errors.append(exc)
                exclude.add(host.name)
                continue
            finally:
                host.release()  # also when the caller stops reading early (GeneratorExit)
            self._on_success(host, (time.perf_counter() - started) * 1000)
            return
        raise AllHostsFailedError(f"all {len(errors)} attempt(s) failed", errors)

    async def embed(self, request: EmbedRequest, *, model: str | None = None) -> tuple[str, EmbedResponse]:
        def call(sel: Selection) -> Awaitable[EmbedResponse]:
            return sel.host.backend.embed(request.for_model(sel.model))

        tier = Tier.EMBEDDING if model is None else None
        sel, response, _, _, _ = await self._failover(call, tier=tier, model=model)
        return sel.host.name, response

    # bookkeeping ---------------------------------------------------------------------------------

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


_TIER_ORDER = {Tier.MICRO: 0, Tier.SMALL: 1, Tier.FULL: 2, Tier.LARGE: 3, Tier.CODE: 4, Tier.EMBEDDING: 5}


def _tier_rank(tier: Tier) -> int:
    return _TIER_ORDER[tier]


def model_size_rank(tiers: Collection[Tier]) -> int:
    """The rank of a model's size tier (micro 0 … large 3) from the tiers it counts as.

    A model with no size tier (configured as ``code`` only) is taken as large enough for any task:
    the user said what it is for.
    """
    ranks = [_TIER_ORDER[t] for t in tiers if t in SIZE_TIERS]
    return max(ranks) if ranks else _TIER_ORDER[Tier.LARGE]


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
