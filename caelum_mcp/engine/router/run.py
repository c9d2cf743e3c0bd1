"""What one task's run carries from target to target, and the result it ends with.

A :class:`Run` is created by :meth:`~caelum_mcp.engine.router.Router.run` and handed to each target of the
ladder in turn: the time left, what was asked already, the best local answer so far, the usage and
cost of every call. A :class:`Candidate` is one target's scored answer; :meth:`Run.result` turns the
one handed back into the :class:`~caelum_mcp.core.llm.RoutedResult` the caller gets.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from caelum_mcp.core.confidence import ConfidenceParts
from caelum_mcp.core.llm import ExecutionRecord, FinalPath, LLMTask, RoutedResult, TaskNeeds
from caelum_mcp.core.types import ChatResponse, Usage


@dataclass
class Candidate:
    """One target's answer, parsed and scored (``parts.score`` is what the gate compares)."""

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
class Reply:
    """One model call's answer and where it came from."""

    response: ChatResponse
    provider: str
    host: str
    model: str
    tier: str | None
    row_id: int | None = None  # its ledger row, once written


@dataclass
class Run:
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
    best: Candidate | None = None  # the best local answer so far (Claude's is never kept here)
    tried: set[tuple[str, str]] = field(default_factory=set)  # (model, host) already asked

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def keep_if_best(self, cand: Candidate) -> None:
        """Remember ``cand`` when it scores above the best local answer so far."""
        if self.best is None or cand.parts.score > self.best.parts.score:
            self.best = cand

    def result(
        self, cand: Candidate, path: FinalPath, reason: str | None, *, threshold: float, timed_out: bool = False
    ) -> RoutedResult:
        """``cand`` handed back as the run's answer, with the run's totals."""
        total = sum_usage(self.usage)
        execution = ExecutionRecord(
            path=path,
            provider=cand.provider,
            host=cand.host,
            model=cand.model,
            tier=cand.tier,
            attempts=self.calls,
            confidence=cand.parts.score,
            threshold=threshold,
            confidence_parts=cand.parts,
            escalations=tuple(self.escalations),
            reason=reason,
            timed_out=timed_out,
            input_tokens=total.input_tokens,
            output_tokens=total.output_tokens,
            cache_read_tokens=total.cache_read_tokens,
            cache_write_tokens=total.cache_write_tokens,
            latency_ms=round((time.perf_counter() - self.started) * 1000, 1),
            load_ms=cand.load_ms,
            cost_usd=round(self.cost, 6),
            counterfactual_cost_usd=round(self.counterfactual, 6),
        )
        return RoutedResult(output=cand.output, text=cand.text, execution=execution)


def sum_usage(usages: Sequence[Usage]) -> Usage:
    return Usage(
        input_tokens=sum(u.input_tokens for u in usages),
        output_tokens=sum(u.output_tokens for u in usages),
        cache_read_tokens=sum(u.cache_read_tokens for u in usages),
        cache_write_tokens=sum(u.cache_write_tokens for u in usages),
    )
