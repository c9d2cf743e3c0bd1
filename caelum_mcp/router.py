"""The router: runs an LLM task local-first and escalates only when the answer is weak.

An :class:`LLMTask` is messages, an optional output schema and an optional grounding check. The
router:

1. runs it on the pool at the wanted tier (default ``router.default_tier``), asking for JSON that
   matches the schema plus a ``confidence`` field, with logprobs;
2. parses and validates the output, with at most one repair attempt;
3. scores confidence (:mod:`caelum_mcp.confidence`) and returns the answer if it clears the
   threshold;
4. otherwise tries the next larger local tier that exists (``router.escalate_local``), keeping the
   best local answer;
5. then Claude, if the task allows it, Claude is enabled and configured, and the daily budget is not
   spent;
6. otherwise returns the best local answer marked ``local_low_confidence`` with the reason.

Every model call is recorded in the ledger; every result carries an :class:`ExecutionRecord`.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema
from pydantic import Field

from caelum_mcp.backends.base import Backend
from caelum_mcp.confidence import ConfidenceParts, mean_token_probability, score
from caelum_mcp.config import Config
from caelum_mcp.errors import AllHostsFailedError, BackendError, NoHostAvailableError, TaskFailedError
from caelum_mcp.ledger import BudgetGuard, Ledger, LedgerEntry, ModelPrice, cost_usd
from caelum_mcp.pool import Pool, PoolResult, larger_tiers
from caelum_mcp.types import ChatMessage, ChatRequest, ChatResponse, Frozen, Tier, Usage

log = logging.getLogger(__name__)

FinalPath = Literal["local", "claude", "local_low_confidence"]
ProgressFn = Callable[[str], Awaitable[None]]

# No minimum/maximum: grammar-constrained decoders do not enforce them, and a model that answers
# "confidence": 90 has still answered; the value is normalised in ``_self_reported``.
CONFIDENCE_FIELD = {
    "type": "number",
    "description": "how sure you are that this answer is correct, from 0 to 1",
}
TEXT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}


class GroundingResult(Frozen):
    """What the caller's check found: 1.0 = everything cited exists / works."""

    score: float = Field(ge=0, le=1)
    problems: tuple[str, ...] = ()


GroundingCheck = Callable[[dict[str, Any]], GroundingResult | Awaitable[GroundingResult]]


@dataclass(frozen=True)
class LLMTask:
    """One piece of LLM work. ``output_schema`` is a JSON schema of an object (None = free text)."""

    name: str
    messages: tuple[ChatMessage, ...]
    output_schema: dict[str, Any] | None = None
    grounding: GroundingCheck | None = None
    tier: Tier | None = None
    model: str | None = None
    allow_claude: bool = True
    max_tokens: int | None = None
    temperature: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)


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
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    latency_ms: float = 0.0
    cost_usd: float = Field(default=0.0, description="real money spent on Claude for this task")
    counterfactual_cost_usd: float = Field(
        default=0.0,
        description="what the configured Claude model would have cost for the tokens served locally",
    )


class RoutedResult(Frozen):
    output: dict[str, Any] | None
    text: str
    execution: ExecutionRecord


@dataclass
class _Candidate:
    output: dict[str, Any] | None
    text: str
    parts: ConfidenceParts
    provider: str
    host: str
    model: str
    tier: str | None


