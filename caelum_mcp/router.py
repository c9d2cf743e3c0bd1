"""The router: runs an LLM task local-first and escalates only when the answer is weak.

An :class:`~caelum_mcp.llm.LLMTask` says what it needs (:class:`~caelum_mcp.llm.TaskNeeds`: the
smallest tier that can do it, an output cap, a time budget). The router:

1. checks what can run it: local models of the needed tier or larger, and Claude (allowed by the
   task, enabled, configured, priced, under the daily budget). If neither, it raises
   :class:`~caelum_mcp.errors.TaskSkippedError` at once, saying why and what to configure: a step
   no available model can do well costs nothing;
2. runs it on the smallest eligible local tier (a code model first when the task prefers one),
   asking for JSON that matches the schema plus a ``confidence`` field, with logprobs;
3. parses and validates the output, with at most one repair attempt, and scores confidence
   (:mod:`caelum_mcp.confidence`) with the task's grounding check; returns when it clears the
   threshold;
4. otherwise tries the next larger eligible local tier (``router.escalate_local``), keeping the
   best local answer;
5. then Claude, through the same parse → repair → score path;
6. otherwise returns the best local answer marked ``local_low_confidence`` with the reason.

The whole run is bounded by the task's time budget: when it runs out, the best answer so far comes
back marked with the reason, or :class:`~caelum_mcp.errors.TaskTimedOutError` when there is none.

The output schema reaches each model once: a local model reads it in the system prompt (its server
also gets it as a grammar constraint, which costs no tokens); Claude gets it from the Anthropic
backend, as the API's structured-output parameter where the model supports it.

Every model call is a ledger row (built by :func:`~caelum_mcp.ledger.model_call_row` and
:func:`~caelum_mcp.ledger.failed_call_row`), tagged with the tool call it was made for.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import jsonschema

from caelum_mcp.backends.base import Backend
from caelum_mcp.confidence import ConfidenceParts, mean_token_probability, score
from caelum_mcp.config import Config
from caelum_mcp.errors import (
    AllHostsFailedError,
    BackendError,
    NoHostAvailableError,
    TaskFailedError,
    TaskSkippedError,
    TaskTimedOutError,
)
from caelum_mcp.ledger import BudgetGuard, Ledger, failed_call_row, model_call_row
from caelum_mcp.llm import (
    Availability,
    ExecutionRecord,
    FinalPath,
    GroundingResult,
    LLMTask,
    ProgressFn,
    RoutedResult,
    TaskNeeds,
    size_rank,
)
from caelum_mcp.pool import Pool
from caelum_mcp.pricing import ModelPrice, cost_usd, estimate_cost_usd
from caelum_mcp.types import SIZE_TIERS, ChatMessage, ChatRequest, ChatResponse, Tier, Usage

log = logging.getLogger(__name__)

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
# What a model of each size tier is, for messages that tell the user what to add.
TIER_SIZES = {Tier.MICRO: "any size", Tier.SMALL: "2B+", Tier.FULL: "6B+", Tier.LARGE: "14B+"}
_REPLY_ECHO_CHARS = 4000


@dataclass
class _Candidate:
    output: dict[str, Any] | None
    text: str
    parts: ConfidenceParts
    provider: str
    host: str
    model: str
    tier: str | None
    error: str | None = None


@dataclass
class _Reply:
    """One model call's answer and where it came from."""

    response: ChatResponse
    provider: str
    host: str
    model: str
    tier: str | None


@dataclass
class _Run:
    """What one task's run has done so far (the time budget may end it at any await)."""

    task: LLMTask
    needs: TaskNeeds
    schema: dict[str, Any]
    call_id: str | None
    started: float = field(default_factory=time.perf_counter)
    calls: int = 0
    usage: list[Usage] = field(default_factory=list)
    cost: float = 0.0
    counterfactual: float = 0.0
    escalations: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    best: _Candidate | None = None


