"""The gate (issue 21): record a real model's answers once, calibrate the confidence offline.

Three steps over the labelled set of ``bench/gate_tasks.py`` (``bench/data/gate/tasks/``):

``--record``
    Every task through the product's own path (``open_app`` → :class:`~caelum_mcp.engine.router.Router`)
    against one OpenAI-compatible host (``--url``, default the embedded server on port 18900)
    serving ``--model`` as tier small, Claude off, calibration off (the raw signals are the
    product's), a 900 s time budget (quality is measured, not speed). One JSON line per task is
    appended to ``bench/data/gate/recordings/<model>.jsonl``: id, source, split, kind, model,
    correct, signals (the :class:`~caelum_mcp.engine.calibration.Signals` dump), raw_score, output (first
    300 characters), latency_ms, output_tokens, recorded_at. Ids already there are skipped, so an
    interrupted run picks up where it stopped; tasks go out interleaved by kind and split, so a
    partial recording is balanced.
``--regrade``
    Labels, grounding and raw scores recomputed from the recorded outputs by the current graders
    and verifiers (no model: the answer depends on neither).
``--record-agreement``
    For tasks whose base probability (fitted on dev without agreement) is inside ``--band``, k
    temperature samples through :meth:`Router.sample_agreement`, appended to
    ``<model>.agreement.jsonl`` (id, agreement, samples, elapsed_ms, base_probability).
``--replay``
    No model: fits a calibrator per kind on the dev split (a kind with fewer than 20 valid dev
    answers, or only right or only wrong ones, uses the fit over every dev row, its level moved
    to the kind's accuracy where it has at least 8; a kind from several source files takes the
    scope and L2 penalty that predict each file best from the others), scores the test
    split and prints, per kind and overall: n, accuracy, AUROC and ECE raw → calibrated, the share
    clearing the threshold and its accuracy; then the AUROC without each signal, what the
    agreement samples cost, and the dev log loss at each L2 penalty (how the product's was chosen).
    ``--write-default`` also writes ``caelum_mcp/calibration_default.json`` from those fits.

Run (the model served at ``--url``; ``make bench-model`` assembles and serves it)::

    .venv/bin/python bench/gate.py --record [--limit N]
    .venv/bin/python bench/gate.py --record-agreement
    .venv/bin/python bench/gate.py --replay [--json] [--write-default]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import hashlib
import inspect
import json
import logging
import math
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio

from caelum_mcp.core import confidence
from caelum_mcp.core.errors import CaelumError
from caelum_mcp.core.llm import ExecutionRecord, GroundingCheck, LLMTask, TaskKind
from caelum_mcp.core.pricing import CHARS_PER_TOKEN, DEFAULT_PRICES, ModelPrice, cost_usd
from caelum_mcp.core.types import ChatMessage, Tier, Usage
from caelum_mcp.engine.calibration import (
    ANY,
    DEFAULT_PATH,
    FEATURES,
    L2,
    MIN_KIND_ROWS,
    MIN_ROWS,
    CalibrationEntry,
    CalibrationTable,
    Calibrator,
    Prior,
    Signals,
    failed_check_counts,
    fit,
    metrics,
    now_iso,
    shift_to_kind,
)
from caelum_mcp.engine.calibration import failed_check_cap as calibration_cap
from caelum_mcp.engine.config import ClaudeConfig, Config, RouterConfig, load_config
from caelum_mcp.engine.hosts import Host
from caelum_mcp.serving.app import AppState, open_app

ROOT = Path(__file__).resolve().parent.parent
RECORDINGS = ROOT / "bench" / "data" / "gate" / "recordings"
DEFAULT_TABLE = DEFAULT_PATH
DEFAULT_URL = "http://127.0.0.1:18900"
DEFAULT_MODEL = "qwen2.5-coder:1.5b"
THRESHOLD = RouterConfig().confidence_threshold
CLAUDE_MODEL = ClaudeConfig().model  # the model escalations go to by default
TIME_BUDGET_S = 900.0
# The recorded output is cut here: long enough for a whole answer of the longest task (SQL with
# query_data's explanation, 192 tokens), so a verifier changed later can regrade it offline. At
# 300, 21 of the 44 SQL answers lost their SQL behind the explanation (keys are sorted).
OUTPUT_CHARS = 2000
DEFAULT_BAND = (0.4, 0.9)
AGREEMENT_SAMPLES = 2
# The signals an answer may lack (None); the ablation drops each in turn. valid/repaired are always there.
OPTIONAL_SIGNALS = ("self_reported", "token_mean", "token_min", "token_tail", "entropy", "grounding", "agreement")

Grader = Callable[[Any, dict[str, Any]], bool]
GroundingFor = Callable[[Any], GroundingCheck | None]

log = logging.getLogger("gate")


# tasks ------------------------------------------------------------------------------------------


def field_of(task: Any, name: str) -> Any:
    """One field of a labelled task, whether the loader gives mappings or objects."""
    return task[name] if isinstance(task, Mapping) else getattr(task, name)


def prompt_characters(tasks: Iterable[Any]) -> dict[str, int]:
    """Per task id, the characters a model reads: system, prompt and the JSON schema."""
    return {
        field_of(t, "id"): len(field_of(t, "system") or "")
        + len(field_of(t, "prompt"))
        + len(json.dumps(field_of(t, "schema") or {}))
        for t in tasks
    }


def llm_task(task: Any, grounding: GroundingCheck | None) -> LLMTask:
    """The router's task for one labelled task: its prompt and schema, tier small at the least, 900 s,
    no Claude; the temperature is the router's own default, as for a tool's task."""
    system = field_of(task, "system")
    messages = (
        *((ChatMessage(role="system", content=system),) if system else ()),
        ChatMessage(role="user", content=field_of(task, "prompt")),
    )
    kind = TaskKind(field_of(task, "kind"))
    return LLMTask(
        name=f"gate:{kind}",
        kind=kind,
        messages=messages,
        output_schema=field_of(task, "schema"),
        grounding=grounding,
        min_tier=Tier.SMALL,
        max_output_tokens=int(field_of(task, "max_tokens")),
        time_budget_s=TIME_BUDGET_S,
        allow_claude=False,
    )


def _stable_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def interleaved(tasks: Iterable[Any]) -> list[Any]:
    """Tasks in recording order: one of each (kind, split) in turn, each group in a fixed shuffled
    order (by a hash of the id, so sources mix), so whatever part gets recorded is balanced."""
    groups: dict[tuple[str, str], list[Any]] = {}
    for task in sorted(tasks, key=lambda t: _stable_hash(str(field_of(t, "id")))):
        groups.setdefault((str(field_of(task, "kind")), str(field_of(task, "split"))), []).append(task)
    keys = sorted(groups)
    longest = max((len(g) for g in groups.values()), default=0)
    return [groups[key][i] for i in range(longest) for key in keys if i < len(groups[key])]


def task_fingerprint(task: Any) -> str:
    """A hash of what the model is shown (system, prompt, schema, output cap): a recorded answer to
    an id whose fingerprint changed answers another question and is recorded again."""
    shown = [field_of(task, name) for name in ("system", "prompt", "schema", "max_tokens")]
    return _stable_hash(json.dumps(shown, sort_keys=True, ensure_ascii=False))[:16]


def model_slug(model: str) -> str:
    """A model name as a file name: ``qwen2.5-coder:1.5b`` → ``qwen2.5-coder-1.5b``."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in model)


# recordings -------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file (none when it does not exist). A last line cut short by a killed
    run is left out (:func:`drop_stale` removes it from the file before the next append)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        log.warning("%s: leaving out a last line cut short (%d characters)", path, len(text) - text.rfind("\n") - 1)
        text = text[: text.rfind("\n") + 1]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise SystemExit(f"{path}:{number}: not JSON ({exc}); fix or delete that line and run again") from exc
    return rows


