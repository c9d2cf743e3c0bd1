"""A pool host: one model server, its circuit breaker, its models and the tiers they count as.

:class:`Host` holds what the pool knows about one server (slots, latency, failures by cause, the
models it lists); :class:`CircuitBreaker` decides whether requests may go to it; the tier helpers
say what a model is (micro < 2B, small < 6B, full < 14B, large, plus code and embedding) and order
tiers for fallback and escalation. The pool (:mod:`caelum_mcp.engine.pool`) owns the mutable state; its
tier table (:class:`caelum_mcp.engine.pool.selection.TierTable`) is how the pool asks :meth:`Host.tiers_of`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from caelum_mcp.core.errors import FAULTS
from caelum_mcp.core.types import SIZE_TIERS, HealthReport, ModelInfo, Tier, size_from_model_name, tier_for_size
from caelum_mcp.engine.backends.base import Backend

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


def _no_failures() -> dict[str, int]:
    return dict.fromkeys(FAULTS, 0)


@dataclass
class Host:
    """One server in the pool; mutable state is owned by the pool.

    ``outstanding`` counts the requests sent to the host: in flight plus waiting for one of its
    ``max_concurrency`` slots. ``failures`` counts failed attempts by cause (see
    :data:`caelum_mcp.core.errors.FAULTS`). ``ejected`` marks an outlier: no new work before
    ``ejected_until`` (a ``time.monotonic()`` value) while another host can take it.
    ``call_failed``: its last real call failed through its fault, so a health check alone does not
    re-admit it (the pool's one-token chat probe must answer too). ``last_health`` None: not
    probed yet (unknown, not healthy).
    """

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
    failures: dict[str, int] = field(default_factory=_no_failures)
    latency_ewma_ms: float | None = None
    last_health: HealthReport | None = None
    last_error: str | None = None
    embedded: bool = False
    ejected: bool = False
    ejected_until: float = 0.0
    call_failed: bool = False
    next_outlier_check: float = field(default=0.0, repr=False)
    free_slots: int = field(default=-1, repr=False)
    _tiers: dict[str, frozenset[Tier]] = field(default_factory=dict)
    _tiers_key: tuple[int, int, int] = (0, 0, 0)

    def __post_init__(self) -> None:
        if self.free_slots < 0:
            self.free_slots = self.max_concurrency

    @property
    def kind(self) -> str:
        return self.backend.kind

    @property
    def load(self) -> float:
        return self.outstanding / self.max_concurrency

    def tiers_of(self, model: str, global_overrides: Mapping[str, Tier]) -> frozenset[Tier]:
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

    def _compute_tiers(self, model: str, global_overrides: Mapping[str, Tier]) -> set[Tier]:
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


TIER_ORDER = {Tier.MICRO: 0, Tier.SMALL: 1, Tier.FULL: 2, Tier.LARGE: 3, Tier.CODE: 4, Tier.EMBEDDING: 5}


def tier_rank(tier: Tier) -> int:
    return TIER_ORDER[tier]


def model_size_rank(tiers: Collection[Tier]) -> int:
    """The rank of a model's size tier (micro 0 … large 3) from the tiers it counts as.

    A model with no size tier (configured as ``code`` only) is taken as large enough for any task:
    the user said what it is for.
    """
    ranks = [TIER_ORDER[t] for t in tiers if t in SIZE_TIERS]
    return max(ranks) if ranks else TIER_ORDER[Tier.LARGE]


def nearest_tiers(tier: Tier) -> list[Tier]:
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
