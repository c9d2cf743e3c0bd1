"""Labels from real use: the Claude audit of local answers (off by default, in the background,
inside the budget) and the local answer of every escalation, recorded in a real SQLite ledger.

Local hosts are :class:`ScriptedBackend`s behind a real pool; Claude is the real anthropic SDK over a
mock transport that answers in the Messages API's wire shape and can be held until the test lets go.
"""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import httpx2

from caelum_mcp.core.llm import GroundingResult, LLMTask, TaskKind
from caelum_mcp.core.types import ChatMessage
from caelum_mcp.engine.answers import task_schema
from caelum_mcp.engine.audit import MAX_IN_FLIGHT, compare_answers
from caelum_mcp.engine.backends.anthropic import AnthropicBackend
from caelum_mcp.engine.backends.scripted import ScriptedReply
from caelum_mcp.engine.config import DEFAULT_PRICES
from caelum_mcp.engine.ledger import Ledger
from caelum_mcp.engine.router import Router, _cost_bound

from .conftest import make_config, scripted_host, scripted_pool

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population_m": {"type": "number"}},
    "required": ["city"],
}
PROMPT = "Which city is the capital of France? (internal ticket ZX-4471)"
LOCAL = ScriptedReply(json.dumps({"city": "Paris", "population_m": 2.102, "confidence": 0.9}), logprob=-0.02)
MODEL = [("qwen3:4b", 4.0)]


def task(grounded: float = 1.0, **kw: Any) -> LLMTask:
    def check(output: dict[str, Any]) -> GroundingResult:
        return GroundingResult(score=grounded)

    return LLMTask(
        name="capital",
        kind=TaskKind.QA,
        messages=(ChatMessage(role="user", content=PROMPT),),
        output_schema=SCHEMA,
        grounding=check,
        **kw,
    )


