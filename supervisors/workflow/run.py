"""``run_workflow``: one workflow run on one project, stored, summarised, resumable.

The run: the project is resolved inside the allowed roots and its files fingerprinted (for the
steps' input hashes); a run row is written; :class:`~.engine.WorkflowEngine` runs the steps, tool
steps through ``ctx.call_tool`` (the child's progress, cancellation and model calls belong to
this call) and command steps through :func:`~caelum_mcp.tools.workflow.commands.run_workflow_command`;
each step is stored as it starts and ends, with its whole output (secrets redacted) in a file, and
reported as progress. Then the summary: a deterministic one always, and an LLM one (task kind
``summary``) whose points must each cite a step of this run and quote only figures found in that
step's result. Last, what the run's model calls cost, from the ledger (``ctx.llm.call_cost``).

``resume=<run id>`` runs the same workflow on the same project again, taking over every step that
passed in that run whose input hash is unchanged (same arguments, same files) instead of running it.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import anyio
import psutil
from anyio.abc import TaskGroup
from pydantic import BaseModel, ConfigDict, Field

from caelum_mcp.cache import fingerprint
from caelum_mcp.errors import CaelumError, ToolInputError
from caelum_mcp.supervisors.base import ToolContext, ToolOutput
from caelum_mcp.supervisors.llm_steps import LLMStep
from caelum_mcp.tools.code.files import list_project_files
from caelum_mcp.tools.code.secrets import redact_all, redact_secrets
from caelum_mcp.tools.paths import resolve_project
from caelum_mcp.tools.workflow.commands import run_workflow_command

from .definitions import Scalar, WorkflowSpec, WorkflowsSettings
from .engine import Reused, StepResult, StepRun, Work, WorkflowEngine
from .store import RunRecord, RunStatus, RunStore, StepRecord
from .summary import SummaryPoint, llm_summary, plain_summary

RUN_ID = re.compile(r"^[0-9a-f]{12}$")
EXCERPT_CHARS = 300
# A command's grace beyond the step's timeout: the engine's timeout ends it first and says so.
_COMMAND_GRACE_S = 5.0


class RunWorkflowInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workflow: str = Field(max_length=64, description="pre-commit, security-review, release-check or a configured one")
    project: str = Field(max_length=4096, description="the project folder (inside the allowed roots)")
    inputs: dict[str, Scalar] | None = Field(default=None, description="the workflow's inputs, e.g. {'base': 'v1.2'}")
    resume: str | None = Field(default=None, max_length=12, description="a run id: reuse the steps it completed")
    allow_claude: bool = Field(default=True, description="the summary may escalate to Claude")


class StepOutcome(BaseModel):
    id: str
    kind: Literal["tool", "command"]
    target: str = Field(description="the tool, or the command's program")
    status: Literal["pending", "running", "passed", "failed", "skipped", "cancelled"]
    seconds: float | None = None
    findings: int | None = None
    reused: bool = Field(default=False, description="taken over from the resumed run")
    error: str | None = Field(default=None, description="why it failed or was skipped")
    result: str | None = Field(default=None, description="a line of its result")


class RunCost(BaseModel):
    model_calls: int = 0
    cost_usd: float = Field(default=0.0, description="Claude spend of this run's model calls")
    counterfactual_cost_usd: float = Field(default=0.0, description="what Claude would have cost for the local calls")


class RunWorkflowOutput(ToolOutput):
    run_id: str
    workflow: str
    project: str
    status: RunStatus
    seconds: float
    steps: list[StepOutcome]
    summary: str
    points: list[SummaryPoint] = Field(default_factory=list, description="the LLM summary, each point citing a step")
    cost: RunCost
    resumed_from: str | None = None
    llm: LLMStep | None = None


def workflows_of(ctx: ToolContext) -> dict[str, WorkflowSpec]:
    return ctx.settings_as(WorkflowsSettings).workflows()


async def run_workflow(args: RunWorkflowInput, ctx: ToolContext) -> RunWorkflowOutput:
    known = workflows_of(ctx)
    spec = known.get(args.workflow)
    if spec is None:
        raise ToolInputError(f"no workflow {args.workflow!r}; workflows: {', '.join(sorted(known))}")
    root = resolve_project(args.project, ctx.roots)
    with RunStore(ctx.state_dir) as store:
        reusable, inputs = _resumed(store, args, root)
        try:
            values = spec.input_values(inputs)
        except ValueError as exc:
            raise ToolInputError(f"inputs: {exc}") from None
        await ctx.report(0, len(spec.steps) + 1, f"{args.workflow} on {root.name}: starting")
        run = RunRecord(
            id=uuid.uuid4().hex[:12],
            workflow=args.workflow,
            project=str(root),
            status="running",
            started=time.time(),
            inputs=values,
            resumed_from=args.resume,
            owner_pid=os.getpid(),
            owner_started=_process_started(),
        )
        store.start_run(run)
        runner = _Runner(ctx, store, run, spec, root)
        engine = WorkflowEngine(
            spec=spec,
            project=str(root),
            inputs=values,
            execute=runner.execute,
            fingerprint=lambda: project_fingerprint(root),
            listener=runner.on_step,
            reusable=reusable,
        )
        started = time.perf_counter()
        try:
            async with anyio.create_task_group() as writes:  # step outputs are written beside the run
                runner.writes = writes
                steps = await engine.run()
        except anyio.get_cancelled_exc_class():
            store.finish_run(run.id, "cancelled")  # synchronous: nothing here can be cancelled
            raise
        except BaseException:
            store.finish_run(run.id, "failed", summary="the workflow engine failed; see the server log")
            raise
        seconds = round(time.perf_counter() - started, 3)
        status: RunStatus = "failed" if any(s.status == "failed" for s in steps) else "passed"
        summary = plain_summary(args.workflow, status, steps, seconds)
        points: list[SummaryPoint] = []
        step_report: LLMStep | None = None
        if spec.summary:
            await ctx.report(len(spec.steps), len(spec.steps) + 1, "summarising")
            points, step_report, said = await llm_summary(
                ctx, args.workflow, status, steps, allow_claude=args.allow_claude
            )
            summary = f"{said} ({summary})" if said else summary
        spent = await ctx.llm.call_cost()
        cost = RunCost(
            model_calls=spent.model_calls,
            cost_usd=round(spent.cost_usd, 6),
            counterfactual_cost_usd=round(spent.counterfactual_cost_usd, 6),
        )
        store.finish_run(run.id, status, summary=summary, **cost.model_dump())
        await ctx.report(len(spec.steps) + 1, len(spec.steps) + 1, f"{args.workflow} {status} in {seconds:.1f} s")
    return RunWorkflowOutput(
        run_id=run.id,
        workflow=args.workflow,
        project=str(root),
        status=status,
        seconds=seconds,
        steps=[_outcome(s) for s in steps],
        summary=summary,
        points=points,
        cost=cost,
        resumed_from=args.resume,
        llm=step_report,
    )


async def project_fingerprint(root: Path) -> str:
    """One hash over the project's files (as ``git ls-files`` or a .gitignore-aware walk lists them)."""
    listing = await list_project_files(root)
    return await fingerprint(root, listing.files)


