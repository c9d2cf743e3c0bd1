"""Routing by measured competence: a kind starts on the smallest model whose measured accuracy at
the threshold meets the target (below min_tier too), a measured model below it is skipped, and an
unmeasured pair keeps the static min_tier rule.

Hosts are :class:`ScriptedBackend`s behind a real pool; the calibration table is built here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from caelum_mcp.core.errors import TaskSkippedError
from caelum_mcp.core.llm import GroundingResult, LLMTask, TaskKind
from caelum_mcp.core.types import ChatMessage, Tier
from caelum_mcp.engine.backends.scripted import ScriptedReply
from caelum_mcp.engine.calibration import CalibrationEntry, CalibrationTable, Calibrator
from caelum_mcp.engine.competence import MIN_MEASURED, assess
from caelum_mcp.engine.ledger import Ledger
from caelum_mcp.engine.router import Router

from .conftest import backend_of, make_config, mock_claude, scripted_host, scripted_pool

SCHEMA: dict[str, Any] = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
GOOD = ScriptedReply(json.dumps({"answer": "42", "confidence": 0.9}), logprob=-0.02)
TINY, SMALL, FULL = "qwen2.5-coder:1.5b", "qwen3:4b", "qwen3:8b"


def entry(
    model: str, kind: str, clear_accuracy: float | None, *, n: int = 40, threshold: float = 0.75
) -> CalibrationEntry:
    # A steep map of the raw score: a clean, grounded answer reads ~0.97 and clears the threshold.
    return CalibrationEntry(
        model=model,
        kind=kind,
        base=Calibrator(kind="isotonic", xs=(0.0, 1.0), ys=(0.0, 0.99)),
        n=n,
        accuracy=clear_accuracy,
        clear_accuracy=clear_accuracy,
        threshold=threshold,
    )


def task(kind: TaskKind, **kw: Any) -> LLMTask:
    return LLMTask(
        name="t",
        kind=kind,
        messages=(ChatMessage(role="user", content="What is six times seven?"),),
        output_schema=SCHEMA,
        grounding=lambda output: GroundingResult(score=1.0),  # verified: unmeasured answers keep their raw score
        **kw,
    )


async def setup(
    tmp_path: Path, *entries: CalibrationEntry, replies: dict[str, Any] | None = None, **config: Any
) -> Any:
    replies = replies or {}
    hosts = {
        TINY: scripted_host("laptop", [(TINY, 1.5)], [replies.get(TINY, GOOD)]),
        SMALL: scripted_host("gpu-1", [(SMALL, 4.0)], [replies.get(SMALL, GOOD)]),
        FULL: scripted_host("gpu-2", [(FULL, 8.0)], [replies.get(FULL, GOOD)]),
    }
    pool = await scripted_pool(*hosts.values())
    ledger = Ledger(tmp_path / "l.db")
    router = Router(pool, ledger, make_config(tmp_path, **config), calibration=CalibrationTable(entries))
    return router, {m: backend_of(h) for m, h in hosts.items()}, ledger


async def test_a_measured_competent_small_model_starts_the_kind_below_its_min_tier(tmp_path: Path) -> None:
    router, backends, ledger = await setup(tmp_path, entry(TINY, "qa", 0.95))
    with ledger:
        assert router.config.router.competence_target == 0.9
        result = await router.run(task(TaskKind.QA))  # qa needs tier small; the 1.5B is micro
        assert (result.execution.path, result.execution.model) == ("local", TINY)
        assert backends[SMALL].requests == [] and backends[FULL].requests == []
        assert router.availability(task(TaskKind.QA)).local_models[0] == f"{TINY}@laptop"


async def test_a_measured_model_below_the_target_is_skipped_and_the_task_goes_up(tmp_path: Path) -> None:
    router, backends, ledger = await setup(tmp_path, entry(SMALL, "review", 0.6), entry(SMALL, "qa", 0.8))
    with ledger:
        review = await router.run(task(TaskKind.REVIEW))  # review needs full: the 8B is unmeasured, the prior
        assert review.execution.model == FULL
        qa = await router.run(task(TaskKind.QA))  # the 4B is measured below 90 % on qa: skipped
        assert qa.execution.model == FULL
        assert backends[SMALL].requests == [] and backends[TINY].requests == []  # the 1.5B: unmeasured, micro


async def test_unmeasured_kinds_keep_the_static_min_tier(tmp_path: Path) -> None:
    """Entries for qa say nothing of classification: min_tier small stands (the 1.5B is never asked)."""
    router, backends, ledger = await setup(tmp_path, entry(TINY, "qa", 0.99), entry(SMALL, "qa", 0.3))
    with ledger:
        result = await router.run(task(TaskKind.CLASSIFICATION))
        assert result.execution.model == SMALL
        assert backends[TINY].requests == []


async def test_the_plan_tries_competent_models_smallest_first_then_unmeasured_ones(tmp_path: Path) -> None:
    unsure = ScriptedReply("not json at all", logprob=-2.0)  # both tries fail to parse: confidence 0
    router, backends, ledger = await setup(
        tmp_path, entry(TINY, "extraction", 0.97), entry(SMALL, "extraction", 0.92), replies={TINY: unsure}
    )
    with ledger:
        result = await router.run(task(TaskKind.EXTRACTION))
        assert result.execution.model == SMALL
        assert len(backends[TINY].requests) == 2 and len(backends[SMALL].requests) == 1  # one try and its repair
        assert result.execution.escalations and TINY in result.execution.escalations[0]
    router, backends, ledger = await setup(
        tmp_path, entry(TINY, "extraction", 0.97), replies={TINY: unsure}, **{"router.escalate_local": False}
    )
    with ledger:
        result = await router.run(task(TaskKind.EXTRACTION))
        assert result.execution.model == TINY and result.execution.path == "local_low_confidence"
        assert backends[SMALL].requests == []


async def test_with_no_competent_local_model_claude_answers_and_without_claude_the_static_rule_stands(
    tmp_path: Path,
) -> None:
    """The 8B is measured below the target on review: with Claude the task goes there and the 8B is
    never asked; without Claude nothing else could answer, so the 8B does, as it did before it was
    measured (its calibrated confidence says how far to trust it), rather than no answer."""
    bodies: list[dict[str, Any]] = []
    claude = mock_claude([json.dumps({"answer": "42", "confidence": 0.95})], bodies)
    below = entry(FULL, "review", 0.7)
    router, backends, ledger = await setup(tmp_path, below, **{"claude.api_key": "sk-test"})
    with ledger:
        with_claude = Router(router.pool, ledger, router.config, claude=claude, calibration=router.calibration)
        assert with_claude.availability(task(TaskKind.REVIEW)).local_models == ()
        result = await with_claude.run(task(TaskKind.REVIEW))
        assert result.execution.path == "claude" and len(bodies) == 1
        assert all(b.requests == [] for b in backends.values())
        without = Router(router.pool, ledger, make_config(tmp_path), calibration=CalibrationTable([below]))
        result = await without.run(task(TaskKind.REVIEW))
        assert result.execution.model == FULL and len(backends[FULL].requests) == 1
    # below its min_tier, a measured model is no last resort: the static rule skips the task at once
    router, backends, ledger = await setup(tmp_path, entry(TINY, "review", 0.5))
    with ledger:
        router.pool.set_enabled("gpu-2", False)
        with pytest.raises(TaskSkippedError, match="review task needs a local model of tier full"):
            await router.run(task(TaskKind.REVIEW))
        assert backends[TINY].requests == []


@pytest.mark.parametrize(
    ("entries", "config", "kw", "expected"),
    [
        ([entry(TINY, "qa", 0.95, n=MIN_MEASURED - 1)], {}, {}, SMALL),  # too few labels: the prior
        ([entry(TINY, "qa", 0.95)], {"router.confidence_threshold": 0.6}, {}, SMALL),  # measured at a stricter one
        ([entry(TINY, "qa", 0.95)], {"router.calibration": False}, {}, SMALL),  # calibration off: static
        ([entry(TINY, "qa", 0.95)], {}, {"tier": Tier.SMALL}, SMALL),  # the caller's tier is kept
        ([entry(TINY, "qa", None)], {}, {}, SMALL),  # measured, nothing cleared: not competent
        ([entry(TINY, "qa", 0.95)], {"router.competence_target": 0.97}, {}, SMALL),
        ([entry(TINY, "qa", 0.95)], {"router.confidence_threshold": 0.8}, {}, TINY),  # a stricter threshold is fine
    ],
)
async def test_when_a_measurement_counts(
    tmp_path: Path, entries: list[CalibrationEntry], config: dict[str, Any], kw: dict[str, Any], expected: str
) -> None:
    router, _, ledger = await setup(tmp_path, *entries, **config)
    with ledger:
        result = await router.run(task(TaskKind.QA, **kw))
        assert result.execution.model == expected


def test_assess_reads_only_the_pairs_own_entry() -> None:
    table = CalibrationTable([entry("*", "qa", 0.99), entry(TINY, "sql", 0.91)])
    family_only = assess(table, TINY, "qa", target=0.9, threshold=0.75)
    assert not family_only.measured and family_only.competent is None  # a family entry is not a measurement
    own = assess(table, TINY, "sql", target=0.9, threshold=0.75)
    assert own.measured and own.competent and own.clear_accuracy == 0.91
