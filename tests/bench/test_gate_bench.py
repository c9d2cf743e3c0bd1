"""bench/gate.py without a model: recording through the real router over a scripted host, regrading,
and the replay's fits and table on a synthetic recording."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import random
import re
import sys
from collections.abc import Callable, Sequence
from contextlib import redirect_stdout
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from caelum_mcp.core.confidence import Signals, raw_score
from caelum_mcp.core.llm import GroundingResult
from caelum_mcp.core.types import ChatRequest
from caelum_mcp.engine.backends.scripted import ScriptedBackend, ScriptedReply
from caelum_mcp.engine.calibration import CalibrationTable
from caelum_mcp.engine.hosts import Host

GATE = Path(__file__).resolve().parents[2] / "bench" / "gate.py"
MODEL = "scripted-coder:1.5b"


def load_gate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gate_bench_under_test", GATE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


gate = load_gate()

SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}


def sum_task(n: int, kind: str, split: str) -> dict[str, Any]:
    """A hand-made task in the gate's format (tests only: never committed as data)."""
    return {
        "id": f"hand/{n}",
        "source": "hand",
        "group": f"hand:{n}",
        "split": split,
        "kind": kind,
        "system": "Answer with the number only.",
        "prompt": f"What is {n} plus 1?",
        "schema": SCHEMA,
        "gold": {"answer": n + 1},
        "grader": "number",
        "verifier": {"type": "small"},
        "max_tokens": 32,
    }


def right_answer(task: Any, output: dict[str, Any]) -> bool:
    return bool(output.get("answer") == task["gold"]["answer"])


def small_numbers(task: Any) -> Callable[[dict[str, Any]], GroundingResult]:
    """A grounding check: the answer is a number below 100 (what a prompt-only verifier may check)."""

    def check(output: dict[str, Any]) -> GroundingResult:
        ok = isinstance(output.get("answer"), int) and output["answer"] < 100
        return GroundingResult(score=1.0 if ok else 0.0)

    return check


def odd_ones_wrong(request: ChatRequest) -> ScriptedReply:
    """Right for even n, off by one for odd n; sure of itself either way (a weak last token when wrong)."""
    n = int(re.search(r"What is (\d+) plus", request.messages[-1].content).group(1))  # type: ignore[union-attr]
    wrong = n % 2 == 1
    content = json.dumps({"answer": n if wrong else n + 1, "confidence": 0.95})
    return ScriptedReply(content, token_logprobs=(-0.01, -0.02, -1.5 if wrong else -0.05), top=(-0.01, -3.0))


async def run_record(tasks: Sequence[dict[str, Any]], out: Path, backend: ScriptedBackend, **kwargs: Any) -> Any:
    async def body(state: Any) -> Any:
        return await gate.record(
            state,
            tasks,
            out,
            model=MODEL,
            grade=right_answer,
            grounding_for=small_numbers,
            stream=io.StringIO(),
            **kwargs,
        )

    return await gate._with_app(None, MODEL, body, extra_hosts=[Host(name="scripted", backend=backend)])


@pytest.mark.slow
async def test_record_writes_labelled_rows_with_signals_and_resumes_without_redoing_ids(tmp_path: Path) -> None:
    tasks = [sum_task(n, kind, split) for n, kind, split in [(2, "qa", "dev"), (3, "qa", "test"), (4, "sql", "dev")]]
    out = tmp_path / "recordings" / "m.jsonl"
    backend = ScriptedBackend([(MODEL, 1.5)], odd_ones_wrong, name="scripted")

    summary = await run_record(tasks, out, backend)

    rows = {row["id"]: row for row in gate.read_jsonl(out)}
    assert set(rows) == {"hand/2", "hand/3", "hand/4"} and summary.recorded == 3 and summary.correct == 2
    assert [rows[i]["correct"] for i in ("hand/2", "hand/3", "hand/4")] == [True, False, True]
    for row in rows.values():
        assert row["model"] == MODEL and row["source"] == "hand" and row["output_tokens"] > 0
        signals = Signals.model_validate(row["signals"])
        assert signals.valid and signals.self_reported == 0.95 and signals.grounding == 1.0
        assert signals.token_mean is not None and signals.entropy is not None
        assert row["raw_score"] == pytest.approx(raw_score(signals), abs=1e-3)
        assert json.loads(row["output"]) == {"answer": 3 if row["id"] == "hand/3" else int(row["id"][5:]) + 1}
    # the wrong answer hangs on its weak last token: the recording keeps that signal apart
    assert rows["hand/3"]["signals"]["token_min"] < 0.3 < rows["hand/2"]["signals"]["token_min"]
    # the tasks went to the model as the router sends them: schema instruction, the task's output cap
    assert all(r.max_tokens == 32 and r.logprobs for r in backend.requests)
    assert "What is 2 plus 1?" in backend.requests[0].messages[-1].content or any(
        "What is 2 plus 1?" in r.messages[-1].content for r in backend.requests
    )

    # resumed: nothing recorded twice; a new task and one whose prompt changed are (re)recorded
    asked = len(backend.requests)
    changed = dict(tasks[2], prompt="What is 4 plus 1? Think.")
    summary = await run_record([tasks[0], tasks[1], changed, sum_task(6, "qa", "test")], out, backend)
    assert summary.skipped == 2 and summary.recorded == 2
    assert len(backend.requests) == asked + 2
    again = gate.read_jsonl(out)
    assert sorted(r["id"] for r in again) == ["hand/2", "hand/3", "hand/4", "hand/6"]
    assert next(r for r in again if r["id"] == "hand/4")["task_sha"] == gate.task_fingerprint(changed)


