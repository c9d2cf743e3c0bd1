"""The host pool: where local LLM work runs.

A :class:`Host` is one server (an Ollama daemon, a llama.cpp / vLLM / LM Studio server) reached
through one backend. The :class:`Pool` picks a host and a model for each request and runs it there.
It is a façade over one object per concern, each in its own module with its part of the policy:

- selection (:mod:`caelum_mcp.engine.pool.selection`): candidates are enabled hosts whose breaker lets a
  request through and that serve the wanted model or tier (else the nearest tier that exists); the
  lowest expected completion time wins (latency EWMA times the queue once every slot is taken).
  What tier a model counts as comes from one tier table (the host's, then the pool's overrides);
- slots (:mod:`caelum_mcp.engine.pool.slots`): each host's concurrency limit; a request that finds no free
  slot waits, and moves to another host that frees one first when that is quicker;
- failover (:mod:`caelum_mcp.engine.pool.failover`): a deadline per call shared by its attempts, a
  first-byte limit per attempt (at most a third of the time left while another host could take
  over), failover to another host before any output, at most ``max_attempts`` attempts, and a busy
  host's ``Retry-After`` honoured within the deadline;
- health (:mod:`caelum_mcp.engine.pool.health`): circuit breakers, outlier ejection, health checks with a
  limit per host, and the one-token chat that re-admits a host whose real calls failed.

Every setting is in one :class:`~caelum_mcp.engine.pool.policy.PoolPolicy`. Works the same with one host
or fifty. Selection is one pass over the hosts and the slot path allocates nothing: both run on
every request (``bench/pool_overhead.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Collection
from dataclasses import dataclass

from caelum_mcp.core.errors import BackendError, NoHostAvailableError, echo
from caelum_mcp.core.types import (
    ChatRequest,
    ChatResponse,
    EmbedRequest,
    EmbedResponse,
    HealthReport,
    StreamChunk,
    Tier,
)
from caelum_mcp.engine.hosts import Host
from caelum_mcp.engine.pool.failover import CallTrace, Failover
from caelum_mcp.engine.pool.health import Health
from caelum_mcp.engine.pool.policy import PoolPolicy
from caelum_mcp.engine.pool.selection import Eligible, Selection, Selector, TierTable
from caelum_mcp.engine.pool.slots import Slots

__all__ = ["CallTrace", "Eligible", "Pool", "PoolPolicy", "PoolResult", "Selection", "TierTable"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolResult:
    """One answer from the pool, with where it came from.

    ``attempts`` counts every attempt of the call (failed ones on other hosts, and retries of a
    busy host, included); ``failures`` holds the failed ones in order. ``latency_ms`` is the
    whole call as the caller waited for it, queueing included.
    """

    response: ChatResponse
    host: str
    provider: str
    model: str
    tier: Tier
    attempts: int
    latency_ms: float
    errors: tuple[str, ...] = ()
    failures: tuple[BackendError, ...] = ()


class Pool:
    """Load-balanced, health-checked set of hosts, run by ``policy`` (default: the ``[pool]`` defaults).

    The concerns are reachable for tests and tools: ``selection`` (ranking), ``slots``, ``failover``
    and ``health``; ``tiers`` is the one tier table they read (``pool.tiers.of(host, model)``).
    ``hosts`` is the one dict they all read: change it only through :meth:`add_host` and
    :meth:`remove_host`.
    """

    def __init__(self, hosts: list[Host] | None = None, policy: PoolPolicy | None = None) -> None:
        self.policy = PoolPolicy() if policy is None else policy
        self.hosts: dict[str, Host] = {}
        self.tiers = TierTable(self.policy.tiers)
        self.selection = Selector(self.hosts, self.tiers, self.policy.ewma_alpha)
        self.slots = Slots(self.selection, self.policy.outlier_probe_s)
        self.health = Health(self.selection, self.slots, self.policy)
        self.failover = Failover(self.selection, self.slots, self.health, self.policy)
        for host in hosts or []:
            self.add_host(host)

    # membership ------------------------------------------------------------------------------

    def add_host(self, host: Host) -> None:
        if host.name in self.hosts:
            raise ValueError(f"a host named {echo(host.name)} is already in the pool")
        self.hosts[host.name] = host

    async def remove_host(self, name: str) -> None:
        host = self.hosts.pop(name, None)
        if host is not None:
            self.slots.requeue(host)
            await host.backend.aclose()

    def set_enabled(self, name: str, enabled: bool) -> Host:
        host = self.get(name)
        host.enabled = enabled
        if enabled:
            host.breaker.record_success()
            host.call_failed = False  # the operator vouches for it
            self.slots.fill(host)
        else:
            self.slots.requeue(host)
        log.info("host %s %s", name, "enabled" if enabled else "disabled")
        return host

    def get(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            known = ", ".join(sorted(self.hosts)) or "none"
            known = known if len(known) <= 400 else known[:399] + "…"
            raise NoHostAvailableError(f"no host named {echo(name)} (hosts: {known})") from None

    # health (see caelum_mcp.engine.pool.health) ----------------------------------------------------------

    async def refresh_host(self, host: Host) -> HealthReport:
        """Probe one host (health check, model list, and a one-token chat when its calls failed)."""
        return await self.health.refresh_host(host)

    async def refresh_all(self) -> None:
        """Probe every enabled host, side by side; each probe has its own time limit."""
        await self.health.refresh_all()

    async def run_health_checks(self, interval_s: float) -> None:
        """Background loop: every ``interval_s`` seconds, probe each enabled host whose previous
        probe has ended, forever; a host that hangs holds up no other host's check."""
        await self.health.run_checks(interval_s)

    def healthy_hosts(self) -> list[Host]:
        """Enabled hosts whose breaker is closed and whose last health check passed."""
        return self.health.healthy_hosts()

    # selection (see caelum_mcp.engine.pool.selection) ------------------------------------------------------

    def available_tiers(self) -> set[Tier]:
        return self.tiers.available(self.hosts.values())

    def select(
        self,
        *,
        tier: Tier | None = None,
        model: str | None = None,
        exclude: Collection[str] = (),
        min_tier: Tier | None = None,
    ) -> Selection:
        """The best host and model for a request (see :meth:`Selector.select`); raises
        NoHostAvailableError naming every host and its models when none serves it."""
        return self.selection.select(tier=tier, model=model, exclude=exclude, min_tier=min_tier)

    def eligible_models(self, *, min_tier: Tier | None = None, code: bool = False) -> list[Eligible]:
        """Chat models that could serve now, of size tier ``min_tier`` or larger (code models if ``code``)."""
        return self.selection.eligible_models(min_tier=min_tier, code=code)

    def describe_models(self) -> str:
        return self.selection.describe_models()

    # requests (see caelum_mcp.engine.pool.failover) --------------------------------------------------------

    async def chat(
        self,
        request: ChatRequest,
        *,
        tier: Tier | None = None,
        model: str | None = None,
        min_tier: Tier | None = None,
        deadline: float | None = None,
        trace: CallTrace | None = None,
    ) -> PoolResult:
        """Run one chat on the best host, failing over before any output on host failures.

        ``deadline`` is a ``time.monotonic()`` value the whole call, queueing and retries included,
        must end by (default: ``call_deadline_s`` from now); each attempt also stops at the
        first-byte limit. ``trace`` (optional) is filled in with every attempt as the call goes.
        """
        call = self.failover.new_call(tier, model or (request.model or None), min_tier, deadline, trace)

        def send(sel: Selection, limit_s: float) -> Awaitable[ChatResponse]:
            return sel.host.backend.chat(request.for_model(sel.model), limit_s=limit_s)

        sel, response, _ = await self.failover.run(call, send)
        failures = call.trace.errors()
        return PoolResult(
            response=response,
            host=sel.host.name,
            provider=sel.host.kind,
            model=sel.model,
            tier=sel.tier,
            attempts=call.trace.attempts,
            latency_ms=(time.monotonic() - call.started) * 1000,
            errors=tuple(str(e) for e in failures) if failures else (),
            failures=tuple(failures),
        )

    def stream(
        self,
        request: ChatRequest,
        *,
        tier: Tier | None = None,
        model: str | None = None,
        min_tier: Tier | None = None,
        deadline: float | None = None,
        trace: CallTrace | None = None,
    ) -> AsyncGenerator[tuple[Selection, StreamChunk], None]:
        """Stream from the best host; fails over only until the first chunk has been yielded.

        The deadline bounds the wait for the first chunk (queueing and failover included); after
        that, the first-byte limit bounds each wait between chunks. The host's slot is held until
        the stream ends or is closed: a caller that may stop early should use
        ``async with contextlib.aclosing(pool.stream(...))``.
        """
        return self.failover.stream(request, tier=tier, model=model, min_tier=min_tier, deadline=deadline, trace=trace)

    async def embed(
        self, request: EmbedRequest, *, model: str | None = None, deadline: float | None = None
    ) -> tuple[str, EmbedResponse]:
        """Embed on the best host serving ``model`` (default: any embedding model); fails over as chat."""

        def send(sel: Selection, limit_s: float) -> Awaitable[EmbedResponse]:
            return sel.host.backend.embed(request.for_model(sel.model), limit_s=limit_s)

        tier = Tier.EMBEDDING if model is None else None
        call = self.failover.new_call(tier, model, None, deadline, None)
        sel, response, _ = await self.failover.run(call, send)
        return sel.host.name, response

    async def aclose(self) -> None:
        for host in self.hosts.values():
            await host.backend.aclose()