class _Runner:
    """One run's step work and bookkeeping (the engine's ``execute`` and ``listener``)."""

    def __init__(self, ctx: ToolContext, store: RunStore, run: RunRecord, spec: WorkflowSpec, root: Path) -> None:
        self.ctx = ctx
        self.store = store
        self.run = run
        self.root = root
        self.total = len(spec.steps) + 1
        self.ended = 0
        self.writes: TaskGroup | None = None

    async def execute(self, step: StepRun, work: Work) -> StepResult:
        spec = step.spec
        if spec.tool is not None:
            result = await self.ctx.call_tool(spec.tool, work.args or {})
            data = result.model_dump(mode="json")
            return StepResult(ok=True, output=data, findings=finding_count(data), excerpt=excerpt_of(data))
        outcome = await run_workflow_command(
            work.argv or [],
            project=self.root,
            cwd=spec.cwd,
            timeout_s=spec.timeout_s + _COMMAND_GRACE_S,
            pass_env=spec.env,
        )
        error = outcome.error or (None if outcome.ok else f"exit code {outcome.exit_code}")
        last = _last_line(outcome.stdout_tail) or _last_line(outcome.stderr_tail)
        excerpt = f"exit {outcome.exit_code}" + (f": {last}" if last else "")
        return StepResult(ok=outcome.ok, output=outcome.model_dump(mode="json"), error=error, excerpt=excerpt)

    def _save(self, step_id: str, output: Any) -> None:
        self.store.save_output(self.run.id, step_id, redact_all(output))

    async def on_step(self, step: StepRun) -> None:
        ref = None
        if step.status in ("passed", "failed") and step.output is not None:
            ref = self.store.output_ref(step.reused_from or self.run.id, step.id)
            if step.reused_from is None and self.writes is not None:
                # Off the run's critical path: the next steps need not wait for a file to be written.
                self.writes.start_soon(anyio.to_thread.run_sync, self._save, step.id, step.output)
        record = StepRecord(
            step=step.id,
            position=step.position,
            kind=step.spec.kind,
            target=step.spec.target,
            status="running" if step.status == "pending" else step.status,
            started=step.started,
            seconds=step.seconds,
            input_hash=step.input_hash,
            findings=step.findings,
            error=_redact(step.error),
            excerpt=_redact(step.excerpt),
            output_ref=ref,
            reused_from=step.reused_from,
        )
        self.store.put_step(self.run.id, record)
        if step.status == "running":
            await self.ctx.report(self.ended, self.total, f"{step.id}: started ({step.spec.target})")
            return
        self.ended += 1
        how = f" in {step.seconds:.1f} s" if step.seconds else ""
        if step.reused_from:
            how = f" (reused from run {step.reused_from})"
        found = f", {step.findings} findings" if step.findings else ""
        await self.ctx.report(self.ended, self.total, f"{step.id}: {step.status}{how}{found}")