def latest(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per id, the last one written (two recorders run by mistake on one file would both
    write a row; the later answer counts), in first-seen order."""
    by_id: dict[str, dict[str, Any]] = {}
    for row in rows:
        by_id[row["id"]] = dict(row)
    return list(by_id.values())


def drop_stale(path: Path, tasks: Sequence[Any]) -> set[str]:
    """The ids recorded in ``path`` for the tasks as they are now; rows recorded for a task whose
    prompt has changed since are removed from the file (they answer another question)."""
    current = {field_of(t, "id"): task_fingerprint(t) for t in tasks}
    with locked(path):
        rows = read_jsonl(path)
        stale = [r for r in rows if r["id"] in current and r.get("task_sha") != current[r["id"]]]
        cut_short = path.exists() and not path.read_text(encoding="utf-8").endswith("\n") and path.stat().st_size > 0
        if stale:
            log.warning("%s: %d rows answer a prompt changed since; they will be recorded again", path, len(stale))
        if stale or cut_short:
            rows = [r for r in rows if r not in stale]
            write_jsonl(path, rows)
    return {r["id"] for r in rows}


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold ``path``'s lock file: a recorder appending and a regrade rewriting never interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_suffix(path.suffix + ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def append_jsonl(path: Path, row: Mapping[str, Any]) -> None:
    with locked(path), path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def gate_config(data_dir: Path, *, url: str | None, model: str) -> Config:
    """The product's config for a recording: one openai-kind host at ``url`` (none for a test's
    in-process host) serving ``model`` as tier small; no Claude, no embedded model, calibration and
    agreement sampling off, and pool limits that a 900 s budget can use."""
    config_file = data_dir / "caelum.toml"
    config_file.write_text("# written by bench/gate.py: everything is in the overrides\n", encoding="utf-8")
    router: dict[str, Any] = {"escalate_local": False}
    if "calibration" in RouterConfig.model_fields:
        router["calibration"] = False
    if "agreement_samples" in RouterConfig.model_fields:
        router["agreement_samples"] = 0
    hosts = [] if url is None else [{"name": "gate", "kind": "openai", "url": url, "max_concurrency": 2}]
    overrides: dict[str, Any] = {
        "data_dir": str(data_dir / "data"),
        "embedded": "off",
        "implicit_ollama": False,
        "hosts": hosts,
        "tiers": {model: Tier.SMALL.value},
        "claude": {"enabled": False},
        "pool": {"call_deadline_s": TIME_BUDGET_S, "first_byte_timeout_s": TIME_BUDGET_S},
        "router": router,
    }
    return load_config(config_file, environ={}, overrides=overrides)


@dataclass
class RecordSummary:
    planned: int = 0
    skipped: int = 0  # already recorded
    recorded: int = 0
    correct: int = 0
    failed: list[str] = field(default_factory=list)  # "id: error", not written (the next run retries them)
    seconds: float = 0.0


def recording_row(task: Any, model: str, correct: bool, execution: ExecutionRecord, output: str) -> dict[str, Any]:
    parts = execution.confidence_parts
    if parts.signals is None:
        raise RuntimeError(f"the router reported no signals for {field_of(task, 'id')}")
    return {
        "id": field_of(task, "id"),
        "task_sha": task_fingerprint(task),
        "source": field_of(task, "source"),
        "split": field_of(task, "split"),
        "kind": str(field_of(task, "kind")),
        "model": model,
        "correct": bool(correct),
        "signals": {k: round(v, 4) if isinstance(v, float) else v for k, v in parts.signals.model_dump().items()},
        "raw_score": float(parts.raw_score if parts.raw_score is not None else parts.score),
        "output": output[:OUTPUT_CHARS],
        "latency_ms": round(float(execution.latency_ms), 1),
        "output_tokens": int(execution.output_tokens),
        "recorded_at": now_iso(),
    }


def _output_text(output: dict[str, Any] | None, text: str) -> str:
    return json.dumps(output, ensure_ascii=False, sort_keys=True) if output is not None else text


async def record(
    state: AppState,
    tasks: Sequence[Any],
    out: Path,
    *,
    model: str,
    grade: Grader,
    grounding_for: GroundingFor,
    concurrency: int = 2,
    stream: TextIO = sys.stderr,
) -> RecordSummary:
    """Run every task not yet in ``out`` through ``state.router`` and append its row; see the module docstring."""
    done = drop_stale(out, tasks)
    todo = [t for t in interleaved(tasks) if field_of(t, "id") not in done]
    summary = RecordSummary(planned=len(todo), skipped=len(tasks) - len(todo))
    print(f"recording {len(todo)} tasks to {out} ({summary.skipped} already there), {concurrency} at a time",
          file=stream, flush=True)  # fmt: skip
    started = time.perf_counter()
    queue = iter(todo)

    async def one(task: Any) -> None:
        task_id = field_of(task, "id")
        t0 = time.perf_counter()
        try:
            routed = await state.router.run(llm_task(task, grounding_for(task)))
            correct = routed.output is not None and bool(grade(task, routed.output))
        except CaelumError as exc:
            summary.failed.append(f"{task_id}: {exc}")
            print(f"  {task_id}: no answer, not recorded: {str(exc)[:200]}", file=stream, flush=True)
            return
        row = recording_row(task, model, correct, routed.execution, _output_text(routed.output, routed.text))
        append_jsonl(out, row)
        summary.recorded += 1
        summary.correct += correct
        finished = summary.recorded + len(summary.failed)
        elapsed = time.perf_counter() - started
        left = (len(todo) - finished) * elapsed / finished
        eta = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=left)).strftime("%H:%M")
        print(
            f"[{finished:>4}/{len(todo)}] {row['kind']:<14} {row['split']:<4} {task_id:<28} "
            f"{'right' if correct else 'WRONG'} raw {row['raw_score']:.2f} {time.perf_counter() - t0:5.1f} s | "
            f"accuracy {summary.correct}/{summary.recorded} | ETA {eta} UTC ({left / 60:.0f} min)",
            file=stream,
            flush=True,
        )

    async def worker() -> None:
        for task in queue:  # a shared iterator: each task goes to one worker
            await one(task)

    async with anyio.create_task_group() as tg:
        for _ in range(max(1, concurrency)):
            tg.start_soon(worker)
    summary.seconds = time.perf_counter() - started
    return summary


# --regrade ---------------------------------------------------------------------------------------


async def regrade(
    rows: Sequence[Mapping[str, Any]],
    tasks: Sequence[Any],
    *,
    grade: Grader,
    grounding_for: GroundingFor,
    timings: dict[str, list[float]] | None = None,
) -> tuple[list[dict[str, Any]], int, int]:
    """The rows with label, grounding and raw score recomputed from their recorded output by the
    current graders and verifiers (the answer does not depend on them: calibration is off and one
    model answers), and split, source and kind taken from the task files. Returns (rows, how many
    changed, how many were dropped: their task is gone or its prompt changed). A valid answer cut
    at :data:`OUTPUT_CHARS` cannot be regraded and keeps its label and grounding. ``timings``, when
    given, collects the seconds each grounding check took, by kind: what the verifier signal costs a
    task."""
    by_id = {field_of(t, "id"): t for t in tasks}
    kept: list[dict[str, Any]] = []
    changed = dropped = 0
    for old in rows:
        task = by_id.get(old["id"])
        if task is None or old.get("task_sha") != task_fingerprint(task):
            dropped += 1
            continue
        row = dict(
            old, split=field_of(task, "split"), source=field_of(task, "source"), kind=str(field_of(task, "kind"))
        )
        signals = Signals.model_validate(row["signals"])
        output = _parsed(row["output"]) if signals.valid else None
        if not signals.valid:
            row["correct"] = False
        elif output is not None:
            row["correct"] = bool(grade(task, output))
            check = grounding_for(task)
            grounding = None
            if check is not None:
                started = time.perf_counter()
                result = check(output)
                grounding = (await result if inspect.isawaitable(result) else result).score
                if timings is not None:
                    timings.setdefault(row["kind"], []).append(time.perf_counter() - started)
            signals = signals.model_copy(update={"grounding": None if grounding is None else round(grounding, 4)})
            row["signals"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in signals.model_dump().items()}
            row["raw_score"] = confidence.raw_score(signals)
        changed += row != old
        kept.append(row)
    return kept, changed, dropped


def verifier_cost(timings: Mapping[str, Sequence[float]]) -> str:
    """One line per kind: how many answers were checked, and the median and slowest check in ms."""
    lines = ["grounding check, per answer (what the verifier signal adds to a task's time):"]
    for kind, seconds in sorted(timings.items()):
        ms = sorted(1000 * t for t in seconds)
        lines.append(f"  {kind:<15}{len(ms):>4} answers  median {statistics.median(ms):7.2f} ms  max {ms[-1]:7.2f} ms")
    return "\n".join(lines)


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Replace ``path`` with ``rows`` in one step (a reader never sees half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows), "utf-8")
    tmp.replace(path)


# fitting and scoring ----------------------------------------------------------------------------


def signals_of(row: Mapping[str, Any], agreement: Mapping[str, Mapping[str, Any]] | None = None) -> Signals:
    """A recorded row's signals, with its agreement samples where they were recorded."""
    extra = (agreement or {}).get(row["id"])
    data = dict(row["signals"])
    if extra is not None:
        data["agreement"] = extra["agreement"]
        data["samples"] = extra["samples"]
    return Signals.model_validate(data)


