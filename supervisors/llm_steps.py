"""Running one LLM step of a tool, and reporting on it in the tool's result.

Every supervisor's LLM step has the same life: ask the router (through ``ctx.llm``), keep what the
grounding check accepts, and tell the user what happened — it ran (and how many items were kept
and dropped), it was skipped because no model that can do it may be used (and what to configure),
or it ran out of its time budget (and what it returns anyway). :func:`run_cited_list` does that
for the common case, a list of cited items (:mod:`caelum_mcp.engine.grounding`); :func:`run_step` for any
other task. :class:`LLMStep` is the part of a tool result that reports it.

The check runs once per distinct answer: the router scores confidence with it and the step filters
the items with the same result (an expensive check, such as applying patches, is not repeated).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from caelum_mcp.core.errors import CaelumError, TaskSkippedError, TaskTimedOutError
from caelum_mcp.core.llm import ExecutionRecord, GroundingResult, LLMTask, RoutedResult, TaskKind
from caelum_mcp.core.types import ChatMessage
from caelum_mcp.supervisors.base import ToolContext

StepStatus = Literal["ran", "low_confidence", "skipped", "timed_out", "failed"]
ItemsCheck = Callable[[dict[str, Any]], GroundingResult | Awaitable[GroundingResult]]


class LLMStep(BaseModel):
    """What a tool's LLM step did. ``note`` says why it did not run or what it dropped, and what to
    configure when no model that can do it was available."""

    status: StepStatus
    note: str | None = None
    kept: int = Field(default=0, description="items that passed the grounding check")
    dropped: int = Field(default=0, description="items dropped because what they cite does not exist")
    execution: ExecutionRecord | None = None


@dataclass(frozen=True)
class CitedList:
    """A cited-list step's outcome: the kept items, the whole answer, and the report."""

    items: list[dict[str, Any]]
    output: dict[str, Any]
    step: LLMStep


class _OnceCheck:
    """``check`` memoised by the answer's content, so the router and the filter share one run."""

    def __init__(self, check: ItemsCheck) -> None:
        self.check = check
        self.seen: dict[str, GroundingResult] = {}

    async def __call__(self, output: dict[str, Any]) -> GroundingResult:
        key = json.dumps(output, sort_keys=True, default=str)
        if key not in self.seen:
            result = self.check(output)
            self.seen[key] = await result if inspect.isawaitable(result) else result
        return self.seen[key]


async def run_step(ctx: ToolContext, task: LLMTask) -> tuple[RoutedResult | None, LLMStep]:
    """Route ``task``; a step that could not run is a report in the result, never a failed call."""

    async def progress(message: str) -> None:
        await ctx.note(f"{task.name}: {message}")

    try:
        routed = await ctx.llm.run(task, progress=progress)
    except TaskSkippedError as exc:
        return None, LLMStep(status="skipped", note=str(exc))
    except TaskTimedOutError as exc:
        return None, LLMStep(status="timed_out", note=str(exc))
    except CaelumError as exc:
        return None, LLMStep(status="failed", note=f"{task.name} failed: {exc}")
    ex = routed.execution
    status: StepStatus = "ran"
    if ex.timed_out:
        status = "timed_out"
    elif ex.path == "local_low_confidence":
        status = "low_confidence"
    return routed, LLMStep(status=status, note=ex.reason, execution=ex)


async def run_cited_list(
    ctx: ToolContext,
    *,
    name: str,
    kind: TaskKind,
    system: str,
    user: str,
    schema: dict[str, Any],
    key: str,
    check: ItemsCheck,
    allow_claude: bool,
    max_output_tokens: int | None = None,
) -> CitedList:
    """Route a task whose answer is a list under ``key``; keep the items ``check`` accepts.

    ``check`` returns a :class:`GroundingResult` whose ``valid`` lists the indexes of the grounded
    items; it feeds the router's confidence and filters the items shown.
    """
    once = _OnceCheck(check)
    task = LLMTask(
        name=name,
        kind=kind,
        messages=(ChatMessage(role="system", content=system), ChatMessage(role="user", content=user)),
        output_schema=schema,
        grounding=once,
        allow_claude=allow_claude,
        max_output_tokens=max_output_tokens,
    )
    routed, step = await run_step(ctx, task)
    if routed is None:
        return CitedList([], {}, step)
    output = routed.output or {}
    raw = output.get(key)
    items: list[Any] = raw if isinstance(raw, list) else []
    grounding = await once(output) if items else GroundingResult(score=1.0)
    kept = [items[i] for i in grounding.valid if i < len(items)]
    dropped = len(items) - len(kept)
    note = step.note
    if dropped:
        first = f": {grounding.problems[0]}" if grounding.problems else ""
        note = _join(note, f"{dropped} of {len(items)} LLM item(s) dropped as ungrounded{first}")
    return CitedList(kept, output, step.model_copy(update={"kept": len(kept), "dropped": dropped, "note": note}))


def summary_of(output: Mapping[str, Any], kept: int) -> str | None:
    """The answer's ``summary`` string, when the step kept at least one grounded item."""
    text = output.get("summary")
    return text.strip() if isinstance(text, str) and text.strip() and kept else None


def _join(*notes: str | None) -> str | None:
    parts = [n for n in notes if n]
    return "; ".join(parts) if parts else None
