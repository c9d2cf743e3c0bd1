"""The AI supervisor: direct access to the local pool with the same confidence gate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, field_validator

from caelum_mcp.errors import CaelumError
from caelum_mcp.router import ExecutionRecord, LLMTask
from caelum_mcp.status import HostStatus, StatusReport, build_status, host_status
from caelum_mcp.supervisors.base import ExternalTool, Supervisor, ToolContext
from caelum_mcp.types import ChatMessage, Tier


class DelegateTaskInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=200_000, description="what the model should do")
    system: str | None = Field(default=None, description="optional system instructions")
    json_schema: dict[str, Any] | None = Field(
        default=None, description="optional JSON schema (type object) the answer must match"
    )
    tier: Tier | None = Field(default=None, description="micro, small, full, large or code (default: configured)")
    model: str | None = Field(default=None, description="a specific local model, e.g. 'qwen3:8b'")
    allow_claude: bool = Field(default=True, description="may escalate to Claude when local confidence is low")
    max_tokens: int | None = Field(default=None, ge=16, le=32768)

    @field_validator("json_schema")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        if value.get("type") != "object":
            raise ValueError('json_schema must describe an object: {"type": "object", "properties": {...}}')
        try:
            jsonschema.validators.validator_for(value).check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"json_schema is not a valid JSON schema: {exc.message}") from exc
        return value


class DelegateTaskOutput(BaseModel):
    answer: str | None = Field(description="the answer text (when no json_schema was given)")
    data: dict[str, Any] | None = Field(description="the structured answer (when a json_schema was given)")
    execution: ExecutionRecord


class PoolStatusInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str | None = Field(default=None, description="only this host (default: all)")


class SetHostEnabledInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(description="the host's name, as pool_status lists it")
    enabled: bool = Field(description="false takes it out of rotation now; true puts it back")


async def delegate_task(args: DelegateTaskInput, ctx: ToolContext) -> DelegateTaskOutput:
    messages = []
    if args.system:
        messages.append(ChatMessage(role="system", content=args.system))
    messages.append(ChatMessage(role="user", content=args.prompt))
    task = LLMTask(
        name="delegate_task",
        messages=tuple(messages),
        output_schema=args.json_schema,
        tier=args.tier,
        model=args.model,
        allow_claude=args.allow_claude,
        max_tokens=args.max_tokens,
    )

    async def progress(message: str) -> None:
        await ctx.report(0, None, message)

    result = await ctx.router.run(task, progress=progress)
    if args.json_schema is None:
        answer = result.output.get("answer") if result.output else None
        return DelegateTaskOutput(
            answer=answer if isinstance(answer, str) else result.text, data=None, execution=result.execution
        )
    return DelegateTaskOutput(answer=None, data=result.output, execution=result.execution)


def _app(ctx: ToolContext) -> Any:
    if ctx.app is None:
        raise CaelumError("pool views need the running server")
    return ctx.app


async def pool_status(args: PoolStatusInput, ctx: ToolContext) -> StatusReport:
    report = build_status(_app(ctx))
    if args.host is None:
        return report
    hosts = [h for h in report.hosts if h.name == args.host]
    if not hosts:
        known = ", ".join(h.name for h in report.hosts) or "none"
        raise CaelumError(f"no host named {args.host!r}; hosts: {known}")
    return report.model_copy(update={"hosts": hosts})


async def set_host_enabled(args: SetHostEnabledInput, ctx: ToolContext) -> HostStatus:
    app = _app(ctx)
    host = app.pool.set_enabled(args.host, args.enabled)
    if args.enabled:
        await app.pool.refresh_host(host)
    return host_status(host, app.pool)


class AISupervisor(Supervisor):
    name = "ai"
    description = "Send work to the local model pool (with the Claude fallback) and inspect the pool."

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
            ),
            ExternalTool(
                name="pool_status",
                title="Local LLM pool status",
                description=(
                    "Hosts, health, circuit state, models and tiers, requests in flight, latency, the local "
                    "share of calls, Claude spend and the savings from running locally."
                ),
                input_model=PoolStatusInput,
                output_model=StatusReport,
                handler=pool_status,
            ),
            ExternalTool(
                name="set_host_enabled",
                title="Take a pool host out of rotation or put it back",
                description="Disable or re-enable one host of the local pool at runtime (not persisted).",
                input_model=SetHostEnabledInput,
                output_model=HostStatus,
                handler=set_host_enabled,
                read_only=False,
                idempotent=True,
            ),
        )
