"""The run's summary: a plain one always, and one from the LLM that must cite the run's steps.

The LLM (task kind ``summary``, through :func:`~caelum_mcp.supervisors.llm_steps.run_cited_list`)
reads one line of facts per step (:func:`step_facts`) and answers with points, each naming a step.
A point is kept only when the step is one of this run's and every figure it quotes appears in that
step's facts: a summary may not invent a step or a number.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from caelum_mcp.core.llm import TaskKind
from caelum_mcp.engine.grounding import check_items, cited_list_schema, output_cap
from caelum_mcp.supervisors.base import ToolContext
from caelum_mcp.supervisors.llm_steps import LLMStep, run_cited_list

from .engine import StepRun

MAX_POINTS = 6


class SummaryPoint(BaseModel):
    step: str
    point: str


def plain_summary(workflow: str, status: str, steps: list[StepRun], seconds: float) -> str:
    parts = []
    for step in steps:
        extra = f" ({step.findings} findings)" if step.findings else ""
        parts.append(f"{step.id} {step.status.replace('_', ' ')}{extra}")
    return f"{workflow} {status} in {seconds:.1f} s: {', '.join(parts)}"


_POINTS = cited_list_schema(
    "points",
    {
        "step": {"type": "string", "description": "the step this point is about"},
        "point": {"type": "string", "description": "what its result means for the change, in one sentence"},
    },
    ("step", "point"),
    max_items=MAX_POINTS,
    summary="the run's outcome in one or two sentences",
)
_SYSTEM = (
    "You summarise the result of an automated check run for a developer. Say what passed, what failed and "
    "what to do first. Each point names the step it is about, and quotes only figures shown for that step."
)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def step_facts(step: StepRun) -> str:
    """The line the LLM reads about a step (and its points' figures are checked against)."""
    parts = [f"{step.id} ({step.spec.target}): {step.status}"]
    if step.seconds is not None and not step.reused_from:
        parts.append(f"{step.seconds:.1f} s")
    if step.findings is not None:
        parts.append(f"{step.findings} findings")
    if step.error:
        parts.append(f"error: {step.error}")
    if step.excerpt:
        parts.append(f"result: {step.excerpt}")
    return "; ".join(parts)


async def llm_summary(
    ctx: ToolContext, workflow: str, status: str, steps: list[StepRun], *, allow_claude: bool
) -> tuple[list[SummaryPoint], LLMStep, str | None]:
    """The LLM's summary (task kind ``summary``): its grounded points, the step report, and its
    summary sentence when at least one point was grounded."""
    facts = {s.id: step_facts(s) for s in steps}
    user = f"Workflow {workflow}: {status}.\nSteps:\n" + "\n".join(f"- {line}" for line in facts.values())

    def grounded(_: int, item: Mapping[str, Any]) -> str | None:
        step = item.get("step")
        if step not in facts:
            return f"cites step {str(step)[:40]!r}, which is not in this run"
        shown = set(_NUMBER.findall(facts[str(step)]))
        invented = [n for n in _NUMBER.findall(str(item.get("point", ""))) if n not in shown]
        return f"quotes {invented[0]}, which is not in step {step}'s result" if invented else None

    got = await run_cited_list(
        ctx,
        name="workflow_summary",
        kind=TaskKind.SUMMARY,
        system=_SYSTEM,
        user=user,
        schema=_POINTS,
        key="points",
        check=lambda out: check_items(out.get("points") or [], grounded, label="point"),
        allow_claude=allow_claude,
        max_output_tokens=output_cap(MAX_POINTS, 60),
    )
    points = [SummaryPoint(step=str(p["step"]), point=str(p.get("point", ""))) for p in got.items]
    said = got.output.get("summary") if points else None
    return points, got.step, said.strip() if isinstance(said, str) and said.strip() else None
