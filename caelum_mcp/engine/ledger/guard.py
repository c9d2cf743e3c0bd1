"""The daily Claude budget: whether a Claude call may happen, and the reservation that makes its
money its own (see :meth:`~caelum_mcp.engine.ledger.Ledger.reserve`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from caelum_mcp.core.errors import BudgetExceededError, ConfigError
from caelum_mcp.engine.ledger.core import Ledger
from caelum_mcp.engine.ledger.models import MONEY_EPSILON, BudgetFigures, Reservation


def _money(value: float) -> str:
    # Cents when that is exact enough to read; finer when a sub-cent figure would round away.
    if math.isclose(value, round(value, 2), abs_tol=1e-9):
        return f"${value:,.2f}"
    return f"${value:,.4f}"


class BudgetGuard:
    """Decides whether a Claude call may happen under the daily (UTC) budget.

    ``daily_budget_usd=None`` means unlimited; ``0`` means Claude is never called.
    """

    def __init__(
        self,
        ledger: Ledger,
        daily_budget_usd: float | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if daily_budget_usd is not None and (daily_budget_usd < 0 or math.isnan(daily_budget_usd)):
            raise ConfigError(
                f"[claude].daily_budget_usd = {daily_budget_usd} is invalid; use a number >= 0, "
                "or leave it out for no limit"
            )
        self.ledger = ledger
        self.daily_budget_usd = daily_budget_usd
        self._clock = clock

    def remaining_today(self) -> float | None:
        """USD left today (never below 0), net of what Claude calls in flight hold; None when
        there is no budget."""
        if self.daily_budget_usd is None:
            return None
        figures = self.ledger.budget_figures(self._clock())
        return max(0.0, self.daily_budget_usd - figures.spent_usd - figures.reserved_usd)

    def check(self, estimated_cost_usd: float = 0.0) -> str | None:
        """None when a Claude call costing up to ``estimated_cost_usd`` is allowed now; else why not.

        A snapshot, for planning: only :meth:`reserve` makes the money the call's.
        """
        if self.daily_budget_usd is None:
            return None
        return self._refusal(self.ledger.budget_figures(self._clock()), estimated_cost_usd)

    def reserve(self, cost_usd: float, *, ttl_s: float) -> Reservation:
        """Hold ``cost_usd`` of today's budget for one call (settle or release it when the call
        ends; it lapses after ``ttl_s``). Raises :class:`BudgetExceededError` saying why when the
        day's spend plus what calls in flight hold plus this would pass the budget."""
        reservation, figures = self.ledger.reserve(
            max(0.0, cost_usd), limit_usd=self.daily_budget_usd, ttl_s=ttl_s, now=self._clock()
        )
        if reservation is None:
            raise BudgetExceededError(self._refusal(figures, cost_usd) or "daily Claude budget reached")
        return reservation

    def enforce(self, estimated_cost_usd: float = 0.0) -> None:
        """Raise :class:`BudgetExceededError` with the reason when :meth:`check` refuses."""
        reason = self.check(estimated_cost_usd)
        if reason is not None:
            raise BudgetExceededError(reason)

    def _refusal(self, figures: BudgetFigures, cost_usd: float) -> str | None:
        budget = self.daily_budget_usd
        if budget is None:
            return None
        spent, held = figures.spent_usd, figures.reserved_usd
        advice = "raise [claude].daily_budget_usd or wait until 00:00 UTC"
        if spent >= budget:
            return f"daily Claude budget of {_money(budget)} reached: {_money(spent)} spent today (UTC); {advice}"
        if spent + held + max(0.0, cost_usd) > budget + MONEY_EPSILON:
            in_flight = f" + {_money(held)} held by Claude calls in flight" if held > 0 else ""
            return (
                f"daily Claude budget of {_money(budget)} would be exceeded: {_money(spent)} spent "
                f"today (UTC){in_flight} + up to {_money(cost_usd)} for this call; {advice}"
            )
        return None
