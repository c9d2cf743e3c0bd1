"""Labels from real use: Claude checks a sample of local answers, and every escalation is compared.

The calibrators (:mod:`caelum_mcp.engine.calibration`) need labelled outcomes of the user's own models on
the user's own work. Two sources give them, both written to the ledger's ``calibration_labels``
(:meth:`~caelum_mcp.engine.ledger.Ledger.add_label`) as the local answer's raw signals and whether it was
right, never the prompt or the answers:

- **the audit** (``[router] audit_rate``, 0..1, default 0 = off): after a local answer is served,
  with that probability, the same task goes to Claude in the background, so the user's answer is
  not delayed. Only where Claude may be used for the task (allowed by it, enabled, configured,
  priced) and the daily budget allows: the call reserves what it may cost in the ledger first, the
  same atomic reservation an escalation makes, and is skipped when that fails, so an audit never
  spends past the budget. At most :data:`MAX_IN_FLIGHT` audits run at once; more are skipped. The
  audit's Claude call is a ledger row of its own (its task name ends in ``:audit``, and it has no
  task kind: it answered nobody).
- **every escalation**: when Claude answered a task that a local model answered first, the local
  answer is labelled by whether it agrees with Claude's.

Only tasks with an output schema are labelled: two right free-text answers are rarely the same words.

Two answers agree when they are equal after :func:`normalised`: the fields of the schema
(``confidence`` dropped), strings casefolded with whitespace collapsed, numbers equal within
:data:`NUMBER_RTOL`, lists as multisets. A label is None when Claude's reply could not be read.

The router calls :meth:`Auditor.observe` once per result it returns; nothing else here runs in the
request path. Audits are asyncio tasks held by the :class:`Auditor` (:meth:`Auditor.drain` waits for
them, :meth:`Auditor.aclose` cancels them).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from caelum_mcp.core.confidence import ConfidenceParts, Signals
from caelum_mcp.core.errors import BackendError, BudgetExceededError
from caelum_mcp.core.llm import LLMTask
from caelum_mcp.engine.answers import parse_answer, validator_for
from caelum_mcp.engine.ledger import CalibrationLabel, LabelSource

if TYPE_CHECKING:
    from caelum_mcp.engine.router import Router

log = logging.getLogger(__name__)

# Audits running at once; a burst of local answers beyond it is not audited (a sample stays a sample).
MAX_IN_FLIGHT = 4
# Relative tolerance for numbers to agree: a model writing 0.333 where Claude writes 0.3333 agrees.
NUMBER_RTOL = 1e-3
_DROPPED_FIELD = "confidence"


class AnswerView(Protocol):
    """What the auditor reads of an answer the router judged."""

    @property
    def output(self) -> dict[str, Any] | None: ...
    @property
    def parts(self) -> ConfidenceParts: ...
    @property
    def model(self) -> str: ...
    @property
    def host(self) -> str: ...


class RunView(Protocol):
    """What the auditor reads of a finished run."""

    @property
    def task(self) -> LLMTask: ...
    @property
    def schema(self) -> dict[str, Any]: ...
    @property
    def call_id(self) -> str | None: ...
    @property
    def best(self) -> AnswerView | None: ...


def normalised(value: Any) -> Any:
    """``value`` as answers are compared: strings casefolded, stripped, inner whitespace collapsed;
    dicts without None values; other values as they are (numbers are compared with a tolerance)."""
    if isinstance(value, str):
        return " ".join(value.casefold().split())
    if isinstance(value, Mapping):
        return {str(k): normalised(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [normalised(v) for v in value]
    return value


def _equal(a: Any, b: Any) -> bool:
    """Equality of two normalised values: numbers within :data:`NUMBER_RTOL`, lists as multisets."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=NUMBER_RTOL, abs_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return False
        left = list(b)
        for item in a:  # order does not matter: the same items listed differently are the same answer
            match = next((i for i, other in enumerate(left) if _equal(item, other)), None)
            if match is None:
                return False
            left.pop(match)
        return True
    return bool(a == b)


def compare_answers(
    local: dict[str, Any] | None, reference: dict[str, Any] | None, schema: Mapping[str, Any]
) -> tuple[bool | None, dict[str, Any]]:
    """Whether the local answer agrees with the reference (Claude's): the label, and what differed.

    The fields compared are the schema's top-level properties (every key of either answer when it
    lists none), ``confidence`` left out. The label is None when the reference is None (it could
    not be read), False when only the local answer is None. The detail names fields, never values.
    """
    if reference is None:
        return None, {"agree": None, "local_valid": local is not None, "reference_valid": False}
    if local is None:
        return False, {"agree": False, "local_valid": False, "reference_valid": True}
    props = schema.get("properties")
    fields = [str(k) for k in props] if isinstance(props, Mapping) and props else sorted({*local, *reference})
    fields = [f for f in fields if f != _DROPPED_FIELD]
    mine, theirs = normalised(local), normalised(reference)
    differing = [f for f in fields if not _equal(mine.get(f), theirs.get(f))]
    agree = not differing
    return agree, {
        "agree": agree,
        "fields": len(fields),
        "differing": differing,
        "local_valid": True,
        "reference_valid": True,
    }


