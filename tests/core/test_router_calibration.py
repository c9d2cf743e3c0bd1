"""The router's confidence: raw signals kept, calibrated P(correct) reported, agreement in the band."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from caelum_mcp.backends.scripted import ScriptedReply
from caelum_mcp.confidence import score
from caelum_mcp.ledger import Ledger
from caelum_mcp.llm import LLMTask, TaskKind
from caelum_mcp.router import Router
from caelum_mcp.types import ChatMessage

from .conftest import make_config, scripted_host, scripted_pool

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
        result = await Router(pool, ledger, make_config(tmp_path)).run(task())
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
