"""compare_models through a real MCP client (in-process), with scripted model hosts.

Five hosts each serve their own model and take their own scripted time; the pool, the router's
streaming path and the agreement are the real ones. bench/compare_models.py measures the wall
time against the slowest model; here only that the models ran at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from fakes.calibration_tables import write_calibrated_as_raw
from mcp import Client

from caelum_mcp.core.errors import HostServerError
from caelum_mcp.core.types import ChatRequest
from caelum_mcp.engine.backends.scripted import ReplyFunction, ScriptedBackend, ScriptedReply
from caelum_mcp.engine.hosts import Host

from .test_development import make_server

ANSWERS = [
    ("Paris is the capital of France.", 0.4),
    ("The capital of France is Paris.", 0.6),
    ("Paris, France.", 0.3),
    ("Lyon is the largest city and the capital.", 0.9),
    ("It is Paris, France's capital city.", 0.5),
]


def host(
    i: int,
    reply: str | dict[str, Any],
    delay: float,
    *,
    model: str | None = None,
    together: AllAtOnce | None = None,
) -> Host:
    body = {"answer": reply} if isinstance(reply, str) else reply
    scripted = ScriptedReply(json.dumps({**body, "confidence": 0.9}), delay_s=delay, logprob=-0.1)
    name = f"gpu-{i}"
    answer: ScriptedReply | ReplyFunction = scripted if together is None else together.reply(scripted)
    backend = ScriptedBackend([(model or f"m{i}:8b", 8.0)], answer, name=name)
    return Host(name=name, backend=backend)


class AllAtOnce:
    """Holds each request until ``n`` are in flight: asked one after another, the first one would
    wait alone, time out and fail its run. Behaviour, not a wall-clock figure."""

    def __init__(self, n: int, patience_s: float = 10.0) -> None:
        self.n = n
        self.arrived = 0
        self.patience_s = patience_s
        self.everyone = anyio.Event()

    def reply(self, scripted: ScriptedReply) -> ReplyFunction:
        async def wait_for_the_others(request: ChatRequest) -> ScriptedReply:
            self.arrived += 1
            if self.arrived >= self.n:
                self.everyone.set()
            with anyio.fail_after(self.patience_s):
                await self.everyone.wait()
            return scripted

        return wait_for_the_others


async def call(client: Client, args: dict[str, Any], seen: list[str] | None = None) -> Any:
    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        if seen is not None:
            seen.append(message or "")

    res = await client.call_tool("compare_models", args, progress_callback=on_progress)
    assert not res.is_error, res.content
    return res.structured_content


@pytest.mark.slow  # over a second: kept out of make test-fast
async def test_five_models_answer_at_once_and_the_odd_one_out_is_flagged(tmp_path: Path) -> None:
    together = AllAtOnce(len(ANSWERS))
    hosts = [host(i, text, delay, together=together) for i, (text, delay) in enumerate(ANSWERS)]
    # The model measured and its raw score found calibrated (the shipped table has no entries).
    write_calibrated_as_raw(tmp_path / "data")
    server, holder = make_server(tmp_path, hosts)
    seen: list[str] = []
    async with Client(server) as client:
        out = await call(client, {"prompt": "What is the capital of France?"}, seen)
        local_calls = holder.require().ledger.summary().local_calls
    runs = {r["name"]: r for r in out["runs"]}
    assert sorted(runs) == [f"m{i}:8b" for i in range(5)]  # every chat model up, by default
    assert together.everyone.is_set(), "the five requests were in flight at once"
    assert out["slowest_ms"] >= 900 and out["wall_ms"] >= out["slowest_ms"]
    for name, run in runs.items():
        assert run["status"] == "ok" and run["host"] == f"gpu-{name[1]}", run
        assert 0 < run["first_token_ms"] < run["latency_ms"]
        assert run["output_tokens"] > 0 and run["tokens_per_s"] > 0
        assert run["cost_usd"] == 0 and run["counterfactual_cost_usd"] > 0
        assert run.get("load_ms") is None  # scripted hosts, like llama.cpp, do not report a load time
    assert out["agreement"]["method"] == "word_overlap"
    assert out["agreement"]["outliers"] == ["m3:8b"] and runs["m3:8b"]["outlier"] is True
    assert runs["m0:8b"]["agreement"] > runs["m3:8b"]["agreement"]
    assert out["counterfactual_cost_usd"] == round(sum(r["counterfactual_cost_usd"] for r in runs.values()), 6)
    assert "asking 5 models at once" in seen
    assert local_calls == 5


async def test_json_answers_agree_field_by_field(tmp_path: Path) -> None:
    answers = [
        {"city": "Paris", "country": "France"},
        {"city": "paris", "country": "France"},
        {"city": "Lyon", "country": "Spain"},
    ]
    hosts = [host(i, answer, 0.05) for i, answer in enumerate(answers)]
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
    }
    server, _ = make_server(tmp_path, hosts)
    async with Client(server) as client:
        out = await call(client, {"prompt": "Capital of France?", "json_schema": schema})
    assert out["agreement"]["method"] == "json_fields"
    fields = {f["field"]: f for f in out["agreement"]["fields"]}
    assert fields["city"] == {"field": "city", "value": '"paris"', "agreeing": 2, "dissenting": ["m2:8b"]}
    assert out["agreement"]["outliers"] == ["m2:8b"]
    assert [r["data"] for r in out["runs"]] == answers and all(r.get("answer") is None for r in out["runs"])


async def test_text_agreement_uses_the_pools_embedding_model_and_repeats_are_labelled(tmp_path: Path) -> None:
    hosts = [host(0, "Paris.", 0.05, model="qwen3:8b"), host(1, "Paris!", 0.05, model="qwen3:8b")]
    embedder = Host(name="embed", backend=ScriptedBackend([("nomic-embed-text", 0.137)], name="embed"))
    server, _ = make_server(tmp_path, [*hosts, embedder])
    async with Client(server) as client:
        out = await call(client, {"prompt": "Capital of France?", "models": ["qwen3:8b", "qwen3:8b"]})
    assert [r["name"] for r in out["runs"]] == ["qwen3:8b", "qwen3:8b#2"]
    assert {r["host"] for r in out["runs"]} == {"gpu-0", "gpu-1"}  # the pool spread the two requests
    assert out["agreement"]["method"] == "embeddings" and out["agreement"]["embedding_model"] == "nomic-embed-text"
    assert out["agreement"]["outliers"] == []  # two answers: no majority to speak of


async def test_a_model_nobody_serves_and_claude_unconfigured_are_reported_not_raised(tmp_path: Path) -> None:
    write_calibrated_as_raw(tmp_path / "data")  # m0 measured: its raw score is its P(correct)
    server, _ = make_server(tmp_path, [host(0, "Paris.", 0.01)])
    async with Client(server) as client:
        out = await call(client, {"prompt": "Capital?", "models": ["m0:8b", "ghost:70b"], "include_claude": True})
    runs = {r["name"]: r for r in out["runs"]}
    assert runs["m0:8b"]["status"] == "ok"
    assert runs["ghost:70b"]["status"] == "skipped" and "ghost:70b" in runs["ghost:70b"]["error"]
    assert runs["claude"]["status"] == "skipped" and "ANTHROPIC_API_KEY" in runs["claude"]["error"]
    assert out["agreement"]["method"] == "none"


async def test_runs_that_go_wrong_give_their_own_reason_not_allow_claude(tmp_path: Path) -> None:
    # compare_models turns Claude off for local models itself; the caller set no allow_claude.
    unsure = Host(
        name="gpu-unsure",
        backend=ScriptedBackend(
            [("unsure:8b", 8.0)],
            ScriptedReply(json.dumps({"answer": "Maybe Lyon?", "confidence": 0.05}), logprob=-6.0),
            name="gpu-unsure",
        ),
    )
    broken = Host(
        name="gpu-broken",
        backend=ScriptedBackend(
            [("broken:8b", 8.0)], HostServerError("gpu-broken: HTTP 500: the GPU fell over"), name="gpu-broken"
        ),
    )
    server, _ = make_server(tmp_path, [host(0, "Paris.", 0.01), unsure, broken])
    async with Client(server) as client:
        out = await call(client, {"prompt": "Capital?", "models": ["m0:8b", "ghost:70b", "unsure:8b", "broken:8b"]})
    runs = {r["name"]: r for r in out["runs"]}
    for name in ("ghost:70b", "unsure:8b", "broken:8b"):
        assert "allow_claude" not in (runs[name]["error"] or ""), runs[name]
    assert runs["ghost:70b"]["status"] == "skipped" and "m0:8b" in runs["ghost:70b"]["error"]
    assert runs["unsure:8b"]["status"] == "low_confidence" and "confidence" in runs["unsure:8b"]["error"]
    assert runs["broken:8b"]["status"] == "failed" and runs["broken:8b"]["error"]