class Claude:
    """Claude over the real SDK; each reply waits for ``gate`` when one is set."""

    def __init__(self, answer: dict[str, Any] | str, *, usage: tuple[int, int] = (300, 20)) -> None:
        self.answer = answer if isinstance(answer, str) else json.dumps(answer)
        self.usage = usage
        self.bodies: list[dict[str, Any]] = []
        self.gate: anyio.Event | None = None
        self.arrived = 0

    async def handler(self, request: httpx2.Request) -> httpx2.Response:
        self.bodies.append(json.loads(request.content))
        self.arrived += 1
        if self.gate is not None:
            await self.gate.wait()
        return httpx2.Response(
            200,
            json={
                "id": f"msg_{len(self.bodies)}",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-5-5",
                "content": [{"type": "text", "text": self.answer}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": self.usage[0], "output_tokens": self.usage[1]},
            },
        )

    def backend(self) -> AnthropicBackend:
        client = httpx2.AsyncClient(transport=httpx2.MockTransport(self.handler))
        return AnthropicBackend(
            "http://127.0.0.1:9", client, name="claude", api_key="sk-test", model="claude-sonnet-5-5", max_retries=0
        )


async def router_for(tmp_path: Path, ledger: Ledger, claude: Claude, local: Any = LOCAL, **config: Any) -> Router:
    # Threshold 0: every local answer is served, whatever the calibration makes of a scripted model.
    settings = {"claude.api_key": "sk-test", "router.confidence_threshold": 0.0, **config}
    pool = await scripted_pool(scripted_host("gpu-1", MODEL, [local]))
    router = Router(pool, ledger, make_config(tmp_path, **settings), claude=claude.backend())
    router.audit._rng = random.Random(7)
    return router


def label_rows(ledger: Ledger) -> list[dict[str, Any]]:
    with sqlite3.connect(ledger.path) as raw:
        raw.row_factory = sqlite3.Row
        return [dict(r) for r in raw.execute("SELECT * FROM calibration_labels ORDER BY id")]


async def test_the_audit_is_off_by_default(tmp_path: Path) -> None:
    claude = Claude({"city": "Paris"})
    with Ledger(tmp_path / "l.db") as ledger:
        router = await router_for(tmp_path, ledger, claude)
        assert router.config.router.audit_rate == 0.0
        for _ in range(5):
            assert (await router.run(task())).execution.path == "local"
        await router.audit.drain()
        assert claude.bodies == [] and label_rows(ledger) == [] and router.audit.started == 0
        assert ledger.summary().claude_calls == 0


async def test_an_audit_runs_after_the_answer_and_records_an_agreeing_label(tmp_path: Path) -> None:
    claude = Claude({"city": "  paris ", "population_m": 2.1023, "confidence": 0.99})
    claude.gate = anyio.Event()  # Claude does not answer until the user has theirs
    with Ledger(tmp_path / "l.db") as ledger:
        router = await router_for(tmp_path, ledger, claude, **{"router.audit_rate": 1.0})
        result = await router.run(task())
        assert result.execution.path == "local" and result.output == {"city": "Paris", "population_m": 2.102}
        assert router.audit.in_flight == 1 and not label_rows(ledger)  # the user's answer did not wait
        claude.gate.set()
        await router.audit.drain()
        (row,) = label_rows(ledger)
        assert (row["model"], row["kind"], row["label"], row["source"]) == ("qwen3:4b", "qa", 1, "audit")
        assert row["claude_model"] == "claude-sonnet-5-5"
        assert json.loads(row["agreement"]) == {
            "agree": True,
            "differing": [],
            "fields": 2,
            "local_valid": True,
            "reference_valid": True,
        }
        signals = json.loads(row["signals"])
        assert signals["valid"] is True and signals["grounding"] == 1.0 and signals["token_mean"] > 0.9
        stored = json.dumps(row)
        assert "ZX-4471" not in stored and "Paris" not in stored.replace("paris", "")  # no prompt, no answer
        # Claude got the same task (the schema as the structured-output parameter) and its call is a row
        (body,) = claude.bodies
        assert PROMPT in json.dumps(body["messages"])
        assert body["output_config"]["format"]["schema"]["properties"]["city"] == {"type": "string"}
        (audit_row,) = [e for e in ledger.recent(10) if e.path == "claude"]
        assert audit_row.task == "capital:audit" and audit_row.kind is None and audit_row.cost_usd > 0
        assert ledger.claude_spend_today() == audit_row.cost_usd


async def test_an_audit_that_disagrees_labels_the_local_answer_wrong(tmp_path: Path) -> None:
    claude = Claude({"city": "Paris", "population_m": 2.4})
    with Ledger(tmp_path / "l.db") as ledger:
        router = await router_for(tmp_path, ledger, claude, **{"router.audit_rate": 1.0})
        await router.run(task())
        await router.audit.drain()
        (row,) = label_rows(ledger)
        assert row["label"] == 0 and json.loads(row["agreement"])["differing"] == ["population_m"]


async def test_an_unreadable_claude_reply_is_recorded_without_a_label(tmp_path: Path) -> None:
    claude = Claude("I think it is Paris.")
    with Ledger(tmp_path / "l.db") as ledger:
        router = await router_for(tmp_path, ledger, claude, **{"router.audit_rate": 1.0})
        await router.run(task())
        await router.audit.drain()
        (row,) = label_rows(ledger)
        assert row["label"] is None and json.loads(row["agreement"])["reference_valid"] is False
        assert ledger.labels("qwen3:4b", "qa") == []  # seen, not labelled


async def test_the_audit_rate_is_a_sample(tmp_path: Path) -> None:
    claude = Claude({"city": "Paris", "population_m": 2.102})
    with Ledger(tmp_path / "l.db") as ledger:
        router = await router_for(tmp_path, ledger, claude, **{"router.audit_rate": 0.25})
        for _ in range(40):
            await router.run(task())
            await router.audit.drain()
        assert 4 <= router.audit.started <= 18, router.audit.started  # seeded: about 10 of 40
        assert len(label_rows(ledger)) == router.audit.started == len(claude.bodies)


async def test_audits_never_spend_past_the_budget_even_at_once(tmp_path: Path) -> None:
    """Two audits at once when the budget holds one reservation: the second is skipped, and the
    day's spend stays within the budget."""
    claude = Claude({"city": "Paris", "population_m": 2.102})
    claude.gate = anyio.Event()
    price = DEFAULT_PRICES["claude-sonnet-5-5"]
    with Ledger(tmp_path / "l.db") as ledger:
        config = make_config(tmp_path)
        max_tokens = min(config.router.needs_for(TaskKind.QA).max_output_tokens, config.claude.max_tokens)
        bound = _cost_bound(task().messages, task_schema(SCHEMA)[0], max_tokens, price)  # what an audit reserves
        budget = bound * 1.5
        router = await router_for(
            tmp_path, ledger, claude, **{"router.audit_rate": 1.0, "claude.daily_budget_usd": budget}
        )
        await router.run(task())
        await router.run(task())
        assert claude.arrived == 1 and router.audit.started == 1 and router.audit.skipped == 1
        claude.gate.set()
        await router.audit.drain()
        assert len(claude.bodies) == 1 and len(label_rows(ledger)) == 1
        assert 0 < ledger.claude_spend_today() <= budget
        # once the budget is spent the audit is not even drawn for a call
        ledger.record(next(e for e in ledger.recent(5) if e.path == "claude").model_copy(update={"cost_usd": budget}))
        await router.run(task())
        await router.audit.drain()
        assert len(claude.bodies) == 1 and router.audit.skipped == 2


async def test_a_task_that_may_not_use_claude_is_never_audited(tmp_path: Path) -> None:
    claude = Claude({"city": "Paris"})
    with Ledger(tmp_path / "l.db") as ledger:
        router = await router_for(tmp_path, ledger, claude, **{"router.audit_rate": 1.0})
        await router.run(task(allow_claude=False))
        await router.audit.drain()
        assert claude.bodies == [] and label_rows(ledger) == []


async def test_at_most_a_few_audits_run_at_once(tmp_path: Path) -> None:
    claude = Claude({"city": "Paris", "population_m": 2.102})
    claude.gate = anyio.Event()
    with Ledger(tmp_path / "l.db") as ledger:
        router = await router_for(tmp_path, ledger, claude, **{"router.audit_rate": 1.0})
        for _ in range(MAX_IN_FLIGHT + 2):
            await router.run(task())
        assert router.audit.in_flight == MAX_IN_FLIGHT and router.audit.skipped == 2
        claude.gate.set()
        await router.audit.drain()
        assert len(label_rows(ledger)) == MAX_IN_FLIGHT


async def test_an_escalation_labels_the_local_answer_by_claudes(tmp_path: Path) -> None:
    """The local answer fails its grounding check, Claude answers: the local answer's row says
    whether the two agreed, with the local answer's signals (audit off)."""
    claude = Claude({"city": "Lyon", "population_m": 0.52, "confidence": 0.9})
    with Ledger(tmp_path / "l.db") as ledger:
        router = await router_for(tmp_path, ledger, claude, **{"router.confidence_threshold": 0.99})
        result = await router.run(task(grounded=0.0))
        assert result.execution.path == "claude" and result.output == {"city": "Lyon", "population_m": 0.52}
        (row,) = label_rows(ledger)
        assert (row["model"], row["source"], row["label"]) == ("qwen3:4b", "escalation", 0)
        assert json.loads(row["agreement"])["differing"] == ["city", "population_m"]
        assert json.loads(row["signals"])["grounding"] == 0.0
        assert router.audit.started == 0 and len(claude.bodies) == 1  # the escalation's own call, no audit


async def test_an_escalation_that_agrees_labels_the_local_answer_right(tmp_path: Path) -> None:
    claude = Claude({"city": "PARIS", "population_m": 2.102, "confidence": 0.9})
    with Ledger(tmp_path / "l.db") as ledger:
        router = await router_for(tmp_path, ledger, claude, **{"router.confidence_threshold": 0.99})
        assert (await router.run(task(grounded=0.0))).execution.path == "claude"
        assert [x.label for x in ledger.labels("qwen3:4b", "qa")] == [True]


def test_answers_compare_by_schema_fields_casefolded_with_number_tolerance() -> None:
    schema = {"properties": {"name": {}, "tags": {}, "n": {}, "confidence": {}}}
    same = compare_answers(
        {"name": " Ada  Lovelace", "tags": ["b", "A"], "n": 10.0, "confidence": 0.2},
        {"name": "ada lovelace", "tags": ["a", "B"], "n": 10.004, "confidence": 0.9, "extra": "ignored"},
        schema,
    )
    assert same == (True, {"agree": True, "fields": 3, "differing": [], "local_valid": True, "reference_valid": True})
    differ = compare_answers(
        {"name": "Ada", "tags": ["a"], "n": 10}, {"name": "Ada", "tags": ["a", "a"], "n": 11}, schema
    )
    assert differ[0] is False and differ[1]["differing"] == ["tags", "n"]
    assert compare_answers({"ok": True}, {"ok": 1}, {})[0] is False  # a flag is not a number
    assert compare_answers(None, {"name": "x"}, schema)[0] is False
    assert compare_answers({"name": "x"}, None, schema)[0] is None
