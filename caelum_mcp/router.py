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
   (:mod:`caelum_mcp.confidence`) with the task's grounding check: the raw signals mapped to the
   calibrated probability that the answer is right for that model and task kind
   (:mod:`caelum_mcp.calibration`; ``[router] calibration = false`` keeps the raw score), with
   ``agreement_samples`` more samples of the same model compared with it when that probability
   is in the calibration's uncertain band; returns when it clears the threshold;
4. otherwise tries the next larger eligible local tier (``router.escalate_local``), keeping the
   best local answer;
5. then Claude, through the same parse → repair → score path;
6. otherwise returns the best local answer marked ``local_low_confidence`` with the reason.

The whole run is bounded by the task's time budget, the one notion of time left: every pool call
gets the run's deadline (so queueing, failover and retries stop there) and a Claude call the time
that is left. When it runs out, the best answer so far comes back marked with the reason, or
:class:`~caelum_mcp.errors.TaskTimedOutError` when there is none.

A Claude call first reserves what it may cost (the prompt at one token per UTF-8 byte, a bound that
holds for any text, plus its whole output allowance) against the daily budget, atomically in the
ledger; the reservation becomes the call's row when it ends (at its real usage), or is released when
it fails, so concurrent escalations (in one process or several sharing a data directory) cannot
overspend the budget.

An output schema is checked before anything runs (:mod:`caelum_mcp.answers`, which also finds and
validates the JSON in each reply): a schema that is not valid JSON schema, a ``$ref`` that points
nowhere or references that loop without end raise :class:`~caelum_mcp.errors.InvalidSchemaError`
naming the problem.

The output schema reaches each model once: a local model reads it in the system prompt (its server
also gets it as a grammar constraint, which costs no tokens); Claude gets it from the Anthropic
backend, as the API's structured-output parameter where the model supports it.

A task with ``on_text`` streams its local calls (:meth:`Router._stream_local`): the callback gets
the text so far as it arrives, the pool fails over only before the first token, and the ledger
rows are the same as for a call answered whole. A ``claude_only`` task skips the local pool.

Every prompt passes the secrets redaction (:mod:`caelum_mcp.redaction`) where it is sent
(:meth:`Router._call`, the one place every chat request goes through, local or Claude, first try or
repair), and so does every text to embed (:meth:`Router.embed`): a key read from a project's ``.env``
or a CSV cell never reaches a model, whichever tool built the prompt.

Every model call is a ledger row (built by :func:`~caelum_mcp.ledger.model_call_row` and
:func:`~caelum_mcp.ledger.failed_call_row`), tagged with the tool call it was made for; a failed
call is one row per host that failed it, naming the host and how many attempts it got there.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import anyio

from caelum_mcp.answers import parse_answer, self_reported, strip_confidence, task_schema, with_schema_instruction
from caelum_mcp.audit import Auditor, compare_answers
from caelum_mcp.backends.base import Backend
from caelum_mcp.calibration import USER_FILE, CalibrationTable, token_signals
from caelum_mcp.competence import CompetencePlan, competence_plan, competent_models
from caelum_mcp.confidence import ConfidenceParts, Signals, score
from caelum_mcp.config import Config
from caelum_mcp.errors import (
    AllHostsFailedError,
    BackendError,
    BudgetExceededError,
    DeadlineExceededError,
    MalformedResponseError,
    NoHostAvailableError,
    TaskFailedError,
    TaskSkippedError,
    TaskTimedOutError,
)
from caelum_mcp.ledger import BudgetGuard, Ledger, LedgerEntry, failed_call_row, model_call_row
from caelum_mcp.llm import (
    Availability,
    Embeddings,
    ExecutionRecord,
    FinalPath,
    GroundingResult,
    LLMTask,
    ProgressFn,
    RoutedResult,
    TaskNeeds,
    TextFn,
    size_rank,
)
from caelum_mcp.pool import CallTrace, Pool, Selection
from caelum_mcp.pricing import ModelPrice, cost_usd
from caelum_mcp.redaction import redact_secrets
from caelum_mcp.types import SIZE_TIERS, ChatMessage, ChatRequest, ChatResponse, EmbedRequest, Tier, Usage

