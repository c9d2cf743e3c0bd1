"""``workflow_history``: what ran, what failed, which steps are flaky, what each run cost.

Reads the run store only (no tool runs, no model calls). Filters: project (resolved inside the
allowed roots, as ``run_workflow`` stores it), workflow name, status and a date range. With
``run_id`` it shows that run alone, and with ``step`` too, that step's stored output.

A *flaky* step is one that both passed and failed on the same input hash (the same arguments on
the same files) within the filter: its outcome is not decided by the code. Results taken over by
a resumed run are not counted twice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field

from caelum_mcp.core.errors import ToolInputError
from caelum_mcp.supervisors.base import ToolContext, ToolOutput
from caelum_mcp.tools.paths import resolve_project

from .run import RUN_ID
from .store import FlakyStep, RunFilter, RunRecord, RunStatus, RunStore, StepRecord, StepStats, WorkflowState

MAX_RUNS = 100


class HistoryInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: str | None = Field(default=None, max_length=4096, description="only runs on this project")
    workflow: str | None = Field(default=None, max_length=64, description="only this workflow")
    status: RunStatus | None = Field(default=None, description="only runs that ended so")
    since: str | None = Field(default=None, max_length=40, description="ISO date or time, e.g. 2026-11-01")
    until: str | None = Field(default=None, max_length=40, description="ISO date or time (exclusive)")
    run_id: str | None = Field(default=None, max_length=12, description="one run, with every step")
    step: str | None = Field(default=None, max_length=64, description="with run_id: that step's stored output")
    limit: int = Field(default=10, ge=1, le=MAX_RUNS, description="runs listed, newest first")


class StepLine(BaseModel):
    id: str
    status: str
    seconds: float | None = None
    findings: int | None = None
    error: str | None = None
    reused_from: str | None = None


class RunLine(BaseModel):
    id: str
    workflow: str
    project: str
    status: RunStatus
    started: str = Field(description="UTC, ISO 8601")
    seconds: float | None = None
    cost_usd: float
    counterfactual_cost_usd: float
    model_calls: int
    failed_steps: list[str]
    resumed_from: str | None = None
    summary: str | None = None
    steps: list[StepLine]


class FlakyLine(BaseModel):
    workflow: str
    step: str
    passed: int
    failed: int
    input_hash: str
    last_seen: str


class StepStatsLine(BaseModel):
    workflow: str
    step: str
    runs: int
    failures: int
    mean_seconds: float | None = None
    max_seconds: float | None = None


class HistoryOutput(ToolOutput):
    runs: list[RunLine]
    counts: dict[str, int] = Field(description="matching runs by status")
    cost_usd: float = Field(description="Claude spend of the matching runs")
    counterfactual_cost_usd: float
    flaky: list[FlakyLine] = Field(description="steps that passed and failed on the same input")
    step_stats: list[StepStatsLine] = Field(description="per step: runs, failures, durations; most failures first")
    step_output: dict[str, Any] | None = Field(default=None, description="with run_id and step: its stored output")


async def workflow_history(args: HistoryInput, ctx: ToolContext) -> HistoryOutput:
    where = RunFilter(
        project=str(resolve_project(args.project, ctx.roots)) if args.project else None,
        workflow=args.workflow,
        status=args.status,
        since=_when(args.since, "since"),
        until=_when(args.until, "until"),
    )
    if args.step is not None and args.run_id is None:
        raise ToolInputError("step: give run_id too (the run whose step output you want)")
    return await anyio.to_thread.run_sync(_read, ctx, args, where)


def _read(ctx: ToolContext, args: HistoryInput, where: RunFilter) -> HistoryOutput:
    with ctx.state_as(WorkflowState).store() as store:
        step_output = None
        if args.run_id is not None:
            if not RUN_ID.match(args.run_id):
                raise ToolInputError("run_id: 12 hex characters, as run_workflow shows it")
            run = store.get_run(args.run_id)
            if run is None:
                raise ToolInputError(f"run_id: no run {args.run_id}")
            runs = [run]
        else:
            runs = store.find_runs(where, limit=args.limit)
        steps = store.steps_of([r.id for r in runs])
        if args.step is not None:
            step_output = _step_output(store, steps[runs[0].id], args.step)
        counts = store.count_runs(where)
        cost, counterfactual = store.total_cost(where)
        flaky = store.flaky_steps(where, limit=20)
        stats = store.step_stats(where, limit=30)
    return HistoryOutput(
        runs=[_line(r, steps[r.id]) for r in runs],
        counts=counts,
        cost_usd=round(cost, 6),
        counterfactual_cost_usd=round(counterfactual, 6),
        flaky=[_flaky(f) for f in flaky],
        step_stats=[_stats(s) for s in stats],
        step_output=step_output,
    )


def _step_output(store: RunStore, steps: list[StepRecord], step_id: str) -> dict[str, Any]:
    record = next((s for s in steps if s.step == step_id), None)
    if record is None:
        raise ToolInputError(f"step: that run has no step {step_id[:64]!r}; it has {', '.join(s.step for s in steps)}")
    output = store.load_output(record.output_ref) if record.output_ref else None
    if output is None:
        return {"note": f"no stored output for {step_id} (status {record.status}; outputs of old runs are pruned)"}
    return output if isinstance(output, dict) else {"output": output}


def _line(run: RunRecord, steps: list[StepRecord]) -> RunLine:
    seconds = round(run.finished - run.started, 3) if run.finished is not None else None
    return RunLine(
        id=run.id,
        workflow=run.workflow,
        project=run.project,
        status=run.status,
        started=_iso(run.started),
        seconds=seconds,
        cost_usd=run.cost_usd,
        counterfactual_cost_usd=run.counterfactual_cost_usd,
        model_calls=run.model_calls,
        failed_steps=[s.step for s in steps if s.status in ("failed", "timed_out")],
        resumed_from=run.resumed_from,
        summary=run.summary,
        steps=[
            StepLine(
                id=s.step,
                status=s.status,
                seconds=s.seconds,
                findings=s.findings,
                error=s.error,
                reused_from=s.reused_from,
            )
            for s in steps
        ],
    )


def _flaky(f: FlakyStep) -> FlakyLine:
    return FlakyLine(
        workflow=f.workflow,
        step=f.step,
        passed=f.passed,
        failed=f.failed,
        input_hash=f.input_hash,
        last_seen=_iso(f.last_seen),
    )


def _stats(s: StepStats) -> StepStatsLine:
    return StepStatsLine.model_validate(s.model_dump())


def _when(text: str | None, name: str) -> float | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ToolInputError(f"{name}: not an ISO date or time ({text[:40]!r}); write e.g. 2026-11-01") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