@dataclass(frozen=True)
class _Local:
    """A local attempt: a tier (or one named model), never below ``min_tier``."""

    tier: Tier | None
    model: str | None
    min_tier: Tier | None

    @property
    def label(self) -> str:
        return f"model {self.model}" if self.model else str(self.tier)


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

    # planning ----------------------------------------------------------------------------------

    def needs(self, task: LLMTask) -> TaskNeeds:
        """What ``task`` needs: its kind's needs from the config, with the task's own overrides."""
        needs = self.config.router.needs_for(task.kind)
        update: dict[str, Any] = {}
        if task.min_tier is not None and task.min_tier in SIZE_TIERS:
            update["min_tier"] = task.min_tier
        if task.max_output_tokens is not None:
            update["max_output_tokens"] = task.max_output_tokens
        if task.time_budget_s is not None:
            update["time_budget_s"] = task.time_budget_s
        return needs.model_copy(update=update) if update else needs

    def availability(self, task: LLMTask, needs: TaskNeeds | None = None) -> Availability:
        """Whether ``task`` can run now, where, and if not, why and what to configure."""
        needs = needs or self.needs(task)
        if task.model:
            local = [e for e in self.pool.eligible_models() if e.model == task.model or _base(e.model) == task.model]
        else:
            local = self.pool.eligible_models(min_tier=needs.min_tier)
        blocker = self._claude_blocker(task, needs)
        reason = None
        if not local and blocker is not None:
            reason = f"{self._no_local_reason(task, needs)}, and Claude cannot be used: {blocker}"
        return Availability(
            local=bool(local),
            claude=blocker is None,
            needs=needs,
            local_models=tuple(f"{e.model}@{e.host}" for e in local),
            reason=reason,
        )

    def _no_local_reason(self, task: LLMTask, needs: TaskNeeds) -> str:
        hosts = self.pool.describe_models()
        if task.model:
            return f"no enabled, healthy host serves model {task.model!r} (hosts and models: {hosts})"
        if needs.min_tier is Tier.MICRO:
            return f"no enabled, healthy host serves a chat model (hosts and models: {hosts})"
        return (
            f"a {task.kind} task needs a local model of tier {needs.min_tier} ({TIER_SIZES[needs.min_tier]}) or "
            f"larger and no enabled, healthy host serves one (hosts and models: {hosts}); add a [[hosts]] entry "
            f"serving one, or lower [router.tasks.{task.kind}] min_tier"
        )

    def _local_plan(self, task: LLMTask, needs: TaskNeeds) -> list[_Local]:
        """The local attempts in order: the smallest eligible tier from where the task wants to
        start (a code model first if it prefers one), then larger eligible tiers."""
        if task.model:
            return [_Local(tier=None, model=task.model, min_tier=None)]
        minimum = needs.min_tier
        eligible = self.pool.eligible_models(min_tier=minimum)
        sizes = sorted({e.size for e in eligible}, key=size_rank)
        plan: list[_Local] = []
        if task.tier is not None and task.tier not in SIZE_TIERS:  # code (or another speciality) asked for
            return [_Local(tier=task.tier, model=None, min_tier=minimum)]
        if needs.prefer_code and task.tier is None and any(e.code for e in eligible):
            plan.append(_Local(tier=Tier.CODE, model=None, min_tier=minimum))
        if not sizes:
            return plan
        start = task.tier or self.config.router.default_tier
        if start not in SIZE_TIERS or size_rank(start) < size_rank(minimum):
            start = minimum
        first = next((t for t in sizes if size_rank(t) >= size_rank(start)), sizes[-1])
        plan.append(_Local(tier=first, model=None, min_tier=minimum))
        if self.config.router.escalate_local:
            plan += [_Local(tier=t, model=None, min_tier=minimum) for t in sizes if size_rank(t) > size_rank(first)]
        return plan

    def _claude_blocker(self, task: LLMTask, needs: TaskNeeds) -> str | None:
        """None when Claude may be called now, else the reason it may not (with the fix)."""
        if not task.allow_claude:
            return "Claude not allowed for this call (allow_claude=false)"
        if not self.config.claude.enabled:
            return "Claude is disabled in the configuration ([claude].enabled = false)"
        if self.claude is None or not self.config.claude.configured:
            return "Claude is not configured (set ANTHROPIC_API_KEY)"
        price = self.claude_price
        if price is None:
            return f'no price known for {self.config.claude.model}; add [prices."{self.config.claude.model}"]'
        chars = sum(len(m.content) for m in task.messages) + len(json.dumps(task.output_schema or {}))
        return self.budget.check(estimate_cost_usd(chars, self._claude_max_tokens(needs), price))

    def _claude_max_tokens(self, needs: TaskNeeds) -> int:
        return min(needs.max_output_tokens, self.config.claude.max_tokens)

    # running -----------------------------------------------------------------------------------

    async def run(
        self, task: LLMTask, *, progress: ProgressFn | None = None, call_id: str | None = None
    ) -> RoutedResult:
        """Run ``task``; see the module docstring. Raises :class:`TaskSkippedError` before any
        model call when nothing that can do it is available."""
        needs = self.needs(task)
        availability = self.availability(task, needs)
        if not availability.runnable:
            raise TaskSkippedError(f"{task.name} skipped: {availability.reason}")
        run = _Run(task=task, needs=needs, schema=self._schema(task), call_id=call_id)
        with anyio.move_on_after(needs.time_budget_s):
            return await self._route(run, availability, progress)
        reason = (
            f"stopped at its time budget of {needs.time_budget_s:g} s "
            f"(raise [router.tasks.{task.kind}] time_budget_s to wait longer)"
        )
        if run.best is None:
            detail = "; ".join(run.errors[-2:])
            before = f"; before that: {detail}" if detail else ""
            raise TaskTimedOutError(f"{task.name}: no answer: {reason}{before}")
        return self._result(run, run.best, "local_low_confidence", reason, timed_out=True)

    async def _route(self, run: _Run, availability: Availability, progress: ProgressFn | None) -> RoutedResult:
        threshold = self.config.router.confidence_threshold
        if availability.local:
            for step in self._local_plan(run.task, run.needs):
                if progress:
                    await progress(f"asking the local pool ({step.label})")
                cand = await self._attempt(run, step)
                if cand is None:
                    continue
                if run.best is None or cand.parts.score > run.best.parts.score:
                    run.best = cand
                if cand.parts.score >= threshold:
                    return self._result(run, cand, "local", None)
                run.escalations.append(
                    f"{cand.model}@{cand.host} ({cand.tier}) confidence {cand.parts.score:.2f} < {threshold:.2f}"
                )
        blocker = self._claude_blocker(run.task, run.needs)
        if blocker is None:
            if progress:
                why = "local confidence too low" if run.best else "no local model for this task"
                await progress(f"{why}; asking Claude ({self.config.claude.model})")
            cand = await self._attempt(run, None)
            if cand is None:
                blocker = f"Claude failed: {run.errors[-1]}"
            elif cand.output is None and run.best is not None and run.best.output is not None:
                blocker = f"Claude's reply was not usable: {cand.error}"
            else:
                return self._result(run, cand, "claude", None)
        best = run.best
        if best is None:
            detail = "; ".join(run.errors[-3:]) or "no local host answered"
            raise TaskFailedError(f"{run.task.name}: no answer. Local: {detail}. Claude: {blocker}")
        reason = blocker if best.parts.score < threshold else None
        return self._result(run, best, "local_low_confidence" if reason else "local", reason)

    async def _attempt(self, run: _Run, local: _Local | None) -> _Candidate | None:
        """One target (a local step, or Claude when ``local`` is None): call, parse, at most one
        repair, score. None when the target gave no answer at all (recorded in ``run.errors``)."""
        request = self._request(run, local)
        first = await self._call(run, request, local)
        if first is None:
            return None
        reply = first
        output, error = _parse(first.response.content, run.schema)
        repaired = False
        if error is not None:
            repair = request.model_copy(
                update={
                    "messages": (
                        *request.messages,
                        ChatMessage(role="assistant", content=first.response.content[:_REPLY_ECHO_CHARS]),
                        ChatMessage(
                            role="user",
                            content=f"That reply was not valid: {error}. Reply again with only the corrected JSON.",
                        ),
                    )
                }
            )
            pinned = _Local(tier=None, model=first.model, min_tier=None) if local is not None else None
            second = await self._call(run, repair, pinned)
            if second is not None:
                reply = second
                output, error = _parse(second.response.content, run.schema)
            repaired = True
        parts = await self._score(run.task, output, error, repaired, reply.response)
        return _Candidate(
            output=_strip(run.task, output),
            text=reply.response.content,
            parts=parts,
            provider=first.provider,
            host=first.host,
            model=first.model,
            tier=first.tier,
            error=error,
        )

    def _request(self, run: _Run, local: _Local | None) -> ChatRequest:
        needs = run.needs
        if local is None:  # Claude: the Anthropic backend delivers the schema itself
            return ChatRequest(
                model=self.config.claude.model,
                messages=run.task.messages,
                json_schema=run.schema,
                max_tokens=self._claude_max_tokens(needs),
            )
        temperature = run.task.temperature
        return ChatRequest(
            model="",
            messages=_with_schema_instruction(run.task.messages, run.schema),
            json_schema=run.schema,
            logprobs=True,
            max_tokens=min(needs.max_output_tokens, self.config.router.max_tokens),
            temperature=temperature if temperature is not None else self.config.router.temperature,
        )

    async def _call(self, run: _Run, request: ChatRequest, local: _Local | None) -> _Reply | None:
        """One model call, recorded in the ledger whatever happens (cancellation included)."""
        task = run.task
        started = time.perf_counter()
        provider = self.claude.kind if local is None and self.claude is not None else ""
        try:
            if local is None:
                assert self.claude is not None
                response = await self.claude.chat(request)
                reply = _Reply(response, provider, "claude", request.model, None)
                attempts = 1
            else:
                result = await self.pool.chat(request, tier=local.tier, model=local.model, min_tier=local.min_tier)
                response = result.response
                reply = _Reply(response, result.provider, result.host, result.model, result.tier.value)
                attempts = result.attempts
        except (NoHostAvailableError, AllHostsFailedError, BackendError) as exc:
            run.errors.append(str(exc))
            self._record_failures(run, exc, local is None, request.model, started)
            return None
        except anyio.get_cancelled_exc_class():
            self.ledger.record(
                failed_call_row(
                    task=task.name,
                    error="stopped before the model answered (time budget or cancelled call)",
                    provider=provider,
                    host="claude" if local is None else "",
                    model=request.model,
                    latency_ms=(time.perf_counter() - started) * 1000,
                    call_id=run.call_id,
                )
            )
            raise
        latency = (time.perf_counter() - started) * 1000
        price = self.claude_price
        priced = cost_usd(response.usage, price) if price else 0.0
        run.calls += attempts
        run.usage.append(response.usage)
        if local is None:
            run.cost += priced
        else:
            run.counterfactual += priced
        self.ledger.record(
            model_call_row(
                task=task.name,
                path="claude" if local is None else "local",
                provider=reply.provider,
                host=reply.host,
                model=reply.model,
                tier=reply.tier,
                usage=response.usage,
                latency_ms=latency,
                cost=priced if local is None else 0.0,
                counterfactual=priced,
                attempts=attempts,
                call_id=run.call_id,
            )
        )
        return reply

    def _record_failures(self, run: _Run, exc: Exception, claude: bool, model: str, started: float) -> None:
        """A failed call's rows: one per host that failed, so per-host failure counts are real."""
        latency = (time.perf_counter() - started) * 1000
        causes: Sequence[BaseException] = exc.causes if isinstance(exc, AllHostsFailedError) else (exc,)
        for cause in causes:
            host = "claude" if claude else getattr(cause, "host", "")
            self.ledger.record(
                failed_call_row(
                    task=run.task.name,
                    error=str(cause),
                    provider=self.claude.kind if claude and self.claude is not None else "",
                    host=host,
                    model=model,
                    latency_ms=latency if len(causes) == 1 else 0.0,
                    call_id=run.call_id,
                )
            )

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
                checked = task.grounding(_strip(task, output) or {})
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

    def _schema(self, task: LLMTask) -> dict[str, Any]:
        schema = copy.deepcopy(task.output_schema or TEXT_SCHEMA)
        if schema.get("type") == "object":
            props = schema.setdefault("properties", {})
            if "confidence" not in props:
                props["confidence"] = CONFIDENCE_FIELD
                schema["required"] = [*schema.get("required", []), "confidence"]
        return schema

    def _result(
        self, run: _Run, cand: _Candidate, path: FinalPath, reason: str | None, *, timed_out: bool = False
    ) -> RoutedResult:
        total = _sum_usage(run.usage)
        execution = ExecutionRecord(
            path=path,
            provider=cand.provider,
            host=cand.host,
            model=cand.model,
            tier=cand.tier,
            attempts=run.calls,
            confidence=cand.parts.score,
            threshold=self.config.router.confidence_threshold,
            confidence_parts=cand.parts,
            escalations=tuple(run.escalations),
            reason=reason,
            timed_out=timed_out,
            input_tokens=total.input_tokens,
            output_tokens=total.output_tokens,
            cache_read_tokens=total.cache_read_tokens,
            cache_write_tokens=total.cache_write_tokens,
            latency_ms=round((time.perf_counter() - run.started) * 1000, 1),
            cost_usd=round(run.cost, 6),
            counterfactual_cost_usd=round(run.counterfactual, 6),
        )
        return RoutedResult(output=cand.output, text=cand.text, execution=execution)


