"""The :class:`Router`: walks a task's ladder of targets until one answer stands (see the package docstring)."""

from __future__ import annotations

import time
from typing import Any

import anyio

from caelum_mcp.core.errors import (
    BudgetExceededError,
    NoHostAvailableError,
    TaskFailedError,
    TaskSkippedError,
    TaskTimedOutError,
)
from caelum_mcp.core.llm import Availability, FinalPath, LLMTask, ProgressFn, RoutedResult, TaskNeeds
from caelum_mcp.core.pricing import ModelPrice
from caelum_mcp.engine.answers import task_schema
from caelum_mcp.engine.audit import Auditor
from caelum_mcp.engine.backends.base import Backend
from caelum_mcp.engine.calibration import USER_FILE, CalibrationTable
from caelum_mcp.engine.config import Config
from caelum_mcp.engine.ledger import BudgetGuard, Ledger
from caelum_mcp.engine.pool import Pool
from caelum_mcp.engine.router.gate import Gate
from caelum_mcp.engine.router.plan import Planner
from caelum_mcp.engine.router.run import Candidate, Run
from caelum_mcp.engine.router.targets import ClaudeTarget, LocalTarget, Services, Target

# The pool's deadline is the run's; the time budget's own cancel scope is only a backstop for a
# step that does not honour it, this much later.
_BACKSTOP_S = 0.5