log = logging.getLogger(__name__)

# Texts per embedding request: Ollama and llama.cpp take batches; one per text would cost a round trip each.
EMBED_BATCH = 64
# What a model of each size tier is, for messages that tell the user what to add.
TIER_SIZES = {Tier.MICRO: "any size", Tier.SMALL: "2B+", Tier.FULL: "6B+", Tier.LARGE: "14B+"}
_REPLY_ECHO_CHARS = 4000
# The pool's deadline is the run's; the time budget's own cancel scope is only a backstop for a
# step that does not honour it, this much later.
_BACKSTOP_S = 0.5
# A Claude reservation outlives the run's deadline by this much before it lapses on its own.
_RESERVATION_GRACE_S = 60.0
# Prompts longer than this are redacted in a worker thread (~0.2 s a MB), off the event loop.
_REDACT_INLINE_CHARS = 64_000
# The tokens that frame each message (role and turn markers) on top of its text's own.
_MESSAGE_OVERHEAD_TOKENS = 8


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
    load_ms: float | None = None
    row_id: int | None = None  # the ledger row of the call that gave this answer


@dataclass
class _Reply:
    """One model call's answer and where it came from."""

    response: ChatResponse
    provider: str
    host: str
    model: str
    tier: str | None
    row_id: int | None = None  # its ledger row, once written


