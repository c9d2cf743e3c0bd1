"""The host pool: where local LLM work runs.

A :class:`Host` is one server (an Ollama daemon, a llama.cpp / vLLM / LM Studio server) reached
through one backend. The :class:`Pool` picks a host and a model for each request:

- candidates are enabled hosts whose circuit breaker lets a request through and that serve the
  wanted model, or a model of the wanted tier (falling back to the nearest tier that exists);
- among them the lowest *expected completion time* wins: the host's latency EWMA, times its queue
  (``(outstanding + 1) / slots``) once every slot is taken. A free fast host beats a free slow one,
  and a busy fast host beats an idle slow one until its queue outweighs the difference;
- every host has its own concurrency limit (Ollama runs ``OLLAMA_NUM_PARALLEL`` requests, default
  1, and silently queues the rest, so the client must bound it). A request that finds no free
  slot waits for one; when a slot frees on another host first, and taking it there is quicker
  than waiting, the request moves there;
- outlier ejection (as Envoy's): a host whose latency EWMA is far above its peers' (``outlier_factor``
  times the median of the hosts sharing a model with it) gets no new work while another host can
  take it; every ``outlier_probe_s`` one request probes it, and a quick answer brings it back;
- every call has a deadline (the caller's, or ``call_deadline_s`` from now) that its attempts share,
  and each attempt a first-byte limit (``first_byte_timeout_s``). An attempt that another host
  could take over gets at most a third of the time left (never under ``min_attempt_s``), so a host
  that hangs costs a task part of its budget and the call fails over; the last candidate gets all
  the time left. A connect error, timeout, 5xx,
  503 or an unreadable 200 before the first token fails over to another host, at most
  ``max_attempts`` attempts; after output has been streamed the error goes to the caller. A host
  that says it is busy (429/503) and is the only one left is retried after the ``Retry-After`` it
  sent (capped at ``retry_after_cap_s``) or a backoff, within the deadline. A call that runs out
  of time, queued or not, raises :class:`DeadlineExceededError` naming the hosts it tried;
- consecutive failures open a host's breaker; a refused connection or an attempt that hit the
  first-byte limit (a host that hangs) opens it at once. After a cooldown one half-open probe (a
  request or the background health check) decides whether it closes again;
- health checks are not model calls: each host's check (and model list) has its own limit
  (``health_timeout_s``) and the background loop probes hosts independently, so a host that hangs
  delays no other host's check. A host never probed yet is unknown: it lists no models, so it
  serves nothing. A host whose real calls failed is not re-admitted by a health check alone: a
  one-token chat (within ``call_probe_timeout_s``) must answer too.

Works the same with one host or fifty. Selection is one pass over the hosts and the slot path
allocates nothing: both run on every request (``bench/pool_overhead.py``).
"""

from __future__ import annotations

import logging
import math
import random
import statistics
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

import anyio
import anyio.lowlevel

