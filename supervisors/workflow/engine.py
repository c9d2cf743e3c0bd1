"""The workflow engine: runs a workflow's steps as a graph, in parallel where it may.

:class:`WorkflowEngine` knows nothing of MCP, tools or commands: it is handed an ``execute``
function that does one step's work, and a ``listener`` told when a step starts and ends (the
supervisor stores the step and reports progress). Its rules:

- a step starts when every step it ``needs`` has ended; independent steps run at once, at most
  ``max_parallel`` of them; a ``writes`` step waits until nothing runs and runs alone (and the
  steps after it in the definition wait for it, so that it is not starved);
- a step whose ``when`` is false is ``skipped``, and so is a step that needs a skipped (or
  cancelled) step; a step that needs a failed step still runs (it may check ``steps.X.ok``);
- a step fails when its work raises, ends badly (a tool error, a command's non-zero exit) or when
  its ``fail_if`` holds of its output; it is ``timed_out`` (not ``failed``) when its work ran past
  ``timeout_s``, or said so itself (``StepResult.timed_out``: ``execute`` may end the work a little
  before the limit to keep what it had produced; the engine's own limit only loses the output).
  With ``on_failure = "stop"`` no new step starts after either (steps already running finish), and
  the steps left are ``skipped`` naming the step that stopped the run;
- a step's arguments are rendered from the run's context when it is about to start, and hashed
  with the project's content fingerprint: that *input hash* says "the same work on the same files".
  A step given in ``reusable`` with the same input hash is not run again: its earlier result is
  taken (``resume``). The fingerprint may be a function: it is then computed while the first steps
  already run (unless results are offered for reuse, which needs it first);
- when the run is cancelled, the steps running are marked ``cancelled`` (the listener is still told).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from anyio.abc import TaskGroup

from caelum_mcp.core.errors import CaelumError
from caelum_mcp.tools.workflow import templates

from .definitions import StepSpec, WorkflowSpec

log = logging.getLogger(__name__)

Status = Literal["pending", "running", "passed", "failed", "timed_out", "skipped", "cancelled"]
_ENDED = frozenset({"passed", "failed", "timed_out", "skipped", "cancelled"})
_BAD = frozenset({"failed", "timed_out"})


@dataclass
class StepRun:
    """One step of one run, as it goes."""

    id: str
    spec: StepSpec
    position: int
    status: Status = "pending"
    started: float | None = None  # time.time()
    seconds: float | None = None
    output: Any = None
    findings: int | None = None
    error: str | None = None
    excerpt: str | None = None
    input_hash: str | None = None
    reused_from: str | None = None

    def view(self) -> dict[str, Any]:
        """What templates and conditions see of this step (``steps.<id>``)."""
        return {
            "status": self.status,
            "ok": self.status == "passed",
            "findings": self.findings,
            "seconds": self.seconds,
            "error": self.error,
            "output": self.output,
        }


@dataclass(frozen=True)
class Work:
    """A step about to run: its rendered tool arguments or argument list, and what identifies the
    work (the input hash is this with the project's fingerprint)."""

    args: dict[str, Any] | None
    argv: list[str] | None
    identity: str


@dataclass(frozen=True)
class StepResult:
    """What ``execute`` returns: the output (JSON data), whether the work itself went well, and the
    figures the run shows. ``timed_out``: the work was stopped at the step's time limit (``output``
    holds what it had by then)."""

    ok: bool
    timed_out: bool = False
    output: Any = None
    error: str | None = None
    findings: int | None = None
    excerpt: str | None = None


@dataclass(frozen=True)
class Reused:
    """A step's passed result from an earlier run, offered for reuse."""

    run_id: str
    input_hash: str
    result: StepResult
    seconds: float | None = None


Execute = Callable[[StepRun, Work], Awaitable[StepResult]]
Listener = Callable[[StepRun], Awaitable[None]]
Fingerprint = str | Callable[[], Awaitable[str]]


async def _ignore(step: StepRun) -> None:
    return None


def timeout_error(limit: float) -> str:
    """The error of a step stopped at its time limit."""
    return f"timed out after {limit:g} s (raise the step's timeout_s)"


@dataclass
class WorkflowEngine:
    """Runs ``spec`` once; see the module docstring."""

    spec: WorkflowSpec
    project: str
    inputs: Mapping[str, Any]
    execute: Execute
    fingerprint: Fingerprint = ""
    listener: Listener = _ignore
    reusable: Mapping[str, Reused] = field(default_factory=dict)
    steps: dict[str, StepRun] = field(init=False)
    stopped_by: str | None = field(default=None, init=False)
    _running: set[str] = field(default_factory=set, init=False)
    _exclusive: bool = field(default=False, init=False)
    _wake: anyio.Event = field(default_factory=anyio.Event, init=False)
    _files: str | None = field(default=None, init=False)
    _files_known: anyio.Event = field(default_factory=anyio.Event, init=False)

    def __post_init__(self) -> None:
        self.steps = {
            step_id: StepRun(id=step_id, spec=spec, position=i)
            for i, (step_id, spec) in enumerate(self.spec.steps.items())
        }

    async def run(self) -> list[StepRun]:
        """Run every step (or skip it); returns them in the definition's order."""
        async with anyio.create_task_group() as tg:
            if isinstance(self.fingerprint, str):
                self._know_files(self.fingerprint)
            elif self.reusable:
                self._know_files(await self.fingerprint())
            else:
                tg.start_soon(self._learn_files, self.fingerprint)
            while True:
                self._wake = anyio.Event()
                while await self._start_ready(tg):
                    pass
                if not self._running:
                    break
                await self._wake.wait()
        return list(self.steps.values())

    def _know_files(self, fingerprint: str) -> None:
        self._files = fingerprint
        self._files_known.set()

    async def _learn_files(self, compute: Callable[[], Awaitable[str]]) -> None:
        try:
            fingerprint = await compute()
        except Exception:  # the steps still run; only their input hashes lose the files
            log.exception("fingerprinting %s failed", self.project)
            fingerprint = "unknown"
        self._know_files(fingerprint)

    def _input_hash(self, work: Work) -> str:
        blob = f"{work.identity}\0{self._files}".encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def context(self) -> dict[str, Any]:
        """What templates and conditions read: the project, the inputs, the steps that ended."""
        ended = {s.id: s.view() for s in self.steps.values() if s.status in _ENDED}
        return {"project": self.project, "inputs": dict(self.inputs), "steps": ended}

    # scheduling --------------------------------------------------------------------------------

    async def _start_ready(self, tg: TaskGroup) -> bool:
        """Start (or settle without running) every step that may go now; True when a step ended
        here, which may let others go."""
        changed = False
        for step in self.steps.values():
            if step.status != "pending":
                continue
            needs = [self.steps[n] for n in step.spec.needs]
            if any(n.status not in _ENDED for n in needs):
                continue
            if self.stopped_by is not None:
                await self._settle(step, "skipped", f"not started: step {self.stopped_by} failed and stops the run")
                changed = True
                continue
            blocked = next((n for n in needs if n.status in ("skipped", "cancelled")), None)
            if blocked is not None:
                await self._settle(step, "skipped", f"needs {blocked.id}, which was {blocked.status}")
                changed = True
                continue
            context = self.context()
            when = step.spec.condition("when")
            if when is not None and not when.holds(context):
                await self._settle(step, "skipped", f"when `{when.text}` was false")
                changed = True
                continue
            try:
                work = self._work(step.spec, context)
            except templates.TemplateError as exc:
                await self._settle(step, "failed", f"arguments: {exc}")
                changed = True
                continue
            if self._files is not None:
                step.input_hash = self._input_hash(work)
            reused = self.reusable.get(step.id)
            if reused is not None and reused.input_hash == step.input_hash:
                self._take(step, reused)
                await self.listener(step)
                changed = True
                continue
            if self._exclusive or (step.spec.writes and self._running):
                break  # a writer runs alone, and the steps after a waiting writer wait for it
            if len(self._running) >= self.spec.max_parallel:
                break
            step.status = "running"
            step.started = time.time()
            self._running.add(step.id)
            self._exclusive = step.spec.writes
            tg.start_soon(self._run_step, step, work)
            if step.spec.writes:
                break
        return changed

    def _work(self, spec: StepSpec, context: Mapping[str, Any]) -> Work:
        if spec.tool is not None:
            args: dict[str, Any] | None = templates.render(spec.args, context)
            argv = None
        else:
            command = list(spec.command or ())
            args, argv = None, [command[0], *templates.render_argv(command[1:], context)]
        identity = {"kind": spec.kind, "target": spec.target, "args": args if argv is None else argv, "cwd": spec.cwd}
        return Work(args=args, argv=argv, identity=json.dumps(identity, sort_keys=True, default=str))

    def _take(self, step: StepRun, reused: Reused) -> None:
        result = reused.result
        step.status = "passed"
        step.output, step.findings, step.excerpt = result.output, result.findings, result.excerpt
        step.seconds = 0.0
        step.reused_from = reused.run_id

    async def _settle(self, step: StepRun, status: Status, error: str | None) -> None:
        step.status = status
        step.error = error
        if status in _BAD and step.spec.on_failure == "stop" and self.stopped_by is None:
            self.stopped_by = step.id
        await self.listener(step)

    # one step ------------------------------------------------------------------------------------

    async def _run_step(self, step: StepRun, work: Work) -> None:
        started = time.perf_counter()
        try:
            await self.listener(step)
            result = await self._execute(step, work)
        except anyio.get_cancelled_exc_class():
            step.seconds = round(time.perf_counter() - started, 3)
            with anyio.CancelScope(shield=True):
                await self._settle(step, "cancelled", "the run was cancelled")
            raise
        finally:
            self._running.discard(step.id)
            if step.spec.writes:
                self._exclusive = False
        step.seconds = round(time.perf_counter() - started, 3)
        if step.input_hash is None:
            await self._files_known.wait()
            step.input_hash = self._input_hash(work)
        step.output, step.findings, step.excerpt = result.output, result.findings, result.excerpt
        error = result.error if not result.ok else None
        if result.ok:
            error = self._fail_if(step, result.output)
        status: Status = "timed_out" if result.timed_out else "passed" if error is None else "failed"
        await self._settle(step, status, error)
        self._wake.set()

    async def _execute(self, step: StepRun, work: Work) -> StepResult:
        """The step's work within its timeout; an error of the work is a failed result."""
        limit = step.spec.timeout_s
        try:
            with anyio.move_on_after(limit) as scope:
                return await self.execute(step, work)
        except CaelumError as exc:
            return StepResult(ok=False, error=str(exc))
        except Exception as exc:  # a bug in a tool must fail its step, not the whole run
            log.exception("workflow step %s (%s) failed", step.id, step.spec.target)
            return StepResult(ok=False, error=f"internal error in {step.spec.target}: {type(exc).__name__}")
        assert scope.cancelled_caught
        return StepResult(ok=False, timed_out=True, error=timeout_error(limit))

    def _fail_if(self, step: StepRun, output: Any) -> str | None:
        condition = step.spec.condition("fail_if")
        if condition is None:
            return None
        if condition.holds({**self.context(), "output": output}):
            return f"fail_if `{condition.text}` held"
        return None
