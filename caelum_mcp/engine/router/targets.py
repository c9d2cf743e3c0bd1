"""The rungs of the router's ladder: where a task can be answered, and when that answer will do.

A :class:`Target` makes one kind of model call and records it in the ledger whatever happens; the
router walks an ordered list of them (:meth:`~caelum_mcp.engine.router.Router.run`), and the
:class:`~caelum_mcp.engine.router.gate.Gate` parses and scores what each answers. Two kinds exist:

- :class:`LocalTarget`: a size tier (or a speciality such as ``code``, or one named model) through
  the pool, never below the task's ``min_tier``; its answer stands when its confidence clears the
  threshold, and the best one so far is kept for the end;
- :class:`ClaudeTarget`: Claude under a budget reservation (what the call may cost, reserved
  atomically in the ledger and settled at its real usage, or released when it fails); its answer
  stands unless it does not parse where a local one did.

Fallback is the order of the list: the planner (:mod:`caelum_mcp.engine.router.plan`) puts the local tiers
first, smallest eligible first, and Claude last.
"""

from __future__ import annotations

import time
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from caelum_mcp.core.errors import AllHostsFailedError, BackendError, MalformedResponseError, NoHostAvailableError
from caelum_mcp.core.llm import FinalPath, LLMTask, TaskNeeds, TextFn
from caelum_mcp.core.pricing import ModelPrice, cost_usd
from caelum_mcp.core.types import ChatRequest, ChatResponse, Tier
from caelum_mcp.engine.answers import with_schema_instruction
from caelum_mcp.engine.backends.base import Backend
from caelum_mcp.engine.config import Config
from caelum_mcp.engine.ledger import BudgetGuard, Ledger, LedgerEntry, failed_call_row, model_call_row
from caelum_mcp.engine.pool import CallTrace, Pool, Selection
from caelum_mcp.engine.router.requests import cost_bound, redacted_request
from caelum_mcp.engine.router.rows import answer_row, claude_failure_row, record_local_failures
from caelum_mcp.engine.router.run import Candidate, Reply, Run


@dataclass(frozen=True)
class Services:
    """What the targets call through and record in: one set per router."""

    pool: Pool
    ledger: Ledger
    config: Config
    claude: Backend | None
    budget: BudgetGuard

    @property
    def claude_price(self) -> ModelPrice | None:
        return self.config.price_for(self.config.claude.model)


class Target(Protocol):
    """One rung of the ladder."""

    @property
    def path(self) -> FinalPath:
        """How a result this target answered is marked."""
        ...

    @property
    def samples_agreement(self) -> bool:
        """Whether the gate may draw more samples of its answer (they cost nothing)."""
        ...

    def unavailable(self, run: Run) -> str | None:
        """None when it can be asked now, else why it is passed over."""
        ...

    def announcement(self, run: Run) -> str:
        """The progress message sent as it is asked."""
        ...

    def request(self, run: Run) -> ChatRequest: ...

    async def send(self, run: Run, request: ChatRequest, *, stream: bool = True) -> Reply | None:
        """One call of an already redacted ``request``, in the ledger whatever happens; None when it
        gave no answer (the reason is in ``run.errors``). May raise BudgetExceededError."""
        ...

    def same_model(self, model: str) -> Target:
        """The target that asks ``model`` again (a repair, an agreement sample)."""
        ...

    def no_answer(self, run: Run) -> str:
        """Why the run cannot use this target, when it gave no answer at all."""
        ...

    def verdict(self, run: Run, cand: Candidate) -> str | None:
        """None when ``cand`` is the run's answer, else why the ladder goes on."""
        ...