async def test_record_drops_a_last_line_cut_short_and_records_that_task_again(tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    backend = ScriptedBackend([(MODEL, 1.5)], odd_ones_wrong, name="scripted")
    await run_record([sum_task(2, "qa", "dev")], out, backend)
    out.write_text(out.read_text() + '{"id": "hand/8", "correct": tr', encoding="utf-8")  # a killed run

    await run_record([sum_task(2, "qa", "dev"), sum_task(8, "qa", "dev")], out, backend)

    assert [r["id"] for r in gate.read_jsonl(out)] == ["hand/2", "hand/8"]
    assert out.read_text().endswith("\n")


def test_interleaved_order_takes_each_kind_and_split_in_turn() -> None:
    tasks = [sum_task(n, kind, split) for n, (kind, split) in enumerate([("qa", "dev")] * 5 + [("sql", "test")] * 2)]
    order = [(t["kind"], t["split"]) for t in gate.interleaved(tasks)]
    assert order[:4] == [("qa", "dev"), ("sql", "test"), ("qa", "dev"), ("sql", "test")]
    assert sorted(t["id"] for t in gate.interleaved(tasks)) == sorted(t["id"] for t in tasks)


async def test_regrade_relabels_from_the_recorded_output_and_drops_changed_tasks(tmp_path: Path) -> None:
    tasks = [sum_task(2, "qa", "dev"), sum_task(3, "qa", "dev"), sum_task(4, "qa", "test")]
    out = tmp_path / "m.jsonl"
    await run_record(tasks, out, ScriptedBackend([(MODEL, 1.5)], odd_ones_wrong, name="scripted"))
    rows = gate.read_jsonl(out)

    def lenient(task: Any, output: dict[str, Any]) -> bool:  # a fixed grader: off by one counts
        return bool(abs(output["answer"] - task["gold"]["answer"]) <= 1)

    def strict_grounding(task: Any) -> Callable[[dict[str, Any]], GroundingResult]:
        return lambda output: GroundingResult(score=0.0 if output["answer"] % 2 else 1.0)

    moved = [dict(tasks[0], split="test"), tasks[1], dict(tasks[2], prompt="Another question")]
    timings: dict[str, list[float]] = {}
    kept, changed, dropped = await gate.regrade(
        rows, moved, grade=lenient, grounding_for=strict_grounding, timings=timings
    )
    # every check that ran was timed, under its kind, and the cost line says so
    assert list(timings) == ["qa"] and len(timings["qa"]) == 2 and all(t >= 0 for t in timings["qa"])
    assert re.search(r"^  qa +2 answers  median +[\d.]+ ms  max +[\d.]+ ms$", gate.verifier_cost(timings), re.M)

    by_id = {r["id"]: r for r in kept}
    assert dropped == 1 and set(by_id) == {"hand/2", "hand/3"} and changed == 2
    assert by_id["hand/3"]["correct"] is True  # was wrong under the strict grader
    assert by_id["hand/2"]["split"] == "test"  # the task file's split wins
    assert by_id["hand/3"]["signals"]["grounding"] == 0.0  # answer 3 is odd
    assert by_id["hand/3"]["raw_score"] == pytest.approx(
        raw_score(Signals.model_validate(by_id["hand/3"]["signals"])), abs=1e-4
    )
    assert by_id["hand/3"]["raw_score"] < 0.5  # grounding below 0.5 caps the raw score


# replay -----------------------------------------------------------------------------------------


def synthetic_recording(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """Answers that all sound sure (self-report 1.0, mean token probability ~0.95: raw scores near
    0.9) while only those whose weakest token is strong are mostly right: miscalibrated by build."""
    # The weakest token's probability decides: P(right) = sigmoid(12 (token_min - 0.45)).
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind = ("qa", "extraction", "sql")[i % 3]
        token_min = rng.random()
        correct = rng.random() < 1 / (1 + math.exp(-12 * (token_min - 0.45)))
        signals = Signals(
            valid=True,
            self_reported=1.0,
            token_mean=0.93 + 0.05 * rng.random(),
            token_min=token_min,
            token_tail=rng.random(),  # uninformative, like the rest: token_min alone tells right from wrong
            entropy=0.3 * rng.random(),
            grounding=None,
            output_tokens=20,
        )
        rows.append(
            {
                "id": f"syn/{i}",
                "task_sha": "x",
                "source": "syn",
                "split": "dev" if i % 2 == 0 else "test",
                "kind": kind,
                "model": MODEL,
                "correct": correct,
                "signals": signals.model_dump(),
                "raw_score": raw_score(signals),
                "output": "{}",
                "latency_ms": 1000.0,
                "output_tokens": 20,
                "recorded_at": "2026-01-01T00:00:00Z",
            }
        )
    return rows


def write_recording(folder: Path, rows: Sequence[dict[str, Any]], agreement: Sequence[dict[str, Any]] = ()) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    gate.write_jsonl(folder / f"{gate.model_slug(MODEL)}.jsonl", rows)
    if agreement:
        gate.write_jsonl(folder / f"{gate.model_slug(MODEL)}.agreement.jsonl", agreement)


def run_main(*args: str) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        assert gate.main(list(args)) == 0
    return out.getvalue()


@pytest.mark.slow
def test_replay_prints_the_table_and_calibration_beats_the_raw_score(tmp_path: Path) -> None:
    folder = tmp_path / "recordings"
    write_recording(folder, synthetic_recording(600))

    table = run_main("--replay", "--recordings", str(folder), "--model", MODEL)
    result = json.loads(run_main("--replay", "--json", "--recordings", str(folder), "--model", MODEL))

    for kind, n in (("qa", 100), ("extraction", 100), ("sql", 100), ("overall", 300)):
        assert re.search(rf"^{kind} +{n} +\d+ % +[\d.]+ → [\d.]+ +[\d.]+ → [\d.]+ ", table, re.M), table
    assert "AUROC raw→cal" in table and "ECE raw→cal" in table and "ablation" in table
    assert re.search(rf"^L2 penalty of the fits: {gate.L2:g} \(dev CV log loss by penalty: 0.01 [\d.]+, ", table, re.M)
    assert result["penalty"]["shipped"] == f"{gate.L2:g}" and len(result["penalty"]["dev_log_loss"]) == len(
        gate.PENALTIES
    )
    overall = result["kinds"]["overall"]
    assert overall["raw"]["n"] == overall["calibrated"]["n"] == 300
    assert overall["raw"]["clear_share"] == 1.0  # raw: everything clears 0.75
    assert overall["calibrated"]["ece"] < overall["raw"]["ece"] / 2
    assert overall["calibrated"]["auroc"] > 0.75
    cleared = overall["calibrated"]["clear_accuracy"]
    assert cleared is not None and cleared > overall["raw"]["clear_accuracy"]
    # each kind has 100 dev rows: fitted on its own; the ablation shows token_min carries the signal
    assert all(result["kinds"][k]["fit"].startswith("kind") for k in ("qa", "extraction", "sql"))
    assert result["ablation"]["without token_min"] < result["ablation"]["all signals"]
    assert result["agreement_cost"]["sampled"] == 0


def test_replay_pools_a_kind_with_few_dev_rows_and_uses_recorded_agreement(tmp_path: Path) -> None:
    rows = synthetic_recording(600)
    for row in rows[:30]:
        row["kind"] = "review"  # 15 dev rows: below the minimum, so the pooled fit scores it
    rng = random.Random(3)
    agreement = [
        {"id": r["id"], "agreement": (1.0 if r["correct"] else 0.0) if rng.random() < 0.9 else 0.5,
         "samples": 2, "elapsed_ms": 1500.0}
        for r in rows
    ]  # fmt: skip
    folder = tmp_path / "recordings"
    write_recording(folder, rows, agreement)

    result = json.loads(run_main("--replay", "--json", "--recordings", str(folder), "--model", MODEL))

    # too few rows for a fit of its own, enough to move the pooled fit's level to the kind's accuracy
    assert result["kinds"]["review"]["fit"] == "pooled, shifted (15 dev rows)"
    assert "without agreement" in result["ablation"]
    assert result["ablation"]["all signals"] > result["ablation"]["without agreement"]
    assert result["agreement_cost"] == {
        "tasks": 600,
        "sampled": 600,
        "median_ratio_all": 2.5,
        "median_ratio_sampled": 2.5,
    }


def test_write_default_writes_a_table_the_router_can_load(tmp_path: Path) -> None:
    folder = tmp_path / "recordings"
    write_recording(folder, synthetic_recording(600))
    target = tmp_path / "calibration_default.json"

    run_main("--replay", "--write-default", "--table", str(target), "--recordings", str(folder), "--model", MODEL)

    table = CalibrationTable.load(None, default_path=target)
    assert not table.problems
    entry, label = table.lookup(MODEL, "qa")
    assert label.startswith(f"measured {MODEL}/qa") and entry.n == 100 and entry.auroc is not None
    sure_but_weak = Signals(valid=True, self_reported=1.0, token_mean=0.95, token_min=0.05, token_tail=0.15,
                            entropy=0.28, output_tokens=20)  # fmt: skip
    assert entry.base.probability(sure_but_weak) < 0.5 < raw_score(sure_but_weak)
    family, label = table.lookup("another:7b", "sql")
    assert label.startswith("family */sql") and family.base.cap is not None
    _, label = table.lookup("another:7b", "summary")
    assert label.startswith("all models and kinds")


def test_replay_says_what_to_do_without_enough_rows(tmp_path: Path) -> None:
    folder = tmp_path / "recordings"
    write_recording(folder, synthetic_recording(12))
    with pytest.raises(SystemExit, match="at least 20 valid answers"):
        gate.main(["--replay", "--recordings", str(folder), "--model", MODEL])
    with pytest.raises(SystemExit, match=r"run bench/gate\.py --record first"):
        gate.main(["--replay", "--recordings", str(tmp_path / "none"), "--model", MODEL])


@pytest.mark.slow
async def test_record_agreement_samples_only_the_band_and_appends_what_it_measured(tmp_path: Path) -> None:
    rows = synthetic_recording(120)
    tasks = []
    for n, row in enumerate(rows):  # each row answers a hand-made task; the recorded answer is n + 1
        row["id"] = f"hand/{n}"
        row["output"] = json.dumps({"answer": n + 1})
        tasks.append(sum_task(n, row["kind"], row["split"]))
    fits = gate.fit_kinds(gate._dev_test(rows, {})[0], [r["kind"] for r in rows])
    base = {r["id"]: fits.kinds[r["kind"]].base.probability(gate.signals_of(r)) for r in rows}
    band = (0.3, 0.7)
    inside = {i for i, p in base.items() if band[0] <= p <= band[1]}
    assert 0 < len(inside) < len(rows)

    def sampled(request: ChatRequest) -> ScriptedReply:  # samples agree on even n only
        assert request.temperature == 0.7 and not request.logprobs
        n = int(re.search(r"What is (\d+) plus", request.messages[-1].content).group(1))  # type: ignore[union-attr]
        return ScriptedReply(json.dumps({"answer": n + 1 if n % 2 == 0 else -1, "confidence": 0.9}))

    backend = ScriptedBackend([(MODEL, 1.5)], sampled, name="scripted")
    out = tmp_path / "m.agreement.jsonl"

    async def body(state: Any) -> int:
        return int(
            await gate.record_agreement(
                state, tasks, rows, out, band=band, samples=2, grounding_for=small_numbers, stream=io.StringIO()
            )
        )

    written = await gate._with_app(None, MODEL, body, extra_hosts=[Host(name="scripted", backend=backend)])

    recorded = {r["id"]: r for r in gate.read_jsonl(out)}
    assert written == len(inside) and set(recorded) == inside
    assert len(backend.requests) == 2 * len(inside)
    for task_id, row in recorded.items():
        assert row["samples"] == 2 and row["elapsed_ms"] >= 0
        assert row["agreement"] == (1.0 if int(task_id[5:]) % 2 == 0 else 0.0)
        assert row["base_probability"] == pytest.approx(base[task_id], abs=1e-4)
    # run again: nothing is sampled twice
    assert await gate._with_app(None, MODEL, body, extra_hosts=[Host(name="scripted", backend=backend)]) == 0

    # with a kind kept apart from the pooled fit, the band is judged on the fits the replay makes then
    # (a kind of a few rows borrows the pooled ranking, so keeping qa out of it moves that kind's base)
    rows = [{**r, "kind": "review"} if n < 24 else r for n, r in enumerate(rows)]
    apart = frozenset({"qa"})
    together = gate.fit_kinds(gate._dev_test(rows, {})[0], [r["kind"] for r in rows])
    fits_apart = gate.fit_kinds(gate._dev_test(rows, {})[0], [r["kind"] for r in rows], apart=apart)
    base_apart = {r["id"]: fits_apart.kinds[r["kind"]].base.probability(gate.signals_of(r)) for r in rows}
    review = [r for r in rows if r["kind"] == "review"]
    assert all(
        abs(base_apart[r["id"]] - together.kinds["review"].base.probability(gate.signals_of(r))) > 1e-3 for r in review
    )
    out_apart = tmp_path / "apart.agreement.jsonl"

    async def body_apart(state: Any) -> int:
        return int(
            await gate.record_agreement(
                state, tasks, rows, out_apart, band=band, samples=2, grounding_for=small_numbers, apart=apart,
                stream=io.StringIO(),
            )
        )  # fmt: skip

    await gate._with_app(None, MODEL, body_apart, extra_hosts=[Host(name="scripted", backend=backend)])
    recorded_apart = {r["id"]: r for r in gate.read_jsonl(out_apart)}
    assert set(recorded_apart) == {i for i, p in base_apart.items() if band[0] <= p <= band[1]}
    for task_id, row in recorded_apart.items():
        assert row["base_probability"] == pytest.approx(base_apart[task_id], abs=1e-4)


def test_write_default_without_family_leaves_other_models_on_the_prior(tmp_path: Path) -> None:
    folder = tmp_path / "recordings"
    write_recording(folder, synthetic_recording(600))
    target = tmp_path / "calibration_default.json"

    run_main(
        "--replay", "--write-default", "--no-family", "--table", str(target), "--recordings", str(folder),
        "--model", MODEL,
    )  # fmt: skip

    table = CalibrationTable.load(None, default_path=target)
    _, label = table.lookup(MODEL, "qa")
    assert label.startswith(f"measured {MODEL}/qa")
    entry, label = table.lookup("another:7b", "sql")
    assert entry.base.kind == "prior", label


def test_routing_cost_charges_claude_only_for_what_does_not_clear() -> None:
    gate = load_gate()
    scored = [
        gate.Scored(id="a", kind="qa", correct=True, raw=0.9, base=0.9, final=0.9),
        gate.Scored(id="b", kind="qa", correct=False, raw=0.9, base=0.5, final=0.5),
        gate.Scored(id="c", kind="sql", correct=True, raw=0.9, base=0.2, final=0.2),
    ]
    rows = [{"id": i, "output_tokens": 100} for i in "abc"]
    price = gate.ModelPrice(input=2.0, output=10.0)
    # 4,000 characters = 1,000 input tokens: $0.002 in + $0.001 out per task
    table = gate.routing_cost(scored, rows, dict.fromkeys("abc", 4000), price=price, threshold=0.75)
    assert table["qa"]["local_share"] == 0.5 and table["qa"]["local_accuracy"] == 1.0
    assert math.isclose(table["qa"]["all_claude_usd"], 0.006) and math.isclose(table["qa"]["gated_usd"], 0.003)
    assert table["sql"]["local_share"] == 0.0 and table["sql"]["local_accuracy"] is None
    assert math.isclose(table["overall"]["saved_share"], 1 / 3)


def test_a_shifted_kind_moves_its_agreement_calibrator_to_its_own_level_too() -> None:
    # 30 dev rows: sql (10) always right, qa (10) always wrong, extraction (10) half; all sampled, all agreeing:
    # too few rows a kind for a fit of its own, enough for a shift of the pooled fits' level
    dev = []
    for i in range(30):
        kind = ("sql", "qa", "extraction")[i % 3]
        right = kind == "sql" or (kind == "extraction" and i % 2 == 0)
        signals = Signals(valid=True, self_reported=0.9, token_mean=0.95, token_min=0.5, agreement=1.0, samples=2)
        dev.append((kind, signals, right))
    fits = gate.fit_kinds(dev, ["sql", "qa", "extraction"])
    sure = Signals(valid=True, self_reported=0.9, token_mean=0.95, token_min=0.5, agreement=1.0, samples=2)
    assert fits.kinds["sql"].scope == "pooled, shifted"
    sql, qa = fits.kinds["sql"].with_agreement, fits.kinds["qa"].with_agreement
    assert sql is not None and qa is not None
    # the same agreeing answer reads high where the kind is always right and low where it never is
    assert sql.probability(sure) > 0.75 > 0.25 > qa.probability(sure)


def test_the_dev_cross_validation_never_reads_the_test_split() -> None:
    rows = synthetic_recording(120)
    before = gate.dev_cross_validation(rows, {})
    flipped = [{**r, "correct": not r["correct"]} if r["split"] == "test" else r for r in rows]
    assert gate.dev_cross_validation(flipped, {}) == before
    # and it measures something: token_min decides by build, so the fits beat a coin (log loss 0.693)
    assert before["log_loss"] < 0.6 and 0 < before["brier"] < 0.25


def jointly_best(dev: list[tuple[str, Signals, bool]], sources: list[str], kind: str) -> tuple[str, float]:
    """The (scope, L2 penalty) whose fits predict ``kind``'s left-out sources best, by brute force."""
    tried = []
    for l2 in gate.PENALTIES:
        got = gate.scope_by_leaving_sources_out(dev, sources, kind, l2=l2)
        assert got is not None
        scope, losses = got
        tried.append(((losses[scope], l2 != gate.L2, l2), scope, l2))  # a tie keeps the shipped penalty
    _, scope, l2 = min(tried)
    return scope, l2


def chosen_in(label: str) -> tuple[str, float]:
    """The scope and penalty a fit's label names (``"<scope> at L2 <p>, by leaving each source out …"``)."""
    match = re.match(r"^(.+?) at L2 ([0-9.]+), by leaving each source out \(log loss ", label)
    assert match is not None, label
    return match.group(1), float(match.group(2))


def test_the_penalty_sweep_reads_dev_rows_only_and_names_the_shipped_penalty(tmp_path: Path) -> None:
    rows = synthetic_recording(120)
    sweep = gate.penalty_sweep(rows)
    assert list(sweep) == [f"{p:g}" for p in gate.PENALTIES] and f"{gate.L2:g}" in sweep
    assert all(0 < loss < 0.6 for loss in sweep.values())  # token_min decides by build: better than a coin
    flipped = [{**r, "correct": not r["correct"]} if r["split"] == "test" else r for r in rows]
    assert gate.penalty_sweep(flipped) == sweep


def test_a_kind_from_several_sources_takes_the_scope_that_predicts_a_left_out_source_best() -> None:
    # general comes from four sources and is nearly always wrong, whatever its signals say; the other kinds
    # are right exactly when token_min is high. Left out one source at a time, the pooled fit (which
    # reads general's sure answers as right) predicts the left-out general rows worst.
    dev: list[tuple[str, Signals, bool]] = []
    sources: list[str] = []
    for i in range(80):
        sure = i % 2 == 0
        signals = Signals(
            valid=True, self_reported=0.9, token_mean=0.97 if sure else 0.8, token_min=0.9 if sure else 0.2
        )
        if i < 40:
            dev.append(("general", signals, i % 10 == 3))  # 4 right of 40, all unsure answers
            sources.append(f"bbh:task{i % 4}")
        else:
            dev.append(("sql", signals, sure))
            sources.append("chinook")
    chosen = gate.scope_by_leaving_sources_out(dev, sources, "general")
    assert chosen is not None
    scope, losses = chosen
    assert set(losses) == set(gate.SOURCE_SCOPES)  # each can be fitted without any one source
    assert scope != "pooled" and losses[scope] == min(losses.values())
    # one source only (sql here): the row-count rule decides, as before
    assert gate.scope_by_leaving_sources_out(dev, sources, "sql") is None
    fits = gate.fit_kinds(dev, ["general", "sql"], sources=sources)
    assert jointly_best(dev, sources, "general") == chosen_in(fits.kinds["general"].scope)
    assert fits.kinds["sql"].scope == "kind"
    # a general answer that sounds sure still reads as the wrong answer such answers always were
    sure = Signals(valid=True, self_reported=0.9, token_mean=0.97, token_min=0.9)
    assert fits.kinds["general"].base.probability(sure) < 0.25


def test_a_kind_chosen_by_leaving_sources_out_reads_at_its_own_level() -> None:
    # The gate's dev rows in small: general from two sources far apart (bbh 60 % right, gsm8k 3 %,
    # no grounding check), and two kinds with a check whose pooled fit reads an answer without one
    # as nearly always wrong (triage's). Leaving one of general's two sources out predicts its level
    # from the other alone, so the pooled fit as it is (level near 0.1) predicted them best, and
    # general was shipped reading 0.1 on answers a third of which are right.
    dev: list[tuple[str, Signals, bool]] = []
    sources: list[str] = []
    for i in range(60):
        family = "bbh" if i < 30 else "gsm8k"
        right = (i % 5 < 3) if family == "bbh" else i == 45
        mean = 0.85 + (i * 7 % 10) / 100
        dev.append(("general", Signals(valid=True, self_reported=0.9, token_mean=mean, token_min=mean - 0.4), right))
        sources.append(family)
    for i in range(40):
        sure = i % 2 == 0
        checked = Signals(
            valid=True, self_reported=0.9, token_mean=0.97 if sure else 0.8, grounding=1.0 if sure else 0.0
        )
        dev.append(("sql", checked, sure))
        sources.append("chinook")
        unchecked = Signals(valid=True, self_reported=0.9, token_mean=0.97 if sure else 0.8)
        dev.append(("triage", unchecked, i % 10 == 0))
        sources.append("loghub")
    fits = gate.fit_kinds(dev, ["general", "sql", "triage"], sources=sources)
    scope, _ = chosen_in(fits.kinds["general"].scope)
    assert scope in gate.SOURCE_SCOPES and scope != "pooled"
    general = [(s, y) for k, s, y in dev if k == "general"]
    mean_probability = sum(fits.kinds["general"].base.probability(s) for s, _ in general) / len(general)
    accuracy = sum(y for _, y in general) / len(general)
    assert abs(mean_probability - accuracy) < 0.05, (mean_probability, accuracy)


def test_a_source_is_a_whole_file_even_one_of_several_subtasks() -> None:
    assert gate.source_of({"source": "bbh", "group": "bbh:navigate"}) == "bbh"
    assert gate.source_of({"source": "gsm8k", "group": "gsm8k:test:40"}) == "gsm8k"


def test_two_sources_are_enough_to_choose_a_scope_by_leaving_one_out() -> None:
    # general from two files, bbh (unsure answers, 60 % right) and gsm8k (sure answers, 5 % right):
    # each left out in turn is predicted from the other, and the choice says so.
    dev: list[tuple[str, Signals, bool]] = []
    sources: list[str] = []
    for i in range(48):
        family = "bbh" if i < 24 else "gsm8k"
        mean = (0.80 if family == "bbh" else 0.97) + (i * 7 % 10) / 1000
        right = (i % 5 < 3) if family == "bbh" else i == 30
        dev.append(("general", Signals(valid=True, self_reported=0.9, token_mean=mean, token_min=mean - 0.3), right))
        sources.append(family)
    for i in range(40):  # another kind, so the pooled fit exists
        sure = i % 2 == 0
        dev.append(("sql", Signals(valid=True, self_reported=0.9, token_mean=0.97 if sure else 0.8), sure))
        sources.append("chinook")
    chosen = gate.scope_by_leaving_sources_out(dev, sources, "general")
    assert chosen is not None
    scope, losses = chosen
    assert set(losses) == set(gate.SOURCE_SCOPES) and losses[scope] == min(losses.values())
    fits = gate.fit_kinds(dev, ["general", "sql"], sources=sources)
    assert jointly_best(dev, sources, "general") == chosen_in(fits.kinds["general"].scope)
    assert gate.scope_by_leaving_sources_out(dev, sources, "sql") is None  # one source: the row-count rule


def test_the_level_only_scope_says_the_kinds_accuracy_whatever_the_signals() -> None:
    sure = Signals(valid=True, self_reported=0.99, token_mean=0.99, token_min=0.95)
    unsure = Signals(valid=True, self_reported=0.2, token_mean=0.6, token_min=0.05)
    calibrator = gate.level_only([sure, unsure] * 5, [True] * 3 + [False] * 7)
    assert calibrator is not None
    assert calibrator.probability(sure) == calibrator.probability(unsure) == pytest.approx(4 / 12)
    assert gate.level_only([sure] * 3, [True] * 3) is None  # too few rows for even a level


def test_bootstrap_intervals_resample_whole_groups() -> None:
    rng = random.Random(3)
    scored = []
    for i in range(200):
        right = rng.random() < 0.6
        final = min(1.0, max(0.0, (0.7 if right else 0.4) + rng.uniform(-0.3, 0.3)))
        scored.append(gate.Scored(id=f"t/{i}", kind="qa", correct=right, raw=final, base=final, final=final))
    point = gate.metrics([s.final for s in scored], [s.correct for s in scored], 0.75)
    by_row = gate.bootstrap_intervals(scored, {}, 0.75, draws=200)
    assert by_row == gate.bootstrap_intervals(scored, {}, 0.75, draws=200)  # seeded
    assert by_row["groups"] == 200
    for name in ("auroc", "clear_share", "clear_accuracy"):
        low, high = by_row[name]
        assert low <= point[name] <= high and high - low < 0.3, name
    # one group holding every row: each resample is the whole split, so nothing can move
    whole = gate.bootstrap_intervals(scored, {s.id: "one passage" for s in scored}, 0.75, draws=50)
    assert whole["groups"] == 1 and whole["auroc"] == [point["auroc"], point["auroc"]]


def test_the_ece_noise_floor_is_what_a_calibrated_score_shows_at_this_size() -> None:
    probs = [0.2, 0.5, 0.8, 0.95] * 60
    floor = gate.ece_noise_floor(probs, draws=300)
    assert floor == gate.ece_noise_floor(probs, draws=300)  # seeded: the same line every replay
    assert floor["n"] == 240 and 0 < floor["median"] <= floor["p90"] < 0.15
    bigger = gate.ece_noise_floor(probs * 20, draws=100)
    assert bigger["median"] < floor["median"] / 2  # noise shrinks with rows: 20x the rows, ~1/4.5 the ECE
    assert gate.ece_noise_floor([0.0, 1.0] * 50, draws=50)["p90"] == 0.0  # certain labels: no noise at all


def test_the_targets_line_decides_at_full_precision() -> None:
    """A table that rounds 88 of 98 (89.8 %) to "90 %" must not read as meeting the 90 % target."""
    overall = {"n": 251, "auroc": 0.8718, "ece": 0.0952, "clear_share": 98 / 251, "clear_accuracy": 88 / 98}
    lines = gate.target_lines(overall)
    assert lines[0] == "AUROC 0.872, target ≥ 0.85: met"
    assert lines[1] == "ECE 0.095, target ≤ 0.05: NOT met"
    assert lines[2] == "clearing 39.0 % (98 of 251), target ≥ 40 %: NOT met"
    assert lines[3] == "right of those 89.8 % (88 of 98), target ≥ 90 %: NOT met"
    met = gate.target_lines({"n": 100, "auroc": 0.85, "ece": 0.05, "clear_share": 0.4, "clear_accuracy": 0.9})
    assert all(line.endswith(": met") for line in met), met


def test_the_failed_check_cap_is_measured_over_every_kinds_dev_answers() -> None:
    from caelum_mcp.engine.calibration import Signals

    def s(grounding: float | None, valid: bool = True) -> Signals:
        return Signals(valid=valid, self_reported=0.9, token_mean=0.95, token_min=0.5, grounding=grounding)

    dev = [("qa", s(0.0), True), ("sql", s(0.0), False), ("triage", s(0.0), False), ("sql", s(1.0), True)]
    dev += [("general", s(None), True), ("triage", s(0.0, valid=False), True)]  # no check; not an answer
    assert gate.failed_check_cap(dev) == round((1 + 1) / (3 + 2), 4)
    assert gate.failed_check_cap([("sql", s(1.0), True)]) is None
