"""The AI supervisor: direct access to the local pool with the same confidence gate.

``delegate_task`` runs a caller's prompt (task kind ``general``: the caller picks the tier) and
streams: while the model writes, the text so far arrives in progress notifications (at most four a
second, the latest :data:`PARTIAL_CHARS` characters). ``compare_models`` (:mod:`.ai_compare`) runs
one prompt on several models at once. ``pool_status`` and ``set_host_enabled`` use the
``pool_admin`` service, which only this supervisor is handed. ``run_batch`` and ``batch_status``
(:mod:`.ai_batch`) run one template over many inputs across the pool, resumably.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator

from caelum_mcp.core.errors import CaelumError
from caelum_mcp.core.llm import ExecutionRecord, LLMTask, TaskKind
from caelum_mcp.core.types import ChatMessage, Tier
from caelum_mcp.engine.status import HostStatus, StatusReport
from caelum_mcp.supervisors.base import ExternalTool, Supervisor, SupervisorEnv, ToolContext, ToolOutput

from .ai_batch import BatchOutput, BatchStatusInput, RunBatchInput, batch_status, start_batch
from .ai_compare import CompareModelsInput, CompareModelsOutput, chat_tier, compare_models, object_schema
from .batch_runner import BatchService

log = logging.getLogger(__name__)

PARTIAL_CHARS = 400
PARTIAL_EVERY_S = 0.25


class DelegateTaskInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=200_000, description="what the model should do")
    system: str | None = Field(default=None, max_length=200_000, description="optional system instructions")
    json_schema: dict[str, Any] | None = Field(
        default=None, description="optional JSON schema (type object) the answer must match"
    )
    tier: Tier | None = Field(default=None, description="where to start (default: configured)")
    model: str | None = Field(default=None, max_length=200, description="a specific local model, e.g. 'qwen3:8b'")
    allow_claude: bool = Field(default=True, description="may escalate to Claude when local confidence is low")
    max_tokens: int | None = Field(default=None, ge=16, le=32768)

    @field_validator("json_schema")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return object_schema(value)

    @field_validator("tier")
    @classmethod
    def _chat_tier(cls, value: Tier | None) -> Tier | None:
        return chat_tier(value)


class DelegateTaskOutput(ToolOutput):
    answer: str | None = Field(description="the answer text (when no json_schema was given)")
    data: dict[str, Any] | None = Field(description="the structured answer (when a json_schema was given)")
    execution: ExecutionRecord


class PoolStatusInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str | None = Field(default=None, max_length=200, description="only this host (default: all)")


class PoolStatusOutput(StatusReport, ToolOutput):
    """The status report as a tool result."""


class SetHostEnabledInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(max_length=200, description="the host's name, as pool_status lists it")
    enabled: bool = Field(description="false takes it out of rotation now; true puts it back")


class HostStatusOutput(HostStatus, ToolOutput):
    """One host's status as a tool result."""


async def delegate_task(args: DelegateTaskInput, ctx: ToolContext) -> DelegateTaskOutput:
    messages = []
    if args.system:
        messages.append(ChatMessage(role="system", content=args.system))
    messages.append(ChatMessage(role="user", content=args.prompt))
    task = LLMTask(
        name="delegate_task",
        kind=TaskKind.GENERAL,
        messages=tuple(messages),
        output_schema=args.json_schema,
        tier=args.tier,
        model=args.model,
        allow_claude=args.allow_claude,
        max_output_tokens=args.max_tokens,
        on_text=PartialText(ctx, structured=args.json_schema is not None),
    )

    async def progress(message: str) -> None:
        await ctx.note(message)

    result = await ctx.llm.run(task, progress=progress)
    if args.json_schema is None:
        answer = result.output.get("answer") if result.output else None
        return DelegateTaskOutput(
            answer=answer if isinstance(answer, str) else result.text, data=None, execution=result.execution
        )
    return DelegateTaskOutput(answer=None, data=result.output, execution=result.execution)


class PartialText:
    """Streamed text as progress notes: at most every :data:`PARTIAL_EVERY_S`, the latest
    :data:`PARTIAL_CHARS` characters. A free-text answer arrives as JSON (``{"answer": "..."}``):
    the note shows the answer's text so far, not the JSON around it."""

    def __init__(self, ctx: ToolContext, *, structured: bool) -> None:
        self.ctx = ctx
        self.structured = structured
        self.last = 0.0

    async def __call__(self, text: str) -> None:
        now = time.monotonic()
        if now - self.last < PARTIAL_EVERY_S:
            return
        self.last = now
        shown = text if self.structured else partial_answer(text)
        if shown:
            tail = shown if len(shown) <= PARTIAL_CHARS else "…" + shown[-PARTIAL_CHARS:]
            await self.ctx.note(f"writing: {tail}")


_ANSWER_OPENS = re.compile(r'"answer"\s*:\s*"')


def partial_answer(text: str) -> str:
    """The ``answer`` string of a JSON reply that may be cut anywhere, decoded so far; text that
    is not such JSON is returned as it is."""
    opened = _ANSWER_OPENS.search(text)
    if opened is None:
        return "" if text.lstrip().startswith("{") else text
    body = text[opened.end() :]
    end = 0
    while end < len(body):
        if body[end] == "\\":
            end += 2
            continue
        if body[end] == '"':
            break
        end += 1
    piece = body[:end]
    for cut in range(min(len(piece), 6) + 1):  # drop a half-written escape at the end
        try:
            return str(json.loads(f'"{piece[: len(piece) - cut]}"', strict=False))
        except ValueError:
            continue
    return piece