@dataclass(frozen=True)
class LocalTarget:
    """A local attempt: a tier (or one named model), never below ``min_tier``."""

    services: Services
    tier: Tier | None
    model: str | None
    min_tier: Tier | None

    path: FinalPath = field(default="local", init=False)
    samples_agreement: bool = field(default=True, init=False)

    @property
    def label(self) -> str:
        return f"model {self.model}" if self.model else str(self.tier)

    def unavailable(self, run: Run) -> str | None:
        """Passed over when it could reach no model this run has not asked yet (an answer once
        judged is not asked for again under another tier's name)."""
        if self.tier is None:
            return None
        for e in self.services.pool.eligible_models(min_tier=self.min_tier):
            serves = e.code if self.tier is Tier.CODE else e.size is self.tier
            if serves and (e.model, e.host) not in run.tried:
                return None
        return f"every {self.label} model was asked already"

    def announcement(self, run: Run) -> str:
        return f"asking the local pool ({self.label})"

    def request(self, run: Run) -> ChatRequest:
        config = self.services.config.router
        temperature = run.task.temperature
        return ChatRequest(
            model="",
            messages=with_schema_instruction(run.task.messages, run.schema),
            json_schema=run.schema,
            logprobs=True,
            max_tokens=min(run.needs.max_output_tokens, config.max_tokens),
            temperature=temperature if temperature is not None else config.temperature,
        )

    def same_model(self, model: str) -> LocalTarget:
        return LocalTarget(self.services, tier=None, model=model, min_tier=None)

    def no_answer(self, run: Run) -> str:
        return run.errors[-1] if run.errors else "no local host answered"

    def verdict(self, run: Run, cand: Candidate) -> str | None:
        run.keep_if_best(cand)
        threshold = self.services.config.router.confidence_threshold
        if cand.parts.score >= threshold:
            return None
        note = f"{cand.model}@{cand.host} ({cand.tier}) confidence {cand.parts.score:.2f} < {threshold:.2f}"
        run.escalations.append(note)
        return note

    async def send(self, run: Run, request: ChatRequest, *, stream: bool = True) -> Reply | None:
        """One call through the pool (streamed when the task wants its text as it comes and
        ``stream``: an agreement sample is not the answer); every attempt, failed or not, is in
        the ledger."""
        pool, ledger = self.services.pool, self.services.ledger
        started = time.perf_counter()
        trace = CallTrace()
        try:
            if run.task.on_text is not None and stream:
                reply = await self._stream(run, request, run.task.on_text, trace)
                latency_ms = (time.perf_counter() - started) * 1000
            else:
                result = await pool.chat(
                    request,
                    tier=self.tier,
                    model=self.model,
                    min_tier=self.min_tier,
                    deadline=run.deadline,
                    trace=trace,
                )
                reply = Reply(result.response, result.provider, result.host, result.model, result.tier.value)
                latency_ms = result.latency_ms
        except (NoHostAvailableError, AllHostsFailedError, BackendError) as exc:
            run.errors.append(str(exc))
            record_local_failures(ledger, pool, run, trace, exc, request.model, started)
            return None
        except anyio.get_cancelled_exc_class():
            stopped = "stopped before the model answered (time budget or cancelled call)"
            record_local_failures(ledger, pool, run, trace, None, request.model, started, stopped=stopped)
            raise
        record_local_failures(ledger, pool, run, trace, None, request.model, started, answered_by=reply.host)
        run.calls += trace.attempts
        row = answer_row(run, reply, local=True, latency_ms=latency_ms, price=self.services.claude_price)
        reply.row_id = await ledger.arecord(row)
        return reply

    async def _stream(self, run: Run, request: ChatRequest, on_text: TextFn, trace: CallTrace) -> Reply:
        """The pool's stream: ``on_text`` gets the reply's text so far after each piece. The pool
        fails over only before the first piece; :meth:`send` records it as any call."""
        sel: Selection | None = None
        final: ChatResponse | None = None
        pieces: list[str] = []
        stream = self.services.pool.stream(
            request, tier=self.tier, model=self.model, min_tier=self.min_tier, deadline=run.deadline, trace=trace
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
        return Reply(final, sel.host.kind, sel.host.name, sel.model, sel.tier.value)


@dataclass(frozen=True)
class ClaudeTarget:
    """Claude, when allowed by the task, enabled, configured, priced and under the daily budget."""

    services: Services

    path: FinalPath = field(default="claude", init=False)
    samples_agreement: bool = field(default=False, init=False)  # Claude's samples cost money

    def blocker(self, task: LLMTask, needs: TaskNeeds) -> str | None:
        """None when Claude may be called for ``task`` now, else the reason it may not (with the fix)."""
        claude = self.services.config.claude
        if not task.allow_claude:
            return "Claude not allowed for this call (allow_claude=false)"
        if not claude.enabled:
            return "Claude is disabled in the configuration ([claude].enabled = false)"
        if self.services.claude is None or not claude.configured:
            return "Claude is not configured (set ANTHROPIC_API_KEY)"
        price = self.services.claude_price
        if price is None:
            return f'no price known for {claude.model}; add [prices."{claude.model}"]'
        bound = cost_bound(task.messages, task.output_schema, self.max_tokens(needs), price)
        return self.services.budget.check(bound)

    def max_tokens(self, needs: TaskNeeds) -> int:
        return min(needs.max_output_tokens, self.services.config.claude.max_tokens)

    def unavailable(self, run: Run) -> str | None:
        return self.blocker(run.task, run.needs)

    def announcement(self, run: Run) -> str:
        why = "local confidence too low" if run.best else "no local model for this task"
        return f"{why}; asking Claude ({self.services.config.claude.model})"

    def request(self, run: Run) -> ChatRequest:
        # the Anthropic backend delivers the schema itself
        return ChatRequest(
            model=self.services.config.claude.model,
            messages=run.task.messages,
            json_schema=run.schema,
            max_tokens=self.max_tokens(run.needs),
        )

    def same_model(self, model: str) -> ClaudeTarget:
        return self

    def no_answer(self, run: Run) -> str:
        return f"Claude failed: {run.errors[-1]}"

    def verdict(self, run: Run, cand: Candidate) -> str | None:
        if cand.output is None and run.best is not None and run.best.output is not None:
            return f"Claude's reply was not usable: {cand.error}"
        return None

    async def send(self, run: Run, request: ChatRequest, *, stream: bool = True) -> Reply | None:
        """A Claude call under a budget reservation; raises BudgetExceededError when the budget
        (net of what calls in flight hold) cannot take it."""
        claude, price, ledger = self.services.claude, self.services.claude_price, self.services.ledger
        assert claude is not None and price is not None
        left = run.time_left()
        reservation = self.services.budget.reserve(
            cost_bound(request.messages, request.json_schema, request.max_tokens or 0, price),
            ttl_s=max(left, 0.0) + self.services.config.ledger.reservation_grace_s,
        )
        started = time.perf_counter()
        try:
            response = await claude.chat(request, limit_s=left)
        except BackendError as exc:
            run.errors.append(str(exc))
            ledger.settle(reservation, claude_failure_row(run, claude.kind, request.model, str(exc), started))
            return None
        except BaseException:
            stopped = "stopped before Claude answered (time budget or cancelled call)"
            ledger.settle(reservation, claude_failure_row(run, claude.kind, request.model, stopped, started))
            raise
        reply = Reply(response, claude.kind, "claude", request.model, None)
        run.calls += 1
        latency = (time.perf_counter() - started) * 1000
        reply.row_id = ledger.settle(reservation, answer_row(run, reply, local=False, latency_ms=latency, price=price))
        return reply

    async def second_opinion(
        self, task: LLMTask, needs: TaskNeeds, schema: dict[str, Any], *, call_id: str | None
    ) -> tuple[str, str]:
        """``task`` (with its ``needs``) sent to Claude for a label, not an answer (the audit,
        :mod:`caelum_mcp.engine.audit`): redacted, under a budget reservation, within the task's
        time budget; its reply's text and model. The call is a ledger row of its own, settled
        against the reservation whatever happens: its task name ends in ``:audit`` and it has no
        task kind (it answered nobody). Raises BudgetExceededError when the budget cannot take it,
        BackendError or TimeoutError when Claude gives no answer."""
        claude, price, ledger = self.services.claude, self.services.claude_price, self.services.ledger
        if claude is None or price is None:
            raise BackendError("Claude is not configured")
        config = self.services.config
        request = await redacted_request(
            ChatRequest(
                model=config.claude.model,
                messages=task.messages,
                json_schema=schema,
                max_tokens=self.max_tokens(needs),
            )
        )
        limit = needs.time_budget_s
        bound = cost_bound(request.messages, request.json_schema, request.max_tokens or 0, price)
        reservation = self.services.budget.reserve(bound, ttl_s=limit + config.ledger.reservation_grace_s)
        name, started = f"{task.name}:audit", time.perf_counter()

        def failure(error: str) -> LedgerEntry:
            return failed_call_row(
                task=name, error=error, provider=claude.kind, host="claude", model=request.model,
                latency_ms=(time.perf_counter() - started) * 1000, call_id=call_id,
            )  # fmt: skip

        try:
            with anyio.fail_after(limit):
                response = await claude.chat(request, limit_s=limit)
        except BackendError as exc:
            ledger.settle(reservation, failure(str(exc)))
            raise
        except BaseException as exc:
            stopped = "timed out" if isinstance(exc, TimeoutError) else "stopped before Claude answered"
            ledger.settle(reservation, failure(f"audit {stopped}"))
            raise
        priced = cost_usd(response.usage, price)
        row = model_call_row(
            task=name, path="claude", provider=claude.kind, host="claude", model=request.model, tier=None,
            usage=response.usage, latency_ms=(time.perf_counter() - started) * 1000, cost=priced,
            counterfactual=priced, call_id=call_id,
        )  # fmt: skip
        ledger.settle(reservation, row)
        return response.content, request.model
