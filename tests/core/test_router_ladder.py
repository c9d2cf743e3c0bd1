"""The router as a ladder of targets: the planner's order, the one loop that walks it, and the
embedding service that is not the router's.

Hosts are :class:`ScriptedBackend` s behind a real pool, so each outcome is exact and no model runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from caelum_mcp.core.llm import GroundingResult, LLMTask, TaskKind
from caelum_mcp.core.types import ChatMessage, Tier
from caelum_mcp.engine.backends.scripted import ScriptedReply
from caelum_mcp.engine.embedding_service import EmbeddingService
from caelum_mcp.engine.ledger import Ledger
from caelum_mcp.engine.router import ClaudeTarget, LocalTarget, Router, Target
from caelum_mcp.serving.runtime import BoundLLM

from .conftest import backend_of, make_config, scripted_host, scripted_pool

SCHEMA: dict[str, Any] = {"type": "object", "properties": {"verdict": {"type": "string"}}, "required": ["verdict"]}
GOOD = ScriptedReply(json.dumps({"verdict": "fine", "confidence": 0.9}), logprob=-0.05)
GARBLED = ScriptedReply("I think it is fine, mostly.", logprob=-2.5)
MODELS = {"micro": ("smollm2:135m", 0.135), "small": ("qwen2.5:3b", 3.0), "full": ("qwen3:8b", 8.0)}


def task(**kw: Any) -> LLMTask:
    def check(output: dict[str, Any]) -> GroundingResult:
        return GroundingResult(score=1.0)

    return LLMTask(
        name="t",
        kind=TaskKind.GENERAL,
        messages=(ChatMessage(role="user", content="Judge this."),),
        output_schema=SCHEMA,
        grounding=check,
        **kw,
    )


def rungs(ladder: list[Target]) -> list[str]:
    return [t.label if isinstance(t, LocalTarget) else "claude" for t in ladder]


@pytest.mark.parametrize(
    ("overrides", "task_kw", "expected"),
    [
        ({}, {}, ["small", "full", "claude"]),  # from [router] default_tier (small) up, then Claude
        ({"router.escalate_local": False}, {}, ["small", "claude"]),
        ({}, {"tier": Tier.MICRO}, ["micro", "small", "full", "claude"]),
        ({}, {"model": "qwen3:8b"}, ["model qwen3:8b", "claude"]),
        ({}, {"claude_only": True}, ["claude"]),
    ],
)
async def test_the_ladder_is_the_local_tiers_smallest_first_then_claude(
    tmp_path: Path, overrides: dict[str, Any], task_kw: dict[str, Any], expected: list[str]
) -> None:
    hosts = [scripted_host(f"h-{tier}", [model], [GOOD]) for tier, model in MODELS.items()]
    pool = await scripted_pool(*hosts)
    config = make_config(tmp_path, **{"claude.api_key": "sk-test", **overrides})
    with Ledger(tmp_path / "l.db") as ledger:
        router = Router(pool, ledger, config)
        the_task = task(**task_kw)
        needs = router.needs(the_task)
        ladder = router.planner.ladder(the_task, needs, router.availability(the_task, needs))
    assert rungs(ladder) == expected
    assert isinstance(ladder[-1], ClaudeTarget)


async def test_the_router_walks_the_ladder_it_is_given_in_order_until_an_answer_stands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = scripted_host("h-small", [MODELS["small"]], [GOOD])
    full = scripted_host("h-full", [MODELS["full"]], [GARBLED])
    pool = await scripted_pool(small, full)
    with Ledger(tmp_path / "l.db") as ledger:
        router = Router(pool, ledger, make_config(tmp_path))
        services = router.planner.services
        # largest first: a ladder is an ordered list, and the router follows it whatever it holds
        ladder: list[Target] = [
            LocalTarget(services, tier=Tier.FULL, model=None, min_tier=None),
            LocalTarget(services, tier=Tier.SMALL, model=None, min_tier=None),
            router.planner.claude,
        ]
        monkeypatch.setattr(router.planner, "ladder", lambda *_: ladder)
        progress: list[str] = []

        async def note(message: str) -> None:
            progress.append(message)

        result = await router.run(task(), progress=note)
        rows = ledger.recent(10)
    ex = result.execution
    assert (ex.path, ex.host, ex.tier) == ("local", "h-small", "small")
    assert len(backend_of(full).requests) == 2  # its answer, and the one repair the gate asks for
    assert len(backend_of(small).requests) == 1
    assert progress == ["asking the local pool (full)", "asking the local pool (small)"]
    (escalation,) = ex.escalations
    assert escalation.startswith("qwen3:8b@h-full (full) confidence")
    assert [r.host for r in reversed(rows)] == ["h-full", "h-full", "h-small"]


async def test_when_no_answer_stands_the_last_rungs_reason_comes_back_with_the_best_local_answer(
    tmp_path: Path,
) -> None:
    small = scripted_host("h-small", [MODELS["small"]], [GARBLED])
    pool = await scripted_pool(small)
    with Ledger(tmp_path / "l.db") as ledger:
        result = await Router(pool, ledger, make_config(tmp_path)).run(task())
    ex = result.execution
    assert ex.path == "local_low_confidence" and ex.host == "h-small"
    assert ex.reason == "Claude is not configured (set ANTHROPIC_API_KEY)"


async def test_a_tool_context_embeds_through_the_embedding_service_it_is_given(tmp_path: Path) -> None:
    chat_only = await scripted_pool(scripted_host("gpu-1", [MODELS["full"]], [GOOD]))
    embedder = await scripted_pool(scripted_host("emb-1", [("nomic-embed-text", 0.137)]))
    with Ledger(tmp_path / "l.db") as ledger:
        router = Router(chat_only, ledger, make_config(tmp_path))
        llm = BoundLLM(router, "call-9", embeddings=EmbeddingService(embedder, ledger))
        assert llm.embedding_models() == ["nomic-embed-text@emb-1"]  # not the router's pool: it has none
        got = await llm.embed(["alpha", "beta"])
        (row,) = ledger.recent(5)
    assert (got.host, len(got.vectors)) == ("emb-1", 2)
    assert (row.call_id, row.tier, row.host) == ("call-9", "embedding", "emb-1")