def without(signals: Signals, name: str | None) -> Signals:
    return signals if name is None else signals.model_copy(update={name: None})


@dataclass
class KindFit:
    """The calibrators one kind's test rows are scored with, and where they came from."""

    scope: str  # "kind" (its own dev rows), "pooled" (every dev row), "pooled, shifted" (level moved to the kind)
    base: Calibrator
    with_agreement: Calibrator | None
    dev_rows: int


def _fit_or_none(
    signals: list[Signals], labels: list[bool], *, with_agreement: bool, l2: float = L2
) -> Calibrator | None:
    """A fit, or None where too few valid answers (or only right or only wrong ones) were recorded."""
    valid = [label for s, label in zip(signals, labels, strict=True) if s.valid]
    if with_agreement:
        valid = [label for s, label in zip(signals, labels, strict=True) if s.valid and s.agreement is not None]
    if len(valid) < MIN_ROWS or len(set(valid)) < 2:
        return None
    return fit(signals, labels, with_agreement=with_agreement, l2=l2)


@dataclass
class Fits:
    """Per kind, the calibrators its rows are scored with; ``pooled`` is the fit on every dev row."""

    kinds: dict[str, KindFit]
    pooled: KindFit


# A kind whose dev rows come from at least this many sources has its fit's scope chosen by leaving
# each source out in turn (below); with fewer, by the row-count rule.
MIN_SOURCES = 2
SCOPES = ("kind", "pooled, shifted", "pooled", "level only")
# The scopes leaving sources out chooses among: each reads at the kind's own measured level. The
# pooled fit as it is carries the other kinds' level, and a kind that can be left out a source at a
# time has rows enough to measure its own; leaving one of two sources out predicts its level from
# the other alone, so the log loss there cannot tell a level that fits the kind from one that sits
# between its sources by chance (on the gate's dev rows, `general` from BIG-Bench Hard, 60 % right,
# and GSM8K, 3 %, took the pooled fit that way, which read 0.04 on average on the kind's dev answers,
# 32 % of them right).
SOURCE_SCOPES = ("kind", "pooled, shifted", "level only")


def source_of(task: Any) -> str:
    """The source a task counts under when sources are left out: its file. A file of several tasks
    (BIG-Bench Hard's subtasks) is one source: left out one subtask at a time, a fit still trains on
    its siblings (same format, same answer style), so signals that only tell BIG-Bench Hard from
    GSM8K look as if they carried; a user's task of the kind is a new family, as a left-out file is."""
    return str(field_of(task, "source"))


def _log_loss(probs: Sequence[float], labels: Sequence[bool]) -> float:
    clipped = [min(1 - 1e-3, max(1e-3, p)) for p in probs]
    return -sum(math.log(p) if y else math.log(1 - p) for p, y in zip(clipped, labels, strict=True))


def level_only(signals: Sequence[Signals], labels: Sequence[bool]) -> Calibrator | None:
    """The kind's accuracy and nothing else (Platt-smoothed, every signal's weight 0): what a kind
    whose signals do not carry from one source to another can honestly say; None without rows."""
    valid = [bool(y) for s, y in zip(signals, labels, strict=True) if s.valid]
    if len(valid) < MIN_KIND_ROWS:
        return None
    rate = (sum(valid) + 1) / (len(valid) + 2)
    return Calibrator(
        kind="logistic", features=FEATURES, weights=(0.0,) * len(FEATURES), bias=round(math.log(rate / (1 - rate)), 8)
    )


def _scope_fits(
    kind_signals: list[Signals], kind_labels: list[bool], pooled: Calibrator | None, *, l2: float = L2
) -> dict[str, Calibrator | None]:
    """The base calibrator of each scope for one kind's rows (None where that scope cannot be fitted).
    "level only" is a candidate only where the scope is chosen by leaving sources out."""
    valid = sum(1 for s in kind_signals if s.valid)
    return {
        "kind": _fit_or_none(kind_signals, kind_labels, with_agreement=False, l2=l2),
        "pooled, shifted": shift_to_kind(pooled, kind_signals, kind_labels)
        if pooled is not None and valid >= MIN_KIND_ROWS
        else None,
        "pooled": pooled,
        "level only": level_only(kind_signals, kind_labels),
    }


def scope_by_leaving_sources_out(
    dev: Sequence[tuple[str, Signals, bool]],
    sources: Sequence[str],
    kind: str,
    *,
    apart: frozenset[str] = frozenset(),
    l2: float = L2,
) -> tuple[str, dict[str, float]] | None:
    """Which scope predicts ``kind``'s dev rows best from the other sources: for each source of the
    kind, every scope of :data:`SOURCE_SCOPES` is fitted without that source's rows of the kind
    (the pooled fit keeps the other kinds' rows) and scored by log loss on them. The scope with the
    lowest mean log loss over the kind's rows wins; a scope that cannot be fitted for some source is
    out. None where the kind's dev
    rows span fewer than :data:`MIN_SOURCES` sources of :data:`MIN_KIND_ROWS` rows or more (then
    the row-count rule decides). Reads dev rows only."""
    mine = [i for i, (k, _, _) in enumerate(dev) if k == kind]
    counts = Counter(sources[i] for i in mine)
    # a source with fewer rows than a kind's level needs cannot be left out and predicted from the
    # rest, nor leave a fit of the kind's own behind: it counts as a source only with enough rows
    names = sorted(name for name, count in counts.items() if count >= MIN_KIND_ROWS)
    if len(names) < MIN_SOURCES:
        return None
    totals: dict[str, float | None] = dict.fromkeys(SOURCE_SCOPES, 0.0)
    for name in names:
        held = [i for i in mine if sources[i] == name]
        rest = [i for i in range(len(dev)) if not (dev[i][0] == kind and sources[i] == name)]
        rest_kind = [i for i in rest if dev[i][0] == kind]
        rest_pooled = [i for i in rest if dev[i][0] not in apart]
        pooled = _fit_or_none(
            [dev[i][1] for i in rest_pooled], [dev[i][2] for i in rest_pooled], with_agreement=False, l2=l2
        )
        fitted = _scope_fits([dev[i][1] for i in rest_kind], [dev[i][2] for i in rest_kind], pooled, l2=l2)
        for scope in SOURCE_SCOPES:
            calibrator, total = fitted[scope], totals[scope]
            if total is None or calibrator is None:
                totals[scope] = None
                continue
            totals[scope] = total + _log_loss(
                [calibrator.probability(dev[i][1]) for i in held], [dev[i][2] for i in held]
            )
    losses = {scope: total / len(mine) for scope, total in totals.items() if total is not None}
    if not losses:
        return None
    return min(losses, key=lambda scope: (losses[scope], SCOPES.index(scope))), losses


