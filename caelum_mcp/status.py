"""Snapshots of the pool, Claude and the ledger, as models (for tools, resources and the CLI)."""

from __future__ import annotations

import time

from pydantic import Field

from caelum_mcp.app import AppState
from caelum_mcp.ledger import LedgerSummary
from caelum_mcp.pool import Host, Pool
from caelum_mcp.types import Frozen


class ModelStatus(Frozen):
    name: str
    tiers: list[str]
    parameters_b: float | None = None
    loaded: bool = False


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
        latency_ewma_ms=None if host.latency_ewma_ms is None else round(host.latency_ewma_ms, 1),
        last_error=host.last_error,
        models=[
            ModelStatus(
                name=name,
                tiers=sorted(t.value for t in host.tiers_of(name, pool.tier_overrides)),
                parameters_b=info.parameters_b,
                loaded=info.loaded,
            )
            for name, info in host.models.items()
        ],
    )


def build_status(state: AppState) -> StatusReport:
    config = state.config
    return StatusReport(
        uptime_s=round(time.time() - state.started_at, 1),
        config_source=config.source,
        confidence_threshold=config.router.confidence_threshold,
        embedded=state.embedded_note or config.embedded,
        tiers_available=sorted(t.value for t in state.pool.available_tiers()),
        hosts=[host_status(h, state.pool) for h in state.pool.hosts.values()],
        claude=ClaudeStatus(
            enabled=config.claude.enabled,
            configured=state.claude is not None,
            model=config.claude.model,
            daily_budget_usd=config.claude.daily_budget_usd,
            spent_today_usd=round(state.ledger.claude_spend_today(), 6),
        ),
        ledger=state.ledger.summary(),
    )
