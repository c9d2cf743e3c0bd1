"""The router's confidence: raw signals kept, calibrated P(correct) reported, agreement in the band."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import anyio
import pytest

from caelum_mcp.core.confidence import score
from caelum_mcp.core.errors import MalformedResponseError
from caelum_mcp.core.llm import GroundingResult, LLMTask, RoutedResult, TaskKind
from caelum_mcp.core.types import ChatMessage, ChatRequest
from caelum_mcp.engine.backends.scripted import ScriptedBackend, ScriptedReply
from caelum_mcp.engine.calibration import (
    FEATURES,
    FEATURES_WITH_AGREEMENT,
    CalibrationEntry,
    CalibrationTable,
    Calibrator,
)
from caelum_mcp.engine.ledger import Ledger, LedgerEntry
from caelum_mcp.engine.router import Router

from .conftest import backend_of, make_config, scripted_host, scripted_pool

SMALL = [("qwen2.5:3b", 3.0)]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def task(kind: TaskKind = TaskKind.EXTRACTION) -> LLMTask:
    return LLMTask(
        name="t",
        kind=kind,
        messages=(ChatMessage(role="user", content="Which city?"),),
        output_schema=SCHEMA,
        allow_claude=False,
    )


async def test_the_raw_signals_and_raw_score_are_kept(tmp_path: Path) -> None:
    answer = json.dumps({"city": "Paris", "confidence": 0.9})
    reply = ScriptedReply(answer, token_logprobs=(math.log(0.9), math.log(0.3)), top=(math.log(0.6), math.log(0.4)))
    pool = await scripted_pool(scripted_host("gpu", SMALL, [reply]))
    with Ledger(tmp_path / "l.db") as ledger:
        result = await Router(pool, ledger, make_config(tmp_path, router={"calibration": False})).run(task())
    parts = result.execution.confidence_parts
    signals = parts.signals
    assert signals is not None and signals.valid and not signals.repaired
    assert signals.self_reported == 0.9 and signals.grounding is None
    tokens = math.ceil(len(answer) / 4)
    assert signals.output_tokens == tokens
    assert signals.token_min == pytest.approx(0.3)
    assert signals.token_mean == pytest.approx((0.9 + 0.3 * (tokens - 1)) / tokens)
    assert signals.token_tail == pytest.approx(0.3)
    entropy = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4)) / math.log(2)
    assert signals.entropy == pytest.approx(entropy)
    raw = score(valid=True, self_reported=0.9, token_probability=signals.token_mean).score
    assert parts.raw_score == pytest.approx(raw)


# the reported confidence --------------------------------------------------------------------------

MODEL = SMALL[0][0]
STRONG = ScriptedReply(json.dumps({"city": "Paris", "confidence": 0.99}), logprob=-0.01)


def logistic(bias: float, features: tuple[str, ...] = FEATURES, **weights: float) -> Calibrator:
    return Calibrator(
        kind="logistic", features=features, weights=tuple(weights.get(f, 0.0) for f in features), bias=bias
    )


def table(
    *,
    band: tuple[float, float] | None = None,
    base: Calibrator | None = None,
    with_agreement: Calibrator | None = None,
) -> CalibrationTable:
    """``MODEL`` measured on extraction: by default its answers are right 62 % of the time whatever
    they show, and agreement decides (all agree: 0.95, none: 0.05)."""
    entry = CalibrationEntry(
        model=MODEL,
        kind="extraction",
        base=base or logistic(0.5),
        with_agreement=with_agreement or logistic(-3.0, FEATURES_WITH_AGREEMENT, agreement=6.0),
        band=band,
        n=200,
        accuracy=0.62,
        clear_accuracy=0.9,
    )
    return CalibrationTable([entry], threshold=0.75)


async def route(
    tmp_path: Path, replies: list[Any], measured: CalibrationTable | None, **router: Any
) -> tuple[RoutedResult, ScriptedBackend, list[LedgerEntry]]:
    host = scripted_host("gpu", SMALL, replies, limit=4)
    pool = await scripted_pool(host)
    config = make_config(tmp_path, router=router)
    with Ledger(tmp_path / "l.db") as ledger:
        result = await Router(pool, ledger, config, calibration=measured).run(task(), call_id="call-1")
        rows = ledger.recent(20)
    return result, backend_of(host), rows


async def test_confidence_is_the_calibrated_probability(tmp_path: Path) -> None:
    base = logistic(-1.0, token_min=1.5, self_reported=0.5)
    result, backend, _ = await route(tmp_path, [STRONG], table(base=base))
    parts = result.execution.confidence_parts
    assert parts.signals is not None and parts.raw_score is not None and parts.raw_score > 0.95
    assert result.execution.confidence == parts.score == pytest.approx(base.probability(parts.signals), abs=1e-4)
    assert parts.score == pytest.approx(1 / (1 + math.exp(-(-1.0 + 1.5 * math.exp(-0.01) + 0.5 * 0.99))), abs=1e-4)
    assert parts.calibration is not None and parts.calibration.startswith(f"measured {MODEL}/extraction")
    assert parts.score < 0.75 and result.execution.path == "local_low_confidence"  # the raw 0.98 would clear
    assert len(backend.requests) == 1  # no band: no samples


class InFlight:
    """Scripted sample replies that count how many are being answered at once."""

    def __init__(self) -> None:
        self.now = self.most = 0

    def reply(self, answer: dict[str, Any]) -> Any:
        async def answer_it(request: ChatRequest) -> ScriptedReply:
            self.now += 1
            self.most = max(self.most, self.now)
            await anyio.sleep(0.05)
            self.now -= 1
            return ScriptedReply(json.dumps(answer))

        return answer_it


async def test_agreement_is_sampled_in_the_band_with_k_parallel_calls(tmp_path: Path) -> None:
    first = json.dumps({"city": "Paris", "confidence": 0.9})
    flight = InFlight()
    replies = [
        ScriptedReply(first, logprob=-0.05),
        flight.reply({"city": "  PARIS ", "confidence": 0.4}),  # the same answer in other case and spacing
        flight.reply({"city": "Lyon", "confidence": 0.9}),
        flight.reply({"city": "paris", "confidence": 0.7}),
    ]
    result, backend, rows = await route(tmp_path, replies, table(band=(0.5, 0.7)), agreement_samples=3)
    parts = result.execution.confidence_parts
    assert len(backend.requests) == 4
    samples = backend.requests[1:]
    assert all(r.temperature == 0.7 and not r.logprobs for r in samples)
    assert all(r.messages == backend.requests[0].messages for r in samples)
    assert flight.most == 3  # the three samples were asked side by side, not one after another
    assert parts.signals is not None and parts.signals.agreement == pytest.approx(2 / 3)
    assert parts.signals.samples == 3
    expected = 1 / (1 + math.exp(-(-3.0 + 6.0 * 2 / 3)))
    assert parts.score == pytest.approx(expected, abs=1e-4)
    assert parts.calibration is not None and "agreement 0.67 over 3 samples" in parts.calibration
    assert result.output == {"city": "Paris"}  # the first answer stands; samples only measure it
    answered = [r for r in rows if r.path in ("local", "local_low_confidence")]
    assert len(answered) == 4 and {r.call_id for r in answered} == {"call-1"}
    assert result.execution.attempts == 4


async def test_no_agreement_outside_the_band_or_when_switched_off(tmp_path: Path) -> None:
    result, backend, _ = await route(tmp_path / "a", [STRONG], table(band=(0.0, 0.3)))
    parts = result.execution.confidence_parts
    assert len(backend.requests) == 1 and parts.signals is not None and parts.signals.agreement is None
    assert parts.score == pytest.approx(1 / (1 + math.exp(-0.5)), abs=1e-4)
    result, backend, _ = await route(tmp_path / "b", [STRONG], table(band=(0.0, 1.0)), agreement_samples=0)
    assert len(backend.requests) == 1 and result.execution.confidence_parts.signals is not None
    assert result.execution.confidence_parts.signals.agreement is None


async def test_calibration_off_reports_the_raw_score(tmp_path: Path) -> None:
    result, backend, _ = await route(tmp_path, [STRONG], table(band=(0.0, 1.0)), calibration=False)
    parts = result.execution.confidence_parts
    assert parts.calibration is None and len(backend.requests) == 1
    assert parts.score == parts.raw_score and parts.score > 0.95
    assert result.execution.path == "local"


async def test_an_unmeasured_model_gets_the_prior_unless_grounding_verified_it(tmp_path: Path) -> None:
    result, _, _ = await route(tmp_path / "a", [STRONG], CalibrationTable(threshold=0.75))
    parts = result.execution.confidence_parts
    assert parts.raw_score is not None and parts.raw_score > 0.95
    assert parts.score == pytest.approx(0.70) and result.execution.path == "local_low_confidence"
    assert parts.calibration is not None and parts.calibration.startswith(f"prior for unmeasured {MODEL}/extraction")

    host = scripted_host("gpu", SMALL, [STRONG])
    pool = await scripted_pool(host)
    verified = dataclasses.replace(task(), grounding=lambda output: GroundingResult(score=1.0))
    with Ledger(tmp_path / "l.db") as ledger:
        router = Router(pool, ledger, make_config(tmp_path), calibration=CalibrationTable(threshold=0.75))
        result = await router.run(verified)
    parts = result.execution.confidence_parts
    assert parts.score == parts.raw_score and parts.score > 0.95 and result.execution.path == "local"


async def test_the_default_router_reads_the_users_calibration_file(tmp_path: Path) -> None:
    table(base=logistic(3.0)).save(tmp_path / "calibration.json")
    host = scripted_host("gpu", SMALL, [STRONG])
    pool = await scripted_pool(host)
    with Ledger(tmp_path / "l.db") as ledger:
        result = await Router(pool, ledger, make_config(tmp_path)).run(task())
    assert result.execution.confidence == pytest.approx(1 / (1 + math.exp(-3.0)), abs=1e-4)
    assert result.execution.confidence_parts.calibration is not None
    assert "user table" in result.execution.confidence_parts.calibration


async def test_sample_agreement_for_the_bench(tmp_path: Path) -> None:
    replies = [json.dumps({"city": "Paris", "confidence": 0.5}), json.dumps({"city": "Rome", "confidence": 0.5})]
    host = scripted_host("gpu", SMALL, replies, limit=2)
    pool = await scripted_pool(host)
    with Ledger(tmp_path / "l.db") as ledger:
        router = Router(pool, ledger, make_config(tmp_path, router={"agreement_temperature": 1.1}))
        agreement, samples, elapsed_ms = await router.sample_agreement(task(), {"city": "paris"}, 2, call_id="b")
        rows = ledger.recent(5)
    assert (agreement, samples) == (0.5, 2) and elapsed_ms >= 0
    assert [r.temperature for r in backend_of(host).requests] == [1.1, 1.1]
    assert len(rows) == 2 and {r.call_id for r in rows} == {"b"}


async def test_samples_that_fail_are_not_counted(tmp_path: Path) -> None:
    replies = [
        ScriptedReply(json.dumps({"city": "Paris", "confidence": 0.9}), logprob=-0.05),
        MalformedResponseError("half a reply", host="gpu"),
        "not json at all",
    ]
    result, backend, _ = await route(tmp_path, replies, table(band=(0.0, 1.0)), agreement_samples=2)
    signals = result.execution.confidence_parts.signals
    # one sample failed to answer (not counted), the other did not parse (disagrees)
    assert signals is not None and (signals.agreement, signals.samples) == (0.0, 1)
    assert len(backend.requests) == 3


async def test_a_streamed_task_shows_only_its_answer_not_the_samples(tmp_path: Path) -> None:
    first = json.dumps({"city": "Paris", "confidence": 0.9})
    replies = [ScriptedReply(first, logprob=-0.05), json.dumps({"city": "Lyon", "confidence": 0.9})]
    host = scripted_host("gpu", SMALL, replies, limit=2)
    pool = await scripted_pool(host)
    seen: list[str] = []

    async def on_text(text: str) -> None:
        seen.append(text)

    streamed = dataclasses.replace(task(), on_text=on_text)
    with Ledger(tmp_path / "l.db") as ledger:
        router = Router(pool, ledger, make_config(tmp_path), calibration=table(band=(0.0, 1.0)))
        result = await router.run(streamed)
    signals = result.execution.confidence_parts.signals
    assert signals is not None and (signals.agreement, signals.samples) == (0.0, 2)
    assert seen and seen[-1] == first and not any("Lyon" in text for text in seen)


async def test_agreement_compares_the_schemas_fields_only(tmp_path: Path) -> None:
    replies = [json.dumps({"city": " PARIS", "why": "it is the capital", "confidence": 0.2})]
    host = scripted_host("gpu", SMALL, replies)
    pool = await scripted_pool(host)
    with Ledger(tmp_path / "l.db") as ledger:
        router = Router(pool, ledger, make_config(tmp_path))
        first = {"city": "Paris", "why": "largest city", "confidence": 0.9}
        agreement, samples, _ = await router.sample_agreement(task(), first, 1)
    # "why" is not in the task's schema: a free extra field does not make two answers differ
    assert (agreement, samples) == (1.0, 1)
