"""Snapshots of the pool, Claude and the ledger, as models (for tools, resources and the CLI).

:class:`PoolAdministration` is what the ai supervisor gets as its ``pool_admin`` service: these
snapshots and the one switch (a host in or out of rotation). It is built from the parts it reads,
so this module does not depend on the composition root (:mod:`caelum_mcp.serving.app`).

The report's ``kinds`` table (:func:`kind_table`) is per model and task kind: the answers the
ledger counted, the share of a local model's answers that cleared the threshold (served locally),
the labels real use gave (:mod:`caelum_mcp.engine.audit`), what the calibration measured (accuracy, ECE,
AUROC, at which threshold), which entry or prior calibrates the pair, and whether routing treats the
model as competent for the kind (:mod:`caelum_mcp.engine.competence`). At most :data:`MAX_KIND_ROWS` rows,
most answered first.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio.to_thread
from pydantic import Field

from caelum_mcp.core.types import Frozen
from caelum_mcp.engine.calibration import USER_FILE, CalibrationTable
from caelum_mcp.engine.competence import assess
from caelum_mcp.engine.config import Config
from caelum_mcp.engine.hosts import Host
from caelum_mcp.engine.ledger import KindFigures, LabelCounts, Ledger, LedgerSummary
from caelum_mcp.engine.pool import Pool

# Rows of the per-model-and-kind table: a pool of a dozen models over nine kinds fits; beyond it
# the least answered pairs are left out (the result budget may cut further).
MAX_KIND_ROWS = 60


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


class KindStatus(Frozen):
    """One model on one task kind: what it answered, what it measured, how it is calibrated.

    ``local_share``: of a local model's scored answers, the share that cleared the threshold (served
    locally, not escalated). ``labels``/``labelled_accuracy``: answers labelled by real use (Claude
    audits, escalations) and the share right. ``measured_*``, ``clear_accuracy`` (among answers that
    cleared), ``ece``, ``auroc``: the pair's own calibration entry, held out; ``threshold`` is the one
    they are at (the configured one when unmeasured). ``calibration``: the entry or prior used.
    ``competent``: measured at or above ``[router] competence_target`` (None: not measured).
    """

    model: str
    kind: str
    local: bool
    answers: int
    local_share: float | None
    labels: int
    labelled_accuracy: float | None
    measured_accuracy: float | None
    clear_accuracy: float | None
    ece: float | None
    auroc: float | None = None
    measured_n: int = 0
    threshold: float
    calibration: str
    competent: bool | None = None


class StatusReport(Frozen):
    uptime_s: float
    config_source: str
    confidence_threshold: float
    embedded: str
    tiers_available: list[str]
    hosts: list[HostStatus]
    claude: ClaudeStatus
    ledger: LedgerSummary
    kinds: list[KindStatus] = Field(default_factory=list, description="per model and task kind")


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
                tiers=sorted(t.value for t in pool.tiers.of(host, name)),
                parameters_b=info.parameters_b,
                loaded=info.loaded,
                size_bytes=info.size_bytes,
            )
            for name, info in host.models.items()
        ],
    )


def kind_table(
    figures: list[KindFigures],
    labels: list[LabelCounts],
    table: CalibrationTable | None,
    config: Config,
    local_models: set[str],
) -> list[KindStatus]:
    """The per-(model, kind) rows: every pair the ledger counted answers or labels for, and every
    local model of the pool on each kind the table measured it on; most answered first."""
    answered: dict[tuple[str, str], KindFigures] = {}
    claude_pairs: set[tuple[str, str]] = set()
    for figure in figures:
        key = (figure.model, figure.kind)
        if figure.outcome == "claude":
            claude_pairs.add(key)
        held = answered.get(key)
        if held is None:
            answered[key] = figure
        else:  # a model that answered both as a local and a Claude model (a renamed host): add them up
            answered[key] = held.model_copy(
                update={
                    "answers": held.answers + figure.answers,
                    "scored": held.scored + figure.scored,
                    "cleared": held.cleared + figure.cleared,
                }
            )
    labelled = {(c.model, c.kind): c for c in labels}
    measured = {key for key in table.entries if key[0] in local_models} if table is not None else set()
    pairs = sorted({*answered, *labelled, *measured}, key=lambda k: (-_answers(answered.get(k)), k))
    threshold = config.router.confidence_threshold
    rows = []
    for model, kind in pairs[:MAX_KIND_ROWS]:
        f = answered.get((model, kind))
        c = labelled.get((model, kind))
        local = (model, kind) not in claude_pairs and model != config.claude.model
        entry, label = (None, "calibration off: the raw score") if table is None else table.lookup(model, kind)
        exact = table is not None and (model, kind) in table.entries
        verdict = (
            assess(table, model, kind, target=config.router.competence_target, threshold=threshold)
            if table is not None and local
            else None
        )
        rows.append(
            KindStatus(
                model=model,
                kind=kind,
                local=local,
                answers=f.answers if f is not None else 0,
                local_share=round(f.cleared / f.scored, 4) if local and f is not None and f.scored else None,
                labels=c.labelled if c is not None else 0,
                labelled_accuracy=round(c.correct / c.labelled, 4) if c is not None and c.labelled else None,
                measured_accuracy=_rounded(entry.accuracy) if entry is not None and exact else None,
                clear_accuracy=_rounded(entry.clear_accuracy) if entry is not None and exact else None,
                ece=_rounded(entry.ece) if entry is not None and exact else None,
                auroc=_rounded(entry.auroc) if entry is not None and exact else None,
                measured_n=entry.n if entry is not None and exact else 0,
                threshold=entry.threshold if entry is not None and exact else threshold,
                calibration=label,
                competent=verdict.competent if verdict is not None else None,
            )
        )
    return rows


def _answers(f: KindFigures | None) -> int:
    return f.answers if f is not None else 0


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


class PoolAdministration:
    """Pool views and the enable switch, over the running pool, ledger and config.

    ``calibration`` is the table the router calibrates with; by default the same files the router
    reads at start (the shipped table, overridden by ``<data dir>/calibration.json``), or none when
    ``[router] calibration`` is off.
    """

    def __init__(
        self,
        *,
        config: Config,
        pool: Pool,
        ledger: Ledger,
        claude_configured: bool,
        embedded_note: Callable[[], str] = lambda: "",
        started_at: float | None = None,
        calibration: CalibrationTable | None = None,
    ) -> None:
        if calibration is None and config.router.calibration:
            calibration = CalibrationTable.load(
                config.data_dir / USER_FILE, threshold=config.router.confidence_threshold
            )
        self.calibration = calibration
        self.config = config
        self.pool = pool
        self.ledger = ledger
        self.claude_configured = claude_configured
        self.embedded_note = embedded_note
        self.started_at = time.time() if started_at is None else started_at

    def status(self) -> StatusReport:
        """The snapshot, reading the ledger here: for the CLI; async code calls :meth:`astatus`."""
        return self._report(*self._read())

    async def astatus(self) -> StatusReport:
        """The snapshot, with the ledger read in a worker thread so that the event loop keeps
        serving other calls while SQLite works."""
        return self._report(*await anyio.to_thread.run_sync(self._read))

    def kinds(self) -> list[KindStatus]:
        """The per-(model, kind) table alone (blocking: two small reads of the ledger)."""
        return self._kinds(
            self.ledger.kind_figures(self.config.router.confidence_threshold), self.ledger.label_counts()
        )

    def _read(self) -> tuple[LedgerSummary, list[KindStatus]]:
        return self.ledger.summary(), self.kinds()

    def _kinds(self, figures: list[KindFigures], labels: list[LabelCounts]) -> list[KindStatus]:
        local = {name for host in self.pool.hosts.values() for name in host.models}
        return kind_table(figures, labels, self.calibration, self.config, local)

    def _report(self, ledger: LedgerSummary, kinds: list[KindStatus]) -> StatusReport:
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
            kinds=kinds,
        )

    async def set_host_enabled(self, name: str, enabled: bool) -> HostStatus:
        """Take a host out of rotation, or put it back (and probe it at once)."""
        host = self.pool.set_enabled(name, enabled)
        if enabled:
            await self.pool.refresh_host(host)
        return host_status(host, self.pool)