@dataclass
class _Tally:
    calls: int = 0
    usage: list[Usage] = field(default_factory=list)
    cost: float = 0.0
    counterfactual: float = 0.0
    escalations: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Router:
    """Local first, then a larger local tier, then Claude; see the module docstring."""

    def __init__(
        self,
        pool: Pool,
        ledger: Ledger,
        config: Config,
        *,
        claude: Backend | None = None,
    ) -> None:
        self.pool = pool
        self.ledger = ledger
        self.config = config
        self.claude = claude
        self.budget = BudgetGuard(ledger, config.claude.daily_budget_usd)

    @property
    def claude_price(self) -> ModelPrice | None:
        return self.config.price_for(self.config.claude.model)

    async def run(self, task: LLMTask, *, progress: ProgressFn | None = None) -> RoutedResult:
        started = time.perf_counter()
        threshold = self.config.router.confidence_threshold
        tally = _Tally()
        best: _Candidate | None = None
        for tier in self._local_plan(task):
            if progress:
                await progress(f"asking the local pool ({tier.value if tier else 'model ' + str(task.model)})")
            cand = await self._attempt_local(task, tier, tally)
            if cand is None:
                continue
            if best is None or cand.parts.score > best.parts.score:
                best = cand
            if cand.parts.score >= threshold:
                return self._result(cand, "local", None, tally, started)
            tally.escalations.append(
                f"{cand.model}@{cand.host} ({cand.tier}) confidence {cand.parts.score:.2f} < {threshold:.2f}"
            )
        blocker = self._claude_blocker(task)
        if blocker is None:
            if progress:
                await progress(f"local confidence too low; asking Claude ({self.config.claude.model})")
            try:
                cand = await self._attempt_claude(task, tally)
            except BackendError as exc:
                blocker = f"Claude failed: {exc}"
                tally.errors.append(blocker)
            else:
                return self._result(cand, "claude", None, tally, started)
        if best is None:
            detail = "; ".join(tally.errors[-3:]) or "no local host answered"
            raise TaskFailedError(f"{task.name}: no answer. Local: {detail}. Claude: {blocker}")
        reason = blocker if best.parts.score < threshold else None
        path: FinalPath = "local_low_confidence" if reason else "local"
        return self._result(best, path, reason, tally, started)

    # planning ----------------------------------------------------------------------------------

    def _local_plan(self, task: LLMTask) -> list[Tier | None]:
        if task.model:
            return [None]
        first = task.tier or self.config.router.default_tier
        plan: list[Tier | None] = [first]
        if self.config.router.escalate_local:
            available = self.pool.available_tiers()
            plan += [t for t in larger_tiers(first) if t in available]
        return plan

    def _claude_blocker(self, task: LLMTask) -> str | None:
        """None when Claude may be called now, else the reason it may not."""
        if not task.allow_claude:
            return "Claude not allowed for this call (allow_claude=false)"
        if not self.config.claude.enabled:
            return "Claude is disabled in the configuration ([claude].enabled = false)"
        if self.claude is None or not self.config.claude.configured:
            return "Claude is not configured (set ANTHROPIC_API_KEY)"
        if self.claude_price is None:
            return f'no price known for {self.config.claude.model}; add [prices."{self.config.claude.model}"]'
        estimate = self._estimate_claude_cost(task)
        return self.budget.check(estimate)

    def _estimate_claude_cost(self, task: LLMTask) -> float:
        price = self.claude_price
        if price is None:
            return 0.0
        chars = sum(len(m.content) for m in task.messages) + len(json.dumps(task.output_schema or {}))
        out = task.max_tokens or self.config.claude.max_tokens
        # ~4 characters a token, and only a quarter of the output allowance on average
        return cost_usd(Usage(input_tokens=chars // 4, output_tokens=out // 4), price)

    # attempts ----------------------------------------------------------------------------------

    def _schema(self, task: LLMTask) -> dict[str, Any]:
        schema = copy.deepcopy(task.output_schema or TEXT_SCHEMA)
        if schema.get("type") == "object":
            props = schema.setdefault("properties", {})
            if "confidence" not in props:
                props["confidence"] = CONFIDENCE_FIELD
                schema["required"] = [*schema.get("required", []), "confidence"]
        return schema

    def _messages(self, task: LLMTask, schema: dict[str, Any]) -> tuple[ChatMessage, ...]:
        instruction = "Reply with one JSON object only, no prose, matching this JSON schema:\n" + json.dumps(
            schema, separators=(",", ":")
        )
        msgs = list(task.messages)
        if msgs and msgs[0].role == "system":
            msgs[0] = ChatMessage(role="system", content=msgs[0].content + "\n\n" + instruction)
        else:
            msgs.insert(0, ChatMessage(role="system", content=instruction))
        return tuple(msgs)

    async def _attempt_local(self, task: LLMTask, tier: Tier | None, tally: _Tally) -> _Candidate | None:
        schema = self._schema(task)
        request = ChatRequest(
            model="",
            messages=self._messages(task, schema),
            json_schema=schema,
            logprobs=True,
            max_tokens=task.max_tokens or self.config.router.max_tokens,
            temperature=task.temperature if task.temperature is not None else self.config.router.temperature,
        )
        try:
            first = await self.pool.chat(request, tier=tier, model=task.model)
        except (NoHostAvailableError, AllHostsFailedError, BackendError) as exc:
            tally.errors.append(str(exc))
            self._record_failure(task, "local", str(exc))
            return None
        self._record_local(task, first, tally)
        output, error = _parse(first.response.content, schema)
        response = first.response
        repaired = False
        if error is not None:
            repair = request.model_copy(
                update={
                    "messages": (
                        *request.messages,
                        ChatMessage(role="assistant", content=first.response.content[:4000]),
                        ChatMessage(
                            role="user",
                            content=f"That reply was not valid: {error}. Reply again with only the corrected JSON.",
                        ),
                    )
                }
            )
            try:
                second = await self.pool.chat(repair, model=first.model)
            except (NoHostAvailableError, AllHostsFailedError, BackendError) as exc:
                tally.errors.append(str(exc))
                self._record_failure(task, "local", str(exc))
            else:
                self._record_local(task, second, tally)
                output, error = _parse(second.response.content, schema)
                response = second.response
                repaired = True
        parts = await self._score(task, output, error, repaired, response)
        return _Candidate(
            output=self._strip(task, output),
            text=response.content,
            parts=parts,
            provider=first.provider,
            host=first.host,
            model=first.model,
            tier=first.tier.value,
        )

    async def _attempt_claude(self, task: LLMTask, tally: _Tally) -> _Candidate:
        assert self.claude is not None
        schema = self._schema(task)
        request = ChatRequest(
            model=self.config.claude.model,
            messages=self._messages(task, schema),
            json_schema=schema,
            max_tokens=task.max_tokens or self.config.claude.max_tokens,
        )
        response = await self._claude_call(task, request, tally)
        output, error = _parse(response.content, schema)
        repaired = False
        if error is not None:
            repair = request.model_copy(
                update={
                    "messages": (
                        *request.messages,
                        ChatMessage(role="assistant", content=response.content[:4000]),
                        ChatMessage(
                            role="user",
                            content=f"That reply was not valid: {error}. Reply with only the JSON object.",
                        ),
                    )
                }
            )
            response = await self._claude_call(task, repair, tally)
            output, error = _parse(response.content, schema)
            repaired = True
        parts = await self._score(task, output, error, repaired, response)
        return _Candidate(
            output=self._strip(task, output),
            text=response.content,
            parts=parts,
            provider=self.claude.kind,
            host="claude",
            model=self.config.claude.model,
            tier=None,
        )

    async def _claude_call(self, task: LLMTask, request: ChatRequest, tally: _Tally) -> ChatResponse:
        assert self.claude is not None
        started = time.perf_counter()
        try:
            response = await self.claude.chat(request)
        except BackendError as exc:
            self._record_failure(task, "claude", str(exc), provider=self.claude.kind, model=request.model)
            raise
        price = self.claude_price
        cost = cost_usd(response.usage, price) if price else 0.0
        tally.calls += 1
        tally.usage.append(response.usage)
        tally.cost += cost
        self.ledger.record(
            LedgerEntry(
                ts=time.time(),
                task=task.name,
                path="claude",
                provider=self.claude.kind,
                host="claude",
                model=request.model,
                tier=None,
                attempts=1,
                confidence=None,
                input_tokens=response.usage.input_tokens,
                output_tokens=response.usage.output_tokens,
                cache_read_tokens=response.usage.cache_read_tokens,
                cache_write_tokens=response.usage.cache_write_tokens,
                latency_ms=(time.perf_counter() - started) * 1000,
                cost_usd=cost,
                counterfactual_cost_usd=cost,
            )
        )
        return response

    async def _score(
        self,
        task: LLMTask,
        output: dict[str, Any] | None,
        error: str | None,
        repaired: bool,
        response: ChatResponse,
    ) -> ConfidenceParts:
        grounding: GroundingResult | None = None
        if output is not None and task.grounding is not None:
            try:
                checked = task.grounding(self._strip(task, output) or {})
                grounding = await checked if inspect.isawaitable(checked) else checked
            except Exception as exc:  # a broken check must not lose the answer
                log.exception("grounding check of %s failed", task.name)
                grounding = GroundingResult(score=0.0, problems=(f"grounding check failed: {exc}",))
        return score(
            valid=error is None,
            repaired=repaired,
            self_reported=_self_reported(output),
            token_probability=mean_token_probability(response.logprobs),
            grounding=grounding.score if grounding else None,
            grounding_problems=grounding.problems if grounding else (),
        )

    def _strip(self, task: LLMTask, output: dict[str, Any] | None) -> dict[str, Any] | None:
        """Drop the confidence field the router added (keep it if the caller's schema has one)."""
        if output is None:
            return None
        original = (task.output_schema or TEXT_SCHEMA).get("properties", {})
        return {k: v for k, v in output.items() if k != "confidence" or "confidence" in original}

    # ledger -------------------------------------------------------------------------------------

    def _record_local(self, task: LLMTask, result: PoolResult, tally: _Tally) -> None:
        usage = result.response.usage
        price = self.claude_price
        counterfactual = cost_usd(usage, price) if price else 0.0
        tally.calls += result.attempts
        tally.usage.append(usage)
        tally.counterfactual += counterfactual
        self.ledger.record(
            LedgerEntry(
                ts=time.time(),
                task=task.name,
                path="local",
                provider=result.provider,
                host=result.host,
                model=result.model,
                tier=result.tier.value,
                attempts=result.attempts,
                confidence=None,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                latency_ms=result.latency_ms,
                cost_usd=0.0,
                counterfactual_cost_usd=counterfactual,
            )
        )

    def _record_failure(self, task: LLMTask, where: str, error: str, *, provider: str = "", model: str = "") -> None:
        self.ledger.record(
            LedgerEntry(
                ts=time.time(),
                task=task.name,
                path="failed",
                provider=provider,
                host="claude" if where == "claude" else "",
                model=model,
                tier=None,
                attempts=1,
                confidence=None,
                input_tokens=0,
                output_tokens=0,
                latency_ms=0.0,
                cost_usd=0.0,
                counterfactual_cost_usd=0.0,
                ok=False,
                error=error[:500],
            )
        )

    def _result(
        self, cand: _Candidate, path: FinalPath, reason: str | None, tally: _Tally, started: float
    ) -> RoutedResult:
        total = _sum_usage(tally.usage)
        execution = ExecutionRecord(
            path=path,
            provider=cand.provider,
            host=cand.host,
            model=cand.model,
            tier=cand.tier,
            attempts=tally.calls,
            confidence=cand.parts.score,
            threshold=self.config.router.confidence_threshold,
            confidence_parts=cand.parts,
            escalations=tuple(tally.escalations),
            reason=reason,
            input_tokens=total.input_tokens,
            output_tokens=total.output_tokens,
            cache_read_tokens=total.cache_read_tokens,
            cache_write_tokens=total.cache_write_tokens,
            latency_ms=round((time.perf_counter() - started) * 1000, 1),
            cost_usd=round(tally.cost, 6),
            counterfactual_cost_usd=round(tally.counterfactual, 6),
        )
        return RoutedResult(output=cand.output, text=cand.text, execution=execution)


def _self_reported(output: dict[str, Any] | None) -> float | None:
    """The model's own confidence, read as a fraction (90 and 0.9 both mean 0.9)."""
    value = output.get("confidence") if output else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if 1 < value <= 100:
        value = value / 100
    return min(1.0, max(0.0, float(value)))


def _parse(text: str, schema: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The JSON object in ``text`` validated against ``schema``, or the reason it is not valid."""
    candidate = _extract_json(text)
    if candidate is None:
        return None, "no JSON object found in the reply"
    try:
        data = json.loads(candidate)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg} at position {exc.pos})"
    if not isinstance(data, dict):
        return None, "the reply is JSON but not an object"
    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        return None, f"schema violation at {where}: {exc.message}"
    return data, None


def _extract_json(text: str) -> str | None:
    """The outermost {...} in a reply, tolerating code fences and prose around it."""
    start = text.find("{")
    end = text.rfind("}")
    if start == -1 or end <= start:
        return None
    return text[start : end + 1]


def _sum_usage(usages: Sequence[Usage]) -> Usage:
    return Usage(
        input_tokens=sum(u.input_tokens for u in usages),
        output_tokens=sum(u.output_tokens for u in usages),
        cache_read_tokens=sum(u.cache_read_tokens for u in usages),
        cache_write_tokens=sum(u.cache_write_tokens for u in usages),
    )
