"""What a task needs, whether it can run now, and the ladder of targets its run walks.

The ladder (:meth:`Planner.ladder`): the local tiers that can do the task, smallest eligible first
(a code model first when the task prefers one; the kind's models by measured competence where the
kind is measured, :mod:`caelum_mcp.engine.competence`), larger tiers after it when ``[router]
escalate_local`` is on, and Claude last. A task pinned to a model is that model's one rung; a
``claude_only`` task has no local rungs.
"""

from __future__ import annotations

from typing import Any

from caelum_mcp.core.llm import Availability, LLMTask, TaskNeeds, size_rank
from caelum_mcp.core.types import SIZE_TIERS, Tier
from caelum_mcp.engine.calibration import CalibrationTable
from caelum_mcp.engine.competence import CompetencePlan, competence_plan, competent_models
from caelum_mcp.engine.router.targets import ClaudeTarget, LocalTarget, Services, Target

# What a model of each size tier is, for messages that tell the user what to add.
TIER_SIZES = {Tier.MICRO: "any size", Tier.SMALL: "2B+", Tier.FULL: "6B+", Tier.LARGE: "14B+"}


class Planner:
    """Plans runs for one router: reads the config, the pool's models and the calibration table."""

    def __init__(self, services: Services, calibration: CalibrationTable) -> None:
        self.services = services
        self.calibration = calibration
        self.claude = ClaudeTarget(services)

    def needs(self, task: LLMTask) -> TaskNeeds:
        """What ``task`` needs: its kind's needs from the config, with the task's own overrides."""
        needs = self.services.config.router.needs_for(task.kind)
        update: dict[str, Any] = {}
        if task.min_tier is not None and task.min_tier in SIZE_TIERS:
            update["min_tier"] = task.min_tier
        if task.max_output_tokens is not None:
            update["max_output_tokens"] = task.max_output_tokens
        if task.time_budget_s is not None:
            update["time_budget_s"] = task.time_budget_s
        return needs.model_copy(update=update) if update else needs

    def availability(self, task: LLMTask, needs: TaskNeeds | None = None) -> Availability:
        """Whether ``task`` can run now, where, and if not, why and what to configure."""
        needs = needs or self.needs(task)
        pool = self.services.pool
        if task.claude_only:
            local = []
        elif task.model:
            local = [e for e in pool.eligible_models() if e.model == task.model or _base(e.model) == task.model]
        else:
            local = competent_models(self.competence(task, needs), pool, needs)
        blocker = self.claude.blocker(task, needs)
        reason = None
        if task.claude_only and blocker is not None:
            reason = f"Claude cannot be used: {blocker}"
        elif not local and blocker is not None:
            reason = f"{self.no_local_reason(task, needs)}, and Claude cannot be used: {blocker}"
        return Availability(
            local=bool(local),
            claude=blocker is None,
            needs=needs,
            local_models=tuple(f"{e.model}@{e.host}" for e in local),
            reason=reason,
        )

    def no_local_reason(self, task: LLMTask, needs: TaskNeeds) -> str:
        hosts = self.services.pool.describe_models()
        if task.model:
            return f"no enabled, healthy host serves model {task.model!r} (hosts and models: {hosts})"
        if needs.min_tier is Tier.MICRO:
            return f"no enabled, healthy host serves a chat model (hosts and models: {hosts})"
        return (
            f"a {task.kind} task needs a local model of tier {needs.min_tier} ({TIER_SIZES[needs.min_tier]}) or "
            f"larger and no enabled, healthy host serves one (hosts and models: {hosts}); add a [[hosts]] entry "
            f"serving one, or lower [router.tasks.{task.kind}] min_tier"
        )

    def ladder(self, task: LLMTask, needs: TaskNeeds, availability: Availability) -> list[Target]:
        """The targets a run tries in order: the local rungs where a local model can do the task,
        then Claude (which says itself, when its turn comes, whether it may be called)."""
        local: list[Target] = list(self.local_plan(task, needs)) if availability.local else []
        return [*local, self.claude]

    def local_plan(self, task: LLMTask, needs: TaskNeeds) -> list[LocalTarget]:
        """The local attempts in order: the task's own model, or the speciality it asks for, or the
        kind's models by measured competence, or else by size (:meth:`_by_size`)."""
        services = self.services
        if task.model:
            return [LocalTarget(services, tier=None, model=task.model, min_tier=None)]
        if task.tier is not None and task.tier not in SIZE_TIERS:  # code (or another speciality) asked for
            return [LocalTarget(services, tier=task.tier, model=None, min_tier=needs.min_tier)]
        competent = self.competence(task, needs)
        if competent is not None:  # the kind is measured: smallest competent model first, each once
            steps = [LocalTarget(services, tier=None, model=m, min_tier=None) for m in competent.model_order]
            return steps if services.config.router.escalate_local else steps[:1]
        return self._by_size(task, needs)

    def _by_size(self, task: LLMTask, needs: TaskNeeds) -> list[LocalTarget]:
        """The smallest eligible tier from where the task wants to start (a code model first if it
        prefers one), then larger eligible tiers."""
        services, router, minimum = self.services, self.services.config.router, needs.min_tier
        eligible = services.pool.eligible_models(min_tier=minimum)
        plan: list[LocalTarget] = []
        if needs.prefer_code and task.tier is None and any(e.code for e in eligible):
            plan.append(LocalTarget(services, tier=Tier.CODE, model=None, min_tier=minimum))
        sizes = sorted({e.size for e in eligible}, key=size_rank)
        if not sizes:
            return plan
        start = task.tier or router.default_tier
        if start not in SIZE_TIERS or size_rank(start) < size_rank(minimum):
            start = minimum
        first = next((t for t in sizes if size_rank(t) >= size_rank(start)), sizes[-1])
        plan.append(LocalTarget(services, tier=first, model=None, min_tier=minimum))
        if router.escalate_local:
            larger = [t for t in sizes if size_rank(t) > size_rank(first)]
            plan += [LocalTarget(services, tier=t, model=None, min_tier=minimum) for t in larger]
        return plan

    def competence(self, task: LLMTask, needs: TaskNeeds) -> CompetencePlan | None:
        """The kind's local models by measured competence (:mod:`caelum_mcp.engine.competence`); None
        where the static ``min_tier`` rule stands."""
        return competence_plan(
            self.services.pool,
            self.calibration,
            task,
            needs,
            self.services.config.router,
            claude_available=lambda: self.claude.blocker(task, needs) is None,
        )


def _base(model: str) -> str:
    return model.split(":")[0]
