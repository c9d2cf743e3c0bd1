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
Every command a step starts is recorded in the store while it runs; before a resumed run starts,
the commands of the old run still alive (a server killed so hard that its guard died too) are
killed and waited for, so that a step never runs beside its earlier copy; ``notes`` says so.

Progress names what runs now: each message that ends a step is followed by one listing the steps
still running (the server's heartbeat repeats the last message), and a child tool's own progress
is prefixed with its step. A step stopped at its time limit is ``timed_out``, not ``failed``, and
keeps what it had: a command its output so far (it is stopped a little before the limit, by its own
timeout), a tool its own result when it timed out itself (``timed_out: true``), else the progress
it had reported.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import anyio
import psutil
from anyio.abc import TaskGroup
from pydantic import BaseModel, ConfigDict, Field

from caelum_mcp.core.errors import CaelumError, ToolInputError
from caelum_mcp.engine.cache import fingerprint
from caelum_mcp.supervisors.base import ToolContext, ToolOutput
from caelum_mcp.supervisors.llm_steps import LLMStep
from caelum_mcp.tools.code.files import list_project_files
from caelum_mcp.tools.code.secrets import redact_all, redact_secrets
from caelum_mcp.tools.paths import resolve_project
from caelum_mcp.tools.process import COMMAND_WATCH
from caelum_mcp.tools.workflow.commands import run_workflow_command

from .definitions import Scalar, WorkflowSpec, WorkflowsSettings
from .engine import Reused, StepResult, StepRun, Work, WorkflowEngine, timeout_error
from .store import RunRecord, RunStatus, RunStore, StepRecord, WorkflowState
from .summary import SummaryPoint, llm_summary, plain_summary

RUN_ID = re.compile(r"^[0-9a-f]{12}$")
EXCERPT_CHARS = 300
# A step's work is stopped this much before the engine's limit, so that it ends by itself, with
# what it had, rather than being cancelled with nothing.
_OWN_LIMIT_MARGIN_S = 1.0
_PROGRESS_KEPT = 20  # a timed-out tool step keeps its last progress messages
_LEFTOVER_WAIT_S = 10.0  # how long a resumed run waits for the old run's commands to die


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
    status: Literal["pending", "running", "passed", "failed", "timed_out", "skipped", "cancelled"]
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
    notes: list[str] = Field(
        default_factory=list,
        description="what happened beside the run: a damaged run store moved aside, an earlier copy of a step stopped",
    )


def workflows_of(ctx: ToolContext) -> dict[str, WorkflowSpec]:
    return ctx.settings_as(WorkflowsSettings).workflows()


async def run_workflow(args: RunWorkflowInput, ctx: ToolContext) -> RunWorkflowOutput:
    known = workflows_of(ctx)
    spec = known.get(args.workflow)
    if spec is None:
        raise ToolInputError(f"no workflow {args.workflow!r}; workflows: {', '.join(sorted(known))}")
    root = resolve_project(args.project, ctx.roots)
    with ctx.state_as(WorkflowState).store() as store:
        notes = store.take_notices()
        reusable, inputs = _resumed(store, args, root)
        try:
            values = spec.input_values(inputs)
        except ValueError as exc:
            raise ToolInputError(f"inputs: {exc}") from None
        if args.resume is not None:
            notes += await anyio.to_thread.run_sync(stop_leftovers, store, args.resume)
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
        status: RunStatus = "failed" if any(s.status in ("failed", "timed_out") for s in steps) else "passed"
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
        notes=notes,
    )


async def project_fingerprint(root: Path) -> str:
    """One hash over the project's files (as ``git ls-files`` or a .gitignore-aware walk lists them)."""
    listing = await list_project_files(root)
    return await fingerprint(root, listing.files)


class _StepCommands:
    """Records in the store each command a step starts, while it runs (:data:`COMMAND_WATCH`)."""

    def __init__(self, store: RunStore, run_id: str, step_id: str) -> None:
        self.store, self.run_id, self.step_id = store, run_id, step_id

    def started(self, pid: int, create_time: float) -> None:
        self.store.add_process(self.run_id, self.step_id, pid, create_time)

    def ended(self, pid: int, create_time: float) -> None:
        self.store.drop_process(self.run_id, self.step_id, pid, create_time)


