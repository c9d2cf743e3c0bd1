"""``compare_models``: one prompt on several models at once, and how their answers compare.

Each model gets the same :class:`~caelum_mcp.core.llm.LLMTask` (kind ``general``, pinned to that model,
no escalation), all at once: the pool keeps each host within its own concurrency limit, so the
wall time is about the slowest model's when every model has its own slot. Answers are streamed
(``on_text``) so the time to the first token is measured; the execution record gives the total
latency, the tokens, the host's model load time where it reports one (Ollama), the cost and the
counterfactual Claude cost. With ``include_claude`` Claude answers too (``claude_only``), when
it is configured and under budget.

Agreement (:mod:`caelum_mcp.tools.compare.agreement`): field by field for JSON answers; for text,
the cosine of embeddings when the pool serves an embedding model, else of word counts; with the
majority and the outliers flagged.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator

from caelum_mcp.core.errors import CaelumError, TaskSkippedError
from caelum_mcp.core.llm import LLMTask, RoutedResult, TaskKind
from caelum_mcp.core.types import ChatMessage, Tier
from caelum_mcp.supervisors.base import ToolContext, ToolOutput
from caelum_mcp.tools.compare import agreement as agree

MAX_MODELS = 8
CLAUDE = "claude"


class CompareModelsInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=100_000)
    models: list[str] | None = Field(
        default=None, max_length=MAX_MODELS, description="local models (default: every chat model up, at most 8)"
    )
    system: str | None = Field(default=None, max_length=100_000)
    json_schema: dict[str, Any] | None = Field(default=None, description="compare JSON answers field by field")
    include_claude: bool = Field(default=False, description="Claude answers too (when configured, in budget)")
    max_tokens: int = Field(default=400, ge=16, le=4096)
    answer_chars: int = Field(default=600, ge=50, le=4000, description="each answer is cut to this")

    @field_validator("json_schema")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return object_schema(value)

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str] | None) -> list[str] | None:
        if value and any(not m.strip() or len(m) > 200 for m in value):
            raise ValueError("each model is a name such as 'qwen3:8b' (at most 200 characters)")
        return value


class ModelRun(BaseModel):
    name: str = Field(description="the model as asked (a repeat gets #2, #3)")
    status: Literal["ok", "low_confidence", "skipped", "failed"]
    error: str | None = None
    host: str | None = None
    model: str | None = None
    tier: str | None = None
    answer: str | None = None
    answer_cut: int = Field(default=0, description="characters cut from the answer")
    data: dict[str, Any] | None = Field(default=None, description="the JSON answer (with json_schema)")
    first_token_ms: float | None = None
    latency_ms: float | None = None
    load_ms: float | None = Field(default=None, description="model load time the host reported")
    input_tokens: int = 0
    output_tokens: int = 0
    tokens_per_s: float | None = Field(default=None, description="output tokens per second after the first one")
    confidence: float | None = None
    cost_usd: float = 0.0
    counterfactual_cost_usd: float = 0.0
    agreement: float | None = Field(default=None, description="0..1: how far it agrees with the others")
    outlier: bool = False


class FieldAgreement(BaseModel):
    field: str
    value: str = Field(description="the majority value, as JSON")
    agreeing: int
    dissenting: list[str]


class AgreementReport(BaseModel):
    method: Literal["json_fields", "embeddings", "word_overlap", "none"]
    embedding_model: str | None = None
    score: float | None = Field(default=None, description="0..1 over all answers")
    majority: list[str]
    outliers: list[str]
    fields: list[FieldAgreement] = Field(default_factory=list, description="JSON answers: per field")


class CompareModelsOutput(ToolOutput):
    runs: list[ModelRun]
    agreement: AgreementReport
    wall_ms: float = Field(description="the whole comparison")
    slowest_ms: float | None = Field(default=None, description="the slowest model's latency")
    cost_usd: float
    counterfactual_cost_usd: float


def object_schema(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """``value`` when it is a valid JSON schema of an object (None passes); else ValueError saying why."""
    if value is None:
        return None
    if value.get("type") != "object":
        raise ValueError('json_schema must describe an object: {"type": "object", "properties": {...}}')
    import jsonschema  # here: only a call that passes a schema pays for the import

    try:
        jsonschema.validators.validator_for(value).check_schema(value)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"json_schema is not a valid JSON schema: {exc.message}") from exc
    return value


def chat_tier(value: Tier | None) -> Tier | None:
    """``value`` unless it is the embedding tier, which cannot chat (ValueError naming the others)."""
    if value is Tier.EMBEDDING:
        raise ValueError("embedding models do not chat; use micro, small, full, large or code")
    return value


def default_models(ctx: ToolContext, probe: LLMTask) -> list[str]:
    """Every distinct chat model up now (at most :data:`MAX_MODELS`)."""
    found = [entry.rsplit("@", 1)[0] for entry in ctx.llm.availability(probe).local_models]
    return list(dict.fromkeys(found))[:MAX_MODELS]


async def compare_models(args: CompareModelsInput, ctx: ToolContext) -> CompareModelsOutput:
    messages = ([ChatMessage(role="system", content=args.system)] if args.system else []) + [
        ChatMessage(role="user", content=args.prompt)
    ]
    base = LLMTask(
        name="compare_models",
        kind=TaskKind.GENERAL,
        messages=tuple(messages),
        output_schema=args.json_schema,
        allow_claude=False,
        max_output_tokens=args.max_tokens,
    )
    models = args.models if args.models else default_models(ctx, base)
    targets: list[tuple[str, str | None]] = list(zip(_labels(models), models, strict=True))
    if args.include_claude:
        targets.append((CLAUDE, None))
    if not targets:
        raise CaelumError("no models to compare: no chat model is up; give `models` or start a host")
    await ctx.report(0, len(targets), f"asking {len(targets)} models at once")
    runs: dict[str, ModelRun] = {}
    done = 0
    started = time.perf_counter()

    async def one(name: str, model: str | None) -> None:
        nonlocal done
        runs[name] = await _ask(ctx, base, name, model, args.answer_chars)
        done += 1
        await ctx.report(done, len(targets), f"{name}: {runs[name].status}")

    async with anyio.create_task_group() as tg:
        for name, model in targets:
            tg.start_soon(one, name, model)
    wall_ms = round((time.perf_counter() - started) * 1000, 1)
    ordered = [runs[name] for name, _ in targets]
    report, scores = await _agreement(ctx, ordered, args.json_schema is not None)
    outliers = set(report.outliers)
    ordered = [r.model_copy(update={"agreement": scores.get(r.name), "outlier": r.name in outliers}) for r in ordered]
    latencies = [r.latency_ms for r in ordered if r.latency_ms is not None]
    return CompareModelsOutput(
        runs=ordered,
        agreement=report,
        wall_ms=wall_ms,
        slowest_ms=max(latencies) if latencies else None,
        cost_usd=round(sum(r.cost_usd for r in ordered), 6),
        counterfactual_cost_usd=round(sum(r.counterfactual_cost_usd for r in ordered), 6),
    )


async def _ask(ctx: ToolContext, base: LLMTask, name: str, model: str | None, answer_chars: int) -> ModelRun:
    first: list[float] = []
    started = time.perf_counter()

    async def on_text(text: str) -> None:
        if not first:
            first.append(time.perf_counter())

    claude = model is None
    task = LLMTask(
        name=base.name,
        kind=base.kind,
        messages=base.messages,
        output_schema=base.output_schema,
        max_output_tokens=base.max_output_tokens,
        model=model,
        allow_claude=claude,
        claude_only=claude,
        on_text=on_text,
    )
    if not claude and not ctx.llm.availability(task).local:
        up = default_models(ctx, base)
        # The router would add that Claude is not allowed: true, but this tool chose that, not the caller.
        return ModelRun(
            name=name,
            status="skipped",
            error=f"no healthy host serves {model!r} now; pull it on a host or pick one that is up "
            f"({', '.join(up) or 'none is up: start a host'})",
        )
    try:
        routed = await ctx.llm.run(task)
    except TaskSkippedError as exc:
        return ModelRun(name=name, status="skipped", error=str(exc))
    except CaelumError as exc:
        return ModelRun(name=name, status="failed", error=_local_only(str(exc)) if not claude else str(exc))
    first_ms = (first[0] - started) * 1000 if first else None
    run = _run_of(name, routed, first_ms, answer_chars, schema=base.output_schema is not None)
    if run.status == "low_confidence" and not claude:
        why = (
            f"confidence {run.confidence} is below the router's threshold; compare_models shows each model's "
            "own answer and never hands it on to Claude (add include_claude=true to compare with Claude)"
        )
        return run.model_copy(update={"error": why})
    return run


def _local_only(message: str) -> str:
    """The router's failure message without its Claude half: for a local model compare_models turns
    Claude off itself, so "Claude not allowed (allow_claude=false)" would blame a setting the caller
    never made."""
    local, sep, _claude = message.rpartition(". Claude: ")
    return f"{local} (compare_models asks this model only, never Claude)" if sep else message


def _run_of(name: str, routed: RoutedResult, first_ms: float | None, answer_chars: int, *, schema: bool) -> ModelRun:
    ex = routed.execution
    text = answer_text(routed) if not schema else None
    cut = max(0, len(text) - answer_chars) if text else 0
    generating_s = (ex.latency_ms - (first_ms or 0.0)) / 1000
    speed = ex.output_tokens / generating_s if ex.output_tokens and generating_s > 0 else None
    return ModelRun(
        name=name,
        status="low_confidence" if ex.path == "local_low_confidence" else "ok",
        error=ex.reason,
        host=ex.host,
        model=ex.model,
        tier=ex.tier,
        answer=text[:answer_chars] if text else None,
        answer_cut=cut,
        data=routed.output if schema else None,
        first_token_ms=round(first_ms, 1) if first_ms is not None else None,
        latency_ms=ex.latency_ms,
        load_ms=ex.load_ms,
        input_tokens=ex.input_tokens,
        output_tokens=ex.output_tokens,
        tokens_per_s=round(speed, 1) if speed else None,
        confidence=round(ex.confidence, 3),
        cost_usd=ex.cost_usd,
        counterfactual_cost_usd=ex.counterfactual_cost_usd,
    )


def answer_text(routed: RoutedResult) -> str:
    """The free-text answer: the ``answer`` field of the reply, else the reply as given."""
    answer = routed.output.get("answer") if routed.output else None
    return answer if isinstance(answer, str) else routed.text


async def _agreement(
    ctx: ToolContext, runs: list[ModelRun], structured: bool
) -> tuple[AgreementReport, dict[str, float]]:
    answered = [r for r in runs if r.status in ("ok", "low_confidence")]
    if len(answered) < 2:
        return AgreementReport(method="none", majority=[], outliers=[]), {}
    if structured:
        found = agree.json_agreement({r.name: r.data or {} for r in answered})
        fields = [
            FieldAgreement(field=v.field, value=v.value[:200], agreeing=v.agreeing, dissenting=list(v.dissenting))
            for v in found.fields[:40]
        ]
        return _report("json_fields", found, fields=fields), found.scores
    names = [r.name for r in answered]
    texts = [r.answer or "" for r in answered]
    if ctx.llm.embedding_models():
        try:
            embedded = await ctx.llm.embed(texts)
        except CaelumError:
            pass  # the embedding host went away: word overlap says less, but says something
        else:
            found = agree.majority(names, agree.cosine_matrix(embedded.vectors), agree.EMBEDDING_THRESHOLD)
            return _report("embeddings", found, embedding_model=embedded.model), found.scores
    found = agree.majority(names, agree.word_overlap_matrix(texts), agree.WORD_THRESHOLD)
    return _report("word_overlap", found), found.scores


def _report(
    method: Literal["json_fields", "embeddings", "word_overlap"],
    found: agree.Agreement,
    *,
    fields: list[FieldAgreement] | None = None,
    embedding_model: str | None = None,
) -> AgreementReport:
    return AgreementReport(
        method=method,
        embedding_model=embedding_model,
        score=round(found.overall, 3) if found.overall is not None else None,
        majority=list(found.majority),
        outliers=list(found.outliers),
        fields=fields or [],
    )


def _labels(models: list[str]) -> list[str]:
    """Unique names for the models asked: a repeated model gets #2, #3…"""
    seen: Counter[str] = Counter()
    labels = []
    for model in models:
        seen[model] += 1
        labels.append(model if seen[model] == 1 else f"{model}#{seen[model]}")
    return labels
