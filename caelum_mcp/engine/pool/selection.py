"""Selection: which host and model serve a request, and the figures that rank them.

- candidates are enabled hosts whose circuit breaker lets a request through and that serve the
  wanted model, or a model of the wanted tier (falling back to the nearest tier that exists);
- among them the lowest *expected completion time* wins: the host's latency EWMA, times its queue
  (``(outstanding + 1) / slots``) once every slot is taken. A free fast host beats a free slow one,
  and a busy fast host beats an idle slow one until its queue outweighs the difference;
- a due probe (a half-open breaker, or an ejected outlier's turn) goes first, an outlier last;
- what tiers a model counts as comes from one :class:`TierTable`: the host's own overrides, then
  the pool's, then the model's name and size.

Selection is one pass over the hosts without intermediate objects: it runs on every request
(``bench/pool_overhead.py``).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping
from typing import NamedTuple

from caelum_mcp.core.errors import NoHostAvailableError, echo
from caelum_mcp.core.types import SIZE_TIERS, Tier
from caelum_mcp.engine.hosts import TIER_ORDER, BreakerState, Host, model_size_rank, nearest_tiers, tier_rank


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


class TierTable:
    """The one answer to "what tiers does this model count as" for every part of the pool.

    ``overrides`` (model name -> tier) applies to every host, below each host's own table
    (:attr:`Host.tier_overrides`); a model in neither is classed by its name and size. Answers are
    memoised on the host (:meth:`Host.tiers_of`), so asking on every request is cheap.
    """

    __slots__ = ("overrides",)

    def __init__(self, overrides: Mapping[str, Tier]) -> None:
        self.overrides = overrides

    def of(self, host: Host, model: str) -> frozenset[Tier]:
        return host.tiers_of(model, self.overrides)

    def available(self, hosts: Iterable[Host]) -> set[Tier]:
        """Every tier some model of an enabled host counts as."""
        tiers: set[Tier] = set()
        for host in hosts:
            if host.enabled:
                for model in host.models:
                    tiers |= host.tiers_of(model, self.overrides)
        return tiers

    def first_chat_model(self, host: Host) -> str | None:
        """The first model of ``host`` that is not an embedding model, or None."""
        return next((m for m in host.models if Tier.EMBEDDING not in host.tiers_of(m, self.overrides)), None)


class Selector:
    """Ranks the hosts of ``hosts`` (the pool's own dict, shared) for each request.

    ``prior_ms`` is the latency EWMA over every host: what a host without figures of its own is
    assumed to take. :meth:`record_latency` keeps it and each host's EWMA.
    """

    def __init__(self, hosts: dict[str, Host], tiers: TierTable, ewma_alpha: float) -> None:
        self.hosts = hosts
        self.tiers = tiers
        self.ewma_alpha = ewma_alpha
        self.prior_ms: float | None = None

    def record_latency(self, host: Host, latency_ms: float) -> None:
        """Fold one answer's (finite) latency into the host's EWMA and the pool-wide prior."""
        a = self.ewma_alpha
        prev = host.latency_ewma_ms
        # An outlier's probe replaces the estimate it was sent to test.
        host.latency_ewma_ms = latency_ms if prev is None or host.ejected else a * latency_ms + (1 - a) * prev
        prior = self.prior_ms
        self.prior_ms = latency_ms if prior is None else a * latency_ms + (1 - a) * prior

    def expected_ms(self, host: Host, *, extra: int) -> float:
        """A host's expected completion time for a request, as selection ranks it (``extra`` = 1
        for a request not yet counted against the host)."""
        ewma = host.latency_ewma_ms
        if ewma is None:
            ewma = self.prior_ms or 1.0
        queue = (host.outstanding + extra) / host.max_concurrency
        return ewma * queue if queue > 1.0 else ewma

    def best(
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
        overrides = self.tiers.overrides
        prior = self.prior_ms or 1.0  # no figures at all: every host alike, so load decides
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
                if not model_fits(name, tiers, model=model, tier=tier, min_rank=min_rank):
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
        sel = self.best(tier, model, exclude, min_rank)
        if sel is None and model is None and tier in SIZE_TIERS:
            for alt in nearest_tiers(tier):
                if TIER_ORDER[alt] < min_rank:
                    continue
                sel = self.best(alt, None, exclude, min_rank)
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

    def has_fallback(
        self, host: Host, *, tier: Tier | None, model: str | None, min_tier: Tier | None, exclude: Collection[str]
    ) -> bool:
        """Whether a host other than ``host`` (and those in ``exclude``) serves the request, as
        :meth:`select` would find it (a size tier falls back to any other size tier). The first
        match ends the scan: failover asks this for every attempt of a multi-host pool."""
        min_rank = TIER_ORDER[min_tier] if min_tier in SIZE_TIERS else 0
        any_size = model is None and tier in SIZE_TIERS
        overrides = self.tiers.overrides
        for other in self.hosts.values():
            if other is host or not other.enabled or other.name in exclude or not other.breaker.allows():
                continue
            for name in other.models:
                tiers = other.tiers_of(name, overrides)
                if model_fits(name, tiers, model=model, tier=tier, min_rank=min_rank, any_size=any_size):
                    return True
        return False

    def eligible_models(self, *, min_tier: Tier | None = None, code: bool = False) -> list[Eligible]:
        """Models that could serve a chat now: on an enabled host whose breaker lets requests through,
        not embedding models, of size tier ``min_tier`` or larger, and code models if ``code``."""
        min_rank = TIER_ORDER[min_tier] if min_tier in SIZE_TIERS else 0
        found = []
        for host in self.hosts.values():
            if not host.enabled or not host.breaker.allows():
                continue
            for name in host.models:
                tiers = self.tiers.of(host, name)
                if Tier.EMBEDDING in tiers or (code and Tier.CODE not in tiers):
                    continue
                rank = model_size_rank(tiers)
                if rank >= min_rank:
                    found.append(Eligible(name, host.name, SIZE_TIERS[rank], Tier.CODE in tiers))
        return found

    def describe_models(self) -> str:
        """Each host, its state and its models, for error messages."""
        parts = []
        for h in self.hosts.values():
            state = "disabled" if not h.enabled else h.breaker.state.value
            if h.ejected and state == "closed":
                state = "slow outlier"
            elif h.last_health is None and state == "closed":
                state = "unknown: not probed yet"
            parts.append(f"{h.name}[{state}]: {', '.join(h.models) or 'no models'}")
        return "; ".join(parts) or "no hosts configured"


def model_fits(
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