async def pool_status(args: PoolStatusInput, ctx: ToolContext) -> PoolStatusOutput:
    report = await ctx.require_pool_admin().astatus()
    hosts = report.hosts
    if args.host is not None:
        hosts = [h for h in report.hosts if h.name == args.host]
        if not hosts:
            known = ", ".join(h.name for h in report.hosts) or "none"
            raise CaelumError(f"no host named {args.host!r}; hosts: {known}")
    return PoolStatusOutput.model_validate({**report.model_dump(), "hosts": [h.model_dump() for h in hosts]})


async def set_host_enabled(args: SetHostEnabledInput, ctx: ToolContext) -> HostStatusOutput:
    status = await ctx.require_pool_admin().set_host_enabled(args.host, args.enabled)
    return HostStatusOutput.model_validate(status.model_dump())


@dataclass
class AIState:
    """What the ai supervisor keeps for the server's life: the batch service, or why its store
    could not be opened (the pool tools serve regardless)."""

    batches: BatchService | None = None
    problem: str | None = None


class AISupervisor(Supervisor):
    name = "ai"
    description = "Send work to the local model pool (with the Claude fallback) and inspect the pool."
    pool_admin = True

    def _service(self, ctx: ToolContext) -> BatchService:
        state = ctx.state_as(AIState)
        if state.batches is None:
            raise CaelumError(
                f"the batch store in {ctx.state_dir} could not be opened ({state.problem}); check the folder"
            )
        if ctx.pool_admin is not None:
            state.batches.pool_admin = ctx.pool_admin
        return state.batches

    @asynccontextmanager
    async def lifespan(self, env: SupervisorEnv) -> AsyncIterator[AIState]:
        state = AIState()
        try:
            async with anyio.create_task_group() as tg:  # batches outlive the calls that start them
                try:
                    state.batches = BatchService(env.state_dir, env.llm, tg)
                except (OSError, sqlite3.Error) as exc:  # the pool tools serve regardless; run_batch says why
                    log.exception("the batch store in %s could not be opened", env.state_dir)
                    state.problem = str(exc)
                else:
                    tg.start_soon(state.batches.resume_all)  # batches a stopped server left unfinished
                try:
                    yield state
                finally:
                    tg.cancel_scope.cancel()
        finally:  # after the batches' tasks ended: they write to the store
            if state.batches is not None:
                state.batches.close()

    async def _run_batch(self, args: RunBatchInput, ctx: ToolContext) -> BatchOutput:
        return await start_batch(args, ctx, self._service(ctx))

    async def _batch_status(self, args: BatchStatusInput, ctx: ToolContext) -> BatchOutput:
        return await batch_status(args, ctx, self._service(ctx))

    def external_tools(self) -> Sequence[ExternalTool[Any, Any]]:
        return (
            ExternalTool(
                name="delegate_task",
                title="Delegate a task to the local LLM pool",
                description=(
                    "Run a prompt on the user's local models (Ollama / llama.cpp pool), optionally with a JSON "
                    "schema, tier or model. Falls back to Claude only when local confidence is below the "
                    "threshold. Returns the answer and an execution record (host, model, confidence, tokens, cost)."
                ),
                input_model=DelegateTaskInput,
                output_model=DelegateTaskOutput,
                handler=delegate_task,
                read_only=True,
                idempotent=False,
                open_world=True,
                more_hint="ask for a shorter answer (`max_tokens`)",
            ),
            ExternalTool(
                name="compare_models",
                title="Compare models on one prompt",
                description=(
                    "Run one prompt on several local models at once (and Claude if asked): each answer with "
                    "time to first token, latency, tokens/s, load time, tokens, cost; and how far they agree "
                    "(per JSON field, or text similarity), with the majority and outliers."
                ),
                input_model=CompareModelsInput,
                output_model=CompareModelsOutput,
                handler=compare_models,
                idempotent=False,
                open_world=True,
                more_hint="compare fewer `models`, or lower `answer_chars`",
            ),
            ExternalTool(
                name="run_batch",
                title="Run one prompt template over many inputs",
                description=(
                    "Run a template over a JSONL/CSV file, a glob of files or a list, across every pool host; "
                    "results JSONL (DuckDB-readable), one row an item. Small batches wait with progress, large "
                    "ones return a batch_id; resumes after a restart. dry_run: items, tokens, time, Claude cost."
                ),
                input_model=RunBatchInput,
                output_model=BatchOutput,
                handler=self._run_batch,
                read_only=False,
                idempotent=False,
                open_world=True,
                uses_roots=True,
            ),
            ExternalTool(
                name="batch_status",
                title="Progress of a batch, or cancel it",
                description="A run_batch batch's counts, ETA and results file; `cancel` stops new items.",
                input_model=BatchStatusInput,
                output_model=BatchOutput,
                handler=self._batch_status,
                read_only=False,
                idempotent=False,
            ),
            ExternalTool(
                name="pool_status",
                title="Local LLM pool status",
                description=(
                    "Hosts, health, circuit state, models and tiers, requests in flight, latency, the local "
                    "share of calls, Claude spend and the savings from running locally."
                ),
                input_model=PoolStatusInput,
                output_model=PoolStatusOutput,
                handler=pool_status,
                more_hint="ask for one host (`host`)",
            ),
            ExternalTool(
                name="set_host_enabled",
                title="Take a pool host out of rotation or put it back",
                description="Disable or re-enable one host of the local pool at runtime (not persisted).",
                input_model=SetHostEnabledInput,
                output_model=HostStatusOutput,
                handler=set_host_enabled,
                read_only=False,
                idempotent=True,
            ),
        )
