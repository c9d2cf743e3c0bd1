"""The pool's settings as one immutable object: what :class:`caelum_mcp.engine.pool.Pool` is built with.

:class:`PoolPolicy` holds every limit the pool's concerns read (failover's deadlines and attempts,
health's time limits and outlier ejection, selection's latency weight and tier table). It is
frozen: a pool built from it never sees it change, so each concern may keep the figures it needs.
Build it from the ``[pool]`` and ``[tiers]`` settings with :meth:`PoolPolicy.from_config`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import TYPE_CHECKING

from caelum_mcp.core.types import Tier

if TYPE_CHECKING:
    from caelum_mcp.engine.config import PoolConfig

# Defaults of the [pool] settings of the same names (caelum_mcp.engine.config.PoolConfig).
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_EWMA_ALPHA = 0.3
DEFAULT_REQUEST_TIMEOUT_S = 300.0
DEFAULT_CALL_DEADLINE_S = 300.0
DEFAULT_FIRST_BYTE_TIMEOUT_S = 120.0
DEFAULT_RETRY_AFTER_CAP_S = 30.0
DEFAULT_HEALTH_TIMEOUT_S = 5.0
# The one-token chat that re-admits a host whose calls failed: room for a cold model to load.
DEFAULT_CALL_PROBE_TIMEOUT_S = 30.0
# An attempt that another host could take over gets at least this long (a small budget is not cut
# into slices no answer fits in).
DEFAULT_MIN_ATTEMPT_S = 5.0
# Outliers: how far above the median of its peers a host's latency must be, and how often an
# ejected host is probed.
DEFAULT_OUTLIER_FACTOR = 5.0
DEFAULT_OUTLIER_PROBE_S = 30.0

# Settings that may be 0 (no wait, no ejection); every other number must be above 0.
_MAY_BE_ZERO = frozenset({"retry_after_cap_s", "outlier_factor"})


@dataclass(frozen=True, slots=True)
class PoolPolicy:
    """How the pool treats its hosts. See :mod:`caelum_mcp.engine.pool` for what each setting does.

    ``call_deadline_s`` is a call's deadline when the caller gives none; ``first_byte_timeout_s``
    each attempt's limit; ``min_attempt_s`` the shortest slice of a call's time an attempt gets when
    another host could take over; ``max_attempts`` the attempts of one call; ``retry_after_cap_s``
    the longest ``Retry-After`` honoured. ``health_timeout_s`` bounds each host's health check,
    ``call_probe_timeout_s`` the one-token chat that re-admits a host whose calls failed;
    ``outlier_factor`` (0: no ejection) and ``outlier_probe_s`` tune outlier ejection.
    ``ewma_alpha`` weighs the newest latency figure. ``tiers`` (model name -> tier) applies to
    every host, below each host's own table. ``request_timeout_s`` is kept for the HTTP client
    built beside the pool (other exchanges).
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    ewma_alpha: float = DEFAULT_EWMA_ALPHA
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    call_deadline_s: float = DEFAULT_CALL_DEADLINE_S
    first_byte_timeout_s: float = DEFAULT_FIRST_BYTE_TIMEOUT_S
    retry_after_cap_s: float = DEFAULT_RETRY_AFTER_CAP_S
    outlier_factor: float = DEFAULT_OUTLIER_FACTOR
    outlier_probe_s: float = DEFAULT_OUTLIER_PROBE_S
    health_timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S
    call_probe_timeout_s: float = DEFAULT_CALL_PROBE_TIMEOUT_S
    min_attempt_s: float = DEFAULT_MIN_ATTEMPT_S
    tiers: Mapping[str, Tier] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name == "tiers" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            floor_ok = value >= 0 if spec.name in _MAY_BE_ZERO else value > 0
            if not (math.isfinite(value) and floor_ok):
                least = "0 or more" if spec.name in _MAY_BE_ZERO else "above 0"
                raise ValueError(f"pool policy: {spec.name} must be a finite number {least}, not {value!r}")
        if not isinstance(self.max_attempts, int) or isinstance(self.max_attempts, bool):
            raise ValueError(f"pool policy: max_attempts must be a whole number, not {self.max_attempts!r}")
        if self.ewma_alpha > 1:
            raise ValueError(
                f"pool policy: ewma_alpha must be at most 1 (the newest figure alone), not {self.ewma_alpha!r}"
            )
        # A copy the caller cannot change under the pool (host tier tables memoise on it).
        object.__setattr__(self, "tiers", MappingProxyType(dict(self.tiers)))

    @classmethod
    def from_config(cls, pool: PoolConfig, tiers: Mapping[str, Tier] | None = None) -> PoolPolicy:
        """The policy of the ``[pool]`` settings and the ``[tiers]`` table; the rest at their defaults."""
        return cls(
            max_attempts=pool.max_attempts,
            ewma_alpha=pool.ewma_alpha,
            request_timeout_s=pool.request_timeout_s,
            call_deadline_s=pool.call_deadline_s,
            first_byte_timeout_s=pool.first_byte_timeout_s,
            retry_after_cap_s=pool.retry_after_cap_s,
            tiers=dict(tiers or {}),
        )