def fit_kinds(
    dev: Sequence[tuple[str, Signals, bool]],
    kinds: Iterable[str],
    *,
    drop: str | None = None,
    sources: Sequence[str] | None = None,
    apart: frozenset[str] = frozenset(),
    l2: float = L2,
) -> Fits:
    """One fit per kind from its dev rows (pooled over every dev row where a kind has too few valid
    answers or only one label); ``drop`` leaves one signal out (the ablation). With ``sources`` (each
    dev row's, see :func:`source_of`), a kind whose dev rows span several sources takes the scope and
    the L2 penalty (of :data:`PENALTIES`; ties go to ``l2``) that predicted each of them best from the
    others (:func:`scope_by_leaving_sources_out`). Kinds in
    ``apart`` are left out of the pooled fit (:func:`kinds_apart`)."""
    all_signals = [without(s, drop) for k, s, _ in dev if k not in apart]
    all_labels = [label for k, _, label in dev if k not in apart]
    pooled_base = _fit_or_none(all_signals, all_labels, with_agreement=False, l2=l2)
    if pooled_base is None:
        raise SystemExit(
            f"cannot fit: {len(dev)} dev rows ({sum(s.valid for s in all_signals)} valid, {sum(all_labels)} right); "
            "a fit needs at least 20 valid answers, right and wrong ones (record more tasks first)"
        )
    pooled = KindFit(
        "pooled", pooled_base, _fit_or_none(all_signals, all_labels, with_agreement=True, l2=l2), len(all_signals)
    )
    reduced = [(k, without(s, drop), label) for k, s, label in dev]
    pooled_at: dict[float, KindFit] = {l2: pooled}

    def pooled_with(penalty: float) -> KindFit:
        if penalty not in pooled_at:
            base = _fit_or_none(all_signals, all_labels, with_agreement=False, l2=penalty)
            assert base is not None  # the same rows fitted at the default penalty
            agree = _fit_or_none(all_signals, all_labels, with_agreement=True, l2=penalty)
            pooled_at[penalty] = KindFit("pooled", base, agree, len(all_signals))
        return pooled_at[penalty]

    fits = {}
    for kind in sorted(set(kinds)):
        rows = [(s, label) for k, s, label in reduced if k == kind]
        signals, labels = [s for s, _ in rows], [label for _, label in rows]
        penalty = l2
        chosen = None
        if sources is not None:
            # scope and penalty together: a sharper fit may rank the kind's other sources better
            # or carry one source's quirks to the next, and only leaving sources out tells which
            tried = {p: scope_by_leaving_sources_out(reduced, sources, kind, apart=apart, l2=p) for p in PENALTIES}
            scored = {p: got for p, got in tried.items() if got is not None}
            if scored:
                penalty = min(scored, key=lambda p: (scored[p][1][scored[p][0]], p != l2, p))
                chosen = scored[penalty]
        kind_pooled = pooled_with(penalty)
        candidates = _scope_fits(signals, labels, kind_pooled.base, l2=penalty)
        if chosen is not None:
            scope, losses = chosen
            how = ", ".join(f"{name} {loss:.3f}" for name, loss in losses.items())
            others = ", ".join(f"{p:g} {min(got[1].values()):.3f}" for p, got in scored.items() if p != penalty)
            label = f"{scope} at L2 {penalty:g}, by leaving each source out (log loss {how}; best at L2 {others})"
        else:
            # The row-count rule: a fit of its own where there are rows enough; else the pooled
            # ranking with its level moved to this kind's accuracy where there are enough rows for
            # that one number (kinds differ most in it); else the pooled fit as it is.
            scope = next(name for name in SCOPES if candidates[name] is not None)
            label = scope
        base = candidates[scope]
        assert base is not None  # the pooled scope always exists here
        if scope == "kind":
            agree = _fit_or_none(signals, labels, with_agreement=True, l2=penalty) or kind_pooled.with_agreement
        elif scope == "pooled, shifted":
            # the agreement fit's level moves to the kind as well: without it an answer whose
            # samples agree would read at the pooled level, whatever this kind's accuracy
            agree = (
                None
                if kind_pooled.with_agreement is None
                else shift_to_kind(kind_pooled.with_agreement, signals, labels)
            )
        elif scope == "pooled":
            agree = kind_pooled.with_agreement
        else:  # the level only: agreement would be a signal, and this kind's signals did not carry over
            agree = None
        fits[kind] = KindFit(label, base, agree, len(rows))
    cap = failed_check_cap(reduced)
    if cap is not None:
        for fitted in (*fits.values(), pooled):
            fitted.base = fitted.base.model_copy(update={"failed_check_cap": cap})
            if fitted.with_agreement is not None:
                fitted.with_agreement = fitted.with_agreement.model_copy(update={"failed_check_cap": cap})
    return Fits(fits, pooled)


def _failed_check_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    dev, _ = _dev_test(rows, {})
    right, n = failed_check_counts((s, label) for _, s, label in dev)
    return {"cap": failed_check_cap(dev), "right": right, "n": n}


def failed_check_cap(dev: Sequence[tuple[str, Signals, bool]]) -> float | None:
    """The most an answer whose grounding check kept nothing may read, for every kind: the product's
    :func:`~caelum_mcp.engine.calibration.failed_check_cap` over every kind's dev answers pooled. A
    kind's own fit sees too few of them: `qa`'s 46 dev rows held one, and it was right, so its fit
    read such answers at 0.8 and more (`ask_knowledge` served two whose every citation was dropped)."""
    return calibration_cap((s, label) for _, s, label in dev)


def probability(fitted: KindFit, signals: Signals) -> float:
    """The calibrated P(correct): with agreement where it was sampled and a calibrator knows it."""
    chosen = fitted
    if signals.agreement is not None and chosen.with_agreement is not None:
        return chosen.with_agreement.probability(signals)
    return chosen.base.probability(signals)


@dataclass(frozen=True)
class Scored:
    id: str
    kind: str
    correct: bool
    raw: float
    base: float  # calibrated without agreement
    final: float  # calibrated, with agreement where sampled


def _dev_test(
    rows: Sequence[Mapping[str, Any]], agreement: Mapping[str, Mapping[str, Any]]
) -> tuple[list[tuple[str, Signals, bool]], list[tuple[Mapping[str, Any], Signals]]]:
    dev = [(r["kind"], signals_of(r, agreement), bool(r["correct"])) for r in rows if r["split"] == "dev"]
    test = [(r, signals_of(r, agreement)) for r in rows if r["split"] == "test"]
    return dev, test


def dev_sources(rows: Sequence[Mapping[str, Any]], sources: Mapping[str, str] | None) -> list[str] | None:
    """Each dev row's source (task id -> :func:`source_of`), aligned with :func:`_dev_test`'s dev list."""
    if sources is None:
        return None
    return [sources.get(str(r["id"]), str(r.get("source"))) for r in rows if r["split"] == "dev"]


def score_test(
    rows: Sequence[Mapping[str, Any]],
    agreement: Mapping[str, Mapping[str, Any]],
    *,
    drop: str | None = None,
    sources: Mapping[str, str] | None = None,
    apart: frozenset[str] = frozenset(),
) -> tuple[list[Scored], Fits]:
    dev, test = _dev_test(rows, agreement)
    fits = fit_kinds(dev, [r["kind"] for r in rows], drop=drop, sources=dev_sources(rows, sources), apart=apart)
    scored = []
    for row, signals in test:
        reduced = without(signals, drop)
        fitted = fits.kinds[row["kind"]]
        scored.append(
            Scored(
                id=row["id"],
                kind=row["kind"],
                correct=bool(row["correct"]),
                raw=float(row["raw_score"]),
                base=fitted.base.probability(without(reduced, "agreement")),
                final=probability(fitted, reduced),
            )
        )
    return scored, fits