def own_limit(timeout_s: float) -> float:
    """The time a step's work is given to end by itself: a little less than the step's limit."""
    return max(timeout_s - min(_OWN_LIMIT_MARGIN_S, timeout_s * 0.1), timeout_s * 0.5)


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
        self.running: dict[str, str] = {}  # step id -> its tool or program, in the order they started
        self.heard: dict[str, list[str]] = {}  # step id -> its child's last progress messages

    async def execute(self, step: StepRun, work: Work) -> StepResult:
        spec = step.spec
        token = COMMAND_WATCH.set(_StepCommands(self.store, self.run.id, step.id))
        try:
            if spec.tool is not None:
                return await self._tool(step, spec.tool, work.args or {})
            return await self._command(step, work.argv or [])
        finally:
            COMMAND_WATCH.reset(token)

    async def _tool(self, step: StepRun, tool: str, args: dict[str, Any]) -> StepResult:
        heard = self.heard.setdefault(step.id, [])

        async def forward(progress: float, total: float | None, message: str) -> None:
            heard.append(message)
            del heard[:-_PROGRESS_KEPT]
            await self.ctx.note(f"{step.id}: {message}")  # names the step: parallel steps may call one tool

        # The child's progress goes through `forward`; everything else is this call's context.
        child_ctx = dataclasses.replace(self.ctx, progress=forward)
        with anyio.move_on_after(own_limit(step.spec.timeout_s)):
            result = await child_ctx.call_tool(tool, args)
            data = result.model_dump(mode="json")
            findings, excerpt = finding_count(data), excerpt_of(data)
            if isinstance(data, dict) and data.get("timed_out") is True:  # the tool's own limit: its result is whole
                error = f"{tool} timed out" + (f": {excerpt}" if excerpt else "")
                return StepResult(
                    ok=False, timed_out=True, output=data, error=error, findings=findings, excerpt=excerpt
                )
            return StepResult(ok=True, output=data, findings=findings, excerpt=excerpt)
        partial = {"timed_out": True, "progress": list(heard)}
        last = heard[-1] if heard else None
        return StepResult(
            ok=False, timed_out=True, output=partial, error=timeout_error(step.spec.timeout_s), excerpt=last
        )

    async def _command(self, step: StepRun, argv: list[str]) -> StepResult:
        spec = step.spec
        outcome = await run_workflow_command(
            argv, project=self.root, cwd=spec.cwd, timeout_s=own_limit(spec.timeout_s), pass_env=spec.env
        )
        last = _last_line(outcome.stdout_tail) or _last_line(outcome.stderr_tail)
        output = outcome.model_dump(mode="json")
        if outcome.timed_out:
            return StepResult(
                ok=False,
                timed_out=True,
                output=output,
                error=timeout_error(spec.timeout_s),
                excerpt=f"timed out{': ' + last if last else ''}",
            )
        error = outcome.error or (None if outcome.ok else f"exit code {outcome.exit_code}")
        excerpt = f"exit {outcome.exit_code}" + (f": {last}" if last else "")
        return StepResult(ok=outcome.ok, output=output, error=error, excerpt=excerpt)

    def _save(self, step_id: str, output: Any) -> None:
        self.store.save_output(self.run.id, step_id, redact_all(output))

    async def on_step(self, step: StepRun) -> None:
        ref = None
        if step.status in ("passed", "failed", "timed_out") and step.output is not None:
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
            self.running[step.id] = step.spec.target
            await self.ctx.report(self.ended, self.total, f"{step.id}: started ({step.spec.target})")
            return
        self.running.pop(step.id, None)
        self.heard.pop(step.id, None)
        self.ended += 1
        how = f" in {step.seconds:.1f} s" if step.seconds else ""
        if step.reused_from:
            how = f" (reused from run {step.reused_from})"
        found = f", {step.findings} findings" if step.findings else ""
        status = step.status.replace("_", " ")
        await self.ctx.report(self.ended, self.total, f"{step.id}: {status}{how}{found}")
        if self.running:
            # The heartbeat repeats the last message: let it name what runs now, not what just ended.
            await self.ctx.note(running_message(self.running))


def running_message(running: Mapping[str, str]) -> str:
    """``running: tests (run_project_tests), build (make)``."""
    return "running: " + ", ".join(f"{step} ({target})" for step, target in running.items())


def stop_leftovers(store: RunStore, run_id: str) -> list[str]:
    """Kill the commands of ``run_id`` 's steps that are still alive (same pid, same start time),
    each with its process group, and wait for them to go; returns a note for each. Blocking.
    Raises :class:`CaelumError` when one cannot be stopped."""
    notes: list[str] = []
    for step, pid, started in store.live_processes(run_id):
        try:
            proc = psutil.Process(pid)
            alive = abs(proc.create_time() - started) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            alive = False
        if alive:
            try:
                os.killpg(pid, signal.SIGKILL)  # each command leads its own process group
            except ProcessLookupError:
                pass
            except PermissionError as exc:
                raise CaelumError(
                    f"step {step} of run {run_id} still runs as pid {pid} and cannot be stopped ({exc}); stop it, "
                    "then resume"
                ) from None
            try:
                proc.wait(timeout=_LEFTOVER_WAIT_S)
            except psutil.TimeoutExpired:
                raise CaelumError(
                    f"step {step} of run {run_id} still runs as pid {pid} {_LEFTOVER_WAIT_S:g} s after it was killed; "
                    "stop it, then resume"
                ) from None
            except psutil.Error:
                pass
            notes.append(
                f"step {step} of run {run_id} was still running (pid {pid}) after its server stopped; "
                "it was killed before this run started"
            )
        store.drop_process(run_id, step, pid, started)
    return notes


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