def _base(model: str) -> str:
    return model.split(":")[0]


def _with_schema_instruction(messages: tuple[ChatMessage, ...], schema: dict[str, Any]) -> tuple[ChatMessage, ...]:
    """The task's messages with the JSON instruction (and the schema) added to the system prompt."""
    instruction = "Reply with one JSON object only, no prose, matching this JSON schema:\n" + json.dumps(
        schema, separators=(",", ":")
    )
    msgs = list(messages)
    if msgs and msgs[0].role == "system":
        msgs[0] = ChatMessage(role="system", content=msgs[0].content + "\n\n" + instruction)
    else:
        msgs.insert(0, ChatMessage(role="system", content=instruction))
    return tuple(msgs)


def _strip(task: LLMTask, output: dict[str, Any] | None) -> dict[str, Any] | None:
    """Drop the confidence field the router added (keep it if the caller's schema has one)."""
    if output is None:
        return None
    original = (task.output_schema or TEXT_SCHEMA).get("properties", {})
    return {k: v for k, v in output.items() if k != "confidence" or "confidence" in original}


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
    except RecursionError:
        return None, "invalid JSON (nested too deeply)"
    if not isinstance(data, dict):
        return None, "the reply is JSON but not an object"
    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        return None, f"schema violation at {where}: {exc.message[:300]}"
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