CV_FOLDS = 8


def dev_cross_validation(
    rows: Sequence[Mapping[str, Any]],
    agreement: Mapping[str, Mapping[str, Any]],
    *,
    folds: int = CV_FOLDS,
    apart: frozenset[str] = frozenset(),
    l2: float = L2,
) -> dict[str, float]:
    """Log loss and Brier score of the calibrated P(correct) on the dev split, each dev row scored
    by fits on the other folds (a row's fold: a hash of its id): how a signal is judged without
    looking at the test split."""
    dev = [r for r in rows if r["split"] == "dev"]
    probs: dict[str, float] = {}
    for fold in range(folds):
        fold_of = [int(hashlib.sha256(str(r["id"]).encode()).hexdigest(), 16) % folds for r in dev]
        train = [r for r, f in zip(dev, fold_of, strict=True) if f != fold]
        held = [r for r, f in zip(dev, fold_of, strict=True) if f == fold]
        if not held:
            continue
        fits = fit_kinds(
            [(r["kind"], signals_of(r, agreement), bool(r["correct"])) for r in train],
            [r["kind"] for r in rows],
            apart=apart,
            l2=l2,
        )
        for r in held:
            probs[r["id"]] = probability(fits.kinds[r["kind"]], signals_of(r, agreement))
    labels = [1.0 if r["correct"] else 0.0 for r in dev]
    clipped = [min(1 - 1e-3, max(1e-3, probs[r["id"]])) for r in dev]
    n = max(1, len(dev))
    return {
        "log_loss": -sum(y * math.log(p) + (1 - y) * math.log(1 - p) for y, p in zip(labels, clipped, strict=True)) / n,
        "brier": sum((p - y) ** 2 for y, p in zip(labels, clipped, strict=True)) / n,
    }


# The penalties --replay compares on dev (the product's fit uses L2, chosen from these by this sweep).
PENALTIES = (0.01, 0.03, 0.1, 0.3, 1.0)


