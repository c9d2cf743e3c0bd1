"""``pool_status``'s table per model and task kind: answers and local share from the ledger (the
router records each call's kind), labels from real use, and the calibration entry or prior used,
bounded like every result."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from caelum_mcp.core.llm import GroundingResult, LLMTask, TaskKind
from caelum_mcp.core.types import ChatMessage, Usage
from caelum_mcp.engine.backends.scripted import ScriptedReply
from caelum_mcp.engine.budget import fit_to_budget, result_size
from caelum_mcp.engine.calibration import CalibrationEntry, CalibrationTable, Calibrator
from caelum_mcp.engine.ledger import CalibrationLabel, Ledger, model_call_row
from caelum_mcp.engine.router import Router
from caelum_mcp.engine.status import MAX_KIND_ROWS, PoolAdministration

from .conftest import make_config, mock_claude, scripted_host, scripted_pool

SCHEMA: dict[str, Any] = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
SMALL, FULL = "qwen3:4b", "qwen3:8b"


def task(kind: TaskKind, grounded: float) -> LLMTask:
    return LLMTask(
        name="t",
        kind=kind,
        messages=(ChatMessage(role="user", content="Answer."),),
        output_schema=SCHEMA,
        grounding=lambda output: GroundingResult(score=grounded),
    )


def measured(model: str, kind: str) -> CalibrationEntry:
    return CalibrationEntry(
        model=model,
        kind=kind,
        base=Calibrator(kind="isotonic", xs=(0.0, 1.0), ys=(0.0, 0.99)),
        n=48,
        accuracy=0.81,
        clear_accuracy=0.93,
        ece=0.041,
        auroc=0.88,
        threshold=0.75,
    )


async def test_pool_status_lists_answers_local_share_labels_and_calibration_per_model_and_kind(tmp_path: Path) -> None:
    good = ScriptedReply(json.dumps({"answer": "yes", "confidence": 0.9}), logprob=-0.02)
    pool = await scripted_pool(
        scripted_host("gpu-1", [(SMALL, 4.0)], [good]), scripted_host("gpu-2", [(FULL, 8.0)], [good])
    )
    table = CalibrationTable([measured(SMALL, "qa"), measured(FULL, "sql")])
    config = make_config(tmp_path, **{"claude.api_key": "sk-test", "router.escalate_local": False})
    claude = mock_claude([json.dumps({"answer": "no", "confidence": 0.9})], [])
    with Ledger(tmp_path / "l.db") as ledger:
        router = Router(pool, ledger, config, claude=claude, calibration=table)
        for _ in range(3):  # served locally: measured, grounded, clears
            assert (await router.run(task(TaskKind.QA, 1.0))).execution.path == "local"
        # an unmeasured pair under the prior: an unverified answer reads below the threshold and escalates
        assert (await router.run(task(TaskKind.CLASSIFICATION, 0.6))).execution.path == "claude"
        ledger.add_label(
            CalibrationLabel(
                ts=time.time(), model=SMALL, kind="qa", signals={"valid": True}, label=True, source="audit"
            )
        )
        ledger.add_label(
            CalibrationLabel(
                ts=time.time(), model=SMALL, kind="qa", signals={"valid": True}, label=False, source="audit"
            )
        )
        admin = PoolAdministration(config=config, pool=pool, ledger=ledger, claude_configured=True, calibration=table)
        report = await admin.astatus()
    rows = {(k.model, k.kind): k for k in report.kinds}
    qa = rows[(SMALL, "qa")]
    assert (qa.answers, qa.local, qa.local_share, qa.labels, qa.labelled_accuracy) == (3, True, 1.0, 2, 0.5)
    assert (qa.measured_accuracy, qa.clear_accuracy, qa.ece, qa.measured_n, qa.threshold) == (
        0.81,
        0.93,
        0.041,
        48,
        0.75,
    )
    assert qa.calibration.startswith(f"measured {SMALL}/qa (n=48") and qa.competent is True
    classification = rows[(SMALL, "classification")]
    assert (classification.answers, classification.local_share, classification.measured_accuracy) == (1, 0.0, None)
    assert classification.calibration.startswith("prior for unmeasured") and classification.competent is None
    claude = rows[("claude-sonnet-5-5", "classification")]
    assert (claude.local, claude.answers, claude.local_share) == (False, 1, None)
    sql = rows[(FULL, "sql")]  # measured, never asked yet: shown so the routing it drives is visible
    assert (sql.answers, sql.measured_accuracy, sql.competent) == (0, 0.81, True)
    assert (report.kinds[0].model, report.kinds[0].kind) == (SMALL, "qa")  # most answered first


async def test_the_table_is_bounded_and_cut_by_the_result_budget(tmp_path: Path) -> None:
    pool = await scripted_pool(scripted_host("gpu-1", [(SMALL, 4.0)]))
    config = make_config(tmp_path)
    with Ledger(tmp_path / "l.db") as ledger:
        for i in range(MAX_KIND_ROWS + 30):
            ledger.record(
                model_call_row(
                    task="t", path="local", provider="openai", host="gpu-1", model=f"model-{i:03d}", tier="small",
                    usage=Usage(input_tokens=5, output_tokens=1), latency_ms=1.0, cost=0.0, counterfactual=0.0,
                    kind="qa",
                )
            )  # fmt: skip
        ledger.record(  # the most answered pair comes first
            model_call_row(
                task="t", path="local", provider="openai", host="gpu-1", model="model-089", tier="small",
                usage=Usage(), latency_ms=1.0, cost=0.0, counterfactual=0.0, kind="qa",
            )
        )  # fmt: skip
        report = PoolAdministration(config=config, pool=pool, ledger=ledger, claude_configured=False).status()
    assert len(report.kinds) == MAX_KIND_ROWS
    assert (report.kinds[0].model, report.kinds[0].answers) == ("model-089", 2)
    data = report.model_dump(mode="json")
    fitted = fit_to_budget(data, 4000)  # the default result budget
    assert result_size(fitted.data) <= 4000
    assert fitted.omitted.get("kinds", 0) > 0 and fitted.data["kinds"][0]["model"] == "model-089"
