"""The gate every target's answer passes: parse, at most one repair, score, calibrate.

:meth:`Gate.attempt` asks one target (:mod:`caelum_mcp.engine.router.targets`) and turns its reply into a
:class:`~caelum_mcp.engine.router.run.Candidate`: the JSON found and validated against the task's schema
(:mod:`caelum_mcp.engine.answers`), one repair request to the same model when it is not valid, then the
confidence (:mod:`caelum_mcp.core.confidence`) with the task's grounding check, mapped to the calibrated
probability that the answer is right for that model and task kind (:mod:`caelum_mcp.engine.calibration`;
``[router] calibration = false`` keeps the raw score). Where that probability lies in the
calibration's uncertain band, ``agreement_samples`` more samples of the same local model are drawn
and compared with it first. The target then says whether the answer stands
(:meth:`~caelum_mcp.engine.router.targets.Target.verdict`).

Every request is redacted here (:meth:`Gate.ask`), the one place every chat request goes through,
local or Claude, first try, repair or sample: a key read from a project's ``.env`` or a CSV cell
never reaches a model, whichever tool built the prompt.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import anyio

from caelum_mcp.core.confidence import ConfidenceParts, Signals, score
from caelum_mcp.core.errors import BudgetExceededError
from caelum_mcp.core.llm import GroundingResult, LLMTask
from caelum_mcp.core.types import ChatMessage, ChatRequest, ChatResponse
from caelum_mcp.engine.answers import parse_answer, self_reported, strip_confidence
from caelum_mcp.engine.audit import compare_answers
from caelum_mcp.engine.calibration import CalibrationTable, token_signals
from caelum_mcp.engine.config import RouterConfig
from caelum_mcp.engine.ledger import Ledger
from caelum_mcp.engine.router.requests import redacted_request
from caelum_mcp.engine.router.run import Candidate, Reply, Run
from caelum_mcp.engine.router.targets import Target

log = logging.getLogger(__name__)

_REPLY_ECHO_CHARS = 4000


class Gate:
    """Scores the answers of one router's targets (see the module docstring)."""

    def __init__(self, ledger: Ledger, calibration: CalibrationTable, config: RouterConfig) -> None:
        self.ledger = ledger
        self.calibration = calibration
        self.config = config

    async def ask(self, run: Run, target: Target, request: ChatRequest, *, stream: bool = True) -> Reply | None:
        """``request`` redacted and sent to ``target``: its reply, or None when it gave none."""
        return await target.send(run, await redacted_request(request), stream=stream)

    async def attempt(self, run: Run, target: Target) -> Candidate | None:
        """Ask ``target``: call, parse, at most one repair, score. None when it gave no answer at all
        (recorded in ``run.errors``). Raises BudgetExceededError when Claude's budget cannot take
        the first call."""
        request = target.request(run)
        first = await self.ask(run, target, request)
        if first is None:
            return None
        run.tried.add((first.model, first.host))
        reply = first
        output, error = parse_answer(first.response.content, run.validator)
        repaired = False
        if error is not None:
            second = await self._repair(run, target.same_model(first.model), request, first, error)
            if second is not None:
                reply = second
                output, error = parse_answer(second.response.content, run.validator)
            repaired = True
        parts = await self.score(run.task, output, error, repaired, reply.response)
        if self.config.calibration:
            parts = await self._calibrated(run, parts, output, request, first, target)
        row_id = reply.row_id
        if row_id is not None:  # the row of the answer that was scored gets its confidence
            await anyio.to_thread.run_sync(lambda: self.ledger.annotate(row_id, confidence=parts.score))
        return Candidate(
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

    async def _repair(self, run: Run, target: Target, request: ChatRequest, first: Reply, error: str) -> Reply | None:
        """The model that gave ``first`` asked once more, told what was wrong; None when there is no
        time left, no budget (the first reply stands, unrepaired) or no answer."""
        if run.time_left() <= 0:
            return None
        echo = ChatMessage(role="assistant", content=first.response.content[:_REPLY_ECHO_CHARS])
        ask = ChatMessage(
            role="user", content=f"That reply was not valid: {error}. Reply again with only the corrected JSON."
        )
        repair = request.model_copy(update={"messages": (*request.messages, echo, ask)})
        try:
            return await self.ask(run, target, repair)
        except BudgetExceededError as exc:
            run.errors.append(str(exc))
            return None

    async def score(
        self, task: LLMTask, output: dict[str, Any] | None, error: str | None, repaired: bool, response: ChatResponse
    ) -> ConfidenceParts:
        """The raw confidence of one answer, every part reported, with the signals calibration reads."""
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
        run: Run,
        parts: ConfidenceParts,
        output: dict[str, Any] | None,
        request: ChatRequest,
        first: Reply,
        target: Target,
    ) -> ConfidenceParts:
        """``parts`` with ``score`` the calibrated P(correct) of ``first.model``'s answer on the task's
        kind (:meth:`CalibrationTable.lookup`). When that probability lies in the entry's uncertain
        band, ``agreement_samples`` more answers of the same model are drawn first (where the target
        allows it: Claude's cost money) and the entry's with-agreement calibrator gives the score."""
        signals = parts.signals
        if signals is None:  # score() always sets them; a raw score stands without them
            return parts
        entry, label = self.calibration.lookup(first.model, run.task.kind.value)
        probability = entry.base.probability(signals)
        band, with_agreement = entry.band, entry.with_agreement
        k = self.config.agreement_samples
        uncertain = band is not None and band[0] <= probability <= band[1]
        can_sample = target.samples_agreement and k > 0 and uncertain and run.time_left() > 0
        if can_sample and output is not None and with_agreement is not None:
            agreement, samples = await self.sample_agreement(run, request, target.same_model(first.model), output, k)
            if agreement is not None:
                signals = signals.model_copy(update={"agreement": agreement, "samples": samples})
                probability = with_agreement.probability(signals)
                label += f"; agreement {agreement:.2f} over {samples} samples"
        return parts.model_copy(update={"score": round(probability, 4), "signals": signals, "calibration": label})

    async def sample_agreement(
        self, run: Run, request: ChatRequest, target: Target, first_output: dict[str, Any], k: int
    ) -> tuple[float | None, int]:
        """``k`` samples of ``request`` in parallel at the agreement temperature: (share whose
        answer equals ``first_output``, samples that answered). A sample that does not parse
        disagrees; one that failed to answer is not counted."""
        sample = request.model_copy(update={"temperature": self.config.agreement_temperature, "logprobs": False})
        answers: list[bool] = []

        async def one() -> None:
            reply = await self.ask(run, target, sample, stream=False)
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