def signals_of(parts: ConfidenceParts) -> Signals:
    """The answer's raw signals (rebuilt from the parts when the router kept none)."""
    if parts.signals is not None:
        return parts.signals
    return Signals(
        valid=parts.validity > 0,
        repaired=parts.repaired,
        self_reported=parts.self_reported,
        token_mean=parts.token_probability,
        grounding=parts.grounding,
    )


class Auditor:
    """Records labels for the router: escalations at once, audits of local answers in the background."""

    def __init__(self, router: Router, *, rng: random.Random | None = None) -> None:
        self.router = router
        self._rng = rng or random.Random()  # noqa: S311 - a sampling rate, not a secret
        self._tasks: set[asyncio.Task[None]] = set()
        self.started = 0
        self.skipped = 0  # drawn for an audit but not run: Claude unavailable, busy, or out of budget

    def observe(self, run: RunView, answer: AnswerView, path: str) -> None:
        """Called by the router with each result it returns: an escalation's local answer is labelled
        now; a local answer served is audited with probability ``[router] audit_rate``."""
        if run.task.output_schema is None:
            return  # free text: two right answers are rarely the same words, so agreement says nothing
        try:
            if path == "claude" and run.best is not None:
                self._label_escalation(run, run.best, answer)
            elif path == "local" and answer.output is not None:
                self._maybe_audit(run, answer)
        except Exception:  # labels are a by-product: the user's answer must never fail for them
            log.exception("recording a calibration label for %s failed", run.task.name)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait until every audit started so far has ended."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel the audits in flight (their reservations are settled as failed calls) and wait."""
        for task in list(self._tasks):
            task.cancel()
        await self.drain()

    # escalations ---------------------------------------------------------------------------

    def _label_escalation(self, run: RunView, local: AnswerView, claude: AnswerView) -> None:
        label, detail = compare_answers(local.output, claude.output, run.schema)
        self._write(run.task, local, label, detail, source="escalation", claude_model=claude.model)

    def _write(
        self,
        task: LLMTask,
        local: AnswerView,
        label: bool | None,
        detail: dict[str, Any],
        *,
        source: LabelSource,
        claude_model: str,
    ) -> None:
        self.router.ledger.add_label(_label_row(task, local, label, detail, source, claude_model))

    # audits --------------------------------------------------------------------------------

    def _maybe_audit(self, run: RunView, answer: AnswerView) -> None:
        rate = self.router.config.router.audit_rate
        if rate <= 0 or self._rng.random() >= rate:
            return
        if len(self._tasks) >= MAX_IN_FLIGHT or not self.router.availability(run.task).claude:
            self.skipped += 1
            return
        self.started += 1
        job = asyncio.get_running_loop().create_task(
            self._audit(run.task, run.schema, run.call_id, answer), name=f"audit {run.task.name}"
        )
        self._tasks.add(job)
        job.add_done_callback(self._tasks.discard)

    async def _audit(self, task: LLMTask, schema: dict[str, Any], call_id: str | None, local: AnswerView) -> None:
        try:
            reply = await self.router.claude_target.second_opinion(
                task, self.router.needs(task), schema, call_id=call_id
            )
        except BudgetExceededError as exc:  # calls in flight took what was left: no audit
            self.skipped += 1
            log.info("audit of %s skipped: %s", task.name, exc)
            return
        except (BackendError, TimeoutError) as exc:
            log.info("audit of %s: Claude gave no answer: %s", task.name, exc or "timed out")
            return
        except Exception:
            log.exception("audit of %s failed", task.name)
            return
        content, claude_model = reply
        # Claude's answer is read against the task's own schema: the confidence field the router
        # asks for is not part of the answer, and a reply without it still says what Claude thinks.
        reference, _ = parse_answer(content, validator_for(task.output_schema or {}))
        label, detail = compare_answers(local.output, reference, schema)
        try:
            await self.router.ledger.aadd_label(
                _label_row(task, local, label, detail, "audit", claude_model=claude_model)
            )
        except Exception:  # e.g. the ledger closed at shutdown
            log.exception("recording the audit label of %s failed", task.name)


def _label_row(
    task: LLMTask,
    local: AnswerView,
    label: bool | None,
    detail: dict[str, Any],
    source: LabelSource,
    claude_model: str,
) -> CalibrationLabel:
    return CalibrationLabel(
        ts=time.time(),
        model=local.model,
        kind=task.kind.value,
        signals=signals_of(local.parts).model_dump(),
        label=label,
        source=source,
        claude_model=claude_model,
        agreement=detail,
    )
