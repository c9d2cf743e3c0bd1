"""Slots: each host's concurrency limit, and the requests waiting for a free slot.

Every host has its own concurrency limit (Ollama runs ``OLLAMA_NUM_PARALLEL`` requests, default 1,
and silently queues the rest, so the client must bound it). A request that finds no free slot
waits for one; when a slot frees on another host first, and taking it there is quicker than
waiting (expected completion times as selection ranks them), the request moves there. Requests
waiting for a host that goes out of rotation select again.

Taking a free slot never yields to the event loop and allocates nothing, and these are plain
methods rather than an async context manager, for the same reason: they run on every request
(``bench/pool_overhead.py``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field

import anyio

from caelum_mcp.core.types import Tier
from caelum_mcp.engine.hosts import BreakerState, Host
from caelum_mcp.engine.pool.selection import Selection, Selector

_WAITING, _GRANTED, _RESELECT = 0, 1, 2


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


class SlotWaitExpired(Exception):
    """The deadline passed while a request waited for a slot; says on which host and how busy it was.

    Failover turns it into :class:`DeadlineExceededError` naming every host the call tried.
    """


class Slots:
    """Per-host slots and the queue of waiting requests for the hosts ``selector`` ranks.

    ``outlier_probe_s``: a request claimed on an ejected host is its probe, so the next probe
    waits that long again.
    """

    def __init__(self, selector: Selector, outlier_probe_s: float) -> None:
        self.selector = selector
        self.outlier_probe_s = outlier_probe_s
        self.waiters: deque[_Waiter] = deque()

    def claim(self, host: Host) -> bool:
        """Count a request against ``host`` and take a free slot; False when none is free.

        The request counts as outstanding either way (so selection sees the queue); a False must
        be followed by :meth:`wait`.
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

    def release(self, host: Host) -> bool:
        """Give back the slot taken by :meth:`claim` (or handed over by :meth:`wait`); True when a
        waiting request took it over."""
        host.in_flight -= 1
        host.outstanding -= 1
        if self.waiters and self.hand_over(host):
            return True
        host.free_slots += 1
        return False

    async def wait(
        self,
        sel: Selection,
        *,
        want: Tier | None,
        model: str | None,
        min_rank: int,
        exclude: Collection[str],
        deadline: float,
    ) -> Selection | None:
        """Wait for a slot on ``sel.host`` (already counted by :meth:`claim`), or on another host
        that frees one first when moving there is quicker. Returns the selection that holds the
        slot, or None when the host was taken out of rotation meanwhile (select again). Raises
        :class:`SlotWaitExpired` at ``deadline`` (a ``time.monotonic()`` value)."""
        waiter = _Waiter(sel, want, model, min_rank, frozenset(exclude))
        self.waiters.append(waiter)
        try:
            with anyio.move_on_after(deadline - time.monotonic()):
                await waiter.event.wait()
        except BaseException:  # cancelled: a slot handed over meanwhile goes to the next waiter
            self._leave(waiter)
            raise
        if waiter.state != _WAITING:
            return waiter.sel if waiter.state == _GRANTED else None
        self._leave(waiter)
        host = sel.host
        raise SlotWaitExpired(
            f"still waiting for a free slot on {host.name} ({host.in_flight} in flight, {self.queued_for(host)} queued)"
        )

    def _leave(self, waiter: _Waiter) -> None:
        if waiter.state == _GRANTED:
            self.release(waiter.sel.host)
        elif waiter.state == _WAITING:
            self.waiters.remove(waiter)
            waiter.sel.host.outstanding -= 1
        waiter.state = _RESELECT

    def hand_over(self, host: Host) -> bool:
        """Give ``host``'s freed slot to the first waiter that should take it; False if none should.

        Its own waiters take it in order; a request waiting on another host takes it when it would
        finish sooner here than by waiting there (expected times as in selection).
        """
        if not host.enabled or not host.breaker.allows():
            self.requeue(host)  # its own waiters select again, elsewhere
            return False
        # An outlier keeps serving its own queue (it only has one when nothing else could serve
        # those requests) but takes no one from elsewhere.
        takes_others = not host.ejected or time.monotonic() >= host.ejected_until
        for index, waiter in enumerate(self.waiters):
            if waiter.sel.host is host:
                sel: Selection | None = waiter.sel
            elif takes_others:
                sel = self._move(waiter, host)
            else:
                continue
            if sel is None:
                continue
            del self.waiters[index]
            host.in_flight += 1
            host.peak_in_flight = max(host.peak_in_flight, host.in_flight)
            waiter.sel, waiter.state = sel, _GRANTED
            waiter.event.set()
            return True
        return False

    def fill(self, host: Host) -> None:
        """Offer ``host``'s free slots to requests waiting elsewhere (it just came back)."""
        while host.free_slots > 0 and self.waiters and self.hand_over(host):
            host.free_slots -= 1

    def _move(self, waiter: _Waiter, host: Host) -> Selection | None:
        """Count ``waiter`` against ``host`` instead of the host it waits for, when ``host`` serves
        its request and would finish it sooner; its new selection, or None."""
        there = waiter.sel.host
        selector = self.selector
        if selector.expected_ms(host, extra=1) >= selector.expected_ms(there, extra=0):
            return None
        sel = selector.best(waiter.want, waiter.model, waiter.exclude, waiter.min_rank, only=host)
        if sel is not None:
            there.outstanding -= 1
            host.outstanding += 1
            if host.breaker.state is not BreakerState.CLOSED:
                host.breaker.on_dispatch()
        return sel

    def requeue(self, host: Host) -> None:
        """Requests waiting for ``host`` select again: it just went out of rotation."""
        keep: deque[_Waiter] = deque()
        for waiter in self.waiters:
            if waiter.sel.host is host:
                host.outstanding -= 1
                waiter.state = _RESELECT
                waiter.event.set()
            else:
                keep.append(waiter)
        self.waiters = keep

    def queued_for(self, host: Host) -> int:
        """How many requests wait for a slot on ``host``."""
        return sum(1 for w in self.waiters if w.sel.host is host)
