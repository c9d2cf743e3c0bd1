"""Router: local first, confidence gate, escalation to Claude, budget, failures reported."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx2

from caelum_mcp.core.llm import GroundingResult, LLMTask, TaskKind
from caelum_mcp.core.pricing import cost_usd
from caelum_mcp.core.types import ChatMessage, Tier, Usage
from caelum_mcp.engine.backends.anthropic import AnthropicBackend
from caelum_mcp.engine.config import DEFAULT_PRICES
from caelum_mcp.engine.ledger import Ledger, LedgerEntry
from caelum_mcp.engine.router import Router, _cost_bound

from .conftest import claude_on_llama, make_config, mock_claude, single_host_pool

CAPITAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


def capital_task(grounding: Any = None, **kw: Any) -> LLMTask:
    return LLMTask(
        name="test_capital",
        kind=TaskKind.GENERAL,
        messages=(ChatMessage(role="user", content="What is the capital of France? Give the city."),),
        output_schema=CAPITAL_SCHEMA,
        grounding=grounding,
        tier=Tier.MICRO,
        max_output_tokens=48,
        temperature=0.0,  # greedy decoding: the same answer every run
        **kw,
    )


def always(score: float, *problems: str) -> Any:
    calls: list[dict[str, Any]] = []

    def check(output: dict[str, Any]) -> GroundingResult:
        calls.append(output)
        return GroundingResult(score=score, problems=problems)

    check.calls = calls  # type: ignore[attr-defined]
    return check


async def test_grounded_answer_stays_local(tmp_path: Path, llama_url: str, http: httpx2.AsyncClient) -> None:
    config = make_config(tmp_path, **{"router.confidence_threshold": 0.45, "claude.api_key": "sk-test"})
    pool = await single_host_pool(llama_url, http)
    with Ledger(tmp_path / "l.db") as ledger:
        claude = claude_on_llama(llama_url, http)
        router = Router(pool, ledger, config, claude=claude)
        check = always(1.0)
        result = await router.run(capital_task(check))
        ex = result.execution
        assert ex.path == "local", ex
        assert ex.host == "embedded" and ex.tier == "micro"
        assert ex.confidence >= 0.45 and ex.confidence_parts.grounding == 1.0
        assert ex.confidence_parts.token_probability is not None  # llama.cpp returned logprobs
        assert result.output is not None and isinstance(result.output["city"], str)
        assert "confidence" not in result.output  # the router's own field is stripped
        assert check.calls == [result.output]
        assert ex.input_tokens > 0 and ex.output_tokens > 0
        assert ex.cost_usd == 0.0
        price = DEFAULT_PRICES["claude-sonnet-5-5"]
        expected = cost_usd(Usage(input_tokens=ex.input_tokens, output_tokens=ex.output_tokens), price)
        assert abs(ex.counterfactual_cost_usd - expected) < 1e-9
        summary = ledger.summary()
        assert summary.claude_calls == 0 and summary.local_calls == ex.attempts
        assert abs(summary.savings_usd - expected) < 1e-9


async def test_failing_grounding_escalates_to_claude_with_the_schema_sent_once(
    tmp_path: Path, llama_url: str, http: httpx2.AsyncClient
) -> None:
    config = make_config(tmp_path, **{"claude.api_key": "sk-test"})
    pool = await single_host_pool(llama_url, http)
    bodies: list[dict[str, Any]] = []
    claude = mock_claude([json.dumps({"city": "Paris", "confidence": 0.95})], bodies, usage=(900, 60))
    with Ledger(tmp_path / "l.db") as ledger:
        router = Router(pool, ledger, config, claude=claude)
        result = await router.run(capital_task(always(0.0, "cited file does not exist")))
        ex = result.execution
        assert ex.path == "claude", ex
        assert result.output == {"city": "Paris"}
        assert ex.provider == "anthropic" and ex.model == "claude-sonnet-5-5"
        assert ex.escalations and "confidence 0.00" in ex.escalations[0]
        # one Claude call; the schema reached it once, as the structured-output parameter
        (body,) = bodies
        assert body["output_config"]["format"]["type"] == "json_schema"
        assert body["output_config"]["format"]["schema"]["properties"]["city"]["type"] == "string"
        assert '"city"' not in json.dumps(body.get("system", "")) + json.dumps(body["messages"])
        assert body["max_tokens"] == 48  # the task's output cap
        claude_rows = [e for e in ledger.recent(50) if e.path == "claude"]
        assert len(claude_rows) == 1, "the Claude call must be in the ledger, once"
        price = DEFAULT_PRICES["claude-sonnet-5-5"]
        expected = cost_usd(Usage(input_tokens=900, output_tokens=60), price)
        assert abs(claude_rows[0].cost_usd - expected) < 1e-12
        assert abs(ex.cost_usd - round(expected, 6)) < 1e-9
        assert ledger.summary().claude_cost_usd > 0


async def test_claude_over_the_real_sdk_and_http_is_recorded(
    tmp_path: Path, llama_url: str, http: httpx2.AsyncClient
) -> None:
    """The anthropic SDK over real HTTP (llama.cpp's /v1/messages standing in for Claude)."""
    config = make_config(tmp_path, **{"claude.api_key": "sk-test"})
    pool = await single_host_pool(llama_url, http)
    with Ledger(tmp_path / "l.db") as ledger:
        router = Router(pool, ledger, config, claude=claude_on_llama(llama_url, http))
        result = await router.run(capital_task(always(0.0, "cited file does not exist")))
        ex = result.execution
        claude_rows = [e for e in ledger.recent(50) if e.path == "claude"]
        assert claude_rows, "the Claude call must be in the ledger"
        price = DEFAULT_PRICES["claude-sonnet-5-5"]
        for row in claude_rows:
            assert row.input_tokens > 0
            usage = Usage(
                input_tokens=row.input_tokens,
                output_tokens=row.output_tokens,
                cache_read_tokens=row.cache_read_tokens,
                cache_write_tokens=row.cache_write_tokens,
            )
            assert abs(row.cost_usd - cost_usd(usage, price)) < 1e-9
        assert abs(ex.cost_usd - sum(r.cost_usd for r in claude_rows)) < 1e-6
        if ex.path != "claude":  # a 135M stand-in may not write valid JSON: the local answer is kept
            assert ex.path == "local_low_confidence" and ex.reason and "Claude's reply was not usable" in ex.reason


def _rate_limited_claude(status: int, http_calls: list[int]) -> AnthropicBackend:
    kind = {429: "rate_limit_error", 529: "overloaded_error"}[status]

    def handler(request: httpx2.Request) -> httpx2.Response:
        http_calls.append(status)
        body = {"type": "error", "error": {"type": kind, "message": "slow down"}}
        return httpx2.Response(status, json=body, headers={"retry-after-ms": "1", "retry-after": "0"})

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return AnthropicBackend("http://127.0.0.1:9", client, name="claude", api_key="sk-test", max_retries=2)


async def test_claude_429_and_529_are_retried_then_reported(
    tmp_path: Path, llama_url: str, http: httpx2.AsyncClient
) -> None:
    config = make_config(tmp_path, **{"claude.api_key": "sk-test", "claude.max_retries": 2})
    pool = await single_host_pool(llama_url, http)
    for status in (429, 529):
        calls: list[int] = []
        with Ledger(tmp_path / f"l{status}.db") as ledger:
            router = Router(pool, ledger, config, claude=_rate_limited_claude(status, calls))
            result = await router.run(capital_task(always(0.0)))
            assert len(calls) == 3, "max_retries=2 means three attempts"
            ex = result.execution
            assert ex.path == "local_low_confidence"
            assert ex.reason and "Claude failed" in ex.reason and str(status) in ex.reason
            failed = [e for e in ledger.recent(20) if not e.ok]
            assert failed and str(status) in (failed[0].error or "")
            assert ledger.summary().claude_cost_usd == 0


async def test_budget_cap_blocks_claude(tmp_path: Path, llama_url: str, http: httpx2.AsyncClient) -> None:
    config = make_config(tmp_path, **{"claude.api_key": "sk-test", "claude.daily_budget_usd": 0.5})
    pool = await single_host_pool(llama_url, http)
    calls: list[int] = []
    with Ledger(tmp_path / "l.db") as ledger:
        ledger.record(
            LedgerEntry(
                ts=time.time(),
                task="earlier",
                path="claude",
                provider="anthropic",
                host="claude",
                model="claude-sonnet-5-5",
                tier=None,
                attempts=1,
                confidence=None,
                input_tokens=100_000,
                output_tokens=30_000,
                latency_ms=1000,
                cost_usd=0.75,
                counterfactual_cost_usd=0.75,
            )
        )
        router = Router(pool, ledger, config, claude=_rate_limited_claude(429, calls))
        result = await router.run(capital_task(always(0.0)))
        assert calls == [], "Claude must not be called over budget"
        ex = result.execution
        assert ex.path == "local_low_confidence"
        assert ex.reason and "budget" in ex.reason and "$0.50" in ex.reason


async def test_claude_disabled_returns_low_confidence_local(
    tmp_path: Path, llama_url: str, http: httpx2.AsyncClient
) -> None:
    config = make_config(tmp_path, **{"claude.api_key": "sk-test", "claude.enabled": False})
    pool = await single_host_pool(llama_url, http)
    with Ledger(tmp_path / "l.db") as ledger:
        router = Router(pool, ledger, config, claude=claude_on_llama(llama_url, http))
        result = await router.run(capital_task(always(0.0, "made-up city")))
        ex = result.execution
        assert ex.path == "local_low_confidence"
        assert ex.reason and "disabled" in ex.reason
        assert ex.confidence == 0.0 and ex.confidence_parts.grounding_problems == ("made-up city",)
        assert result.output is not None  # the best local answer is still returned
        assert ledger.summary().claude_calls == 0


async def test_per_call_opt_out_and_missing_key(tmp_path: Path, llama_url: str, http: httpx2.AsyncClient) -> None:
    pool = await single_host_pool(llama_url, http)
    with Ledger(tmp_path / "l.db") as ledger:
        router = Router(pool, ledger, make_config(tmp_path, **{"claude.api_key": "sk-test"}), claude=None)
        result = await router.run(capital_task(always(0.0)))
        assert result.execution.reason and "not configured" in result.execution.reason
        router = Router(
            pool,
            ledger,
            make_config(tmp_path, **{"claude.api_key": "sk-test"}),
            claude=claude_on_llama(llama_url, http),
        )
        result = await router.run(capital_task(always(0.0), allow_claude=False))
        assert result.execution.reason and "allow_claude" in result.execution.reason


async def test_free_text_task_and_progress(tmp_path: Path, llama_url: str, http: httpx2.AsyncClient) -> None:
    pool = await single_host_pool(llama_url, http)
    seen: list[str] = []

    async def progress(message: str) -> None:
        seen.append(message)

    with Ledger(tmp_path / "l.db") as ledger:
        router = Router(pool, ledger, make_config(tmp_path, **{"claude.enabled": False}))
        prompt = "Reply with one word: hello."
        task = LLMTask(
            name="t",
            kind=TaskKind.GENERAL,
            messages=(ChatMessage(role="user", content=prompt),),
            max_output_tokens=80,
            temperature=0.0,
        )
        result = await router.run(task, progress=progress)
        assert seen and "local pool" in seen[0]
        assert result.text
        parts = result.execution.confidence_parts
        if result.output is not None:  # a free-text task comes back as {"answer": ...}
            assert isinstance(result.output.get("answer"), str)
            assert json.loads(result.text)["answer"] == result.output["answer"]
            assert parts.validity > 0
        else:  # a 135M model can ramble past max_tokens: then it must say so, not pretend
            assert parts.validity == 0 and parts.repaired and result.execution.confidence == 0
            assert result.execution.path == "local_low_confidence"


async def test_low_confidence_escalates_to_a_larger_local_tier_first(
    tmp_path: Path, llama_url: str, http: httpx2.AsyncClient
) -> None:
    """micro (real llama.cpp) fails the grounding check; the full-tier Ollama host passes it; no Claude."""
    from fakes.ollama_server import FakeOllama

    from caelum_mcp.engine.backends.ollama import OllamaBackend
    from caelum_mcp.engine.hosts import CircuitBreaker, Host

    def answer(request: dict[str, Any]) -> str:
        return json.dumps({"city": "Lutetia", "confidence": 0.9})

    def grounded(output: dict[str, Any]) -> GroundingResult:
        ok = output.get("city") == "Lutetia"
        return GroundingResult(score=1.0 if ok else 0.0, problems=() if ok else ("not the expected city",))

    with FakeOllama(models=[("qwen3:8b", "8.2B", "qwen3")], answer=answer) as gpu:
        pool = await single_host_pool(llama_url, http)
        pool.add_host(Host(name="gpu-1", backend=OllamaBackend(gpu.url, http, name="gpu-1"), breaker=CircuitBreaker()))
        await pool.refresh_all()
        claude_calls: list[int] = []
        config = make_config(tmp_path, **{"claude.api_key": "sk-test"})
        with Ledger(tmp_path / "l.db") as ledger:
            router = Router(pool, ledger, config, claude=_rate_limited_claude(429, claude_calls))
            result = await router.run(capital_task(grounded))
            ex = result.execution
            assert ex.path == "local", ex
            assert (ex.host, ex.model, ex.tier) == ("gpu-1", "qwen3:8b", "full")
            assert ex.escalations and "(micro)" in ex.escalations[0]
            assert result.output == {"city": "Lutetia"}
            assert claude_calls == []
            hosts = {e.host for e in ledger.recent(10) if e.path == "local"}
            assert hosts == {"embedded", "gpu-1"}


def test_the_claude_reservation_bounds_the_prompt_in_any_script() -> None:
    """A token is never shorter than a UTF-8 byte, so a reservation at one token a byte covers any
    prompt: CJK or emoji can tokenize at a token a character or more, where the old guess of four
    characters a token reserved a quarter of that (a CJK prompt spent $0.24 of a $0.10 budget)."""
    price = DEFAULT_PRICES["claude-sonnet-5-5"]
    for text in ("Plain English prose. " * 500, "請審查這段程式碼並指出問題" * 800, "🙂" * 3000, "x9Qz/+" * 2000):
        worst = len(text.encode("utf-8"))
        bound = _cost_bound((ChatMessage(role="user", content=text),), None, 100, price)
        assert bound >= cost_usd(Usage(input_tokens=worst, output_tokens=100), price), text[:10]
