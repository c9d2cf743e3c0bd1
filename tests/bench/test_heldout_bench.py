"""bench/heldout.py without a model: grading, the gold check, building, the recording row from a real
execution record, the replay against a known calibration table, and one recording through the real
stdio server over a scripted loopback host."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from contextlib import redirect_stdout
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest
from fakes.fault_host import FaultHost

from caelum_mcp.core.confidence import ConfidenceParts, Signals
from caelum_mcp.core.llm import ExecutionRecord
from caelum_mcp.engine.calibration import CalibrationEntry, CalibrationTable, Calibrator

HELDOUT = Path(__file__).resolve().parents[2] / "bench" / "heldout.py"
MODEL = "scripted-coder:1.5b"


def load_heldout() -> ModuleType:
    spec = importlib.util.spec_from_file_location("heldout_bench_under_test", HELDOUT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


heldout = load_heldout()


# grading -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "gold", "right"),
    [
        ("[1,2]", "[1, 2]", True),
        ("[2, 1]", "[1, 2]", False),
        ("{'b', 'a'}", "{'a', 'b'}", True),
        ("{'a': 1, 'b': None}", "{'b': None, 'a': 1}", True),
        ("'POO'", "'POO'", True),
        ('"POO"', "'POO'", True),
        ("POO", "'POO'", True),  # the string without its quotes: the JSON field is a string already
        ("poo", "'POO'", False),
        ("1", "True", False),  # Python's 1 == True is not the same answer
        ("1.0", "1", False),
        ("'1'", "1", False),
        ("(89, 4)", "(89, 4)", True),
        ("[89, 4]", "(89, 4)", False),
        ("-22", "-22", True),
        ("f([1]) == 3", "3", False),
        ("", "''", False),
        (None, "0", False),
    ],
)
def test_grade_compares_python_values_strictly(answer: str | None, gold: str, right: bool) -> None:
    assert heldout.grade(answer, gold) is right


@pytest.mark.slow
def test_gold_check_runs_the_function_and_names_what_differs() -> None:
    code = "def f(xs):\n    return sorted(xs)[::-1]"
    assert heldout.check_gold(code, "[3, 1, 2]", "[3, 2, 1]") is None
    assert "returned [1, 2, 3]" in str(
        heldout.check_gold("def f(xs):\n    return sorted(xs)", "[3, 1, 2]", "[3, 2, 1]")
    )
    assert "raised" in str(heldout.check_gold("def f(x):\n    return 1 / x", "0", "0"))
    assert "hash seed" in str(
        heldout.check_gold("def f(x):\n    return ''.join({'a', 'b', 'c', 'd', 'e'})", "0", "'abcde'")
    )


@pytest.mark.slow
def test_build_selects_every_kth_eligible_row_and_drops_a_gold_that_does_not_reproduce(tmp_path: Path) -> None:
    rows = [
        {"id": "sample_0", "code": "def f(x):\n    return x + 1", "input": "1", "output": "2"},
        {"id": "sample_1", "code": "def f(x):\n" + "    x += 1\n" * 80 + "    return x", "input": "1", "output": "81"},
        {"id": "sample_2", "code": "def f(x):\n    return x * 2", "input": "2", "output": "4"},
        {"id": "sample_3", "code": "def f(x):\n    return x - 1", "input": "5", "output": "4"},
        {"id": "sample_4", "code": "def f(x):\n    return x * 3", "input": "2", "output": "7"},  # wrong gold
        {"id": "sample_5", "code": "def f(x):\n    return x", "input": "9", "output": "9"},
    ]
    source = tmp_path / "cruxeval.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "tasks.jsonl"

    summary = heldout.build(source, out, count=2)

    # sample_1's code is over 600 characters: 5 eligible, every 2nd of them -> sample_0, 3, 5, first 2
    assert (summary.eligible, summary.picked, summary.written, summary.dropped) == (5, 2, 2, [])
    tasks = heldout.load_tasks(out)
    assert [t.source_id for t in tasks] == ["sample_0", "sample_3"]
    assert "f(5)" in tasks[1].prompt and "return x - 1" in tasks[1].prompt and tasks[1].gold == "4"

    every = heldout.build(source, tmp_path / "all.jsonl", count=5)
    assert [d.split(":")[0] for d in every.dropped] == ["sample_4"]
    assert every.written == 4
    with pytest.raises(SystemExit, match="exists"):
        heldout.build(source, out, count=2)


# recording rows ----------------------------------------------------------------------------------


def test_recording_row_reads_the_execution_record_a_tool_returns() -> None:
    signals = Signals(valid=True, self_reported=0.9, token_mean=0.97, token_min=0.4, token_tail=0.6, output_tokens=12)
    parts = ConfidenceParts(
        score=0.31, validity=1.0, raw_score=0.93, signals=signals, calibration="measured x/general (n=16)"
    )
    execution = ExecutionRecord(
        path="local_low_confidence",
        provider="openai",
        host="h",
        model=MODEL,
        tier="small",
        attempts=1,
        confidence=0.31,
        threshold=0.75,
        confidence_parts=parts,
        output_tokens=12,
        latency_ms=1234.5,
    )
    task = heldout.HeldoutTask(
        id="cruxeval/sample_9", source_id="sample_9", code="", input="", gold="[1, 2]", prompt="p"
    )
    structured = {"answer": None, "data": {"output": "[1,2]"}, "execution": execution.model_dump(mode="json")}

    row = heldout.recording_row(task, structured, 2.0)

    assert row["correct"] is True and row["answer"] == "[1,2]"
    assert (row["confidence"], row["raw_score"], row["calibration"]) == (0.31, 0.93, "measured x/general (n=16)")
    assert Signals.model_validate(row["signals"]) == signals
    assert row["model"] == MODEL and row["path"] == "local_low_confidence" and row["task_sha"] == task.fingerprint()

    no_signals = json.loads(json.dumps(structured))
    no_signals["execution"]["confidence_parts"]["signals"] = None
    with pytest.raises(RuntimeError, match="no signals"):
        heldout.recording_row(task, no_signals, 2.0)


# replay ------------------------------------------------------------------------------------------

# Signals with grounding alone give raw score = grounding, so the figures below are worked by hand.
FIXTURE = [  # (grounding or None for an invalid answer, correct, confidence reported live)
    (1.0, True, 0.9),
    (1.0, True, 0.9),
    (0.9, False, 0.9),
    (0.5, True, 0.9),
    (0.2, False, 0.1),
    (None, False, 0.0),
]
ISOTONIC = Calibrator(kind="isotonic", xs=(0.0, 0.5, 0.95, 1.0), ys=(0.0, 0.2, 0.3, 0.95))


def fixture_rows() -> list[dict[str, Any]]:
    rows = []
    for i, (grounding, correct, live) in enumerate(FIXTURE):
        signals = Signals(valid=False) if grounding is None else Signals(valid=True, grounding=grounding)
        rows.append(
            {"id": f"t{i}", "model": MODEL, "correct": correct, "confidence": live, "signals": signals.model_dump()}
        )
    return rows


def test_replay_scores_the_stored_signals_with_the_table_given() -> None:
    table = CalibrationTable([CalibrationEntry(model=MODEL, kind="general", base=ISOTONIC, n=30)])

    result = heldout.replay(fixture_rows(), table)

    assert result["n"] == 6 and "measured scripted-coder:1.5b/general" in result["calibration"][MODEL]
    raw, live, cal = result["raw"], result["live"], result["calibrated"]
    assert raw["accuracy"] == pytest.approx(0.5)
    # right answers score 1, 1, 0.5; wrong ones 0.9, 0.2, 0: 8 of 9 pairs in order
    assert raw["auroc"] == pytest.approx(8 / 9) and cal["auroc"] == pytest.approx(8 / 9)
    # raw: 1, 1, 0.9 clear 0.75 (2 of 3 right); calibrated 0.95, 0.95, 0.289, 0.2, 0.08, 0: two clear, both right
    assert (raw["clear_share"], raw["clear_accuracy"]) == (pytest.approx(0.5), pytest.approx(2 / 3))
    assert (cal["clear_share"], cal["clear_accuracy"]) == (pytest.approx(1 / 3), pytest.approx(1.0))
    # bins: [0.9,1] 0.95,0.95 all right; [0.2,0.3) 0.289 wrong, 0.2 right; [0,0.1) 0.08, 0 wrong
    p09 = 0.2 + 0.1 * 0.4 / 0.45  # raw 0.9 between the points (0.5, 0.2) and (0.95, 0.3)
    assert cal["ece"] == pytest.approx((2 * 0.05 + 2 * abs((p09 + 0.2) / 2 - 0.5) + 2 * 0.04) / 6)
    # live: what the server reported at the time, not the table
    assert (live["clear_share"], live["clear_accuracy"]) == (pytest.approx(4 / 6), pytest.approx(3 / 4))
    assert result["matches_live"] == 1  # only the invalid answer read 0 live and reads 0 now

    # Refit the table: the same recording re-scores without a model.
    flat = Calibrator(kind="isotonic", xs=(0.0, 1.0), ys=(0.1, 0.1))
    refit = heldout.replay(fixture_rows(), CalibrationTable([CalibrationEntry(model=MODEL, kind="general", base=flat)]))
    assert refit["calibrated"]["clear_share"] == 0.0 and refit["raw"] == raw


def test_replay_uses_the_agreement_calibrator_inside_the_band_only() -> None:
    from caelum_mcp.engine.calibration import FEATURES_WITH_AGREEMENT

    weights = [0.0] * len(FEATURES_WITH_AGREEMENT)
    weights[FEATURES_WITH_AGREEMENT.index("agreement")] = 10.0
    agreeing = Calibrator(kind="logistic", features=FEATURES_WITH_AGREEMENT, weights=tuple(weights), bias=-5.0)
    entry = CalibrationEntry(model=MODEL, kind="general", base=ISOTONIC, with_agreement=agreeing, band=(0.1, 0.5))
    inside = Signals(valid=True, grounding=0.9, agreement=1.0, samples=2)  # base 0.289: in the band
    outside = Signals(valid=True, grounding=1.0, agreement=0.0, samples=2)  # base 0.95: not

    assert heldout.calibrated(entry, inside) == pytest.approx(1 / (1 + 2.718281828**-5), rel=1e-6)
    assert heldout.calibrated(entry, outside) == pytest.approx(0.95)
    assert heldout.calibrated(entry, inside.model_copy(update={"agreement": None})) == pytest.approx(
        0.2 + 0.1 * 0.4 / 0.45
    )


def test_replay_command_prints_raw_live_and_calibrated_with_the_verdict(tmp_path: Path) -> None:
    recording = tmp_path / "rec.jsonl"
    recording.write_text("".join(json.dumps(r) + "\n" for r in fixture_rows()))
    table = tmp_path / "calibration.json"
    CalibrationTable([CalibrationEntry(model=MODEL, kind="general", base=ISOTONIC, n=30)]).save(table)

    out = io.StringIO()
    with redirect_stdout(out):
        assert heldout.main(["--replay", "--recording", str(recording), "--calibration", str(table)]) == 0
    text = out.getvalue()

    assert "n=6, accuracy 50 %" in text
    calibrated = next(line for line in text.splitlines() if line.startswith("calibrated now"))
    assert "0.89" in calibrated and "33 %" in calibrated and "100 %" in calibrated
    assert calibrated.endswith("PASS")  # AUROC 0.89, ECE 0.12, 33 % clear and all of them right
    raw = next(line for line in text.splitlines() if line.startswith("raw score"))
    # ECE 0.27 (1, 1, 0.9 read 0.97 and are 67 % right), 67 % right of what clears
    assert "0.27" in raw and "50 %" in raw and "FAIL (clear_accuracy, ece)" in raw
    assert table.exists()  # read, not moved aside


# the real stdio server ---------------------------------------------------------------------------


def function_task(task_id: str, code: str, call_input: str, gold: str) -> Any:
    """A held-out task asking what ``code``'s ``f`` returns for ``call_input``."""
    return heldout.HeldoutTask(
        id=task_id,
        source_id=task_id,
        code=code,
        input=call_input,
        gold=gold,
        prompt=heldout.prompt_of(code, call_input),
    )