def _resumed(store: RunStore, args: RunWorkflowInput, root: Path) -> tuple[dict[str, Reused], Mapping[str, Any] | None]:
    """The steps a resumed run may take over, and the inputs it runs with."""
    if args.resume is None:
        return {}, args.inputs
    if not RUN_ID.match(args.resume):
        raise ToolInputError("resume: a run id is 12 hex characters, as run_workflow and workflow_history show it")
    old = store.get_run(args.resume)
    if old is None:
        raise ToolInputError(f"resume: no run {args.resume}; workflow_history lists the runs")
    if old.workflow != args.workflow or old.project != str(root):
        raise ToolInputError(f"resume: run {old.id} was {old.workflow!r} on {old.project}; resume it with those")
    if old.status == "running" and owner_alive(old.owner_pid, old.owner_started):
        raise CaelumError(f"run {old.id} is still running; wait for it, or cancel that call")
    reusable: dict[str, Reused] = {}
    for record in store.steps_of([old.id])[old.id]:
        if record.status != "passed" or record.input_hash is None or record.output_ref is None:
            continue
        output = store.load_output(record.output_ref)
        if output is None:
            continue
        origin = record.reused_from or old.id
        result = StepResult(ok=True, output=output, findings=record.findings, excerpt=record.excerpt)
        reusable[record.step] = Reused(origin, record.input_hash, result, record.seconds)
    return reusable, args.inputs if args.inputs is not None else old.inputs


# step results -------------------------------------------------------------------------------------


def finding_count(output: Any) -> int | None:
    """How many findings a tool's result reports: ``findings_total``, else failing tests, else the
    length of its ``findings`` (plus review ``comments`` from the LLM)."""
    if not isinstance(output, Mapping):
        return None
    total = output.get("findings_total")
    if isinstance(total, int):
        return total
    totals = output.get("totals")
    if isinstance(totals, Mapping) and "failed" in totals:
        return int(totals.get("failed", 0) or 0) + int(totals.get("error", 0) or 0)
    findings = output.get("findings")
    if isinstance(findings, list):
        comments = output.get("comments")
        extra = [c for c in comments if isinstance(c, Mapping) and c.get("source") == "llm"] if comments else []
        return len(findings) + len(extra)
    return None


def excerpt_of(output: Any) -> str | None:
    """A line of a tool's result: its ``summary``, else what its exit meant."""
    if not isinstance(output, Mapping):
        return None
    for key in ("summary", "exit_meaning"):
        value = output.get(key)
        if isinstance(value, str) and value.strip():
            text = " ".join(value.split())
            return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"
    return None


def _last_line(text: str) -> str | None:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    return lines[-1][:EXCERPT_CHARS]


def _outcome(step: StepRun) -> StepOutcome:
    return StepOutcome(
        id=step.id,
        kind=step.spec.kind,
        target=step.spec.target,
        status=step.status,
        seconds=step.seconds,
        findings=step.findings,
        reused=step.reused_from is not None,
        error=step.error,
        result=step.excerpt,
    )


def _redact(text: str | None) -> str | None:
    return None if text is None else redact_secrets(text)


def _process_started() -> float:
    return float(psutil.Process().create_time())


def owner_alive(pid: int, started: float) -> bool:
    """Whether the process that owns a run still runs (the same process: pids are reused)."""
    try:
        return bool(abs(psutil.Process(pid).create_time() - started) < 1.0)
    except psutil.Error:
        return False