@dataclass
class _Run:
    """What one task's run has done so far (the time budget may end it at any await)."""

    task: LLMTask
    needs: TaskNeeds
    schema: dict[str, Any]
    validator: Any  # a jsonschema validator of ``schema``, checked before the run
    call_id: str | None
    deadline: float = math.inf  # time.monotonic() value the whole run must end by
    started: float = field(default_factory=time.perf_counter)
    calls: int = 0
    usage: list[Usage] = field(default_factory=list)
    cost: float = 0.0
    counterfactual: float = 0.0
    escalations: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    best: _Candidate | None = None
    tried: set[tuple[str, str]] = field(default_factory=set)  # (model, host) already asked

    def time_left(self) -> float:
        return self.deadline - time.monotonic()


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
        calibration: CalibrationTable | None = None,
    ) -> None:
        """``calibration`` defaults to the shipped table overridden by ``<data dir>/calibration.json``
        (read only when ``[router] calibration`` is on)."""
        self.pool = pool
        self.ledger = ledger
        self.config = config
        self.claude = claude
        self.budget = BudgetGuard(ledger, config.claude.daily_budget_usd)
        threshold = config.router.confidence_threshold
        if calibration is None:
            calibration = (
                CalibrationTable.load(config.data_dir / USER_FILE, threshold=threshold)
                if config.router.calibration
                else CalibrationTable(threshold=threshold)
            )
        self.calibration = calibration
        self.audit = Auditor(self)  # calibration labels: escalations, and a sample of local answers

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
        if task.claude_only:
            local = []
        elif task.model:
            local = [e for e in self.pool.eligible_models() if e.model == task.model or _base(e.model) == task.model]
        else:
            local = competent_models(self._competence(task, needs), self.pool, needs)
        blocker = self._claude_blocker(task, needs)
        reason = None
        if task.claude_only and blocker is not None:
            reason = f"Claude cannot be used: {blocker}"
        elif not local and blocker is not None:
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
        competent = self._competence(task, needs)
        if competent is not None:  # the kind is measured: smallest competent model first, each once
            steps = [_Local(tier=None, model=m, min_tier=None) for m in competent.model_order]
            return steps if self.config.router.escalate_local else steps[:1]
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

    def _competence(self, task: LLMTask, needs: TaskNeeds) -> CompetencePlan | None:
        """The kind's local models by measured competence (:mod:`caelum_mcp.competence`); None
        where the static ``min_tier`` rule stands."""
        return competence_plan(
            self.pool,
            self.calibration,
            task,
            needs,
            self.config.router,
            claude_available=lambda: self._claude_blocker(task, needs) is None,
        )

    def _has_untried(self, run: _Run, step: _Local) -> bool:
        """Whether ``step`` could reach a model this run has not asked yet (an answer once judged
        is not asked for again under another tier's name)."""
        if step.tier is None:
            return True
        for e in self.pool.eligible_models(min_tier=step.min_tier):
            serves = e.code if step.tier is Tier.CODE else e.size is step.tier
            if serves and (e.model, e.host) not in run.tried:
                return True
        return False

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
        return self.budget.check(_cost_bound(task.messages, task.output_schema, self._claude_max_tokens(needs), price))

    def _claude_max_tokens(self, needs: TaskNeeds) -> int:
        return min(needs.max_output_tokens, self.config.claude.max_tokens)

    # embeddings --------------------------------------------------------------------------------

    def embedding_models(self) -> list[str]:
        """The embedding models the pool serves now (model@host), empty when there are none."""
        found = []
        for host in self.pool.hosts.values():
            if host.enabled and host.breaker.allows():
                found += [
                    f"{m}@{host.name}"
                    for m in host.models
                    if Tier.EMBEDDING in host.tiers_of(m, self.pool.tier_overrides)
                ]
        return found

    def embedding_problem(self) -> str:
        """Why no embedding model is up: each host that lists one, with its state and last error
        (a restart of the embedded model that failed says so there); "" when no host lists one."""
        problems = []
        for host in self.pool.hosts.values():
            models = [m for m in host.models if Tier.EMBEDDING in host.tiers_of(m, self.pool.tier_overrides)]
            if models and not (host.enabled and host.breaker.allows()):
                state = "disabled" if not host.enabled else f"circuit {host.breaker.state.value}"
                why = host.last_error or "no error recorded"
                problems.append(f"{', '.join(models)} on host {host.name} is down ({state}): {why}")
        return "; ".join(problems)

    async def embed(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        task: str = "embed",
        call_id: str | None = None,
        batch_size: int = EMBED_BATCH,
    ) -> Embeddings:
        """Vectors for ``texts`` from the pool's ``embedding`` tier (or ``model``), sent in batches
        of ``batch_size``; one ledger row per batch, or one per sync inside
        :func:`~caelum_mcp.embedding_sync.embedding_sync`. Raises NoHostAvailableError when no embedding
        model is up (callers fall back to lexical search and say so)."""
        vectors: list[tuple[float, ...]] = []
        used_model = host = ""
        tokens = 0
        for start in range(0, len(texts), max(1, batch_size)):
            batch = await _redacted_texts(texts[start : start + batch_size])
            started = time.perf_counter()
            try:
                host, response = await self.pool.embed(EmbedRequest(model=model or "", inputs=batch), model=model)
            except (NoHostAvailableError, AllHostsFailedError, BackendError, DeadlineExceededError) as exc:
                self.ledger.record(
                    failed_call_row(
                        task=task,
                        error=str(exc),
                        host=getattr(exc, "host", ""),
                        model=model or "",
                        tier=Tier.EMBEDDING.value,
                        latency_ms=(time.perf_counter() - started) * 1000,
                        call_id=call_id,
                    )
                )
                raise
            if len(response.embeddings) != len(batch):
                raise MalformedResponseError(
                    f"asked for {len(batch)} embeddings, got {len(response.embeddings)}", host=host
                )
            vectors.extend(response.embeddings)
            used_model = response.model
            tokens += response.usage.input_tokens
            self.ledger.record_embedding(
                model_call_row(
                    task=task,
                    path="local",
                    provider=self.pool.hosts[host].kind if host in self.pool.hosts else "",
                    host=host,
                    model=response.model,
                    tier=Tier.EMBEDDING.value,
                    usage=response.usage,
                    latency_ms=(time.perf_counter() - started) * 1000,
                    cost=0.0,
                    counterfactual=0.0,  # Claude has no embeddings to compare with
                    call_id=call_id,
                )
            )
        return Embeddings(model=used_model, host=host, vectors=tuple(vectors), input_tokens=tokens)

    # running -----------------------------------------------------------------------------------

    async def run(
        self, task: LLMTask, *, progress: ProgressFn | None = None, call_id: str | None = None
    ) -> RoutedResult:
        """Run ``task``; see the module docstring. Raises :class:`TaskSkippedError` before any
        model call when nothing that can do it is available."""
        schema, validator = task_schema(task.output_schema)
        needs = self.needs(task)
        availability = self.availability(task, needs)
        if not availability.runnable:
            raise TaskSkippedError(f"{task.name} skipped: {availability.reason}")
        run = _Run(
            task=task,
            needs=needs,
            schema=schema,
            validator=validator,
            call_id=call_id,
            deadline=time.monotonic() + needs.time_budget_s,
        )
        with anyio.move_on_after(needs.time_budget_s + _BACKSTOP_S):
            result = await self._route(run, availability, progress)
            if result is not None:
                return result
        reason = (
            f"stopped at its time budget of {needs.time_budget_s:g} s "
            f"(raise [router.tasks.{task.kind}] time_budget_s to wait longer)"
        )
        if run.best is None:
            detail = "; ".join(run.errors[-2:])
            before = f"; before that: {detail}" if detail else ""
            raise TaskTimedOutError(f"{task.name}: no answer: {reason}{before}")
        return self._result(run, run.best, "local_low_confidence", reason, timed_out=True)

    async def _route(self, run: _Run, availability: Availability, progress: ProgressFn | None) -> RoutedResult | None:
        """The run's steps; None when the time budget ran out between them."""
        threshold = self.config.router.confidence_threshold
        if availability.local:
            for step in self._local_plan(run.task, run.needs):
                if run.time_left() <= 0:
                    return None
                if not self._has_untried(run, step):
                    continue  # e.g. the code model that went first is also this tier's only model
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
        if run.time_left() <= 0:
            return None
        blocker = self._claude_blocker(run.task, run.needs)
        if blocker is None:
            if progress:
                why = "local confidence too low" if run.best else "no local model for this task"
                await progress(f"{why}; asking Claude ({self.config.claude.model})")
            try:
                cand = await self._attempt(run, None)
            except BudgetExceededError as exc:  # calls in flight took what was left meanwhile
                blocker = str(exc)
            else:
                if cand is None:
                    blocker = f"Claude failed: {run.errors[-1]}"
                elif cand.output is None and run.best is not None and run.best.output is not None:
                    blocker = f"Claude's reply was not usable: {cand.error}"
                else:
                    return self._result(run, cand, "claude", None)
            if run.time_left() <= 0 and run.best is not None:
                return None  # Claude took the rest of the time: the answer so far, marked timed out
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
        run.tried.add((first.model, first.host))
        reply = first
        output, error = parse_answer(first.response.content, run.validator)
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
            second = None
            if run.time_left() > 0:
                try:
                    second = await self._call(run, repair, pinned)
                except BudgetExceededError as exc:  # the first reply stands, unrepaired
                    run.errors.append(str(exc))
            if second is not None:
                reply = second
                output, error = parse_answer(second.response.content, run.validator)
            repaired = True
        parts = await self._score(run.task, output, error, repaired, reply.response)
        if self.config.router.calibration:
            parts = await self._calibrated(run, parts, output, request, first, local)
        row_id = reply.row_id
        if row_id is not None:  # the row of the answer that was scored gets its confidence
            await anyio.to_thread.run_sync(lambda: self.ledger.annotate(row_id, confidence=parts.score))
        return _Candidate(
            output=strip_confidence(run.task, output),
            text=reply.response.content,
            parts=parts,
            provider=first.provider,
            host=first.host,
            model=first.model,
            tier=first.tier,
            error=error,
            load_ms=first.response.load_ms,
            row_id=reply.row_id,
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
            messages=with_schema_instruction(run.task.messages, run.schema),
            json_schema=run.schema,
            logprobs=True,
            max_tokens=min(needs.max_output_tokens, self.config.router.max_tokens),
            temperature=temperature if temperature is not None else self.config.router.temperature,
        )

    async def _call(
        self, run: _Run, request: ChatRequest, local: _Local | None, *, stream: bool = True
    ) -> _Reply | None:
        """One model call, recorded in the ledger whatever happens (cancellation included); None
        when it produced no answer (the reason is in ``run.errors``). Its messages are redacted here,
        the one place every request passes on its way to a model. ``stream=False`` keeps a local
        call's text from the task's ``on_text`` (an agreement sample is not the answer)."""
        request = await redacted_request(request)
        if local is None:
            return await self._call_claude(run, request)
        return await self._call_local(run, request, local, stream=stream)

    async def _call_local(
        self, run: _Run, request: ChatRequest, local: _Local, *, stream: bool = True
    ) -> _Reply | None:
        """One local call through the pool (streamed when the task wants its text as it comes);
        every attempt, failed or not, is in the ledger."""
        started = time.perf_counter()
        trace = CallTrace()
        try:
            if run.task.on_text is not None and stream:
                reply = await self._stream_local(run, request, local, run.task.on_text, trace)
                latency_ms = (time.perf_counter() - started) * 1000
            else:
                result = await self.pool.chat(
                    request,
                    tier=local.tier,
                    model=local.model,
                    min_tier=local.min_tier,
                    deadline=run.deadline,
                    trace=trace,
                )
                reply = _Reply(result.response, result.provider, result.host, result.model, result.tier.value)
                latency_ms = result.latency_ms
        except (NoHostAvailableError, AllHostsFailedError, BackendError) as exc:
            run.errors.append(str(exc))
            self._record_local_failures(run, trace, exc, request.model, started)
            return None
        except anyio.get_cancelled_exc_class():
            stopped = "stopped before the model answered (time budget or cancelled call)"
            self._record_local_failures(run, trace, None, request.model, started, stopped=stopped)
            raise
        self._record_local_failures(run, trace, None, request.model, started, answered_by=reply.host)
        run.calls += trace.attempts
        reply.row_id = await self.ledger.arecord(self._answer_row(run, reply, local=True, latency_ms=latency_ms))
        return reply

    async def _stream_local(
        self, run: _Run, request: ChatRequest, local: _Local, on_text: TextFn, trace: CallTrace
    ) -> _Reply:
        """The pool's stream: ``on_text`` gets the reply's text so far after each piece. The pool
        fails over only before the first piece; :meth:`_call_local` records it as any call."""
        sel: Selection | None = None
        final: ChatResponse | None = None
        pieces: list[str] = []
        stream = self.pool.stream(
            request, tier=local.tier, model=local.model, min_tier=local.min_tier, deadline=run.deadline, trace=trace
        )
        async with aclosing(stream):
            async for picked, chunk in stream:
                sel = picked
                if chunk.content:
                    pieces.append(chunk.content)
                    await on_text("".join(pieces))
                if chunk.done:
                    final = chunk.response
        if sel is None or final is None:
            host = sel.host.name if sel is not None else ""
            raise MalformedResponseError("the stream ended without its final piece", host=host)
        return _Reply(final, sel.host.kind, sel.host.name, sel.model, sel.tier.value)

    async def _call_claude(self, run: _Run, request: ChatRequest) -> _Reply | None:
        """A Claude call under a budget reservation; raises BudgetExceededError when the budget
        (net of what calls in flight hold) cannot take it."""
        claude = self.claude
        price = self.claude_price
        assert claude is not None and price is not None
        left = run.time_left()
        reservation = self.budget.reserve(
            _cost_bound(request.messages, request.json_schema, request.max_tokens or 0, price),
            ttl_s=max(left, 0.0) + _RESERVATION_GRACE_S,
        )
        started = time.perf_counter()
        try:
            response = await claude.chat(request, limit_s=left)
        except BackendError as exc:
            run.errors.append(str(exc))
            self.ledger.settle(reservation, self._claude_failure(run, request, str(exc), started))
            return None
        except BaseException:
            stopped = "stopped before Claude answered (time budget or cancelled call)"
            self.ledger.settle(reservation, self._claude_failure(run, request, stopped, started))
            raise
        reply = _Reply(response, claude.kind, "claude", request.model, None)
        run.calls += 1
        latency = (time.perf_counter() - started) * 1000
        reply.row_id = self.ledger.settle(reservation, self._answer_row(run, reply, local=False, latency_ms=latency))
        return reply

    def _claude_failure(self, run: _Run, request: ChatRequest, error: str, started: float) -> LedgerEntry:
        return failed_call_row(
            task=run.task.name,
            error=error,
            provider=self.claude.kind if self.claude is not None else "",
            host="claude",
            model=request.model,
            latency_ms=(time.perf_counter() - started) * 1000,
            call_id=run.call_id,
        )

    def _answer_row(self, run: _Run, reply: _Reply, *, local: bool, latency_ms: float) -> LedgerEntry:
        """The answered call's row, its cost added to the run's figures."""
        response = reply.response
        price = self.claude_price
        priced = cost_usd(response.usage, price) if price else 0.0
        run.usage.append(response.usage)
        if local:
            run.counterfactual += priced
        else:
            run.cost += priced
        return model_call_row(
            task=run.task.name,
            path="local" if local else "claude",
            provider=reply.provider,
            host=reply.host,
            model=reply.model,
            tier=reply.tier,
            usage=response.usage,
            latency_ms=latency_ms,
            cost=0.0 if local else priced,
            counterfactual=priced,
            attempts=1,
            call_id=run.call_id,
            kind=run.task.kind.value,
        )

    def _record_local_failures(
        self,
        run: _Run,
        trace: CallTrace,
        exc: Exception | None,
        model: str,
        started: float,
        *,
        answered_by: str | None = None,
        stopped: str | None = None,
    ) -> None:
        """The rows of a pool call's failed attempts: one per host that failed (or was stopped, or
        was being waited for), naming it and how many attempts it got; the host that answered in
        the end gets its own answered row. The call's time goes on the first row."""
        latency = (time.perf_counter() - started) * 1000 if answered_by is None else 0.0
        for host, attempts, error in _failed_hosts(trace, exc, answered_by=answered_by, stopped=stopped):
            known = self.pool.hosts.get(host)
            self.ledger.record(
                failed_call_row(
                    task=run.task.name,
                    error=error,
                    provider=known.kind if known is not None else "",
                    host=host,
                    model=model,
                    attempts=attempts,
                    latency_ms=latency,
                    call_id=run.call_id,
                )
            )
            latency = 0.0

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
                checked = task.grounding(strip_confidence(task, output) or {})
                grounding = await checked if inspect.isawaitable(checked) else checked
            except Exception as exc:  # a broken check must not lose the answer
                log.exception("grounding check of %s failed", task.name)
                grounding = GroundingResult(score=0.0, problems=(f"grounding check failed: {exc}",))
        tokens = token_signals(response.logprobs)
        parts = score(
            valid=error is None,
            repaired=repaired,
            self_reported=self_reported(output),
            token_probability=tokens["token_mean"],
            grounding=grounding.score if grounding else None,
            grounding_problems=grounding.problems if grounding else (),
        )
        signals = Signals(
            valid=error is None,
            repaired=repaired,
            self_reported=parts.self_reported,
            grounding=parts.grounding,
            token_mean=tokens["token_mean"],
            token_min=tokens["token_min"],
            token_tail=tokens["token_tail"],
            entropy=tokens["entropy"],
            output_tokens=response.usage.output_tokens,
        )
        return parts.model_copy(update={"signals": signals})

    async def _calibrated(
        self,
        run: _Run,
        parts: ConfidenceParts,
        output: dict[str, Any] | None,
        request: ChatRequest,
        first: _Reply,
        local: _Local | None,
    ) -> ConfidenceParts:
        """``parts`` with ``score`` the calibrated P(correct) of ``first.model``'s answer on the task's
        kind (:meth:`CalibrationTable.lookup`). When that probability lies in the entry's uncertain
        band, ``agreement_samples`` more answers of the same model are drawn first (local answers
        only: Claude's cost money) and the entry's with-agreement calibrator gives the score."""
        signals = parts.signals
        if signals is None:  # _score always sets them; a raw score stands without them
            return parts
        entry, label = self.calibration.lookup(first.model, run.task.kind.value)
        probability = entry.base.probability(signals)
        k = self.config.router.agreement_samples
        band, with_agreement = entry.band, entry.with_agreement
        if (
            local is not None
            and output is not None
            and k > 0
            and with_agreement is not None
            and band is not None
            and band[0] <= probability <= band[1]
            and run.time_left() > 0
        ):
            pinned = _Local(tier=None, model=first.model, min_tier=None)
            agreement, samples = await self._sample_agreement(run, request, pinned, output, k)
            if agreement is not None:
                signals = signals.model_copy(update={"agreement": agreement, "samples": samples})
                probability = with_agreement.probability(signals)
                label += f"; agreement {agreement:.2f} over {samples} samples"
        return parts.model_copy(update={"score": round(probability, 4), "signals": signals, "calibration": label})

    async def sample_agreement(
        self,
        task: LLMTask,
        first_output: dict[str, Any],
        k: int,
        *,
        model: str | None = None,
        call_id: str | None = None,
    ) -> tuple[float | None, int, float]:
        """(agreement, samples, elapsed_ms): ``k`` samples of ``task`` at ``[router]
        agreement_temperature``, in parallel through the pool, on ``model`` (default: the task's
        model, else the first local step the router would take), within the task's time budget;
        agreement is the share of the samples that answered which agree with ``first_output`` as
        :func:`caelum_mcp.audit.compare_answers` compares answers (None when none answered). Each
        sample is a ledger row tagged ``call_id``. The benchmark's way to measure agreement and its
        cost on recorded answers."""
        schema, validator = task_schema(task.output_schema)
        needs = self.needs(task)
        run = _Run(
            task=task,
            needs=needs,
            schema=schema,
            validator=validator,
            call_id=call_id,
            deadline=time.monotonic() + needs.time_budget_s,
        )
        pinned = model or task.model
        if pinned:
            step = _Local(tier=None, model=pinned, min_tier=None)
        else:
            plan = self._local_plan(task, needs)
            if not plan:
                raise NoHostAvailableError(f"{task.name}: {self._no_local_reason(task, needs)}")
            step = plan[0]
        started = time.perf_counter()
        agreement, samples = await self._sample_agreement(run, self._request(run, step), step, first_output, k)
        return agreement, samples, round((time.perf_counter() - started) * 1000, 1)

    async def _sample_agreement(
        self, run: _Run, request: ChatRequest, local: _Local, first_output: dict[str, Any], k: int
    ) -> tuple[float | None, int]:
        """``k`` samples of ``request`` in parallel at the agreement temperature: (share whose
        answer equals ``first_output``, samples that answered). A sample that does not parse
        disagrees; one that failed to answer is not counted."""
        sample = request.model_copy(update={"temperature": self.config.router.agreement_temperature, "logprobs": False})
        answers: list[bool] = []

        async def one() -> None:
            reply = await self._call(run, sample, local, stream=False)
            if reply is not None:
                output, error = parse_answer(reply.response.content, run.validator)
                # the audit's comparison: schema fields, strings casefolded, numbers within a tolerance
                agree, _ = compare_answers(output if error is None else None, first_output, run.schema)
                answers.append(agree is True)

        async with anyio.create_task_group() as group:
            for _ in range(k):
                group.start_soon(one)
        if not answers:
            return None, 0
        return sum(answers) / len(answers), len(answers)

    def _result(
        self, run: _Run, cand: _Candidate, path: FinalPath, reason: str | None, *, timed_out: bool = False
    ) -> RoutedResult:
        self.audit.observe(run, cand, path)
        if path == "local_low_confidence" and cand.row_id is not None:
            # The answer handed back below the threshold: its row says so (the ledger's low-confidence count).
            self.ledger.annotate(cand.row_id, path="local_low_confidence")
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
            load_ms=cand.load_ms,
            cost_usd=round(run.cost, 6),
            counterfactual_cost_usd=round(run.counterfactual, 6),
        )
        return RoutedResult(output=cand.output, text=cand.text, execution=execution)


