"""Failover: a call's deadline, its attempts on one host after another, and busy hosts' retries.

Every call has a deadline (the caller's, or ``call_deadline_s`` from now) that its attempts share,
and each attempt a first-byte limit (``first_byte_timeout_s``). An attempt that another host could
take over gets at most a third of the time left (never under ``min_attempt_s``), so a host that
hangs costs a task part of its budget and the call fails over; the last candidate gets all the
time left. A connect error, timeout, 5xx, 503 or an unreadable 200 before the first token fails
over to another host, at most ``max_attempts`` attempts; after output has been streamed the error
goes to the caller. A host that says it is busy (429/503) and is the only one left is retried after
the ``Retry-After`` it sent (capped at ``retry_after_cap_s``) or a backoff, within the deadline. A
call that runs out of time, queued or not, raises :class:`DeadlineExceededError` naming the hosts
it tried.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio.lowlevel

from caelum_mcp.core.errors import (
    AllHostsFailedError,
    BackendError,
    DeadlineExceededError,
    HostOverloadedError,
    HostTimeoutError,
    NoHostAvailableError,
    StreamInterruptedError,
)
from caelum_mcp.core.types import SIZE_TIERS, ChatRequest, StreamChunk, Tier
from caelum_mcp.engine.hosts import TIER_ORDER, Host
from caelum_mcp.engine.pool.health import Health
from caelum_mcp.engine.pool.policy import PoolPolicy
from caelum_mcp.engine.pool.selection import Selection, Selector
from caelum_mcp.engine.pool.slots import Slots, SlotWaitExpired

T = TypeVar("T")

# An attempt that another host could take over gets at most this share of the time left.
ATTEMPT_SHARE = 1 / 3
# A busy host that did not say how long to wait is retried after 0.25 s, 0.5 s, 1 s, ... (+ jitter).
BACKOFF_BASE_S = 0.25
# A timeout this close to the call's deadline was the deadline's doing.
_DEADLINE_SLACK_S = 0.01


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
class Call:
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


class Failover:
    """Runs calls over the hosts ``selector`` ranks: slots from ``slots``, outcomes to ``health``."""

    def __init__(self, selector: Selector, slots: Slots, health: Health, policy: PoolPolicy) -> None:
        self.selector = selector
        self.slots = slots
        self.health = health
        self.hosts = selector.hosts
        self.max_attempts = policy.max_attempts
        self.call_deadline_s = policy.call_deadline_s
        self.first_byte_timeout_s = policy.first_byte_timeout_s
        self.retry_after_cap_s = policy.retry_after_cap_s
        self.min_attempt_s = policy.min_attempt_s

    def new_call(
        self,
        tier: Tier | None,
        model: str | None,
        min_tier: Tier | None,
        deadline: float | None,
        trace: CallTrace | None,
    ) -> Call:
        now = time.monotonic()
        return Call(
            tier=tier,
            model=model,
            min_tier=min_tier,
            deadline=now + self.call_deadline_s if deadline is None else deadline,
            started=now,
            trace=CallTrace() if trace is None else trace,
        )

    async def run(self, call: Call, send: Callable[[Selection, float], Awaitable[T]]) -> tuple[Selection, T, float]:
        """Run ``send`` on the best host; on a host failure, on the next best (or the same busy host
        after its retry time), within the attempts and the deadline. Returns the selection, the
        result and the attempt's latency in ms; raises the request's own error, AllHostsFailedError
        or DeadlineExceededError."""
        while True:
            sel = self._ready(call) or await self.next(call)
            host = sel.host
            call.trace.hosts.append(host.name)
            limit = self.attempt_limit(call, host)
            started = time.perf_counter()
            handed_over = False
            try:
                result = await send(sel, limit)
            except BackendError as exc:
                self.attempt_failed(call, host, exc)
                continue
            finally:
                handed_over = self.slots.release(host)
            latency = (time.perf_counter() - started) * 1000
            self.health.on_success(host, latency)
            if handed_over:
                # Let the request that took the slot over send it now: the caller's own work on
                # this answer (parsing, scoring, the ledger) would otherwise leave the host idle.
                await anyio.lowlevel.cancel_shielded_checkpoint()
            return sel, result, latency

    async def stream(
        self,
        request: ChatRequest,
        *,
        tier: Tier | None,
        model: str | None,
        min_tier: Tier | None,
        deadline: float | None,
        trace: CallTrace | None,
    ) -> AsyncGenerator[tuple[Selection, StreamChunk], None]:
        """Stream ``request`` from the best host; fails over only until the first chunk has been
        yielded (see :meth:`caelum_mcp.engine.pool.Pool.stream`). The call starts at the first chunk asked for."""
        call = self.new_call(tier, model or (request.model or None), min_tier, deadline, trace)
        while True:
            sel = await self.next(call)
            host = sel.host
            call.trace.hosts.append(host.name)
            limit = self.attempt_limit(call, host)
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
                    self.health.on_failure(host, interrupted)
                    call.trace.failures.append((host.name, interrupted))
                    if interrupted is exc:
                        raise
                    raise interrupted from exc
                self.attempt_failed(call, host, exc)
                continue
            finally:
                self.slots.release(host)  # also when the caller stops reading early (GeneratorExit)
            self.health.on_success(host, (time.perf_counter() - started) * 1000)
            return

    def _ready(self, call: Call) -> Selection | None:
        """The fast path of :meth:`next`: the best host when it has a free slot (taken), else None
        (no coroutine, no wait: most requests end here)."""
        if call.trace.hosts:
            return None
        try:
            sel = self.selector.select(tier=call.tier, model=call.model, exclude=call.exclude, min_tier=call.min_tier)
        except NoHostAvailableError:
            return None
        if sel.host.free_slots <= 0:
            return None
        self.slots.claim(sel.host)
        return sel

    async def next(self, call: Call) -> Selection:
        """The next attempt's host, with its slot taken: selects, waits for a slot or for a busy
        host's retry time as needed. Raises when no host is left or the deadline passes."""
        while True:
            if len(call.trace.hosts) >= self.max_attempts:
                raise AllHostsFailedError(f"all {call.trace.attempts} attempt(s) failed", call.trace.errors())
            try:
                sel = self.selector.select(
                    tier=call.tier, model=call.model, exclude=call.exclude, min_tier=call.min_tier
                )
            except NoHostAvailableError:
                if call.busy:
                    await self._back_off(call)
                    continue
                if call.trace.failures:
                    raise AllHostsFailedError(
                        f"all {call.trace.attempts} attempt(s) failed", call.trace.errors()
                    ) from None
                raise
            if self.slots.claim(sel.host):
                return sel
            held = await self._queue(call, sel)
            if held is not None:
                return held

    async def _queue(self, call: Call, sel: Selection) -> Selection | None:
        """Wait for a slot (see :meth:`Slots.wait`); the trace names the host while it waits."""
        min_rank = TIER_ORDER[call.min_tier] if call.min_tier in SIZE_TIERS else 0
        want = sel.tier if call.model is None and call.tier is not None else call.tier
        call.trace.waiting_for = sel.host.name  # left set when cancelled: the caller may report it
        try:
            held = await self.slots.wait(
                sel, want=want, model=call.model, min_rank=min_rank, exclude=call.exclude, deadline=call.deadline
            )
        except SlotWaitExpired as expired:
            raise self.deadline_error(call, str(expired)) from None
        call.trace.waiting_for = None
        return held

    async def _back_off(self, call: Call) -> None:
        """Wait until the first busy host may be tried again (as it asked, or with backoff), then
        let the busy hosts be selected again. Raises DeadlineExceededError when that is too late."""
        name, until = min(call.busy.items(), key=lambda item: item[1])
        now = time.monotonic()
        if until >= call.deadline:
            raise self.deadline_error(
                call, f"{name} is busy and the retry it allows ({until - now:.3g} s from now) is past the deadline"
            )
        call.backoffs += 1
        await anyio.sleep(max(0.0, until - now))
        call.exclude.difference_update(call.busy)
        call.busy.clear()

    def _retry_at(self, call: Call, exc: HostOverloadedError) -> float:
        """When a busy host may be tried again: after its Retry-After (capped), else a backoff."""
        if exc.retry_after_s is not None:
            wait = min(exc.retry_after_s, self.retry_after_cap_s)
        else:
            wait = min(BACKOFF_BASE_S * 2**call.backoffs, self.retry_after_cap_s)
            wait *= 1 + 0.2 * random.random()  # noqa: S311 - jitter, not security
        return time.monotonic() + wait

    def attempt_limit(self, call: Call, host: Host) -> float:
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
        if (
            len(self.hosts) == 1
            or len(call.trace.hosts) >= self.max_attempts
            or not self.selector.has_fallback(
                host, tier=call.tier, model=call.model, min_tier=call.min_tier, exclude=call.exclude
            )
        ):
            return limit
        return share if share > self.min_attempt_s else self.min_attempt_s

    def attempt_failed(self, call: Call, host: Host, exc: BackendError) -> None:
        """Book a failed attempt; raises when the call must stop (the error is not the host's, or
        the deadline cut the attempt), returns when the next attempt may go to another host."""
        # A timeout that ends at the deadline is the caller's limit, not proof that the host hangs.
        cut = isinstance(exc, HostTimeoutError) and call.deadline - time.monotonic() < _DEADLINE_SLACK_S
        self.health.on_failure(host, exc, deadline_cut=cut)
        call.trace.failures.append((host.name, exc))
        if cut:
            raise self.deadline_error(call, f"the attempt on {host.name} was cut") from exc
        if not exc.failover:
            raise exc
        call.exclude.add(host.name)
        if isinstance(exc, HostOverloadedError):
            call.busy[host.name] = self._retry_at(call, exc)

    def deadline_error(self, call: Call, what: str) -> DeadlineExceededError:
        """The error of a call stopped at its deadline: what stopped it and every host it tried."""
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
