"""Snapshots of the pool, Claude and the ledger, as models (for tools, resources and the CLI).

:class:`PoolAdministration` is what the ai supervisor gets as its ``pool_admin`` service: these
snapshots and the one switch (a host in or out of rotation). It is built from the parts it reads,
so this module does not depend on the composition root (:mod:`caelum_mcp.app`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio.to_thread
from pydantic import Field

from caelum_mcp.config import Config
from caelum_mcp.hosts import Host
from caelum_mcp.ledger import Ledger, LedgerSummary
from caelum_mcp.pool import Pool
from caelum_mcp.types import Frozen


class ModelStatus(Frozen):
    name: str
    tiers: list[str]
    parameters_b: float | None = None
    loaded: bool = False
    size_bytes: int | None = None  # the model's size as the host lists it (Ollama /api/tags): its memory when loaded


class FailureCounts(Frozen):
    """A host's failed attempts by cause (a failover, a retry and a failed call each count once)."""

    timeout: int = Field(default=0, description="no first byte within the attempt's limit")
    connect: int = Field(default=0, description="refused, or cut before a whole reply")
    http_5xx: int = Field(default=0, description="a 5xx before any output")
    overloaded: int = Field(default=0, description="429 / 503 / 529: busy")
    bad_body: int = Field(default=0, description="a 200 with an empty or unreadable body")
    interrupted: int = Field(default=0, description="a stream that broke after output")
    request: int = Field(default=0, description="not the host's fault (bad request, missing model)")


class HostStatus(Frozen):
    name: str
    kind: str
    url: str
    enabled: bool
    breaker: str = Field(description="closed (healthy), open (failing, cooling down) or half_open (probing)")
    healthy: bool
    embedded: bool
    version: str | None = None
    max_concurrency: int
    in_flight: int
    outstanding: int
    peak_in_flight: int
    served: int
    failed: int
    failures: FailureCounts = Field(default_factory=FailureCounts, description="failed attempts by cause")
    outlier: bool = Field(
        default=False, description="far slower than its peers: no new work until a probe shows it recovered"
    )
    latency_ewma_ms: float | None = None
    last_error: str | None = None
    models: list[ModelStatus]


class ClaudeStatus(Frozen):
    enabled: bool
    configured: bool
    model: str
    daily_budget_usd: float | None
    spent_today_usd: float


class StatusReport(Frozen):
    uptime_s: float
    config_source: str
    confidence_threshold: float
    embedded: str
    tiers_available: list[str]
    hosts: list[HostStatus]
    claude: ClaudeStatus
    ledger: LedgerSummary


def host_status(host: Host, pool: Pool) -> HostStatus:
    health = host.last_health
    return HostStatus(
        name=host.name,
        kind=host.kind,
        url=host.backend.base_url or "(provider default)",
        enabled=host.enabled,
        breaker=host.breaker.state.value,
        healthy=host.enabled and host.breaker.state.value == "closed" and bool(health and health.ok),
        embedded=host.embedded,
        version=health.version if health else None,
        max_concurrency=host.max_concurrency,
        in_flight=host.in_flight,
        outstanding=host.outstanding,
        peak_in_flight=host.peak_in_flight,
        served=host.served,
        failed=host.failed,
        failures=FailureCounts(
            **{("http_5xx" if cause == "5xx" else cause): n for cause, n in host.failures.items() if n}
        ),
        outlier=host.ejected,
        latency_ewma_ms=None if host.latency_ewma_ms is None else round(host.latency_ewma_ms, 1),
        last_error=host.last_error,
        models=[
            ModelStatus(
                name=name,
                tiers=sorted(t.value for t in host.tiers_of(name, pool.tier_overrides)),
                parameters_b=info.parameters_b,
                loaded=info.loaded,
                size_bytes=info.size_bytes,
            )
            for name, info in host.models.items()
        ],
    )


class PoolAdministration:
    """Pool views and the enable switch, over the running pool, ledger and config."""

    def __init__(
        self,
        *,
        config: Config,
        pool: Pool,
        ledger: Ledger,
        claude_configured: bool,
        embedded_note: Callable[[], str] = lambda: "",
        started_at: float | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.ledger = ledger
        self.claude_configured = claude_configured
        self.embedded_note = embedded_note
        self.started_at = time.time() if started_at is None else started_at

    def status(self) -> StatusReport:
        """The snapshot, reading the ledger here: for the CLI; async code calls :meth:`astatus`."""
        return self._report(self.ledger.summary())

    async def astatus(self) -> StatusReport:
        """The snapshot, with the ledger read in a worker thread so that the event loop keeps
        serving other calls while SQLite works."""
        return self._report(await anyio.to_thread.run_sync(self.ledger.summary))

    def _report(self, ledger: LedgerSummary) -> StatusReport:
        config = self.config
        return StatusReport(
            uptime_s=round(time.time() - self.started_at, 1),
            config_source=config.source,
            confidence_threshold=config.router.confidence_threshold,
            embedded=self.embedded_note() or config.embedded,
            tiers_available=sorted(t.value for t in self.pool.available_tiers()),
            hosts=[host_status(h, self.pool) for h in self.pool.hosts.values()],
            claude=ClaudeStatus(
                enabled=config.claude.enabled,
                configured=self.claude_configured,
                model=config.claude.model,
                daily_budget_usd=config.claude.daily_budget_usd,
                spent_today_usd=round(ledger.claude_spend_today_usd, 6),
            ),
            ledger=ledger,
        )

    async def set_host_enabled(self, name: str, enabled: bool) -> HostStatus:
        """Take a host out of rotation, or put it back (and probe it at once)."""
        host = self.pool.set_enabled(name, enabled)
        if enabled:
            await self.pool.refresh_host(host)
        return host_status(host, self.pool)