async def redacted_request(request: ChatRequest) -> ChatRequest:
    """``request`` with secrets redacted from every message (see :mod:`caelum_mcp.redaction`)."""
    messages = await _redacted_texts([m.content for m in request.messages])
    if all(new == m.content for new, m in zip(messages, request.messages, strict=True)):
        return request
    redacted = tuple(
        m if new == m.content else m.model_copy(update={"content": new})
        for new, m in zip(messages, request.messages, strict=True)
    )
    return request.model_copy(update={"messages": redacted})


async def _redacted_texts(texts: Sequence[str]) -> tuple[str, ...]:
    """``texts`` through the secrets redaction: a long batch in a worker thread."""
    if sum(len(t) for t in texts) <= _REDACT_INLINE_CHARS:
        return tuple(redact_secrets(t) for t in texts)
    return await anyio.to_thread.run_sync(lambda: tuple(redact_secrets(t) for t in texts))


def _base(model: str) -> str:
    return model.split(":")[0]


def _cost_bound(
    messages: Sequence[ChatMessage], schema: dict[str, Any] | None, max_tokens: int, price: ModelPrice
) -> float:
    """The most a Claude call may cost: its prompt at one token per UTF-8 byte, and its whole output
    allowance (what a budget reservation must hold so that concurrent calls cannot overrun).

    A token is never shorter than a byte, so the bound holds for any text: English runs ~4 bytes a
    token, but CJK about one token per character (3 bytes), and a characters-per-token guess let a
    CJK prompt spend 2.4 times the budget. The reservation is settled on the real usage."""
    size = sum(len(m.content.encode("utf-8", "surrogatepass")) + _MESSAGE_OVERHEAD_TOKENS for m in messages)
    size += len(json.dumps(schema or {}, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return cost_usd(Usage(input_tokens=size, output_tokens=max_tokens), price)


def _failed_hosts(
    trace: CallTrace, exc: Exception | None, *, answered_by: str | None, stopped: str | None
) -> Iterator[tuple[str, int, str]]:
    """(host, attempts, error) for each host a pool call failed on, in the order it tried them.

    An attempt with no recorded outcome was in flight when the call stopped (``stopped`` says
    why) or is the one that answered (on ``answered_by``). A host the call was only waiting for
    has 0 attempts. When the deadline ended the call, the last host's row carries that message.
    Nothing tried at all: one row without a host, saying why.
    """
    hosts = list(dict.fromkeys(trace.hosts))
    if trace.waiting_for is not None and trace.waiting_for not in hosts:
        hosts.append(trace.waiting_for)
    if not hosts:
        if exc is not None or stopped is not None:
            yield "", 0, stopped or str(exc)
        return
    for host in hosts:
        tried = trace.hosts.count(host)
        errors = [error for name, error in trace.failures if name == host]
        pending = tried > len(errors)
        if host == answered_by:
            if errors:
                yield host, len(errors), str(errors[-1])
            continue
        if pending or tried == 0:
            error = stopped or (str(exc) if exc is not None else "no answer")
        elif isinstance(exc, DeadlineExceededError) and host == hosts[-1]:
            error = str(exc)
        else:
            error = str(errors[-1])
        yield host, tried, error


def _sum_usage(usages: Sequence[Usage]) -> Usage:
    return Usage(
        input_tokens=sum(u.input_tokens for u in usages),
        output_tokens=sum(u.output_tokens for u in usages),
        cache_read_tokens=sum(u.cache_read_tokens for u in usages),
        cache_write_tokens=sum(u.cache_write_tokens for u in usages),
    )
