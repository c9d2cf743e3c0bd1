"""The LLM seam: what a supervisor asks of a model, what it needs, and what comes back.

A supervisor describes one piece of model work as an :class:`LLMTask`: messages, an output schema,
a grounding check, and what the work *needs* — its :class:`TaskKind`, the smallest model tier that
can do it, an output-token cap and a time budget. The router (:mod:`caelum_mcp.engine.router`) runs it
local-first and answers with a :class:`RoutedResult` carrying an :class:`ExecutionRecord`.

Needs matter because the cheapest failure is the one never attempted: a 135M model cannot review
code, so a ``review`` task (smallest tier ``full``) is never sent to it. When no local model of the
needed tier is up and Claude may not be used, the router raises :class:`TaskSkippedError` at once,
naming what to configure, instead of making the user wait a minute for an answer that cannot clear
the confidence gate.

Defaults per kind are in :data:`DEFAULT_NEEDS`; ``[router.tasks.<kind>]`` in the config overrides
them (``min_tier``, ``max_output_tokens``, ``time_budget_s``), and a task may set its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from caelum_mcp.core.confidence import ConfidenceParts
from caelum_mcp.core.types import SIZE_TIERS, ChatMessage, Frozen, Tier

FinalPath = Literal["local", "claude", "local_low_confidence"]
ProgressFn = Callable[[str], Awaitable[None]]
TextFn = Callable[[str], Awaitable[None]]


class TaskKind(StrEnum):
    """What a task asks of a model; each kind has default needs (:data:`DEFAULT_NEEDS`)."""

    GENERAL = "general"  # a caller's own prompt (delegate_task): the caller picks the tier
    CLASSIFICATION = "classification"  # pick a label from a short list
    EXTRACTION = "extraction"  # pull fields out of text into a schema
    SUMMARY = "summary"  # summarise results that are already in hand
    QA = "qa"  # answer a question from cited passages
    TRIAGE = "triage"  # say why something failed, citing the failure text
    SQL = "sql"  # write one query over a known schema
    REVIEW = "review"  # judge code or findings and prioritise them
    CODE_EDIT = "code_edit"  # write a change to code that must apply and lint clean


class TaskNeeds(Frozen):
    """What a task needs from a model. ``min_tier`` is a size tier (micro < small < full < large)."""

    min_tier: Tier = Field(description="the smallest size tier that can do the task well")
    max_output_tokens: int = Field(ge=16, le=32768, description="output cap, sized to the task's schema")
    time_budget_s: float = Field(gt=0, le=3600, description="seconds the whole step may take, escalations included")
    prefer_code: bool = Field(default=False, description="try a code model of a sufficient size first")


DEFAULT_NEEDS: dict[TaskKind, TaskNeeds] = {
    TaskKind.GENERAL: TaskNeeds(min_tier=Tier.MICRO, max_output_tokens=1024, time_budget_s=300),
    TaskKind.CLASSIFICATION: TaskNeeds(min_tier=Tier.SMALL, max_output_tokens=128, time_budget_s=30),
    TaskKind.EXTRACTION: TaskNeeds(min_tier=Tier.SMALL, max_output_tokens=512, time_budget_s=60),
    TaskKind.SUMMARY: TaskNeeds(min_tier=Tier.SMALL, max_output_tokens=400, time_budget_s=60),
    TaskKind.QA: TaskNeeds(min_tier=Tier.SMALL, max_output_tokens=800, time_budget_s=90),
    TaskKind.TRIAGE: TaskNeeds(min_tier=Tier.SMALL, max_output_tokens=700, time_budget_s=90),
    TaskKind.SQL: TaskNeeds(min_tier=Tier.SMALL, max_output_tokens=400, time_budget_s=60, prefer_code=True),
    TaskKind.REVIEW: TaskNeeds(min_tier=Tier.FULL, max_output_tokens=800, time_budget_s=120, prefer_code=True),
    TaskKind.CODE_EDIT: TaskNeeds(min_tier=Tier.FULL, max_output_tokens=800, time_budget_s=120, prefer_code=True),
}


def size_rank(tier: Tier) -> int:
    """micro 0 < small 1 < full 2 < large 3; ``code`` and ``embedding`` are not sizes (-1)."""
    return SIZE_TIERS.index(tier) if tier in SIZE_TIERS else -1


class GroundingResult(Frozen):
    """What the caller's check found: 1.0 = everything cited exists / works.

    For an answer that is a list of cited items, ``valid`` holds the indexes of the items that
    passed every check (the supervisor shows only those).
    """

    score: float = Field(ge=0, le=1)
    problems: tuple[str, ...] = ()
    valid: tuple[int, ...] = ()


GroundingCheck = Callable[[dict[str, Any]], GroundingResult | Awaitable[GroundingResult]]


@dataclass(frozen=True)
class LLMTask:
    """One piece of LLM work. ``output_schema`` is a JSON schema of an object (None = free text).

    ``min_tier``, ``max_output_tokens`` and ``time_budget_s`` override the needs of ``kind`` for
    this task only; ``tier`` is where a caller wants to *start* (never below the minimum) and
    ``model`` names one local model exactly.

    ``on_text`` streams local answers: it is called with the reply's text so far as it arrives
    (failover happens only before the first token). ``claude_only`` skips the local pool.
    """

    name: str
    kind: TaskKind
    messages: tuple[ChatMessage, ...]
    output_schema: dict[str, Any] | None = None
    grounding: GroundingCheck | None = None
    min_tier: Tier | None = None
    max_output_tokens: int | None = None
    time_budget_s: float | None = None
    tier: Tier | None = None
    model: str | None = None
    allow_claude: bool = True
    temperature: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    on_text: TextFn | None = None
    claude_only: bool = False


class ExecutionRecord(Frozen):
    """What the router did for one task: where it ran, how sure it is, what it cost."""

    path: FinalPath
    provider: str
    host: str
    model: str
    tier: str | None
    attempts: int = Field(description="model calls made, repairs and escalations included")
    confidence: float
    threshold: float
    confidence_parts: ConfidenceParts
    escalations: tuple[str, ...] = ()
    reason: str | None = Field(default=None, description="why the answer is low-confidence or Claude was not used")
    timed_out: bool = Field(
        default=False, description="the task's time budget ended it; this is the best answer so far"
    )
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    latency_ms: float = 0.0
    load_ms: float | None = Field(default=None, description="model load time, where the host reports it")
    cost_usd: float = Field(default=0.0, description="real money spent on Claude for this task")
    counterfactual_cost_usd: float = Field(
        default=0.0,
        description="what the configured Claude model would have cost for the tokens served locally",
    )


class CallCost(Frozen):
    """What one tool call's model calls cost, its child tool calls included."""

    model_calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    counterfactual_cost_usd: float


class RoutedResult(Frozen):
    output: dict[str, Any] | None
    text: str
    execution: ExecutionRecord


class Availability(Frozen):
    """Whether a task can run now: on a local model of the needed tier, on Claude, or not at all."""

    local: bool
    claude: bool
    needs: TaskNeeds
    local_models: tuple[str, ...] = Field(default=(), description="eligible local models, as model@host")
    reason: str | None = Field(default=None, description="why it cannot run, and what to configure")

    @property
    def runnable(self) -> bool:
        return self.local or self.claude


class Embeddings(Frozen):
    """Vectors for a batch of texts, in order, and where they were computed."""

    model: str
    host: str
    vectors: tuple[tuple[float, ...], ...]
    input_tokens: int = 0

    @property
    def dimensions(self) -> int:
        return len(self.vectors[0]) if self.vectors else 0