from caelum_mcp.errors import (
    AllHostsFailedError,
    BackendError,
    DeadlineExceededError,
    HostOverloadedError,
    HostTimeoutError,
    NoHostAvailableError,
    StreamInterruptedError,
    echo,
)
from caelum_mcp.hosts import (
    TIER_ORDER,
    BreakerState,
    Host,
    model_size_rank,
    nearest_tiers,
    tier_rank,
)
from caelum_mcp.types import (
    SIZE_TIERS,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    EmbedRequest,
    EmbedResponse,
    HealthReport,
    StreamChunk,
    Tier,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Defaults of the [pool] settings of the same names (caelum_mcp.config.PoolConfig).
DEFAULT_CALL_DEADLINE_S = 300.0
DEFAULT_FIRST_BYTE_TIMEOUT_S = 120.0
DEFAULT_RETRY_AFTER_CAP_S = 30.0
DEFAULT_HEALTH_TIMEOUT_S = 5.0
# The one-token chat that re-admits a host whose calls failed: room for a cold model to load.
DEFAULT_CALL_PROBE_TIMEOUT_S = 30.0
# An attempt that another host could take over gets at most this share of the time left, and at
# least DEFAULT_MIN_ATTEMPT_S (a small budget is not cut into slices no answer fits in).
ATTEMPT_SHARE = 1 / 3
DEFAULT_MIN_ATTEMPT_S = 5.0
# A busy host that did not say how long to wait is retried after 0.25 s, 0.5 s, 1 s, ... (+ jitter).
BACKOFF_BASE_S = 0.25
# Outliers: how far above the median of its peers a host's latency must be, and by at least how
# much (a 5 ms host beside 1 ms ones is noise, not an outlier).
DEFAULT_OUTLIER_FACTOR = 5.0
OUTLIER_MIN_GAP_MS = 100.0
DEFAULT_OUTLIER_PROBE_S = 30.0
# An outlier check is a pass over the hosts: at most this often per host.
_OUTLIER_CHECK_EVERY_S = 0.05
# A timeout this close to the call's deadline was the deadline's doing.
_DEADLINE_SLACK_S = 0.01


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


@dataclass(slots=True)
class CallTrace:
    """What one pool call did, filled in as it goes.

    Pass a fresh one to :meth:`Pool.chat` (or ``stream``) to know, even when the call failed or
    was cancelled, which hosts it tried (``hosts``: one entry per attempt, in order), how each
    failed attempt failed (``failures``: host name and error) and which host's slot it was waiting
    for when it stopped (``waiting_for``).
    """

    hosts: list[str] = field(default_factory=list)
    failures: list[tuple[str, BackendError]] = field(default_factory=list)
    waiting_for: str | None = None

    @property
    def attempts(self) -> int:
        return len(self.hosts)

    def errors(self) -> list[BackendError]:
        """Each failed attempt's error, in order."""
        return [error for _, error in self.failures]


@dataclass(slots=True)
class _Call:
    """The state of one call across its attempts."""

    tier: Tier | None
    model: str | None
    min_tier: Tier | None
    deadline: float
    started: float
    trace: CallTrace
    exclude: set[str] = field(default_factory=set)
    busy: dict[str, float] = field(default_factory=dict)  # host -> when it may be retried (monotonic)
    backoffs: int = 0


@dataclass(eq=False, slots=True)
class _Waiter:
    """A request waiting for a slot: on ``sel.host``, or on another host that frees one first."""

    sel: Selection
    want: Tier | None  # the tier it was selected for (after any nearest-tier fallback)
    model: str | None
    min_rank: int
    exclude: Collection[str]
    event: anyio.Event = field(default_factory=anyio.Event)
    state: int = 0  # _WAITING, _GRANTED (holds a slot on sel.host) or _RESELECT (counted nowhere)


_WAITING, _GRANTED, _RESELECT = 0, 1, 2


class Pool:
    """Load-balanced, health-checked set of hosts. See the module docstring for the policy.

    ``call_deadline_s`` is a call's deadline when the caller gives none; ``first_byte_timeout_s``
    each attempt's limit; ``retry_after_cap_s`` the longest ``Retry-After`` honoured;
    ``outlier_factor`` (0: no ejection) and ``outlier_probe_s`` tune outlier ejection.
    ``health_timeout_s`` bounds each host's health check, ``call_probe_timeout_s`` the one-token
    chat that re-admits a host whose calls failed, ``min_attempt_s`` the shortest slice of a
    call's time an attempt gets when another host could take over.
    ``request_timeout_s`` is kept for the HTTP client built beside the pool (other exchanges).
    """

    def __init__(
        self,
        hosts: list[Host] | None = None,
        *,
        max_attempts: int = 3,
        ewma_alpha: float = 0.3,
        request_timeout_s: float = 300.0,
        call_deadline_s: float = DEFAULT_CALL_DEADLINE_S,
        first_byte_timeout_s: float = DEFAULT_FIRST_BYTE_TIMEOUT_S,
        retry_after_cap_s: float = DEFAULT_RETRY_AFTER_CAP_S,
        outlier_factor: float = DEFAULT_OUTLIER_FACTOR,
        outlier_probe_s: float = DEFAULT_OUTLIER_PROBE_S,
        health_timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S,
        call_probe_timeout_s: float = DEFAULT_CALL_PROBE_TIMEOUT_S,
        min_attempt_s: float = DEFAULT_MIN_ATTEMPT_S,
        tier_overrides: dict[str, Tier] | None = None,
    ) -> None:
        self.hosts: dict[str, Host] = {}
        self.max_attempts = max_attempts
        self.ewma_alpha = ewma_alpha
        self.request_timeout_s = request_timeout_s
        self.call_deadline_s = call_deadline_s
        self.first_byte_timeout_s = first_byte_timeout_s
        self.retry_after_cap_s = retry_after_cap_s
        self.outlier_factor = outlier_factor
        self.outlier_probe_s = outlier_probe_s
        self.health_timeout_s = health_timeout_s
        self.call_probe_timeout_s = call_probe_timeout_s
        self.min_attempt_s = min_attempt_s
        self.tier_overrides = dict(tier_overrides or {})
        self._waiters: deque[_Waiter] = deque()
        # The latency EWMA over every host: what a host without figures of its own is assumed to take.
        self._prior_ms: float | None = None
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
            self._requeue_waiters(host)
            await host.backend.aclose()

    def set_enabled(self, name: str, enabled: bool) -> Host:
        host = self.get(name)
        host.enabled = enabled
        if enabled:
            host.breaker.record_success()
            host.call_failed = False  # the operator vouches for it
            self._fill(host)
        else:
            self._requeue_waiters(host)
        log.info("host %s %s", name, "enabled" if enabled else "disabled")
        return host

    def get(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            known = ", ".join(sorted(self.hosts)) or "none"
            known = known if len(known) <= 400 else known[:399] + "…"
            raise NoHostAvailableError(f"no host named {echo(name)} (hosts: {known})") from None

    # discovery and health ----------------------------------------------------------------------

    async def refresh_host(self, host: Host) -> HealthReport:
        """Probe one host: its health check and model list, within ``health_timeout_s`` (a host
        that does not answer in time is unhealthy). On success the model list is refreshed and
        the breaker closes, unless the host's last real call failed: then a one-token chat must
        answer too (a host may answer its health check and hang on every chat)."""
        report = await self._health(host)
        host.last_health = report
        if not report.ok:
            if host.breaker.state is not BreakerState.OPEN:
                log.warning("host %s (%s) is not reachable: %s", host.name, host.backend.base_url, report.detail)
            host.last_error = report.detail
            host.breaker.record_failure(force_open=True)
            self._requeue_waiters(host)
            return report
        try:
            with anyio.fail_after(self.health_timeout_s):
                models = await host.backend.list_models()
        except (BackendError, TimeoutError) as exc:
            host.last_error = str(exc) or f"{host.name} did not list its models within {self.health_timeout_s:g} s"
            host.breaker.record_failure()
            return report
        allowed = set(host.allowed_models)
        host.models = {m.name: m for m in models if not allowed or m.name in allowed}
        if host.call_failed:
            problem = await self._call_probe(host)
            if problem is not None:
                if host.breaker.state is not BreakerState.OPEN:
                    log.warning("host %s answers its health check but not a model call: %s", host.name, problem)
                host.last_error = f"answers its health check but not a model call: {problem}"
                host.breaker.record_failure(force_open=True)
                self._requeue_waiters(host)
                return report
            host.call_failed = False
        host.breaker.record_success()
        host.last_error = None
        self._fill(host)
        return report

    async def _health(self, host: Host) -> HealthReport:
        with anyio.move_on_after(self.health_timeout_s):
            return await host.backend.health()
        return HealthReport(
            ok=False, detail=f"{host.name} did not answer its health check within {self.health_timeout_s:g} s"
        )

    async def _call_probe(self, host: Host) -> str | None:
        """A one-token chat to ``host`` (a one-text embedding when it serves only embedding
        models), within ``call_probe_timeout_s``: None when it answered, else what went wrong."""
        limit = self.call_probe_timeout_s
        chat = next((m for m in host.models if Tier.EMBEDDING not in host.tiers_of(m, self.tier_overrides)), None)
        try:
            with anyio.fail_after(limit * 2):  # a backstop: limit_s bounds each step of the exchange
                if chat is not None:
                    probe = ChatRequest(model=chat, messages=(ChatMessage(role="user", content="Hi"),), max_tokens=1)
                    await host.backend.chat(probe, limit_s=limit)
                elif host.models:
                    await host.backend.embed(EmbedRequest(model=next(iter(host.models)), inputs=("hi",)), limit_s=limit)
        except BackendError as exc:
            return str(exc)
        except TimeoutError:
            return f"no answer within {limit:g} s"
        return None

    async def refresh_all(self) -> None:
        """Probe every enabled host, side by side; each probe has its own time limit."""
        async with anyio.create_task_group() as tg:
            for host in list(self.hosts.values()):
                if host.enabled:
                    tg.start_soon(self.refresh_host, host)

    async def run_health_checks(self, interval_s: float) -> None:
        """Background loop: every ``interval_s`` seconds, probe each enabled host whose previous
        probe has ended, forever. Probes are independent: a host that hangs holds up no other
        host's check, only its own next one (until its probe's time limit)."""
        probing: set[str] = set()

        async def probe(host: Host) -> None:
            try:
                await self.refresh_host(host)
            except Exception:  # a probe must never kill the loop
                log.exception("health check of %s failed", host.name)
            finally:
                probing.discard(host.name)

        async with anyio.create_task_group() as tg:
            while True:
                await anyio.sleep(interval_s)
                for host in list(self.hosts.values()):
                    if host.enabled and host.name not in probing:
                        probing.add(host.name)
                        tg.start_soon(probe, host)

    def healthy_hosts(self) -> list[Host]:
        """Enabled hosts whose breaker is closed and whose last health check passed (a host not
        probed yet is unknown, not healthy)."""
        return [
            h
            for h in self.hosts.values()
            if h.enabled and h.breaker.state is BreakerState.CLOSED and h.last_health is not None and h.last_health.ok
        ]

    def available_tiers(self) -> set[Tier]:
        tiers: set[Tier] = set()
        for host in self.hosts.values():
            if host.enabled:
                for model in host.models:
                    tiers |= host.tiers_of(model, self.tier_overrides)
        return tiers

    # selection -----------------------------------------------------------------------------------

    def _best(
        self,
        tier: Tier | None,
        model: str | None,
        exclude: Collection[str],
        min_rank: int = 0,
        only: Host | None = None,
    ) -> Selection | None:
        """The best-ranked host and model serving ``tier`` (or ``model``), or None.

        ``min_rank`` > 0 leaves out models whose size tier ranks below it (see :func:`model_size_rank`);
        ``only`` looks at that one host. One pass without intermediate objects: this runs on every
        request (bench/pool_overhead.py).
        """
        best: tuple[Host, str, frozenset[Tier]] | None = None
        best_rank: tuple[int, float, float, int, str] | None = None
        overrides = self.tier_overrides
        prior = self._prior_ms or 1.0  # no figures at all: every host alike, so load decides
        now = 0.0
        for host in self.hosts.values() if only is None else (only,):
            if not host.enabled or host.name in exclude or not host.breaker.allows():
                continue
            # 0: a probe is due (a half-open breaker, or an outlier's turn to show it recovered):
            # it goes first, so a recovered host rejoins at once. 2: an outlier, used only when
            # nothing else serves the request.
            group = 1 if host.breaker.state is BreakerState.CLOSED else 0
            if host.ejected:
                now = now or time.monotonic()
                group = 2 if now < host.ejected_until else 0
            ewma = host.latency_ewma_ms
            if ewma is None:
                ewma = prior
            slots = host.max_concurrency
            queue = (host.outstanding + 1) / slots
            expected = ewma * queue if queue > 1.0 else ewma
            load = host.outstanding / slots
            for name, info in host.models.items():
                tiers = host.tiers_of(name, overrides)
                if not _model_fits(name, tiers, model=model, tier=tier, min_rank=min_rank):
                    continue
                # a model already loaded on the host avoids a swap that would stall its other requests
                rank = (group, expected, load, 0 if info.loaded else 1, host.name)
                if best_rank is None or rank < best_rank:
                    best, best_rank = (host, name, tiers), rank
        if best is None:
            return None
        host, name, tiers = best
        return Selection(host, name, tier if model is None and tier is not None else min(tiers, key=tier_rank))

    def select(
        self,
        *,
        tier: Tier | None = None,
        model: str | None = None,
        exclude: Collection[str] = (),
        min_tier: Tier | None = None,
    ) -> Selection:
        """The best host and model for a request; nearest tier when the wanted one is missing.

        Ranking: a due probe first (half-open breaker, or an ejected outlier's turn), outliers
        last; then the lowest expected completion time (latency EWMA, times the queue once the
        host's slots are taken), then fewest outstanding requests relative to the host's limit,
        then a model already loaded, then the host name. ``min_tier`` (a size tier) rules out
        smaller models, the nearest-tier fallback included.
        """
        min_rank = TIER_ORDER[min_tier] if min_tier in SIZE_TIERS else 0
        sel = self._best(tier, model, exclude, min_rank)
        if sel is None and model is None and tier in SIZE_TIERS:
            for alt in nearest_tiers(tier):
                if TIER_ORDER[alt] < min_rank:
                    continue
                sel = self._best(alt, None, exclude, min_rank)
                if sel is not None:
                    break
        if sel is None:
            wanted = f"model {echo(model)}" if model else f"tier {tier.value if tier else 'any'}"
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
        min_rank = TIER_ORDER[min_tier] if min_tier in SIZE_TIERS else 0
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
            if h.ejected and state == "closed":
                state = "slow outlier"
            elif h.last_health is None and state == "closed":
                state = "unknown: not probed yet"
            parts.append(f"{h.name}[{state}]: {', '.join(h.models) or 'no models'}")
        return "; ".join(parts) or "no hosts configured"

    # slots -----------------------------------------------------------------------------------------
    # Taking a free slot never yields to the event loop, and these are plain methods rather than an
    # async context manager, for the same reason: they run on every request (bench/pool_overhead.py).

    def _claim(self, host: Host) -> bool:
        """Count a request against ``host`` and take a free slot; False when none is free.

        The request counts as outstanding either way (so selection sees the queue); a False must
        be followed by :meth:`_queue`.
        """
        host.outstanding += 1
        if host.breaker.state is not BreakerState.CLOSED:
            host.breaker.on_dispatch()
        if host.ejected:
            # This request is the outlier's probe (or nothing else could serve it): the next
            # probe waits a whole interval again.
            host.ejected_until = time.monotonic() + self.outlier_probe_s
        if host.free_slots <= 0:
            return False
        host.free_slots -= 1
        host.in_flight += 1
        if host.in_flight > host.peak_in_flight:
            host.peak_in_flight = host.in_flight
        return True

    def _release(self, host: Host) -> bool:
        """Give back the slot taken by ``_claim`` (or handed over by ``_queue``); True when a
        waiting request took it over."""
        host.in_flight -= 1
        host.outstanding -= 1
        if self._waiters and self._hand_over(host):
            return True
        host.free_slots += 1
        return False

    async def _queue(self, call: _Call, sel: Selection) -> Selection | None:
        """Wait for a slot on ``sel.host``, or on another host that frees one first when moving
        there is quicker. Returns the selection that holds the slot, or None when the host was taken
        out of rotation meanwhile (select again). Raises DeadlineExceededError at the deadline."""
        min_rank = TIER_ORDER[call.min_tier] if call.min_tier in SIZE_TIERS else 0
        want = sel.tier if call.model is None and call.tier is not None else call.tier
        waiter = _Waiter(sel, want, call.model, min_rank, frozenset(call.exclude))
        self._waiters.append(waiter)
        call.trace.waiting_for = sel.host.name  # left set when cancelled: the caller may report it
        try:
            with anyio.move_on_after(call.deadline - time.monotonic()):
                await waiter.event.wait()
        except BaseException:  # cancelled: a slot handed over meanwhile goes to the next waiter
            self._leave_queue(waiter)
            raise
        if waiter.state != _WAITING:
            call.trace.waiting_for = None
            return waiter.sel if waiter.state == _GRANTED else None
        self._leave_queue(waiter)
        ahead = sum(1 for w in self._waiters if w.sel.host is sel.host)
        raise self._deadline_error(
            call, f"still waiting for a free slot on {sel.host.name} ({sel.host.in_flight} in flight, {ahead} queued)"
        )

    def _leave_queue(self, waiter: _Waiter) -> None:
        if waiter.state == _GRANTED:
            self._release(waiter.sel.host)
        elif waiter.state == _WAITING:
            self._waiters.remove(waiter)
            waiter.sel.host.outstanding -= 1
        waiter.state = _RESELECT

    def _hand_over(self, host: Host) -> bool:
        """Give ``host``'s freed slot to the first waiter that should take it; False if none should.

        Its own waiters take it in order; a request waiting on another host takes it when it would
        finish sooner here than by waiting there (expected times as in selection).
        """
        if not host.enabled or not host.breaker.allows():
            self._requeue_waiters(host)  # its own waiters select again, elsewhere
            return False
        # An outlier keeps serving its own queue (it only has one when nothing else could serve
        # those requests) but takes no one from elsewhere.
        takes_others = not host.ejected or time.monotonic() >= host.ejected_until
        for index, waiter in enumerate(self._waiters):
            if waiter.sel.host is host:
                sel: Selection | None = waiter.sel
            elif takes_others:
                sel = self._move(waiter, host)
            else:
                continue
            if sel is None:
                continue
            del self._waiters[index]
            host.in_flight += 1
            host.peak_in_flight = max(host.peak_in_flight, host.in_flight)
            waiter.sel, waiter.state = sel, _GRANTED
            waiter.event.set()
            return True
        return False

    def _fill(self, host: Host) -> None:
        """Offer ``host``'s free slots to requests waiting elsewhere (it just came back)."""
        while host.free_slots > 0 and self._waiters and self._hand_over(host):
            host.free_slots -= 1

    def _move(self, waiter: _Waiter, host: Host) -> Selection | None:
        """Count ``waiter`` against ``host`` instead of the host it waits for, when ``host`` serves
        its request and would finish it sooner; its new selection, or None."""
        there = waiter.sel.host
        if _expected_ms(host, self._prior_ms, extra=1) >= _expected_ms(there, self._prior_ms, extra=0):
            return None
        sel = self._best(waiter.want, waiter.model, waiter.exclude, waiter.min_rank, only=host)
        if sel is not None:
            there.outstanding -= 1
            host.outstanding += 1
            if host.breaker.state is not BreakerState.CLOSED:
                host.breaker.on_dispatch()
        return sel

    def _requeue_waiters(self, host: Host) -> None:
        """Requests waiting for ``host`` select again: it just went out of rotation."""
        keep: deque[_Waiter] = deque()
        for waiter in self._waiters:
            if waiter.sel.host is host:
                host.outstanding -= 1
                waiter.state = _RESELECT
                waiter.event.set()
            else:
                keep.append(waiter)
        self._waiters = keep

    # requests ------------------------------------------------------------------------------------

    def _new_call(
        self,
        tier: Tier | None,
        model: str | None,
        min_tier: Tier | None,
        deadline: float | None,
        trace: CallTrace | None,
    ) -> _Call:
        now = time.monotonic()
        return _Call(
            tier=tier,
            model=model,
            min_tier=min_tier,
            deadline=now + self.call_deadline_s if deadline is None else deadline,
            started=now,
            trace=CallTrace() if trace is None else trace,
        )

    def _ready(self, call: _Call) -> Selection | None:
        """The fast path of :meth:`_next`: the best host when it has a free slot (taken), else None
        (no coroutine, no wait: most requests end here)."""
        if call.trace.hosts:
            return None
        try:
            sel = self.select(tier=call.tier, model=call.model, exclude=call.exclude, min_tier=call.min_tier)
        except NoHostAvailableError:
            return None
        if sel.host.free_slots <= 0:
            return None
        self._claim(sel.host)
        return sel

    async def _next(self, call: _Call) -> Selection:
        """The next attempt's host, with its slot taken: selects, waits for a slot or for a busy
        host's retry time as needed. Raises when no host is left or the deadline passes."""
        while True:
            if len(call.trace.hosts) >= self.max_attempts:
                raise AllHostsFailedError(f"all {call.trace.attempts} attempt(s) failed", call.trace.errors())
            try:
                sel = self.select(tier=call.tier, model=call.model, exclude=call.exclude, min_tier=call.min_tier)
            except NoHostAvailableError:
                if call.busy:
                    await self._back_off(call)
                    continue
                if call.trace.failures:
                    raise AllHostsFailedError(
                        f"all {call.trace.attempts} attempt(s) failed", call.trace.errors()
                    ) from None
                raise
            if self._claim(sel.host):
                return sel
            held = await self._queue(call, sel)
            if held is not None:
                return held

    async def _back_off(self, call: _Call) -> None:
        """Wait until the first busy host may be tried again (as it asked, or with backoff), then
        let the busy hosts be selected again. Raises DeadlineExceededError when that is too late."""
        name, until = min(call.busy.items(), key=lambda item: item[1])
        now = time.monotonic()
        if until >= call.deadline:
            raise self._deadline_error(
                call, f"{name} is busy and the retry it allows ({until - now:.3g} s from now) is past the deadline"
            )
        call.backoffs += 1
        await anyio.sleep(max(0.0, until - now))
        call.exclude.difference_update(call.busy)
        call.busy.clear()

    def _retry_at(self, call: _Call, exc: HostOverloadedError) -> float:
        """When a busy host may be tried again: after its Retry-After (capped), else a backoff."""
        if exc.retry_after_s is not None:
            wait = min(exc.retry_after_s, self.retry_after_cap_s)
        else:
            wait = min(BACKOFF_BASE_S * 2**call.backoffs, self.retry_after_cap_s)
            wait *= 1 + 0.2 * random.random()  # noqa: S311 - jitter, not security
        return time.monotonic() + wait

    def _attempt_limit(self, call: _Call, host: Host) -> float:
        """The limit of the attempt on ``host`` (already in ``call.trace.hosts``): the first-byte
        limit, or the time left when that is shorter; at most a third of the time left (not under
        ``min_attempt_s``) when another host could take the call over, so a host that hangs does
        not use up the call's whole time."""
        left = call.deadline - time.monotonic()
        limit = self.first_byte_timeout_s if self.first_byte_timeout_s < left else left
        share = left * ATTEMPT_SHARE
        if share >= limit or limit <= self.min_attempt_s:
            return limit
        # Only when the share binds; the scan stops at the first other host that serves the call.
        if len(self.hosts) == 1 or len(call.trace.hosts) >= self.max_attempts or not self._has_fallback(call, host):
            return limit
        return share if share > self.min_attempt_s else self.min_attempt_s

    def _has_fallback(self, call: _Call, host: Host) -> bool:
        """Whether a host other than ``host`` (and those the call already left) serves the call, as
        selection would find it (a size tier falls back to any other size tier). The first match
        ends the scan: this runs for every attempt of a multi-host pool whose share binds."""
        tier, model = call.tier, call.model
        min_rank = TIER_ORDER[call.min_tier] if call.min_tier in SIZE_TIERS else 0
        any_size = model is None and tier in SIZE_TIERS
        overrides = self.tier_overrides
        for other in self.hosts.values():
            if other is host or not other.enabled or other.name in call.exclude or not other.breaker.allows():
                continue
            for name in other.models:
                tiers = other.tiers_of(name, overrides)
                if _model_fits(name, tiers, model=model, tier=tier, min_rank=min_rank, any_size=any_size):
                    return True
        return False

    def _attempt_failed(self, call: _Call, host: Host, exc: BackendError) -> None:
        """Book a failed attempt; raises when the call must stop (the error is not the host's, or
        the deadline cut the attempt), returns when the next attempt may go to another host."""
        # A timeout that ends at the deadline is the caller's limit, not proof that the host hangs.
        cut = isinstance(exc, HostTimeoutError) and call.deadline - time.monotonic() < _DEADLINE_SLACK_S
        self._on_failure(host, exc, deadline_cut=cut)
        call.trace.failures.append((host.name, exc))
        if cut:
            raise self._deadline_error(call, f"the attempt on {host.name} was cut") from exc
        if not exc.failover:
            raise exc
        call.exclude.add(host.name)
        if isinstance(exc, HostOverloadedError):
            call.busy[host.name] = self._retry_at(call, exc)

    def _deadline_error(self, call: _Call, what: str) -> DeadlineExceededError:
        hosts = list(dict.fromkeys(call.trace.hosts))
        if call.trace.waiting_for and call.trace.waiting_for not in hosts:
            hosts.append(call.trace.waiting_for)
        tried = ", ".join(hosts) or "none"
        seconds = call.deadline - call.started
        return DeadlineExceededError(
            f"stopped at the call's deadline ({seconds:.3g} s) after {call.trace.attempts} attempt(s): {what}; "
            f"hosts tried: {tried}",
            call.trace.errors(),
            hosts=hosts,
        )

    async def _failover(
        self, call: _Call, send: Callable[[Selection, float], Awaitable[T]]
    ) -> tuple[Selection, T, float]:
        """Run ``send`` on the best host; on a host failure, on the next best (or the same busy host
        after its retry time), within the attempts and the deadline. Returns the selection, the
        result and the attempt's latency in ms; raises the request's own error, AllHostsFailedError
        or DeadlineExceededError."""
        while True:
            sel = self._ready(call) or await self._next(call)
            host = sel.host
            call.trace.hosts.append(host.name)
            limit = self._attempt_limit(call, host)
            started = time.perf_counter()
            handed_over = False
            try:
                result = await send(sel, limit)
            except BackendError as exc:
                self._attempt_failed(call, host, exc)
                continue
            finally:
                handed_over = self._release(host)
            latency = (time.perf_counter() - started) * 1000
            self._on_success(host, latency)
            if handed_over:
                # Let the request that took the slot over send it now: the caller's own work on
                # this answer (parsing, scoring, the ledger) would otherwise leave the host idle.
                await anyio.lowlevel.cancel_shielded_checkpoint()
            return sel, result, latency

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
        call = self._new_call(tier, model or (request.model or None), min_tier, deadline, trace)

        def send(sel: Selection, limit_s: float) -> Awaitable[ChatResponse]:
            return sel.host.backend.chat(request.for_model(sel.model), limit_s=limit_s)

        sel, response, _ = await self._failover(call, send)
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

    async def stream(
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
        call = self._new_call(tier, model or (request.model or None), min_tier, deadline, trace)
        while True:
            sel = await self._next(call)
            host = sel.host
            call.trace.hosts.append(host.name)
            limit = self._attempt_limit(call, host)
            started = time.perf_counter()
            yielded = False
            try:
                async for chunk in host.backend.stream(request.for_model(sel.model), limit_s=limit):
                    yielded = True
                    yield sel, chunk
            except BackendError as exc:
                if yielded:
                    interrupted = (
                        exc
                        if isinstance(exc, StreamInterruptedError)
                        else StreamInterruptedError(str(exc), host=host.name, status=exc.status)
                    )
                    self._on_failure(host, interrupted)
                    call.trace.failures.append((host.name, interrupted))
                    if interrupted is exc:
                        raise
                    raise interrupted from exc
                self._attempt_failed(call, host, exc)
                continue
            finally:
                self._release(host)  # also when the caller stops reading early (GeneratorExit)
            self._on_success(host, (time.perf_counter() - started) * 1000)
            return

    async def embed(
        self, request: EmbedRequest, *, model: str | None = None, deadline: float | None = None
    ) -> tuple[str, EmbedResponse]:
        def send(sel: Selection, limit_s: float) -> Awaitable[EmbedResponse]:
            return sel.host.backend.embed(request.for_model(sel.model), limit_s=limit_s)

        tier = Tier.EMBEDDING if model is None else None
        call = self._new_call(tier, model, None, deadline, None)
        sel, response, _ = await self._failover(call, send)
        return sel.host.name, response

    # bookkeeping ---------------------------------------------------------------------------------

    def _on_success(self, host: Host, latency_ms: float | None) -> None:
        host.served += 1
        if host.breaker.state is not BreakerState.CLOSED or host.breaker.failures:
            host.breaker.record_success()
            host.call_failed = False
        host.last_error = None
        if latency_ms is None or not math.isfinite(latency_ms):
            return
        a = self.ewma_alpha
        prev = host.latency_ewma_ms
        # An outlier's probe replaces the estimate it was sent to test.
        host.latency_ewma_ms = latency_ms if prev is None or host.ejected else a * latency_ms + (1 - a) * prev
        prior = self._prior_ms
        self._prior_ms = latency_ms if prior is None else a * latency_ms + (1 - a) * prior
        if self.outlier_factor > 0 and len(self.hosts) > 1:
            now = time.monotonic()
            if host.ejected or now >= host.next_outlier_check:
                host.next_outlier_check = now + _OUTLIER_CHECK_EVERY_S
                self._check_outlier(host, now)

    def _check_outlier(self, host: Host, now: float) -> None:
        """Eject ``host`` when its latency is far above its peers' (hosts sharing a model with it,
        so that a host serving only large models is never compared with one serving small ones);
        bring an ejected host back when its latest figure is in line again."""
        ewma = host.latency_ewma_ms
        peers = [
            h.latency_ewma_ms
            for h in _peers(host, self.hosts.values())
            if h.latency_ewma_ms is not None and not h.ejected
        ]
        if ewma is None or not peers:
            return
        typical = statistics.median(peers)
        outlier = ewma > self.outlier_factor * typical and ewma - typical > OUTLIER_MIN_GAP_MS
        if outlier and not host.ejected:
            host.ejected = True
            log.warning(
                "host %s is a slow outlier (%.0f ms against %.0f ms for its peers): no new work for %g s",
                host.name,
                ewma,
                typical,
                self.outlier_probe_s,
            )
            self._requeue_waiters(host)
        elif not outlier and host.ejected:
            host.ejected = False
            log.info("host %s is back in line (%.0f ms against %.0f ms for its peers)", host.name, ewma, typical)
        if host.ejected:
            host.ejected_until = now + self.outlier_probe_s

    def _on_failure(self, host: Host, exc: BackendError, *, deadline_cut: bool = False) -> None:
        """Count a failed attempt by cause; a host fault counts toward the breaker (opening it at
        once for a refused connection or a hung attempt, but not when the caller's deadline cut an
        attempt that may only have been slow)."""
        host.failed += 1
        host.failures[exc.fault] = host.failures.get(exc.fault, 0) + 1
        host.last_error = str(exc)
        if exc.host_fault:
            host.breaker.record_failure(force_open=exc.opens_breaker and not deadline_cut)
            # A health check alone no longer re-admits it (a cut attempt may only have been slow).
            host.call_failed = host.call_failed or not deadline_cut
            if host.breaker.state is BreakerState.OPEN:
                self._requeue_waiters(host)
        log.warning("host %s failed: %s", host.name, exc)

    async def aclose(self) -> None:
        for host in self.hosts.values():
            await host.backend.aclose()


def _expected_ms(host: Host, prior: float | None, *, extra: int) -> float:
    """A host's expected completion time for a request, as selection ranks it (``extra`` = 1 for a
    request not yet counted against the host)."""
    ewma = host.latency_ewma_ms
    if ewma is None:
        ewma = prior or 1.0
    queue = (host.outstanding + extra) / host.max_concurrency
    return ewma * queue if queue > 1.0 else ewma


def _peers(host: Host, hosts: Iterable[Host]) -> Iterable[Host]:
    models = host.models.keys()
    for other in hosts:
        if other is not host and other.enabled and not models.isdisjoint(other.models):
            yield other


def _model_fits(
    name: str, tiers: frozenset[Tier], *, model: str | None, tier: Tier | None, min_rank: int, any_size: bool = False
) -> bool:
    """Whether the model ``name`` (of ``tiers``) serves a request for ``model`` or ``tier``: a named
    model by name or family, no tier any chat model, ``any_size`` any size tier, else that tier;
    never one smaller than ``min_rank``."""
    if model is not None:
        if name != model and name.split(":")[0] != model:
            return False
    elif tier is None:
        if Tier.EMBEDDING in tiers:
            return False
    elif any_size:
        if tiers.isdisjoint(SIZE_TIERS):
            return False
    elif tier not in tiers:
        return False
    return not (min_rank and model_size_rank(tiers) < min_rank)