@pytest.mark.slow
async def test_record_goes_through_delegate_task_on_the_stdio_server_and_resumes(tmp_path: Path) -> None:
    def answer(body: dict[str, Any]) -> str:
        asked = body["messages"][-1]["content"]
        return json.dumps({"output": "3" if "f(2)" in asked else "'no'", "confidence": 0.9})

    tasks = [
        function_task("t/right", "def f(x): return x + 1", "2", "3"),
        function_task("t/wrong", "def f(x): return x", "5", "5"),
    ]
    out = tmp_path / "rec.jsonl"
    log = io.StringIO()
    with FaultHost("openai", models=[(MODEL, 1.5)], answer=answer) as host, anyio.fail_after(120):
        first = await heldout.record(tasks, out, url=host.url, model=MODEL, limit=1, stream=log)
        rest = await heldout.record(tasks, out, url=host.url, model=MODEL, stream=log)
        again = await heldout.record(tasks, out, url=host.url, model=MODEL, stream=log)

    assert (first.recorded, rest.recorded, rest.skipped, again.planned) == (1, 1, 1, 0), log.getvalue()
    rows = {r["id"]: r for r in heldout.read_jsonl(out)}
    assert rows["t/right"]["correct"] is True and rows["t/wrong"]["correct"] is False
    assert rows["t/wrong"]["answer"] == "'no'"
    for row in rows.values():
        assert row["host"] == "heldout" and row["model"] == MODEL
        signals = Signals.model_validate(row["signals"])
        assert signals.valid and signals.self_reported == 0.9 and signals.output_tokens > 0
        assert row["calibration"] and 0.0 <= row["confidence"] <= 1.0
    sent = [b for b in host.bodies if isinstance(b, dict) and "messages" in b]
    assert all(b.get("max_tokens", b.get("max_completion_tokens")) == heldout.MAX_TOKENS for b in sent)