def penalty_sweep(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The dev cross-validated log loss (no agreement) with each of :data:`PENALTIES` as the fit's
    L2 penalty: how the product's :data:`~caelum_mcp.engine.calibration.L2` was chosen, on dev rows
    only, so anyone can see the choice and redo it when the recordings change."""
    return {f"{l2:g}": dev_cross_validation(rows, {}, l2=l2)["log_loss"] for l2 in PENALTIES}


# A kind is fitted apart from the pooled fit only where that lowers the dev log loss by this much.
APART_GAIN = 0.002


def kinds_apart(rows: Sequence[Mapping[str, Any]], agreement: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The kinds whose rows the pooled fit (the ranking other kinds borrow) is better without: for
    each kind, the dev cross-validated log loss of every kind's fits with the pooled fit made
    without that kind, against with it; a kind whose leaving lowers it by :data:`APART_GAIN` is
    kept apart (its signals rank answers differently from the rest, e.g. open questions with no
    verifier). Reads dev rows only. Returns ``{"apart": frozenset, "log_loss": {...}}``."""
    kinds = sorted({str(r["kind"]) for r in rows if r["split"] == "dev"})
    base = dev_cross_validation(rows, agreement)["log_loss"]
    losses = {"none": base}
    apart = set()
    for kind in kinds:
        losses[kind] = dev_cross_validation(rows, agreement, apart=frozenset({kind}))["log_loss"]
        if losses[kind] < base - APART_GAIN:
            apart.add(kind)
    if len(apart) > 1:
        losses["together"] = dev_cross_validation(rows, agreement, apart=frozenset(apart))["log_loss"]
        if losses["together"] >= min(losses[k] for k in apart):  # apart one by one, keep only the best
            apart = {min(apart, key=lambda k: losses[k])}
    return {"apart": frozenset(apart), "log_loss": losses}


def _metrics(probs: Sequence[float], labels: Sequence[bool], threshold: float) -> dict[str, Any]:
    return dict(metrics(list(probs), list(labels), threshold))


def replay(
    rows: Sequence[Mapping[str, Any]],
    agreement: Sequence[Mapping[str, Any]] = (),
    *,
    threshold: float = THRESHOLD,
    prompt_chars: Mapping[str, int] | None = None,
    claude_model: str = CLAUDE_MODEL,
    sources: Mapping[str, str] | None = None,
    groups: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Every figure of ``--replay``, as a JSON-able dict; with ``prompt_chars`` (task id → characters
    of its prompt), also the local share and the estimated Claude cost against all-Claude."""
    by_id = {a["id"]: a for a in agreement}
    chosen_apart = kinds_apart(rows, by_id)
    apart = chosen_apart["apart"]
    scored, fits = score_test(rows, by_id, sources=sources, apart=apart)
    if not scored:
        raise SystemExit("no test rows recorded yet: record some tasks of the test split first")
    kinds = sorted({s.kind for s in scored})
    table: dict[str, Any] = {}
    for name, members in [*((k, [s for s in scored if s.kind == k]) for k in kinds), ("overall", scored)]:
        labels = [s.correct for s in members]
        table[name] = {
            "raw": _metrics([s.raw for s in members], labels, threshold),
            "calibrated": _metrics([s.final for s in members], labels, threshold),
            "fit": "per kind"
            if name == "overall"
            else f"{fits.kinds[name].scope} ({fits.kinds[name].dev_rows} dev rows)",
        }
    labels = [s.correct for s in scored]
    full_auroc = _metrics([s.final for s in scored], labels, threshold)["auroc"]
    ablation = {"all signals": full_auroc}
    present = {n for r in rows for n in OPTIONAL_SIGNALS if r["signals"].get(n) is not None}
    if by_id:
        present.add("agreement")
    for name in OPTIONAL_SIGNALS:
        if name in present:
            reduced, _ = score_test(rows, by_id, drop=name, sources=sources, apart=apart)
            ablation[f"without {name}"] = _metrics([s.final for s in reduced], labels, threshold)["auroc"]
    return {
        "model": rows[0]["model"] if rows else None,
        "threshold": threshold,
        "rows": {"dev": sum(r["split"] == "dev" for r in rows), "test": len(scored)},
        "apart": {"kinds": sorted(apart), "dev_log_loss": chosen_apart["log_loss"]},
        "penalty": {"shipped": f"{L2:g}", "dev_log_loss": penalty_sweep(rows)},
        "failed_check": _failed_check_counts(rows),
        "kinds": table,
        "ablation": ablation,
        "ece_floor": ece_noise_floor([sc.final for sc in scored]),
        "intervals": bootstrap_intervals(scored, groups or {}, threshold),
        "agreement_cost": agreement_cost(rows, by_id),
        "agreement_on_dev": None
        if not by_id
        else {"with": dev_cross_validation(rows, by_id), "without": dev_cross_validation(rows, {})},
        "routing": None
        if prompt_chars is None
        else {
            "claude_model": claude_model,
            "kinds": routing_cost(scored, rows, prompt_chars, price=DEFAULT_PRICES[claude_model], threshold=threshold),
        },
    }


def ece_noise_floor(probs: Sequence[float], *, draws: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The ECE of a perfectly calibrated score on this many rows: labels drawn from ``probs``
    themselves (seeded), ECE measured as :func:`metrics` does; its median and 90th percentile over
    ``draws``. An ECE target below the median cannot be told from noise at this size."""
    rng = random.Random(seed)
    eces = sorted(
        float(metrics(list(probs), [rng.random() < p for p in probs], THRESHOLD)["ece"] or 0.0) for _ in range(draws)
    )
    return {
        "n": len(probs),
        "draws": draws,
        "median": statistics.median(eces),
        "p90": eces[min(len(eces) - 1, int(0.9 * len(eces)))],
    }


BOOTSTRAP_FIGURES = ("auroc", "ece", "clear_share", "clear_accuracy")


def bootstrap_intervals(
    scored: Sequence[Scored],
    groups: Mapping[str, str],
    threshold: float,
    *,
    draws: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """95 % intervals of the overall calibrated figures: the test split's groups (a SQuAD passage, a
    log segment, a Chinook question: what the split draws whole; a row without one is its own)
    resampled with replacement, as many as there are, ``draws`` times (seeded). How far the test
    figures would move on another draw of tasks like these, with the calibrators held fixed."""
    members: dict[str, list[Scored]] = {}
    for row in scored:
        members.setdefault(groups.get(row.id, row.id), []).append(row)
    names = sorted(members)
    rng = random.Random(seed)
    values: dict[str, list[float]] = {name: [] for name in BOOTSTRAP_FIGURES}
    for _ in range(draws):
        sample = [row for _ in names for row in members[rng.choice(names)]]
        figures = metrics([row.final for row in sample], [row.correct for row in sample], threshold)
        for name in BOOTSTRAP_FIGURES:
            value = figures[name]
            if value is not None:
                values[name].append(float(value))

    def interval(got: list[float]) -> list[float] | None:
        if not got:
            return None
        got.sort()
        return [got[int(0.025 * (len(got) - 1))], got[int(0.975 * (len(got) - 1))]]

    return {"groups": len(names), "draws": draws, **{name: interval(values[name]) for name in BOOTSTRAP_FIGURES}}


def routing_cost(
    scored: Sequence[Scored],
    rows: Sequence[Mapping[str, Any]],
    prompt_chars: Mapping[str, int],
    *,
    price: ModelPrice,
    threshold: float,
) -> dict[str, Any]:
    """Per kind and overall on the test split: the share of tasks served locally under the calibrated
    gate (their P(correct) clears ``threshold``), and the Claude cost of escalating the rest against
    sending every task to Claude. Estimated, not billed: input tokens are the prompt's characters
    (system, prompt and schema) over :data:`caelum_mcp.core.pricing.CHARS_PER_TOKEN`, output tokens the
    local answer's own count (Claude's answer to a short schema is about as long)."""
    output_tokens = {r["id"]: int(r.get("output_tokens") or 0) for r in rows}

    def claude_usd(task_id: str) -> float:
        usage = Usage(
            input_tokens=max(1, prompt_chars.get(task_id, 0) // CHARS_PER_TOKEN), output_tokens=output_tokens[task_id]
        )
        return cost_usd(usage, price)

    table: dict[str, Any] = {}
    kinds = sorted({s.kind for s in scored})
    for name, members in [*((k, [s for s in scored if s.kind == k]) for k in kinds), ("overall", list(scored))]:
        local = [s for s in members if s.final >= threshold]
        all_claude = sum(claude_usd(s.id) for s in members)
        gated = sum(claude_usd(s.id) for s in members if s.final < threshold)
        table[name] = {
            "n": len(members),
            "local_share": len(local) / len(members) if members else None,
            "local_accuracy": sum(s.correct for s in local) / len(local) if local else None,
            "all_claude_usd": round(all_claude, 6),
            "gated_usd": round(gated, 6),
            "saved_share": 1 - gated / all_claude if all_claude > 0 else None,
        }
    return table


def agreement_cost(rows: Sequence[Mapping[str, Any]], by_id: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Model time with the agreement samples over model time without, per task (1.0 where none
    were drawn): the median over every recorded task and over the sampled ones."""
    ratios, sampled = [], []
    for row in rows:
        base = float(row["latency_ms"])
        extra = by_id.get(row["id"])
        ratio = 1.0 if extra is None or base <= 0 else (base + float(extra["elapsed_ms"])) / base
        ratios.append(ratio)
        if extra is not None:
            sampled.append(ratio)
    return {
        "tasks": len(rows),
        "sampled": len(sampled),
        "median_ratio_all": statistics.median(ratios) if ratios else None,
        "median_ratio_sampled": statistics.median(sampled) if sampled else None,
    }


# printing ---------------------------------------------------------------------------------------


# issue 21's targets on the test split: AUROC >= 0.85, ECE <= 0.05, >= 40 % of tasks clear the
# threshold and >= 90 % of those are right
TARGETS: dict[str, tuple[str, float]] = {
    "auroc": (">=", 0.85),
    "ece": ("<=", 0.05),
    "clear_share": (">=", 0.40),
    "clear_accuracy": (">=", 0.90),
}


def target_lines(overall: Mapping[str, Any]) -> list[str]:
    """Each target with the overall calibrated figure to the precision that decides it (a table's
    rounded 90 % can be 89.8 %) and whether it is met."""
    n = int(overall["n"])
    cleared = round(float(overall["clear_share"] or 0.0) * n)
    right = round(float(overall["clear_accuracy"] or 0.0) * cleared)
    shown = {
        "auroc": ("AUROC", f"{overall['auroc']:.3f}", "0.85"),
        "ece": ("ECE", f"{overall['ece']:.3f}", "0.05"),
        "clear_share": ("clearing", f"{100 * overall['clear_share']:.1f} % ({cleared} of {n})", "40 %"),
        "clear_accuracy": (
            "right of those",
            f"{100 * (overall['clear_accuracy'] or 0.0):.1f} % ({right} of {cleared})",
            "90 %",
        ),
    }
    lines = []
    for name, (way, bound) in TARGETS.items():
        value = overall[name]
        met = value is not None and (value >= bound if way == ">=" else value <= bound)
        label, got, want = shown[name]
        lines.append(f"{label} {got}, target {'≥' if way == '>=' else '≤'} {want}: {'met' if met else 'NOT met'}")
    return lines


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.0f} %"


def _num(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def print_replay(result: Mapping[str, Any], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    threshold = result["threshold"]
    print(
        f"model {result['model']}: fitted on {result['rows']['dev']} dev rows, scored on {result['rows']['test']} "
        f"test rows; threshold {threshold:.2f}",
        file=out,
    )
    apart = result.get("apart")
    if apart is not None:
        losses = ", ".join(f"{k} {v:.4f}" for k, v in apart["dev_log_loss"].items())
        kept = ", ".join(apart["kinds"]) or "none"
        print(f"kinds fitted apart from the pooled fit: {kept} (dev CV log loss, pooled without: {losses})", file=out)
    penalty = result.get("penalty")
    if penalty is not None:
        losses = ", ".join(f"{k} {v:.4f}" for k, v in penalty["dev_log_loss"].items())
        print(f"L2 penalty of the fits: {penalty['shipped']} (dev CV log loss by penalty: {losses})", file=out)
    failed = result.get("failed_check")
    if failed is not None and failed["cap"] is not None:
        print(
            f"an answer whose check kept nothing reads at most {failed['cap']:.4f} ({failed['right']} of "
            f"{failed['n']} such dev answers, every kind, were right; (right + 1) / (n + 2))",
            file=out,
        )
    head = (
        f"{'kind':<15}{'n':>4}{'acc.':>7}{'AUROC raw→cal':>16}{'ECE raw→cal':>15}"
        f"{'clears raw→cal':>16}{'acc. of those raw→cal':>23}  fit"
    )
    print(head, file=out)
    for name, figures in result["kinds"].items():
        raw, cal = figures["raw"], figures["calibrated"]
        print(
            f"{name:<15}{cal['n']:>4}{_pct(cal['accuracy']):>7}"
            f"{_num(raw['auroc']) + ' → ' + _num(cal['auroc']):>16}"
            f"{_num(raw['ece']) + ' → ' + _num(cal['ece']):>15}"
            f"{_pct(raw['clear_share']) + ' → ' + _pct(cal['clear_share']):>16}"
            f"{_pct(raw['clear_accuracy']) + ' → ' + _pct(cal['clear_accuracy']):>23}  {figures['fit']}",
            file=out,
        )
    overall = result["kinds"].get("overall", {}).get("calibrated")
    if overall is not None and overall.get("n"):
        print("targets (issue 21), overall calibrated: " + "; ".join(target_lines(overall)), file=out)
    floor = result.get("ece_floor")
    if floor is not None:
        print(
            f"ECE a perfectly calibrated score would show with these probabilities on {floor['n']} rows "
            f"(labels drawn from them, {floor['draws']} draws): median {floor['median']:.3f}, "
            f"90th percentile {floor['p90']:.3f}",
            file=out,
        )
    spans = result.get("intervals")
    if spans is not None:

        def span(name: str, show: Callable[[float | None], str]) -> str:
            got = spans[name]
            return "n/a" if got is None else f"{show(got[0])}-{show(got[1])}"

        print(
            f"95 % intervals, the test split's {spans['groups']} groups resampled ({spans['draws']} draws): "
            f"AUROC {span('auroc', _num)}, ECE {span('ece', _num)} (a resample's ECE reads high: its bins "
            f"hold fewer distinct answers), clearing {span('clear_share', _pct)}, "
            f"right of those {span('clear_accuracy', _pct)}",
            file=out,
        )
    print("\nablation (test AUROC, calibrated, each signal left out of fit and score):", file=out)
    for name, value in result["ablation"].items():
        print(f"  {name:<24}{_num(value)}", file=out)
    cost = result["agreement_cost"]
    if cost["sampled"]:
        print(
            f"\nagreement samples: {cost['sampled']} of {cost['tasks']} tasks sampled; model time with/without, "
            f"median over all tasks {cost['median_ratio_all']:.2f}x, over the sampled ones "
            f"{cost['median_ratio_sampled']:.2f}x",
            file=out,
        )
    else:
        print("\nagreement samples: none recorded (bench/gate.py --record-agreement)", file=out)
    on_dev = result.get("agreement_on_dev")
    if on_dev:
        print(
            f"agreement on dev ({CV_FOLDS}-fold cross-validation, what decides whether it ships): log loss "
            f"{on_dev['with']['log_loss']:.4f} with, {on_dev['without']['log_loss']:.4f} without; Brier "
            f"{on_dev['with']['brier']:.4f} with, {on_dev['without']['brier']:.4f} without",
            file=out,
        )
    routing = result.get("routing")
    if routing:
        print(
            f"\nrouting at {threshold:.2f} (calibrated): served locally, and the Claude cost of the rest against "
            f"all-Claude ({routing['claude_model']}, estimated from prompt characters and answer tokens)",
            file=out,
        )
        print(f"{'kind':<15}{'n':>4}{'local':>8}{'acc. local':>12}{'all-Claude $':>14}{'gated $':>10}{'saved':>8}",
              file=out)  # fmt: skip
        for name, row in routing["kinds"].items():
            print(
                f"{name:<15}{row['n']:>4}{_pct(row['local_share']):>8}{_pct(row['local_accuracy']):>12}"
                f"{row['all_claude_usd']:>14.4f}{row['gated_usd']:>10.4f}{_pct(row['saved_share']):>8}",
                file=out,
            )


# --write-default --------------------------------------------------------------------------------


# The rule the shipped table gives answers with nothing measured (caelum_mcp/engine/calibration.py), kept
# with its note whichever entries a recording adds.
_SHIPPED_PRIOR = Prior(
    note="An answer of a model x kind with no entry keeps its raw score but reads at most threshold - "
    "margin (below the threshold, so it escalates or comes back marked local_low_confidence) unless the "
    "task's own check verified it (grounding >= verified_grounding). The raw score passed wrong answers "
    "about half the time when measured (issue 21), so an unmeasured answer must not clear on how sure it "
    "sounds. The entries are written by `python bench/gate.py --replay --write-default --no-family` from "
    "the committed recordings (fitted on dev, figures measured on test); `caelum-mcp calibrate` writes the "
    "user's own <data dir>/calibration.json, which overrides this file entry by entry."
)


def write_default(
    rows: Sequence[Mapping[str, Any]],
    agreement: Sequence[Mapping[str, Any]],
    path: Path,
    *,
    band: tuple[float, float],
    threshold: float = THRESHOLD,
    family: bool = True,
    sources: Mapping[str, str] | None = None,
) -> CalibrationTable:
    """The calibration table shipped with the package, from this model's fits on dev with their
    test figures: an entry per (model, kind); with ``family``, the same per ("*", kind), the family an
    unmeasured model falls back to (capped at what it measured), and ("*", "*") pooled over every
    kind. Without it, models other than this one keep the prior."""
    by_id = {a["id"]: a for a in agreement}
    scored, fits = score_test(rows, by_id, sources=sources, apart=kinds_apart(rows, by_id)["apart"])
    model = str(rows[0]["model"])
    fitted_at = now_iso()
    source = f"bench/gate.py: fitted on the dev split of recordings/{model_slug(model)}.jsonl, measured on test"

    def entry(
        model_name: str, kind: str, fitted: KindFit, probs: Sequence[float], labels: Sequence[bool]
    ) -> CalibrationEntry:
        figures = _metrics(probs, labels, threshold)
        return CalibrationEntry(
            model=model_name,
            kind=kind,
            base=fitted.base,
            with_agreement=fitted.with_agreement,
            band=band if fitted.with_agreement is not None else None,
            n=figures["n"],
            accuracy=figures["accuracy"],
            clear_accuracy=figures["clear_accuracy"],
            ece=figures["ece"],
            auroc=figures["auroc"],
            threshold=threshold,
            fitted_at=fitted_at,
            source=f"{source} ({fitted.scope} fit)",
        )

    entries = []
    for kind, fitted in fits.kinds.items():
        members = [s for s in scored if s.kind == kind]
        probs, labels = [s.final for s in members], [s.correct for s in members]
        entries.append(entry(model, kind, fitted, probs, labels))
        if family:
            entries.append(entry(ANY, kind, fitted, probs, labels))
    if family:
        test = [(signals_of(r, by_id), bool(r["correct"])) for r in rows if r["split"] == "test"]
        pooled_probs = [probability(fits.pooled, s) for s, _ in test]
        entries.append(entry(ANY, ANY, fits.pooled, pooled_probs, [label for _, label in test]))
    table = CalibrationTable(entries, prior=_SHIPPED_PRIOR, threshold=threshold)
    table.save(path)
    return table


# --record-agreement -----------------------------------------------------------------------------


async def record_agreement(
    state: AppState,
    tasks: Sequence[Any],
    rows: Sequence[Mapping[str, Any]],
    out: Path,
    *,
    band: tuple[float, float],
    samples: int,
    grounding_for: GroundingFor,
    limit: int | None = None,
    apart: frozenset[str] = frozenset(),
    stream: TextIO = sys.stderr,
) -> int:
    """k samples for each recorded task whose base probability lies in ``band``; returns how many
    were appended. A row whose output was cut at 300 characters cannot be compared and is left out.
    ``apart``: the kinds the replay keeps out of the pooled fit (:func:`kinds_apart`), so the base
    probabilities are the ones the replay and the shipped table use."""
    done = {row["id"] for row in read_jsonl(out)}
    dev, _ = _dev_test(rows, {})
    sources = {str(field_of(t, "id")): source_of(t) for t in tasks}
    fits = fit_kinds(dev, [r["kind"] for r in rows], sources=dev_sources(rows, sources), apart=apart)
    by_id = {field_of(t, "id"): t for t in tasks}
    todo = []
    for row in interleaved(rows):
        signals = signals_of(row)
        base = fits.kinds[row["kind"]].base.probability(signals)
        first = _parsed(row["output"]) if signals.valid else None
        if row["id"] in done or row["id"] not in by_id or first is None or not band[0] <= base <= band[1]:
            continue
        todo.append((row, base, first))
    todo = todo[:limit] if limit is not None else todo
    print(f"agreement: {len(todo)} tasks in the band {band[0]:.2f}..{band[1]:.2f} to sample", file=stream, flush=True)
    written = 0
    for row, base, first in todo:
        task = by_id[row["id"]]
        try:
            agreement, count, elapsed_ms = await state.router.sample_agreement(
                llm_task(task, grounding_for(task)), first, samples
            )
        except CaelumError as exc:
            print(f"  {row['id']}: not sampled: {str(exc)[:200]}", file=stream, flush=True)
            continue
        if agreement is None:
            print(f"  {row['id']}: no sample answered, not recorded", file=stream, flush=True)
            continue
        append_jsonl(
            out,
            {
                "id": row["id"],
                "model": row["model"],
                "agreement": agreement,
                "samples": count,
                "elapsed_ms": round(float(elapsed_ms), 1),
                "base_probability": round(base, 4),
                "recorded_at": now_iso(),
            },
        )
        written += 1
        print(f"[{written:>4}/{len(todo)}] {row['id']:<28} agreement {agreement:.2f} {elapsed_ms / 1000:.1f} s",
              file=stream, flush=True)  # fmt: skip
    return written


def _parsed(output: str) -> dict[str, Any] | None:
    """A recorded output as the object it was, None when it was not one or was cut short."""
    try:
        value = json.loads(output)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


# main -------------------------------------------------------------------------------------------


def _load_gate_tasks() -> tuple[list[Any], Grader, GroundingFor]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import gate_tasks  # type: ignore[import-not-found,unused-ignore]  # bench/ is not a package

    return list(gate_tasks.load_tasks()), gate_tasks.grade, gate_tasks.grounding_check


async def _with_app(url: str, model: str, body: Callable[[AppState], Any], extra_hosts: Sequence[Host] = ()) -> Any:
    with tempfile.TemporaryDirectory(prefix="caelum-gate-") as work:
        config = gate_config(Path(work), url=url, model=model)
        async with open_app(config, environ={}, health_loop=False, extra_hosts=extra_hosts) as state:
            served = [m for h in state.pool.healthy_hosts() for m in h.models]
            if model not in served:
                raise SystemExit(
                    f"{url} does not serve {model!r} (it serves: {', '.join(served) or 'nothing reachable'}); "
                    "start the model server (make bench-model does) or pass --url/--model"
                )
            return await body(state)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--record", action="store_true", help="run the labelled tasks not yet recorded")
    parser.add_argument("--regrade", action="store_true", help="relabel the recording with the current graders")
    parser.add_argument("--record-agreement", action="store_true", help="sample agreement in the uncertain band")
    parser.add_argument("--replay", action="store_true", help="fit on dev, score on test, print the table")
    parser.add_argument("--write-default", action="store_true", help=f"with --replay: write {DEFAULT_TABLE.name}")
    parser.add_argument("--json", action="store_true", help="print the replay as JSON")
    parser.add_argument("--url", default=DEFAULT_URL, help="the OpenAI-compatible server (default %(default)s)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the model it serves (default %(default)s)")
    parser.add_argument("--recordings", type=Path, default=RECORDINGS, help="folder of the recordings")
    parser.add_argument("--limit", type=int, default=None, help="record (or sample) at most this many new tasks")
    parser.add_argument("--concurrency", type=int, default=2, help="tasks in flight (the server's slots)")
    parser.add_argument("--band", type=float, nargs=2, default=DEFAULT_BAND, metavar=("LOW", "HIGH"))
    parser.add_argument("--samples", type=int, default=AGREEMENT_SAMPLES, help="agreement samples per task")
    parser.add_argument(
        "--no-family",
        action="store_true",
        help="with --write-default: entries for the recorded model only (other models keep the prior)",
    )
    parser.add_argument(
        "--no-agreement",
        action="store_true",
        help="with --replay: fit, score and write without the agreement samples (entries without a band: "
        "the router then never samples for them)",
    )
    parser.add_argument("--table", type=Path, default=DEFAULT_TABLE, help="where --write-default writes")
    parser.add_argument(
        "--source", action="append", default=None, help="record (or sample) only this source's tasks (repeatable)"
    )
    args = parser.parse_args(argv)
    if not (args.record or args.regrade or args.record_agreement or args.replay):
        parser.error("say what to do: --record, --regrade, --record-agreement and/or --replay")
    if args.write_default and not args.replay:
        parser.error("--write-default needs --replay (it writes the fits the replay prints)")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    recording = args.recordings / f"{model_slug(args.model)}.jsonl"
    agreement_file = args.recordings / f"{model_slug(args.model)}.agreement.jsonl"
    band = (float(args.band[0]), float(args.band[1]))

    if args.record or args.regrade or args.record_agreement:
        tasks, grade, grounding_for = _load_gate_tasks()
        if args.source:
            unknown = set(args.source) - {field_of(t, "source") for t in tasks}
            if unknown:
                parser.error(f"no tasks from {', '.join(sorted(unknown))}; the sources are the files in tasks/")
            if args.regrade:
                parser.error("--regrade rewrites the whole recording: run it without --source")
            tasks = [t for t in tasks if field_of(t, "source") in args.source]
        if args.regrade:
            timings: dict[str, list[float]] = {}
            with locked(recording):
                rows, changed, dropped = anyio.run(
                    lambda: regrade(
                        latest(read_jsonl(recording)), tasks, grade=grade, grounding_for=grounding_for, timings=timings
                    )
                )
                write_jsonl(recording, rows)
            print(f"regraded {recording}: {changed} rows changed, {dropped} dropped (task gone or changed)",
                  file=sys.stderr)  # fmt: skip
            print(verifier_cost(timings), file=sys.stderr)
        if args.record:
            todo = tasks
            if args.limit is not None:
                done = {r["id"] for r in read_jsonl(recording)}
                todo = [t for t in tasks if field_of(t, "id") in done]
                todo += [t for t in interleaved(tasks) if field_of(t, "id") not in done][: args.limit]

            async def run_record(state: AppState) -> RecordSummary:
                return await record(
                    state,
                    todo,
                    recording,
                    model=args.model,
                    grade=grade,
                    grounding_for=grounding_for,
                    concurrency=args.concurrency,
                )

            summary = anyio.run(_with_app, args.url, args.model, run_record)
            print(
                f"recorded {summary.recorded} tasks ({summary.correct} right) in {summary.seconds:.0f} s; "
                f"{summary.skipped} were already there; {len(summary.failed)} gave no answer",
                file=sys.stderr,
            )
        if args.record_agreement:
            rows = latest(r for r in read_jsonl(recording) if r["model"] == args.model)
            apart = kinds_apart(rows, {})["apart"]

            async def run_agreement(state: AppState) -> int:
                return await record_agreement(
                    state,
                    tasks,
                    rows,
                    agreement_file,
                    band=band,
                    samples=args.samples,
                    grounding_for=grounding_for,
                    limit=args.limit,
                    apart=apart,
                )

            anyio.run(_with_app, args.url, args.model, run_agreement)

    if args.replay:
        rows = latest(r for r in read_jsonl(recording) if r["model"] == args.model)
        if not rows:
            raise SystemExit(f"no recording at {recording}: run bench/gate.py --record first")
        agreement = [] if args.no_agreement else latest(read_jsonl(agreement_file))
        started = time.perf_counter()
        tasks, _, _ = _load_gate_tasks()
        sources = {str(field_of(t, "id")): source_of(t) for t in tasks}
        groups = {str(field_of(t, "id")): str(field_of(t, "group")) for t in tasks}
        result = replay(rows, agreement, prompt_chars=prompt_characters(tasks), sources=sources, groups=groups)
        result["seconds"] = round(time.perf_counter() - started, 2)
        if args.json:
            print(json.dumps(result, indent=2, sort_keys=True))
        else:
            print_replay(result)
            print(f"\nreplayed in {result['seconds']:.1f} s")
        if args.write_default:
            write_default(rows, agreement, args.table, band=band, family=not args.no_family, sources=sources)
            print(f"wrote {args.table}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
