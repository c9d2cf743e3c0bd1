"""Health: circuit breakers, health checks, outlier ejection and the probes that re-admit a host.

- every answer and every failed attempt is booked here: a success closes a host's breaker and
  feeds its latency EWMA; consecutive failures open the breaker, and a refused connection or an
  attempt that hit the first-byte limit (a host that hangs) opens it at once. After a cooldown one
  half-open probe (a request or the background health check) decides whether it closes again;
- outlier ejection (as Envoy's): a host whose latency EWMA is far above its peers' (``outlier_factor``
  times the median of the hosts sharing a model with it) gets no new work while another host can
  take it; every ``outlier_probe_s`` one request probes it, and a quick answer brings it back;
- health checks are not model calls: each host's check (and model list) has its own limit
  (``health_timeout_s``) and the background loop probes hosts independently, so a host that hangs
  delays no other host's check. A host never probed yet is unknown: it lists no models, so it
  serves nothing. A host whose real calls failed is not re-admitted by a health check alone: a
  one-token chat (within ``call_probe_timeout_s``) must answer too.

A host taken out of rotation here hands its waiting requests back to :class:`~caelum_mcp.engine.pool.slots.Slots`
to select again; one that comes back is offered to requests waiting elsewhere.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Iterable

import anyio

from caelum_mcp.core.errors import BackendError
from caelum_mcp.core.types import ChatMessage, ChatRequest, EmbedRequest, HealthReport
from caelum_mcp.engine.hosts import BreakerState, Host
from caelum_mcp.engine.pool.policy import PoolPolicy
from caelum_mcp.engine.pool.selection import Selector
from caelum_mcp.engine.pool.slots import Slots

# The records keep the name of the module callers configure logging for.
log = logging.getLogger("caelum_mcp.engine.pool")

# Outliers: a host must be slower than its peers by at least this much too (a 5 ms host beside
# 1 ms ones is noise, not an outlier).
OUTLIER_MIN_GAP_MS = 100.0
# An outlier check is a pass over the hosts: at most this often per host.
_OUTLIER_CHECK_EVERY_S = 0.05


class Health:
    """Books outcomes and probes the hosts ``selector`` ranks, within ``policy``'s limits."""

    def __init__(self, selector: Selector, slots: Slots, policy: PoolPolicy) -> None:
        self.selector = selector
        self.slots = slots
        self.hosts = selector.hosts
        self.outlier_factor = policy.outlier_factor
        self.outlier_probe_s = policy.outlier_probe_s
        self.health_timeout_s = policy.health_timeout_s
        self.call_probe_timeout_s = policy.call_probe_timeout_s

    # outcomes of calls -----------------------------------------------------------------------------

    def on_success(self, host: Host, latency_ms: float | None) -> None:
        """Book an answer: the breaker closes, the latency joins the EWMA, outliers are checked."""
        host.served += 1
        if host.breaker.state is not BreakerState.CLOSED or host.breaker.failures:
            host.breaker.record_success()
            host.call_failed = False
        host.last_error = None
        if latency_ms is None or not math.isfinite(latency_ms):
            return
        self.selector.record_latency(host, latency_ms)
        if self.outlier_factor > 0 and len(self.hosts) > 1:
            now = time.monotonic()
            if host.ejected or now >= host.next_outlier_check:
                host.next_outlier_check = now + _OUTLIER_CHECK_EVERY_S
                self.check_outlier(host, now)

    def on_failure(self, host: Host, exc: BackendError, *, deadline_cut: bool = False) -> None:
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
                self.slots.requeue(host)
        log.warning("host %s failed: %s", host.name, exc)

    def check_outlier(self, host: Host, now: float) -> None:
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
            self.slots.requeue(host)
        elif not outlier and host.ejected:
            host.ejected = False
            log.info("host %s is back in line (%.0f ms against %.0f ms for its peers)", host.name, ewma, typical)
        if host.ejected:
            host.ejected_until = now + self.outlier_probe_s

    # probes ------------------------------------------------------------------------------------------

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
            self.slots.requeue(host)
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
                self.slots.requeue(host)
                return report
            host.call_failed = False
        host.breaker.record_success()
        host.last_error = None
        self.slots.fill(host)
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
        chat = self.selector.tiers.first_chat_model(host)
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

    async def run_checks(self, interval_s: float) -> None:
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


def _peers(host: Host, hosts: Iterable[Host]) -> Iterable[Host]:
    models = host.models.keys()
    for other in hosts:
        if other is not host and other.enabled and not models.isdisjoint(other.models):
            yield other