@pytest.mark.slow
async def test_record_agreement_samples_the_delegate_task_prompt_and_the_replay_reads_it(tmp_path: Path) -> None:
    def answer(body: dict[str, Any]) -> str:
        asked = body["messages"][-1]["content"]
        sampled = body.get("temperature") == 0.7
        # the right answer is stable under sampling; the wrong one changes
        output = "3" if "f(2)" in asked else ("'yes'" if sampled else "'no'")
        return json.dumps({"output": output, "confidence": 0.9})

    tasks = [
        function_task("t/right", "def f(x): return x + 1", "2", "3"),
        function_task("t/wrong", "def f(x): return x", "5", "5"),
        function_task("t/none", "def f(x): return x", "6", "6"),
    ]
    recording = tmp_path / "rec.jsonl"
    signals = Signals(valid=True, self_reported=0.9, output_tokens=8).model_dump()
    rows = [
        {
            "id": t.id,
            "task_sha": t.fingerprint(),
            "model": MODEL,
            "answer": a,
            "correct": a == t.gold,
            "confidence": 0.1,
            "signals": signals,
        }
        for t, a in zip(tasks, ["3", "'no'", None], strict=True)
    ]
    recording.write_text("".join(json.dumps(r) + "\n" for r in rows))
    log = io.StringIO()
    with FaultHost("openai", models=[(MODEL, 1.5)], answer=answer) as host, anyio.fail_after(120):
        written = await heldout.record_agreement(tasks, recording, url=host.url, model=MODEL, stream=log)
        again = await heldout.record_agreement(tasks, recording, url=host.url, model=MODEL, stream=log)

    assert (written, again) == (2, 0), log.getvalue()  # the answer with no string has nothing to agree with
    sampled = {r["id"]: r for r in heldout.read_jsonl(heldout.agreement_path(recording))}
    assert sampled["t/right"]["agreement"] == 1.0 and sampled["t/wrong"]["agreement"] == 0.0
    assert sampled["t/right"]["samples"] == 2 and sampled["t/right"]["task_sha"] == tasks[0].fingerprint()
    sent = [b for b in host.bodies if isinstance(b, dict) and "messages" in b]
    assert len(sent) == 4 and all(b["temperature"] == 0.7 for b in sent)
    assert {b["messages"][-1]["content"] for b in sent} == {tasks[0].prompt, tasks[1].prompt}

    merged = {r["id"]: r for r in heldout.with_agreement(heldout.read_jsonl(recording), list(sampled.values()))}
    assert merged["t/right"]["signals"]["agreement"] == 1.0 and merged["t/none"]["signals"].get("agreement") is None
    stale = [{**sampled["t/wrong"], "task_sha": "another prompt"}]
    assert heldout.with_agreement(rows, stale)[1]["signals"].get("agreement") is None
    out = io.StringIO()
    with redirect_stdout(out):
        assert heldout.main(["--replay", "--recording", str(recording)]) == 0
    assert "agreement sampled on 2 answers" in out.getvalue()
    out = io.StringIO()
    with redirect_stdout(out):
        assert heldout.main(["--replay", "--recording", str(recording), "--no-agreement"]) == 0
    assert "agreement sampled" not in out.getvalue()
