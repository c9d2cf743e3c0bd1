"""A complete supervisor: explain a log with a grounded local answer, as README "Adding a supervisor" describes.

In the product it would be ``supervisors/logs.py`` plus one line in ``SUPERVISORS``;
``tests/test_readme_example.py`` serves it with and without a capable model.
"""

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field

from caelum_mcp.core.llm import TaskKind
from caelum_mcp.engine.grounding import check_items, cited_list_schema, output_cap
from caelum_mcp.supervisors.base import ExternalTool, Supervisor, SupervisorEnv, ToolContext, ToolOutput
from caelum_mcp.supervisors.llm_steps import LLMStep, run_cited_list
from caelum_mcp.tools.paths import resolve_project, resolve_within

CAUSES = cited_list_schema(
    "causes",
    {"cause": {"type": "string"}, "line": {"type": "integer", "description": "a line number shown"}},
    ("cause", "line"),
    max_items=3,
)


class ExplainInput(BaseModel):  # the tool's arguments: one model, no extras
    model_config = ConfigDict(extra="forbid")
    project: str = Field(description="the folder holding the log (inside the allowed roots)")
    path: str = Field(description="the log file, relative to project")


class ExplainOutput(ToolOutput):  # ToolOutput adds `omitted` and `more`
    lines: list[str]
    causes: list[dict[str, Any]]
    llm: LLMStep | None = None


async def explain_log(args: ExplainInput, ctx: ToolContext) -> ExplainOutput:
    log = resolve_within(resolve_project(args.project, ctx.roots), args.path)  # nothing outside the roots
    text = await anyio.to_thread.run_sync(lambda: log.read_text(errors="replace"))
    lines = text.splitlines()[-200:]
    await ctx.report(1, 2, f"read {len(lines)} lines")
    numbered = "\n".join(f"{i + 1}: {line}" for i, line in enumerate(lines))
    got = await run_cited_list(
        ctx,
        name="explain_log",
        kind=TaskKind.SUMMARY,
        allow_claude=True,
        system="Say what most likely went wrong, citing line numbers shown.",
        user=numbered,
        schema=CAUSES,
        key="causes",
        max_output_tokens=output_cap(3, 60),
        check=lambda out: check_items(
            out.get("causes") or [],
            lambda _, c: None if 1 <= c.get("line", 0) <= len(lines) else "no such line",
        ),
    )
    return ExplainOutput(lines=lines, causes=got.items, llm=got.step)


class LogsSupervisor(Supervisor):
    name = "logs"
    description = "Explain what went wrong in a log."

    def external_tools(self) -> Sequence[ExternalTool[Any, Any]]:
        return (
            ExternalTool(
                name="explain_log",
                title="Explain a log",
                description="Likely causes, citing log lines.",
                input_model=ExplainInput,
                output_model=ExplainOutput,
                handler=explain_log,
                uses_roots=True,
                more_hint="point at a shorter log",
            ),
        )

    @asynccontextmanager
    async def lifespan(self, env: SupervisorEnv) -> AsyncIterator[None]:
        # open what lives as long as the server (an index in env.state_dir), yield it (handlers
        # read it as ctx.state_as(TheIndex)), close it after; this one keeps nothing
        yield None
