"""LLM tasks that say what they need: the router's tier floor, skip, time budget and one parse path.

Every host here is a :class:`ScriptedBackend` behind a real pool, so each outcome is exact and no
model runs; Claude is the real anthropic SDK over a mock transport speaking the Messages API.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from caelum_mcp.core.errors import ConfigError, HostOverloadedError, TaskSkippedError, TaskTimedOutError
from caelum_mcp.core.llm import DEFAULT_NEEDS, GroundingResult, LLMTask, TaskKind
from caelum_mcp.core.types import ChatMessage, ChatRequest
from caelum_mcp.engine.backends.anthropic import supports_structured_output
from caelum_mcp.engine.backends.scripted import ScriptedReply
from caelum_mcp.engine.ledger import Ledger
from caelum_mcp.engine.router import Router

from .conftest import backend_of, make_config, mock_claude, scripted_host, scripted_pool

SCHEMA: dict[str, Any] = {"type": "object", "properties": {"verdict": {"type": "string"}}, "required": ["verdict"]}
GOOD = ScriptedReply(json.dumps({"verdict": "fine", "confidence": 0.9}), logprob=-0.05)
MICRO = [("smollm2:135m", 0.135)]
FULL = [("qwen3:8b", 8.0)]


def task(kind: TaskKind = TaskKind.REVIEW, grounded: float = 1.0, **kw: Any) -> LLMTask:
    def check(output: dict[str, Any]) -> GroundingResult:
        return GroundingResult(score=grounded, problems=() if grounded >= 1 else ("cites nothing real",))

    return LLMTask(
        name="t",
        kind=kind,
        messages=(ChatMessage(role="user", content="Judge this."),),
        output_schema=SCHEMA,
        grounding=check,
        **kw,
    )


async def test_a_task_the_only_local_model_is_too_small_for_is_skipped_at_once(tmp_path: Path) -> None:
    micro = scripted_host("embedded", MICRO, [GOOD])
    pool = await scripted_pool(micro)
    with Ledger(tmp_path / "l.db") as ledger:
        router = Router(pool, ledger, make_config(tmp_path))
        started = time.perf_counter()
        with pytest.raises(TaskSkippedError) as caught:
            await router.run(task())
        assert time.perf_counter() - started < 1.0  # no model was waited for (generous: shared machine)
        message = str(caught.value)
        assert "review task needs a local model of tier full (6B+)" in message
        assert "embedded[closed]: smollm2:135m" in message  # what there is
        assert "[router.tasks.review] min_tier" in message and "ANTHROPIC_API_KEY" in message  # what to do
        assert backend_of(micro).requests == []
        assert ledger.summary().calls == 0


async def test_the_review_runs_on_a_capable_host_and_never_on_the_micro_model(tmp_path: Path) -> None:
    micro = scripted_host("embedded", MICRO, [GOOD])
    gpu = scripted_host("gpu-1", FULL, [GOOD])
    pool = await scripted_pool(micro, gpu)
    with Ledger(tmp_path / "l.db") as ledger:
        result = await Router(pool, ledger, make_config(tmp_path)).run(task())
    ex = result.execution
    assert (ex.path, ex.host, ex.model, ex.tier) == ("local", "gpu-1", "qwen3:8b", "full")
    assert result.output == {"verdict": "fine"}
    assert backend_of(micro).requests == []
    (request,) = backend_of(gpu).requests
    assert request.max_tokens == DEFAULT_NEEDS[TaskKind.REVIEW].max_output_tokens  # the kind's output cap


async def test_a_code_model_of_a_sufficient_size_goes_first_and_a_small_one_never(tmp_path: Path) -> None:
    small_coder = scripted_host("laptop", [("qwen2.5-coder:1.5b", 1.5)], [GOOD])
    general = scripted_host("gpu-1", FULL, [GOOD])
    coder = scripted_host("gpu-2", [("qwen3-coder:30b", 30.5)], [GOOD])
    pool = await scripted_pool(small_coder, general, coder)
    with Ledger(tmp_path / "l.db") as ledger:
        result = await Router(pool, ledger, make_config(tmp_path)).run(task(TaskKind.CODE_EDIT))
    assert (result.execution.host, result.execution.tier) == ("gpu-2", "code")
    assert backend_of(small_coder).requests == [] and backend_of(general).requests == []


async def test_config_overrides_what_a_kind_needs(tmp_path: Path) -> None:
    micro = scripted_host("embedded", MICRO, [GOOD])
    pool = await scripted_pool(micro)
    config = make_config(tmp_path, **{"router.tasks": {"review": {"min_tier": "micro", "max_output_tokens": 64}}})
    with Ledger(tmp_path / "l.db") as ledger:
        result = await Router(pool, ledger, config).run(task())
    assert result.execution.host == "embedded"
    assert backend_of(micro).requests[0].max_tokens == 64
    with pytest.raises(ConfigError, match="size tier"):
        make_config(tmp_path, **{"router.tasks": {"review": {"min_tier": "code"}}})
    with pytest.raises(ConfigError, match=r"router\.tasks"):
        make_config(tmp_path, **{"router.tasks": {"reveiw": {"min_tier": "full"}}})


async def test_with_no_capable_local_model_claude_is_asked_directly(tmp_path: Path) -> None:
    micro = scripted_host("embedded", MICRO, [GOOD])
    pool = await scripted_pool(micro)
    bodies: list[dict[str, Any]] = []
    claude = mock_claude([json.dumps({"verdict": "risky", "confidence": 0.8})], bodies)
    with Ledger(tmp_path / "l.db") as ledger:
        router = Router(pool, ledger, make_config(tmp_path, **{"claude.api_key": "sk-test"}), claude=claude)
        result = await router.run(task())
        ex = result.execution
        assert (ex.path, ex.host) == ("claude", "claude")
        assert result.output == {"verdict": "risky"}
        assert backend_of(micro).requests == []
        assert [e.path for e in ledger.recent(5)] == ["claude"]
    # the schema went once, as the structured-output parameter, and never into the prompt
    (body,) = bodies
    assert body["output_config"]["format"]["schema"]["required"] == ["verdict", "confidence"]
    assert "verdict" not in json.dumps(body.get("system", "")) + json.dumps(body["messages"])


async def test_without_structured_output_the_schema_goes_once_into_the_system_prompt(tmp_path: Path) -> None:
    bodies: list[dict[str, Any]] = []
    claude = mock_claude([json.dumps({"verdict": "ok"})], bodies, model="claude-3-5-sonnet-20241022")
    await claude.chat(
        ChatRequest(
            model="claude-3-5-sonnet-20241022",
            messages=(ChatMessage(role="user", content="hi"),),
            json_schema=SCHEMA,
        )
    )
    (body,) = bodies
    assert "output_config" not in body
    assert body["system"].count(json.dumps(SCHEMA, sort_keys=True)) == 1
    for model, expected in [
        ("claude-sonnet-5-5", True),
        ("claude-opus-4-1-20250805", True),
        ("claude-sonnet-4-5", True),
        ("claude-haiku-4-5", True),
        ("claude-sonnet-4-20250514", False),
        ("claude-opus-4-20250514", False),
        ("claude-3-5-haiku-20241022", False),
        ("qwen3-coder:30b", False),
    ]:
        assert supports_structured_output(model) is expected, model


async def test_local_and_claude_share_one_parse_and_repair_path(tmp_path: Path) -> None:
    # local: invalid, then repaired; grounding too weak, so Claude: invalid, then repaired
    local = scripted_host("gpu-1", FULL, ["not json at all", GOOD])
    pool = await scripted_pool(local)
    bodies: list[dict[str, Any]] = []
    claude = mock_claude(["{broken", json.dumps({"verdict": "bad", "confidence": 0.7})], bodies)
    with Ledger(tmp_path / "l.db") as ledger:
        router = Router(pool, ledger, make_config(tmp_path, **{"claude.api_key": "sk-test"}), claude=claude)
        result = await router.run(task(grounded=0.2))
        ex = result.execution
        assert ex.path == "claude"
        assert ex.confidence_parts.repaired and ex.confidence_parts.validity == 0.9
        assert ex.attempts == 4  # two local calls, two Claude calls
        assert "not valid" in bodies[1]["messages"][-1]["content"]  # the same repair message
        assert [e.path for e in reversed(ledger.recent(10))] == ["local", "local", "claude", "claude"]


async def test_an_unusable_claude_reply_keeps_the_valid_local_answer(tmp_path: Path) -> None:
    local = scripted_host("gpu-1", FULL, [GOOD])
    pool = await scripted_pool(local)
    bodies: list[dict[str, Any]] = []
    claude = mock_claude(["", "still nothing"], bodies)  # an empty body, then prose
    with Ledger(tmp_path / "l.db") as ledger:
        router = Router(pool, ledger, make_config(tmp_path, **{"claude.api_key": "sk-test"}), claude=claude)
        result = await router.run(task(grounded=0.2))
        ex = result.execution
        assert ex.path == "local_low_confidence" and ex.host == "gpu-1"
        assert ex.reason and "Claude's reply was not usable" in ex.reason
        assert result.output == {"verdict": "fine"}
        claude_rows = [e for e in ledger.recent(10) if e.path == "claude"]
        assert len(claude_rows) == 2 and all(r.cost_usd > 0 for r in claude_rows)  # paid for, and recorded
        assert ex.cost_usd == pytest.approx(sum(r.cost_usd for r in claude_rows), abs=1e-6)


async def test_a_task_past_its_time_budget_stops_and_says_so(tmp_path: Path) -> None:
    slow = scripted_host("gpu-1", FULL, [ScriptedReply(GOOD.content, delay_s=30)])
    pool = await scripted_pool(slow)
    with Ledger(tmp_path / "l.db") as ledger:
        router = Router(pool, ledger, make_config(tmp_path))
        started = time.perf_counter()
        with pytest.raises(TaskTimedOutError, match=r"time budget of 0\.3 s"):
            await router.run(task(time_budget_s=0.3))
        assert time.perf_counter() - started < 10  # it did not wait the 30 s out
        (row,) = ledger.recent(5)
        assert row.path == "failed" and row.error and "stopped" in row.error
        assert pool.hosts["gpu-1"].in_flight == 0  # the slot came back


async def test_past_its_time_budget_a_task_returns_its_best_answer_so_far(tmp_path: Path) -> None:
    quick = scripted_host("gpu-1", FULL, [GOOD])
    slow = scripted_host("gpu-2", [("qwen3:30b", 30.0)], [ScriptedReply(GOOD.content, delay_s=30)])
    pool = await scripted_pool(quick, slow)
    with Ledger(tmp_path / "l.db") as ledger:
        result = await Router(pool, ledger, make_config(tmp_path)).run(task(grounded=0.3, time_budget_s=0.5))
    ex = result.execution
    assert ex.timed_out and ex.path == "local_low_confidence"
    assert (ex.host, ex.tier) == ("gpu-1", "full") and result.output == {"verdict": "fine"}
    assert ex.reason and "time budget of 0.5 s" in ex.reason and "time_budget_s" in ex.reason


async def test_failed_calls_are_recorded_per_host_with_the_tool_call(tmp_path: Path) -> None:
    pool = await scripted_pool(
        scripted_host("a", FULL, [HostOverloadedError("busy", host="a", status=503)]),
        scripted_host("b", FULL, [HostOverloadedError("busy", host="b", status=503)]),
    )
    with Ledger(tmp_path / "l.db") as ledger:
        router = Router(pool, ledger, make_config(tmp_path))
        with pytest.raises(Exception, match="no answer"):
            await router.run(task(), call_id="call-1")
        rows = ledger.recent(10)
        assert {r.host for r in rows} == {"a", "b"} and all(r.path == "failed" for r in rows)
        assert {r.call_id for r in rows} == {"call-1"}
        summary = ledger.summary()
        assert {h.host: h.failures for h in summary.by_host} == {"a": 1, "b": 1}


async def test_cancelling_a_task_records_the_stopped_call(tmp_path: Path) -> None:
    slow = scripted_host("gpu-1", FULL, [ScriptedReply(GOOD.content, delay_s=30)])
    pool = await scripted_pool(slow)
    with Ledger(tmp_path / "l.db") as ledger:
        router = Router(pool, ledger, make_config(tmp_path))
        with anyio.move_on_after(0.2):
            await router.run(task())
        (row,) = ledger.recent(5)
        assert row.path == "failed" and row.model == "" and pool.hosts["gpu-1"].in_flight == 0


async def test_a_model_asked_as_the_code_tier_is_not_asked_again_as_its_size_tier(tmp_path: Path) -> None:
    coder = scripted_host("gpu-1", [("qwen2.5-coder:7b", 7.6)], [GOOD])
    pool = await scripted_pool(coder)
    with Ledger(tmp_path / "l.db") as ledger:
        result = await Router(pool, ledger, make_config(tmp_path)).run(task(grounded=0.2))
    assert result.execution.path == "local_low_confidence"
    assert len(backend_of(coder).requests) == 1  # asked as "code"; as "full" it would be the same model


async def test_the_ledger_row_of_an_answer_carries_its_confidence_and_low_confidence_path(tmp_path: Path) -> None:
    pool = await scripted_pool(scripted_host("gpu-1", FULL, [GOOD]))
    with Ledger(tmp_path / "l.db") as ledger:
        router = Router(pool, ledger, make_config(tmp_path))
        confident = await router.run(task())
        weak = await router.run(task(grounded=0.2))
        rows = list(reversed(ledger.recent(5)))
        summary = ledger.summary()
    assert [r.path for r in rows] == ["local", "local_low_confidence"]
    assert rows[0].confidence == confident.execution.confidence and rows[1].confidence == weak.execution.confidence
    assert summary.low_confidence_calls == 1 and summary.local_calls == 2