class Router:
    """Local first, then a larger local tier, then Claude; see the package docstring."""

    def __init__(
        self,
        pool: Pool,
        ledger: Ledger,
        config: Config,
        *,
        claude: Backend | None = None,
        calibration: CalibrationTable | None = None,
    ) -> None:
        """``calibration`` defaults to the shipped table overridden by ``<data dir>/calibration.json``
        (read only when ``[router] calibration`` is on)."""
        self.pool = pool
        self.ledger = ledger
        self.config = config
        self.claude = claude
        self.budget = BudgetGuard(ledger, config.claude.daily_budget_usd)
        threshold = config.router.confidence_threshold
        if calibration is None:
            calibration = (
                CalibrationTable.load(config.data_dir / USER_FILE, threshold=threshold)
                if config.router.calibration
                else CalibrationTable(threshold=threshold)
            )
        self.calibration = calibration
        services = Services(pool=pool, ledger=ledger, config=config, claude=claude, budget=self.budget)
        self.planner = Planner(services, calibration)
        self.gate = Gate(ledger, calibration, config.router)
        self.audit = Auditor(self)  # calibration labels: escalations, and a sample of local answers

    @property
    def claude_target(self) -> ClaudeTarget:
        """The ladder's last rung: Claude under the budget (the audit asks it for labels)."""
        return self.planner.claude

    @property
    def claude_price(self) -> ModelPrice | None:
        return self.planner.services.claude_price

    def needs(self, task: LLMTask) -> TaskNeeds:
        """What ``task`` needs: its kind's needs from the config, with the task's own overrides."""
        return self.planner.needs(task)

    def availability(self, task: LLMTask, needs: TaskNeeds | None = None) -> Availability:
        """Whether ``task`` can run now, where, and if not, why and what to configure."""
        return self.planner.availability(task, needs)

    async def run(
        self, task: LLMTask, *, progress: ProgressFn | None = None, call_id: str | None = None
    ) -> RoutedResult:
        """Run ``task``; see the package docstring. Raises :class:`TaskSkippedError` before any
        model call when nothing that can do it is available."""
        schema, validator = task_schema(task.output_schema)
        needs = self.planner.needs(task)
        availability = self.planner.availability(task, needs)
        if not availability.runnable:
            raise TaskSkippedError(f"{task.name} skipped: {availability.reason}")
        run = _new_run(task, needs, schema, validator, call_id)
        ladder = self.planner.ladder(task, run.needs, availability)
        budget_s = run.needs.time_budget_s
        with anyio.move_on_after(budget_s + _BACKSTOP_S):
            result = await self._climb(run, ladder, progress)
            if result is not None:
                return result
        reason = (
            f"stopped at its time budget of {budget_s:g} s "
            f"(raise [router.tasks.{task.kind}] time_budget_s to wait longer)"
        )
        if run.best is None:
            detail = "; ".join(run.errors[-2:])
            before = f"; before that: {detail}" if detail else ""
            raise TaskTimedOutError(f"{task.name}: no answer: {reason}{before}")
        return self._result(run, run.best, "local_low_confidence", reason, timed_out=True)

    async def _climb(self, run: Run, ladder: list[Target], progress: ProgressFn | None) -> RoutedResult | None:
        """Each target in turn until one's answer stands; None when the time budget ran out between them."""
        passed_over: str | None = None  # why the last target gave no answer that stands
        for target in ladder:
            if run.time_left() <= 0:
                return None
            passed_over = target.unavailable(run)
            if passed_over is not None:
                continue
            if progress:
                await progress(target.announcement(run))
            outcome = await self._ask(run, target)
            if isinstance(outcome, Candidate):
                return self._result(run, outcome, target.path, None)
            passed_over = outcome
            if run.time_left() <= 0 and run.best is not None:
                return None  # the answer so far, marked timed out
        return self._fall_back(run, passed_over)

    async def _ask(self, run: Run, target: Target) -> Candidate | str:
        """``target``'s scored answer when it stands, else why the ladder goes on."""
        try:
            cand = await self.gate.attempt(run, target)
        except BudgetExceededError as exc:  # calls in flight took what was left meanwhile
            return str(exc)
        if cand is None:
            return target.no_answer(run)
        return target.verdict(run, cand) or cand

    def _fall_back(self, run: Run, passed_over: str | None) -> RoutedResult:
        """The ladder ended without an answer that stands: the best local one, marked with why the
        last target (Claude) did not do better, or TaskFailedError when there is none."""
        best = run.best
        if best is None:
            detail = "; ".join(run.errors[-3:]) or "no local host answered"
            raise TaskFailedError(f"{run.task.name}: no answer. Local: {detail}. Claude: {passed_over}")
        reason = passed_over if best.parts.score < self.config.router.confidence_threshold else None
        return self._result(run, best, "local_low_confidence" if reason else "local", reason)

    def _result(
        self, run: Run, cand: Candidate, path: FinalPath, reason: str | None, *, timed_out: bool = False
    ) -> RoutedResult:
        self.audit.observe(run, cand, path)
        if path == "local_low_confidence" and cand.row_id is not None:
            # The answer handed back below the threshold: its row says so (the ledger's low-confidence count).
            self.ledger.annotate(cand.row_id, path="local_low_confidence")
        threshold = self.config.router.confidence_threshold
        return run.result(cand, path, reason, threshold=threshold, timed_out=timed_out)

    async def sample_agreement(
        self,
        task: LLMTask,
        first_output: dict[str, Any],
        k: int,
        *,
        model: str | None = None,
        call_id: str | None = None,
    ) -> tuple[float | None, int, float]:
        """(agreement, samples, elapsed_ms): ``k`` samples of ``task`` at ``[router]
        agreement_temperature``, in parallel through the pool, on ``model`` (default: the task's
        model, else the first local step the router would take), within the task's time budget;
        agreement is the share of the samples that answered which agree with ``first_output`` as
        :func:`caelum_mcp.engine.audit.compare_answers` compares answers (None when none answered). Each
        sample is a ledger row tagged ``call_id``. The benchmark's way to measure agreement and its
        cost on recorded answers."""
        schema, validator = task_schema(task.output_schema)
        run = _new_run(task, self.planner.needs(task), schema, validator, call_id)
        pinned = model or task.model
        if pinned:
            step = LocalTarget(self.planner.services, tier=None, model=pinned, min_tier=None)
        else:
            plan = self.planner.local_plan(task, run.needs)
            if not plan:
                raise NoHostAvailableError(f"{task.name}: {self.planner.no_local_reason(task, run.needs)}")
            step = plan[0]
        started = time.perf_counter()
        agreement, samples = await self.gate.sample_agreement(run, step.request(run), step, first_output, k)
        return agreement, samples, round((time.perf_counter() - started) * 1000, 1)


def _new_run(task: LLMTask, needs: TaskNeeds, schema: dict[str, Any], validator: Any, call_id: str | None) -> Run:
    """A run of ``task`` whose time budget starts now."""
    deadline = time.monotonic() + needs.time_budget_s
    return Run(task=task, needs=needs, schema=schema, validator=validator, call_id=call_id, deadline=deadline)
