"""Does local-first pay? The cascade measured on a labelled task set.

The task set (``bench/data/cascade/``): questions with checkable answers (task kind ``qa``),
extraction with known fields (``extraction``) and planted-bug code findings (``review``). Every
answer is graded against its label. Confidence is the router's own score: validity, the model's
self-report, mean token probability and a grounding check per category (extracted values must
appear in the text; a cited line must exist in the snippet; questions have none).

Three passes, over the hosts the config names (``--config``, ``$CAELUM_CONFIG``, ``~/.config/caelum/caelum.toml``;
with none, the embedded model), with a ledger of their own in a temporary folder:

1. **per tier**: every task pinned to one model of each local size tier, no escalation: the tier's
   accuracy, how many answers clear the confidence threshold (the share it would serve), the
   accuracy of those, and the AUROC of the confidence score for right against wrong answers;
2. **cascade**: every task through the router as the product runs it (local first, a larger local
   tier, then Claude when a key is set): accuracy, the share served locally, Claude cost against
   all-Claude (measured when a key is set, else estimated from the local calls' counterfactual cost);
3. **all-Claude** (only with ``ANTHROPIC_API_KEY``): the quality to stay within 5 % of.

Then a calibration table (confidence bins against accuracy) over every local answer.

By default each task may start on the smallest tier the pool has (``min_tier`` = that tier), so the
cascade is measured even where only the embedded 135M model runs; ``--respect-needs`` keeps each
kind's own minimum tier (what the product does: with only the embedded model every task is then
skipped). Targets on real hosts: >= 80 % served locally, within 5 % of all-Claude, AUROC >= 0.85.

Run: ``.venv/bin/python bench/cascade.py [--config PATH] [--limit N] [--respect-needs] [--time-budget S]``
(90 s a task by default; a CPU host needs more).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from caelum_mcp.core.confidence import raw_score
from caelum_mcp.core.errors import CaelumError
from caelum_mcp.core.llm import GroundingResult, LLMTask, TaskKind, size_rank
from caelum_mcp.core.types import SIZE_TIERS, ChatMessage, Tier
from caelum_mcp.engine.calibration import CalibrationTable, Signals, metrics
from caelum_mcp.engine.config import load_config
from caelum_mcp.serving.app import AppState, open_app

DATA = Path(__file__).resolve().parent / "data" / "cascade"
BINS = (0.0, 0.2, 0.4, 0.6, 0.75, 0.9, 1.0001)
TARGET_LOCAL_SHARE = 0.80
TARGET_QUALITY_GAP = 0.05
TARGET_AUROC = 0.85
THRESHOLD = 0.75  # the router's default confidence threshold, what --replay scores at
TIME_BUDGET_S = 90.0  # per task; --time-budget raises it for a host that answers in minutes (a CPU)
OUTPUT_CHARS = 2000  # of a recorded answer


@dataclass(frozen=True)
class Item:
    id: str
    category: str
    kind: TaskKind
    messages: tuple[ChatMessage, ...]
    schema: dict[str, Any]
    grade: Callable[[dict[str, Any]], bool]
    grounding: Callable[[dict[str, Any]], GroundingResult] | None
    max_tokens: int


@dataclass
class Outcome:
    item: Item
    correct: bool
    confidence: float
    path: str
    tier: str | None
    model: str
    cost: float = 0.0
    counterfactual: float = 0.0
    seconds: float = 0.0
    error: str | None = None
    signals: dict[str, Any] | None = None  # the answer's raw signals, what a calibration table reads
    output: str = ""

    @property
    def local(self) -> bool:
        return self.path in ("local", "local_low_confidence")


@dataclass
class Pass:
    name: str
    outcomes: list[Outcome] = field(default_factory=list)

    def accuracy(self, only: Sequence[Outcome] | None = None) -> float | None:
        rows = self.outcomes if only is None else only
        return sum(o.correct for o in rows) / len(rows) if rows else None


# the task set -------------------------------------------------------------------------------------


def _rows(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


def _norm(text: Any) -> str:
    return " ".join(str(text).split()).strip(" .,;:").casefold()


def qa_items() -> list[Item]:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    items = []
    for row in _rows("qa.jsonl"):
        expected, match = row["answer"], row["match"]

        def grade(out: dict[str, Any], expected: str = expected, match: str = match) -> bool:
            answer = str(out.get("answer", ""))
            if match == "number":
                return any(float(n) == float(expected) for n in re.findall(r"-?\d+(?:\.\d+)?", answer.replace(",", "")))
            if match == "word":
                return re.search(rf"\b{re.escape(expected)}\b", answer) is not None
            return expected.casefold() in answer.casefold()

        messages = (
            ChatMessage(role="system", content="Answer the question briefly. Put only the answer in `answer`."),
            ChatMessage(role="user", content=row["question"]),
        )
        items.append(Item(row["id"], "qa", TaskKind.QA, messages, schema, grade, None, 64))
    return items


def extraction_items() -> list[Item]:
    items = []
    for row in _rows("extraction.jsonl"):
        fields: dict[str, str] = row["fields"]
        text: str = row["text"]
        schema = {
            "type": "object",
            "properties": {name: {"type": "string"} for name in fields},
            "required": list(fields),
        }

        def grade(out: dict[str, Any], fields: dict[str, str] = fields) -> bool:
            return all(_norm(out.get(k, "")) == _norm(v) for k, v in fields.items())

        def grounded(out: dict[str, Any], fields: dict[str, str] = fields, text: str = text) -> GroundingResult:
            found = [k for k in fields if _norm(out.get(k, "")) and _norm(out.get(k, "")) in _norm(text)]
            missing = [f"{k} is not in the text" for k in fields if k not in found]
            return GroundingResult(score=len(found) / len(fields), problems=tuple(missing))

        names = ", ".join(fields)
        messages = (
            ChatMessage(role="system", content=f"Extract these fields from the text, copied exactly: {names}."),
            ChatMessage(role="user", content=text),
        )
        items.append(Item(row["id"], "extraction", TaskKind.EXTRACTION, messages, schema, grade, grounded, 160))
    return items


def code_items() -> list[Item]:
    schema = {
        "type": "object",
        "properties": {"line": {"type": "integer"}, "kind": {"type": "string"}},
        "required": ["line", "kind"],
    }
    items = []
    for row in _rows("code.jsonl"):
        lines = row["code"].splitlines()
        bug_lines = set(row["bug_lines"])

        def grade(out: dict[str, Any], bug_lines: set[int] = bug_lines) -> bool:
            return out.get("line") in bug_lines

        def grounded(out: dict[str, Any], count: int = len(lines)) -> GroundingResult:
            line = out.get("line")
            ok = isinstance(line, int) and 1 <= line <= count
            return GroundingResult(score=1.0 if ok else 0.0, problems=() if ok else (f"line {line} is not shown",))

        numbered = "\n".join(f"{i}: {text}" for i, text in enumerate(lines, start=1))
        messages = (
            ChatMessage(
                role="system",
                content="The code has exactly one bug. Give the number of the line where it is and a short kind.",
            ),
            ChatMessage(role="user", content=numbered),
        )
        items.append(Item(row["id"], "code", TaskKind.REVIEW, messages, schema, grade, grounded, 64))
    return items


def load_items(limit: int | None) -> list[Item]:
    groups = [qa_items(), extraction_items(), code_items()]
    return [item for group in groups for item in (group[:limit] if limit else group)]


# running ----------------------------------------------------------------------------------------


async def run_item(state: AppState, item: Item, **task_args: Any) -> Outcome:
    task = LLMTask(
        name=f"cascade:{item.category}",
        kind=item.kind,
        messages=item.messages,
        output_schema=item.schema,
        grounding=item.grounding,
        max_output_tokens=item.max_tokens,
        temperature=0.0,
        **{"time_budget_s": TIME_BUDGET_S, **task_args},
    )
    started = time.perf_counter()
    try:
        routed = await state.router.run(task)
    except CaelumError as exc:
        return Outcome(item, False, 0.0, "failed", None, "", seconds=time.perf_counter() - started, error=str(exc))
    ex = routed.execution
    return Outcome(
        item,
        correct=routed.output is not None and item.grade(routed.output),
        confidence=ex.confidence,
        path=ex.path,
        tier=ex.tier,
        model=ex.model,
        cost=ex.cost_usd,
        counterfactual=ex.counterfactual_cost_usd,
        seconds=time.perf_counter() - started,
        signals=None if ex.confidence_parts.signals is None else ex.confidence_parts.signals.model_dump(mode="json"),
        output=json.dumps(routed.output, sort_keys=True)[:OUTPUT_CHARS] if routed.output is not None else "",
    )


async def run_pass(state: AppState, name: str, items: Sequence[Item], concurrency: int, **task_args: Any) -> Pass:
    result = Pass(name)
    limiter = anyio.Semaphore(concurrency)

    async def one(item: Item) -> None:
        async with limiter:
            result.outcomes.append(await run_item(state, item, **task_args))

    async with anyio.create_task_group() as tg:
        for item in items:
            tg.start_soon(one, item)
    order = {item.id: i for i, item in enumerate(items)}
    result.outcomes.sort(key=lambda o: order[o.item.id])
    print(f"  {name}: {len(items)} tasks in {sum(o.seconds for o in result.outcomes):.0f} s of model time", flush=True)
    return result


def models_by_tier(state: AppState) -> dict[Tier, str]:
    """One chat model per size tier the pool serves (the first found)."""
    found: dict[Tier, str] = {}
    for entry in state.pool.eligible_models():
        found.setdefault(entry.size, entry.model)
    return dict(sorted(found.items(), key=lambda kv: size_rank(kv[0])))


# figures ----------------------------------------------------------------------------------------


def auroc(outcomes: Sequence[Outcome]) -> float | None:
    """The chance that a right answer has a higher confidence than a wrong one (ties count half)."""
    right = [o.confidence for o in outcomes if o.correct]
    wrong = [o.confidence for o in outcomes if not o.correct]
    if not right or not wrong:
        return None
    wins = sum(1.0 if r > w else 0.5 if r == w else 0.0 for r in right for w in wrong)
    return wins / (len(right) * len(wrong))


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f} %"


def num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def print_tiers(passes: list[Pass], threshold: float) -> None:
    print(f"\nper tier (each task pinned to one model of the tier, no escalation; threshold {threshold:.2f}):")
    head = f"{'n':>4}{'accuracy':>10}{'mean conf':>11}{'AUROC':>7}{'clears':>8}{'acc. of those':>15}"
    print(f"  {'tier':<7}{'model':<26}{head}")
    for p in passes:
        answered = [o for o in p.outcomes if o.path != "failed"]
        accepted = [o for o in answered if o.confidence >= threshold]
        conf = statistics.mean(o.confidence for o in answered) if answered else None
        model = p.outcomes[0].model if p.outcomes else ""
        print(
            f"  {p.name:<7}{model[:25]:<26}{len(p.outcomes):>4}{pct(p.accuracy()):>10}{num(conf):>11}"
            f"{num(auroc(answered)):>7}{pct(len(accepted) / len(p.outcomes) if p.outcomes else None):>8}"
            f"{pct(p.accuracy(accepted)):>15}"
        )
        by_category = {c: [o for o in p.outcomes if o.item.category == c] for c in ("qa", "extraction", "code")}
        parts = [f"{c} {pct(p.accuracy(rows))}" for c, rows in by_category.items() if rows]
        print(f"  {'':<7}by category: {', '.join(parts)}")


def print_calibration(outcomes: Sequence[Outcome]) -> None:
    print("\ncalibration (every local answer of every pass):")
    print(f"  {'confidence':<14}{'n':>5}{'mean conf':>11}{'accuracy':>10}")
    for low, high in itertools.pairwise(BINS):
        rows = [o for o in outcomes if low <= o.confidence < high]
        mean = statistics.mean(o.confidence for o in rows) if rows else None
        label = f"[{low:.2f}, {min(high, 1.0):.2f}{']' if high > 1 else ')'}"
        accuracy = sum(o.correct for o in rows) / len(rows) if rows else None
        print(f"  {label:<14}{len(rows):>5}{num(mean):>11}{pct(accuracy):>10}")


def print_cascade(cascade: Pass, claude: Pass | None, threshold: float) -> None:
    outs = cascade.outcomes
    local = [o for o in outs if o.local]
    # Served locally: answers that cleared the confidence gate. A low-confidence answer kept local
    # only because Claude could not be asked is counted apart: with a key it would have escalated.
    cleared = [o for o in outs if o.path == "local"]
    kept = [o for o in outs if o.path == "local_low_confidence"]
    served = len(cleared) / len(outs) if outs else None
    spent = sum(o.cost for o in outs)
    if claude is not None:
        all_claude, how = sum(o.cost for o in claude.outcomes), "measured"
    else:
        all_claude, how = sum(o.counterfactual + o.cost for o in outs), "estimated from the local token counts"
    by_path: dict[str, int] = {}
    for o in outs:
        by_path[o.path] = by_path.get(o.path, 0) + 1
    print("\ncascade (as the product runs: local first, then a larger local tier, then Claude):")
    print(f"  tasks: {len(outs)}; by path: {', '.join(f'{k} {v}' for k, v in sorted(by_path.items()))}")
    print(f"  accuracy: {pct(cascade.accuracy())} (local answers: {pct(cascade.accuracy(local))})")
    print(f"  served locally (cleared the gate): {pct(served)} (target >= {pct(TARGET_LOCAL_SHARE)} on real "
          f"hosts): {verdict(None if served is None else served >= TARGET_LOCAL_SHARE)}; their accuracy "
          f"{pct(cascade.accuracy(cleared))}")  # fmt: skip
    if kept:
        print(
            f"  kept local below the gate (Claude not available): {len(kept)}, accuracy {pct(cascade.accuracy(kept))}"
        )
    print(f"  AUROC of confidence, local answers: {num(auroc(local))} (target >= {TARGET_AUROC}): "
          f"{verdict(None if auroc(local) is None else auroc(local) >= TARGET_AUROC)}")  # fmt: skip
    print(f"  Claude cost: ${spent:.4f}; all-Claude: ${all_claude:.4f} ({how})")
    if claude is not None:
        gap = (claude.accuracy() or 0.0) - (cascade.accuracy() or 0.0)
        print(f"  all-Claude accuracy: {pct(claude.accuracy())}; quality gap {100 * gap:+.0f} points "
              f"(target <= {100 * TARGET_QUALITY_GAP:.0f}): {verdict(gap <= TARGET_QUALITY_GAP)}")  # fmt: skip
    else:
        print("  all-Claude accuracy: not measured (set ANTHROPIC_API_KEY to measure it)")
    failed = [o for o in outs if o.path == "failed"]
    if failed:
        print(f"  no answer for {len(failed)} task(s), e.g. {failed[0].item.id}: {(failed[0].error or '')[:200]}")


# --record / --replay -----------------------------------------------------------------------------


def record_rows(passed: Pass) -> list[dict[str, Any]]:
    """One JSON-able row per local answer of ``passed``: its label, the confidence it was given and
    its raw signals, so that a later calibration table can be scored on it without a model."""
    return [
        {
            "id": o.item.id,
            "category": o.item.category,
            "kind": o.item.kind.value,
            "model": o.model,
            "path": o.path,
            "correct": o.correct,
            "confidence": round(o.confidence, 4),
            "signals": o.signals,
            "output": o.output,
            "seconds": round(o.seconds, 1),
        }
        for o in passed.outcomes
        if o.local and o.signals is not None
    ]


def replay(rows: Sequence[dict[str, Any]], table: CalibrationTable, threshold: float) -> dict[str, Any]:
    """A recording's figures: the confidence the answers were given when recorded, and P(correct)
    from ``table`` (the router's computation, agreement aside: none is recorded here), overall and
    per kind."""

    def figures(members: Sequence[dict[str, Any]]) -> dict[str, Any]:
        labels = [bool(r["correct"]) for r in members]
        signals = [Signals.model_validate(r["signals"]) for r in members]
        now = [
            table.lookup(str(r["model"]), str(r["kind"]))[0].base.probability(s)
            for r, s in zip(members, signals, strict=True)
        ]
        return {
            "raw": metrics([raw_score(s) for s in signals], labels, threshold),
            "recorded": metrics([float(r["confidence"]) for r in members], labels, threshold),
            "now": metrics(now, labels, threshold),
        }

    kinds = sorted({str(r["kind"]) for r in rows})
    return {
        "threshold": threshold,
        "tables": sorted({table.lookup(str(r["model"]), str(r["kind"]))[1] for r in rows}),
        "kinds": {k: figures([r for r in rows if r["kind"] == k]) for k in kinds},
        "overall": figures(rows),
    }


def print_replay(result: dict[str, Any]) -> None:
    print(f"calibration entries: {'; '.join(result['tables'])}")
    head = f"{'kind':<12}{'score':<11}{'n':>4}{'acc.':>7}{'AUROC':>7}{'ECE':>6}{'clears':>8}{'right of those':>16}"
    print(head)
    for name, figures in [*result["kinds"].items(), ("overall", result["overall"])]:
        for score in ("raw", "recorded", "now"):
            f = figures[score]
            print(
                f"{name if score == 'raw' else '':<12}{score:<11}{f['n']:>4}{pct(f['accuracy']):>7}{num(f['auroc']):>7}"
                f"{num(f['ece']):>6}{pct(f['clear_share']):>8}{pct(f['clear_accuracy']):>16}"
            )
    print(f"threshold {result['threshold']:.2f}; recorded: the confidence given live; now: this checkout's table")


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--config", help="caelum.toml (default: the usual places)")
    parser.add_argument("--limit", type=int, default=None, help="tasks per category (default: all 12)")
    parser.add_argument("--concurrency", type=int, default=2, help="tasks in flight at once")
    parser.add_argument("--respect-needs", action="store_true", help="keep each kind's own minimum tier")
    parser.add_argument("--no-tiers", action="store_true", help="skip the per-tier pass")
    parser.add_argument("--time-budget", type=float, default=TIME_BUDGET_S, help="seconds per task (%(default)s)")
    parser.add_argument("--record", type=Path, help="write the cascade pass's local answers here (JSONL)")
    parser.add_argument(
        "--replay", type=Path, help="score a recording with the current calibration table; runs no model"
    )
    args = parser.parse_args(argv)
    if args.replay is not None:
        table = CalibrationTable.load(None, threshold=THRESHOLD)  # the table this checkout ships
        rows = [json.loads(line) for line in args.replay.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not rows:
            raise SystemExit(f"{args.replay} holds no recorded answers: run with --record first")
        print_replay(replay(rows, table, THRESHOLD))
        return 0
    budget = {"time_budget_s": args.time_budget}
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    items = load_items(args.limit)
    with tempfile.TemporaryDirectory(prefix="caelum-cascade-") as data:
        config = load_config(args.config, overrides={"data_dir": data})
        async with open_app(config, health_loop=False) as state:
            tiers = models_by_tier(state)
            threshold = config.router.confidence_threshold
            hosts = ", ".join(f"{h.name} ({', '.join(h.models)})" for h in state.pool.healthy_hosts()) or "none"
            print(f"hosts: {hosts}; Claude: {'configured' if state.claude else 'not configured'}")
            print(f"task set: {len(items)} tasks (qa, extraction, code); running...", flush=True)
            if not tiers and state.claude is None:
                print("no chat model and no Claude: nothing to measure")
                return 1
            tier_passes = []
            if not args.no_tiers:
                for tier, model in tiers.items():
                    tier_passes.append(
                        await run_pass(
                            state, str(tier), items, args.concurrency, model=model, allow_claude=False, **budget
                        )
                    )
            smallest = min(tiers, key=size_rank) if tiers else None
            start = {} if args.respect_needs or smallest is None else {"min_tier": smallest}
            cascade = await run_pass(state, "cascade", items, args.concurrency, **start, **budget)
            claude = None
            if state.claude is not None:
                claude = await run_pass(state, "claude", items, args.concurrency, claude_only=True, **budget)
    if tier_passes:
        print_tiers(tier_passes, threshold)
    print_cascade(cascade, claude, threshold)
    if args.record is not None:
        rows = record_rows(cascade)
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
        print(f"\nrecorded {len(rows)} local answers to {args.record}")
    local = [o for p in [*tier_passes, cascade] for o in p.outcomes if o.local]
    print_calibration(local)
    if smallest is not None and smallest not in SIZE_TIERS[2:]:
        print(
            f"\nnote: the smallest tier here is {smallest}; "
            + ("each task started there (min_tier override)." if start else "tasks kept their kinds' minimum tiers.")
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(anyio.run(main))
