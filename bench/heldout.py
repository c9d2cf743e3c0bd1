"""The gate's held-out check (issue 21): calibrated confidence on a labelled set the gate never saw.

The gate (``bench/gate.py``) fits the calibration from its own labelled set. This benchmark asks
whether the fitted confidence still means what it says on tasks from a source the gate never used,
through the product's public path: the real ``caelum-mcp serve`` over stdio, a real MCP client,
``delegate_task`` (task kind ``general``) with a JSON schema, Claude off.

The set (``bench/data/heldout/tasks/cruxeval_output.jsonl``, see its ``SOURCES.md``): CRUXEval
output prediction, "what does this Python function return for this call", answered as a Python
literal in ``{"output": "..."}``; every gold output re-checked by running the function.

``--build SOURCE``
    Writes the task file from CRUXEval's ``data/cruxeval.jsonl`` (refuses to overwrite it).
``--record``
    Every task not yet recorded, through ``delegate_task`` on a server configured with one
    OpenAI-compatible host (``--url``) serving ``--model`` as tier small, the shipped calibration
    and the router's defaults otherwise. One JSON line per task is appended to
    ``bench/data/heldout/recordings/<model>.jsonl``: id, correct, answer, the reported confidence,
    the execution record's confidence parts (raw score, signals, calibration label; agreement is in
    the signals when it was sampled), path, latency. Resumable: recorded ids are skipped.
``--record-agreement``
    For every recorded answer, the router's agreement samples (``[router] agreement_samples`` at
    ``agreement_temperature``, the defaults) of the very task ``delegate_task`` sent, compared with
    the recorded answer, appended to ``recordings/<model>.agreement.jsonl`` (id, agreement, samples,
    elapsed_ms). The answers were recorded when the shipped table sampled nothing for ``general``;
    this measures what sampling would have said without recording them again. Resumable.
``--replay``
    No model: P(correct) recomputed from the stored signals with the calibration table as it is
    now (``CalibrationTable.load``, the model's ``general`` entry), so the figures can be re-scored
    after the calibration is refitted; prints n, accuracy, AUROC and ECE raw / calibrated, the share
    clearing the threshold and its accuracy, next to the figures as reported live.

Run (the model served at ``--url``)::

    .venv/bin/python bench/heldout.py --record [--limit N]
    .venv/bin/python bench/heldout.py --record-agreement [--limit N]
    .venv/bin/python bench/heldout.py --replay [--json]
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from caelum_mcp.core.confidence import raw_score
from caelum_mcp.engine.calibration import (
    CalibrationEntry,
    CalibrationError,
    CalibrationTable,
    Signals,
    metrics,
    now_iso,
)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data" / "heldout"
TASKS = DATA / "tasks" / "cruxeval_output.jsonl"
RECORDINGS = DATA / "recordings"
DEFAULT_URL = "http://127.0.0.1:18900"
DEFAULT_MODEL = "qwen2.5-coder:1.5b"
KIND = "general"  # delegate_task's task kind
THRESHOLD = 0.75  # the router's default confidence threshold

# Selection (fixed before any answer was recorded; see SOURCES.md). The prompt stays under ~250
# tokens (the pinned model reads ~22 prompt tokens/s on this CPU) and the gold fits the output cap
# with the JSON around it and the router's confidence field (Qwen's tokenizer spends a token a digit).
MAX_CODE_CHARS = 600
MAX_INPUT_CHARS = 200
MAX_OUTPUT_CHARS = 40
TASK_COUNT = 60
MAX_TOKENS = 64
TIME_BUDGET_S = 900.0  # the shared server queues requests; quality is measured here, not speed
ANSWER_CHARS = 300

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"output": {"type": "string", "description": "the returned value as a Python literal"}},
    "required": ["output"],
}

# The gold check runs CRUXEval's code in a child: isolated interpreter (-I), no environment but the
# hash seed, a time limit, and caps on memory and on what it may write.
GOLD_TIMEOUT_S = 10.0
GOLD_OUTPUT_CAP = 64 * 1024
GOLD_MEMORY_CAP = 512 * 1024 * 1024
GOLD_SEEDS = ("0", "1")  # an output that depends on the hash seed (set order of strings) has no one gold
_GOLD_RUNNER = r"""
import contextlib, io, json, sys
spec = json.loads(sys.stdin.read())
scope = {}
with contextlib.redirect_stdout(io.StringIO()):
    exec(spec["code"], scope)
    result = eval("f(" + spec["input"] + ")", scope)
sys.stdout.write(repr(result))
"""


# tasks ------------------------------------------------------------------------------------------


def prompt_of(code: str, call_input: str) -> str:
    """What the model is asked: the function, the call, and how to answer."""
    return (
        "Given this Python function and this call, what does it return?\n\n"
        f"```python\n{code}\n```\n\n"
        f"Call: f({call_input})\n\n"
        "Put the returned value in `output`, written as a Python literal (strings quoted)."
    )


@dataclass(frozen=True)
class HeldoutTask:
    id: str
    source_id: str
    code: str
    input: str
    gold: str
    prompt: str
    max_tokens: int = MAX_TOKENS

    def fingerprint(self) -> str:
        """A hash of what the model is shown: an answer recorded for another prompt is recorded again."""
        shown = json.dumps([self.prompt, SCHEMA, self.max_tokens], sort_keys=True)
        return hashlib.sha256(shown.encode()).hexdigest()[:16]


def load_tasks(path: Path = TASKS) -> list[HeldoutTask]:
    """The task file's tasks; a malformed line stops with its line number."""
    if not path.exists():
        raise SystemExit(f"{path} does not exist; build it with `bench/heldout.py --build <cruxeval.jsonl>`")
    tasks = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            tasks.append(HeldoutTask(**row))
        except (json.JSONDecodeError, TypeError) as exc:
            raise SystemExit(f"{path}:{number}: not a held-out task ({exc})") from exc
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"{path}: an id appears twice")
    return tasks


def run_function(code: str, call_input: str, *, seed: str = "0", timeout_s: float = GOLD_TIMEOUT_S) -> str:
    """``repr(f(<input>))`` computed in a child interpreter (limits above); ValueError says why not."""

    def limits() -> None:  # runs in the child, before exec
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (GOLD_MEMORY_CAP, GOLD_MEMORY_CAP))
        resource.setrlimit(resource.RLIMIT_FSIZE, (GOLD_OUTPUT_CAP, GOLD_OUTPUT_CAP))

    with tempfile.TemporaryFile() as out:
        try:
            # our own interpreter and a fixed runner; the row's code and input go in on stdin
            proc = subprocess.run(
                [sys.executable, "-I", "-c", _GOLD_RUNNER],
                input=json.dumps({"code": code, "input": call_input}).encode(),
                stdout=out,
                stderr=subprocess.PIPE,
                env={"PYTHONHASHSEED": seed},
                timeout=timeout_s,
                preexec_fn=limits,  # rlimits only; the caller is single-threaded here
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ValueError(f"did not return within {timeout_s:g} s") from exc
        if proc.returncode != 0:
            tail = proc.stderr[-GOLD_OUTPUT_CAP:].decode(errors="replace").strip().splitlines()
            raise ValueError(f"raised: {tail[-1] if tail else f'exit {proc.returncode}'}")
        out.seek(0)
        data = out.read(GOLD_OUTPUT_CAP + 1)
    if len(data) > GOLD_OUTPUT_CAP:
        raise ValueError(f"returned more than {GOLD_OUTPUT_CAP} bytes")
    return data.decode(errors="replace")


def check_gold(code: str, call_input: str, gold: str) -> str | None:
    """None when running the function gives ``gold`` under every hash seed, else why not."""
    try:
        expected = ast.literal_eval(gold)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        return f"the gold is not a Python literal ({exc})"
    for seed in GOLD_SEEDS:
        try:
            got = run_function(code, call_input, seed=seed)
        except ValueError as exc:
            return str(exc)
        try:
            same = _same_value(ast.literal_eval(got), expected)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            same = got == gold
        if not same:
            return f"returned {got[:80]} under hash seed {seed}, not {gold}"
    return None


@dataclass
class BuildSummary:
    eligible: int = 0
    picked: int = 0
    dropped: list[str] = field(default_factory=list)  # "source id: why"
    written: int = 0


def build(source: Path, out: Path = TASKS, *, count: int = TASK_COUNT) -> BuildSummary:
    """Select ``count`` tasks from CRUXEval's rows and write them (see SOURCES.md for the rule).

    Eligible: code <= MAX_CODE_CHARS, input <= MAX_INPUT_CHARS, gold output <= MAX_OUTPUT_CHARS.
    Of the eligible rows in file order, every k-th from the first (k = eligible // count); a row
    whose gold does not reproduce when run is dropped, not replaced, so nothing is chosen twice.
    """
    if out.exists():
        raise SystemExit(f"{out} exists; tasks are never rebuilt once recorded (delete it to start over)")
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    eligible = [
        r
        for r in rows
        if len(r["code"]) <= MAX_CODE_CHARS
        and len(r["input"]) <= MAX_INPUT_CHARS
        and len(r["output"]) <= MAX_OUTPUT_CHARS
    ]
    summary = BuildSummary(eligible=len(eligible))
    step = max(1, len(eligible) // count)
    picked = eligible[::step][:count]
    summary.picked = len(picked)
    tasks = []
    for row in picked:
        problem = check_gold(row["code"], row["input"], row["output"])
        if problem is not None:
            summary.dropped.append(f"{row['id']}: {problem}")
            continue
        tasks.append(
            HeldoutTask(
                id=f"cruxeval/{row['id']}",
                source_id=row["id"],
                code=row["code"],
                input=row["input"],
                gold=row["output"],
                prompt=prompt_of(row["code"], row["input"]),
            )
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for task in tasks:
            fh.write(json.dumps(task.__dict__, ensure_ascii=False, sort_keys=True) + "\n")
    summary.written = len(tasks)
    return summary


# grading ----------------------------------------------------------------------------------------


def _same_value(a: object, b: object) -> bool:
    """Python equality, as CRUXEval's own check (``assert f(input) == answer``), refusing the
    cross-type matches it allows (True == 1, 1 == 1.0) unless the types agree all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        assert isinstance(b, list | tuple)
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    return bool(a == b)


def _normalised(text: str) -> str:
    return re.sub(r"\s+", "", text)


def grade(answer: str | None, gold: str) -> bool:
    """Whether ``answer`` (the model's ``output`` string) is ``gold`` (a Python literal).

    Both parsed with ``ast.literal_eval`` and compared as values (:func:`_same_value`: ``[1, 2]``
    equals ``[1,2]``, a set in any order, but ``1`` is not ``True`` nor ``'1'``). An answer that is
    not a literal counts when it equals the gold's text without whitespace, or, for a string gold,
    when it is that string written without its quotes (the JSON field is already a string). An
    empty answer is no answer.
    """
    text = (answer or "").strip()
    if not text:  # no answer at all, even where the gold is the empty string
        return False
    gold_value = ast.literal_eval(gold)
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return _normalised(text) == _normalised(gold) or (isinstance(gold_value, str) and text == gold_value)
    return _same_value(value, gold_value)


# recordings -------------------------------------------------------------------------------------


def model_slug(model: str) -> str:
    """A model name as a file name: ``qwen2.5-coder:1.5b`` → ``qwen2.5-coder-1.5b``."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in model)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a recording (none when it does not exist); a last line cut short by a killed
    run is left out, and one row per id is kept (the last written)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    by_id: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"{path}:{number}: not JSON ({exc}); fix or delete that line and run again") from exc
        by_id[row["id"]] = row
    return list(by_id.values())


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the recording's lock (two recorders by mistake never interleave a line); the lock file
    lives in the temp directory, not beside the committed recording."""
    path.parent.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    with (Path(tempfile.gettempdir()) / f"caelum-heldout-{name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def append_row(path: Path, row: Mapping[str, Any]) -> None:
    """Append one row; a line cut short by a killed run is cut off first so the file stays JSONL."""
    with _locked(path):
        if path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            text = path.read_text(encoding="utf-8")
            path.write_text(text[: text.rfind("\n") + 1], encoding="utf-8")
        with path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def recording_row(task: HeldoutTask, structured: Mapping[str, Any], latency_s: float) -> dict[str, Any]:
    """The row for one ``delegate_task`` result (its structured content)."""
    execution = structured["execution"]
    parts = execution["confidence_parts"]
    if parts.get("signals") is None:
        raise RuntimeError(f"{task.id}: the execution record carries no signals; the replay needs them")
    data = structured.get("data")
    answer = data.get("output") if isinstance(data, dict) else None
    answer = answer if isinstance(answer, str) else None
    return {
        "id": task.id,
        "task_sha": task.fingerprint(),
        "kind": KIND,
        "model": execution["model"],
        "host": execution["host"],
        "path": execution["path"],
        "correct": grade(answer, task.gold),
        "answer": None if answer is None else answer[:ANSWER_CHARS],
        "gold": task.gold,
        "confidence": float(execution["confidence"]),
        "threshold": float(execution["threshold"]),
        "raw_score": parts.get("raw_score"),
        "signals": parts["signals"],
        "calibration": parts.get("calibration"),
        "agreement": parts["signals"].get("agreement"),
        "attempts": int(execution["attempts"]),
        "output_tokens": int(execution["output_tokens"]),
        "latency_ms": float(execution["latency_ms"]),
        "call_s": round(latency_s, 2),
        "recorded_at": now_iso(),
    }


def server_config(folder: Path, *, url: str, model: str) -> Path:
    """The server's config: one OpenAI-compatible host serving ``model`` as tier small, no embedded
    model, Claude off; the shipped calibration and the router's defaults otherwise. The time limits
    are long because the benchmark's requests queue behind other work on a shared server."""
    path = folder / "caelum.toml"
    path.write_text(
        "# written by bench/heldout.py\n"
        'embedded = "off"\n'
        "implicit_ollama = false\n"
        f"data_dir = {json.dumps(str(folder / 'data'))}\n\n"
        "[tiers]\n"
        f'{json.dumps(model)} = "small"\n\n'
        "[pool]\n"
        f"call_deadline_s = {TIME_BUDGET_S:g}\n"
        f"first_byte_timeout_s = {TIME_BUDGET_S:g}\n\n"
        "[router.tasks.general]\n"
        f"time_budget_s = {TIME_BUDGET_S:g}\n\n"
        "[claude]\n"
        "enabled = false\n\n"
        "[[hosts]]\n"
        'name = "heldout"\n'
        'kind = "openai"\n'
        f"url = {json.dumps(url)}\n"
        "max_concurrency = 2\n",
        encoding="utf-8",
    )
    return path


@dataclass
class RecordSummary:
    planned: int = 0
    skipped: int = 0
    recorded: int = 0
    correct: int = 0
    failed: list[str] = field(default_factory=list)


async def record(
    tasks: Sequence[HeldoutTask],
    out: Path,
    *,
    url: str,
    model: str,
    limit: int | None = None,
    concurrency: int = 1,
    stream: TextIO = sys.stderr,
) -> RecordSummary:
    """Record every task not yet in ``out`` through ``delegate_task`` on a real stdio server."""
    import anyio
    from mcp import Client, StdioServerParameters

    current = {t.id: t.fingerprint() for t in tasks}
    done = {r["id"] for r in read_jsonl(out) if current.get(r["id"]) == r.get("task_sha")}
    todo = [t for t in tasks if t.id not in done][: limit if limit is not None else None]
    summary = RecordSummary(planned=len(todo), skipped=len(done))
    print(f"recording {len(todo)} tasks to {out} ({len(done)} already there), {concurrency} at a time",
          file=stream, flush=True)  # fmt: skip
    if not todo:
        return summary
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="caelum-heldout-") as work:
        folder = Path(work)
        home = folder / "home"
        home.mkdir()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(home),
            "CAELUM_CONFIG": str(server_config(folder, url=url, model=model)),
            "CAELUM_DATA_DIR": str(folder / "data"),
            "CAELUM_LOG_LEVEL": "warning",
        }
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "caelum_mcp", "serve"], env=env, cwd=str(ROOT)
        )
        queue = iter(todo)
        async with Client(params, read_timeout_seconds=TIME_BUDGET_S + 60) as client:

            async def one(task: HeldoutTask) -> None:
                t0 = time.monotonic()
                arguments = {
                    "prompt": task.prompt,
                    "json_schema": SCHEMA,
                    "max_tokens": task.max_tokens,
                    "model": model,
                    "allow_claude": False,
                }
                try:
                    result = await client.call_tool("delegate_task", arguments)
                except Exception as exc:  # any failure of one call: reported, and retried by the next run
                    summary.failed.append(f"{task.id}: {exc}")
                    print(f"  {task.id}: no answer, not recorded: {str(exc)[:200]}", file=stream, flush=True)
                    return
                if result.is_error or result.structured_content is None:
                    text = " ".join(getattr(c, "text", "") for c in result.content)[:200]
                    summary.failed.append(f"{task.id}: {text}")
                    print(f"  {task.id}: tool error, not recorded: {text}", file=stream, flush=True)
                    return
                row = recording_row(task, result.structured_content, time.monotonic() - t0)
                append_row(out, row)
                summary.recorded += 1
                summary.correct += bool(row["correct"])
                finished = summary.recorded + len(summary.failed)
                elapsed = time.monotonic() - started
                left_min = (len(todo) - finished) * elapsed / finished / 60
                print(
                    f"[{finished:>3}/{len(todo)}] {task.id:<22} {'right' if row['correct'] else 'WRONG'} "
                    f"conf {row['confidence']:.2f} raw {row['raw_score'] or 0:.2f} {row['call_s']:5.1f} s | "
                    f"accuracy {summary.correct}/{summary.recorded} | ~{left_min:.0f} min left",
                    file=stream,
                    flush=True,
                )

            async def worker() -> None:
                for task in queue:  # a shared iterator: each task goes to one worker
                    await one(task)

            async with anyio.create_task_group() as tg:
                for _ in range(max(1, concurrency)):
                    tg.start_soon(worker)
    return summary


def delegate_llm_task(task: HeldoutTask, model: str) -> Any:
    """The router's task for ``task`` exactly as ``delegate_task`` builds it from the recorder's
    arguments (no system message, the JSON schema, the model pinned, no Claude)."""
    from caelum_mcp.core.llm import LLMTask, TaskKind
    from caelum_mcp.core.types import ChatMessage

    return LLMTask(
        name="delegate_task",
        kind=TaskKind.GENERAL,
        messages=(ChatMessage(role="user", content=task.prompt),),
        output_schema=SCHEMA,
        model=model,
        allow_claude=False,
        max_output_tokens=task.max_tokens,
    )


def agreement_path(recording: Path) -> Path:
    return recording.with_name(recording.name.removesuffix(".jsonl") + ".agreement.jsonl")


async def record_agreement(
    tasks: Sequence[HeldoutTask],
    recording: Path,
    *,
    url: str,
    model: str,
    limit: int | None = None,
    stream: TextIO = sys.stderr,
) -> int:
    """Agreement samples for each recorded answer of a current task not sampled yet; returns how
    many rows were appended. An answer that was not a string (no ``output``) has nothing to agree
    with and is left out."""
    from caelum_mcp.core.errors import CaelumError
    from caelum_mcp.engine.config import load_config
    from caelum_mcp.serving.app import open_app

    out = agreement_path(recording)
    by_id = {t.id: t for t in tasks}
    done = {r["id"] for r in read_jsonl(out)}
    todo = [
        r
        for r in read_jsonl(recording)
        if r["id"] in by_id
        and r.get("task_sha") == by_id[r["id"]].fingerprint()
        and r["id"] not in done
        and isinstance(r.get("answer"), str)
        and r.get("model") == model
    ][: limit if limit is not None else None]
    print(f"agreement: {len(todo)} recorded answers to sample ({len(done)} already sampled)", file=stream, flush=True)
    written = 0
    with tempfile.TemporaryDirectory(prefix="caelum-heldout-") as work:
        config = load_config(server_config(Path(work), url=url, model=model), environ={})
        async with open_app(config, environ={}, health_loop=False) as state:
            samples = config.router.agreement_samples
            for row in todo:
                task = by_id[row["id"]]
                try:
                    agreement, count, elapsed_ms = await state.router.sample_agreement(
                        delegate_llm_task(task, model), {"output": row["answer"]}, samples
                    )
                except CaelumError as exc:
                    print(f"  {task.id}: not sampled: {str(exc)[:200]}", file=stream, flush=True)
                    continue
                if agreement is None:
                    print(f"  {task.id}: no sample answered, not recorded", file=stream, flush=True)
                    continue
                append_row(
                    out,
                    {
                        "id": task.id,
                        "task_sha": task.fingerprint(),
                        "model": model,
                        "agreement": agreement,
                        "samples": count,
                        "elapsed_ms": round(float(elapsed_ms), 1),
                        "recorded_at": now_iso(),
                    },
                )
                written += 1
                verdict = "right" if row["correct"] else "WRONG"
                line = f"[{written:>3}/{len(todo)}] {task.id:<22} agreement {agreement:.2f} {verdict}"
                print(f"{line} {elapsed_ms / 1000:.1f} s", file=stream, flush=True)
    return written


def with_agreement(rows: Sequence[Mapping[str, Any]], sampled: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The recorded rows with the agreement recorded apart put into their signals (a row whose own
    signals carry agreement, sampled live, keeps it)."""
    by_id = {a["id"]: a for a in sampled}
    merged = []
    for row in rows:
        extra = by_id.get(row["id"])
        if extra is not None and extra.get("task_sha", row.get("task_sha")) == row.get("task_sha"):
            signals = dict(row["signals"])
            if signals.get("agreement") is None:
                signals["agreement"], signals["samples"] = extra["agreement"], extra["samples"]
            row = {**row, "signals": signals}
        merged.append(dict(row))
    return merged


# --replay ---------------------------------------------------------------------------------------


def calibrated(entry: CalibrationEntry, signals: Signals) -> float:
    """P(correct) as the router computes it from ``entry``: the base calibrator, or the
    with-agreement one where the base lies in the entry's band and agreement was sampled."""
    probability = entry.base.probability(signals)
    band, with_agreement = entry.band, entry.with_agreement
    if (
        with_agreement is not None
        and band is not None
        and signals.agreement is not None
        and band[0] <= probability <= band[1]
    ):
        probability = with_agreement.probability(signals)
    return probability


def replay(
    rows: Sequence[Mapping[str, Any]], table: CalibrationTable, *, threshold: float = THRESHOLD
) -> dict[str, Any]:
    """The figures of a recording: raw score, the live confidence, and P(correct) from ``table``."""
    labels = [bool(r["correct"]) for r in rows]
    signals = [Signals.model_validate(r["signals"]) for r in rows]
    labels_used: dict[str, str] = {}
    probs = []
    for row, s in zip(rows, signals, strict=True):
        entry, label = table.lookup(str(row["model"]), KIND)
        labels_used[str(row["model"])] = label
        probs.append(calibrated(entry, s))
    return {
        "n": len(rows),
        "threshold": threshold,
        "calibration": labels_used,
        "raw": metrics([raw_score(s) for s in signals], labels, threshold),
        "live": metrics([float(r["confidence"]) for r in rows], labels, threshold),
        "calibrated": metrics(probs, labels, threshold),
        "sampled": sum(1 for s in signals if s.agreement is not None),
        # with the table unchanged since recording, every answer: the replay computes what the router did
        "matches_live": sum(1 for r, p in zip(rows, probs, strict=True) if abs(float(r["confidence"]) - p) < 1e-3),
    }


TARGETS = {"auroc": 0.80, "clear_accuracy": 0.80, "ece": 0.15, "clear_share": 0.10}


def meets(figures: Mapping[str, Any]) -> dict[str, bool]:
    """Issue 21's held-out targets: AUROC >= 0.80, >= 80 % of what clears right, ECE <= 0.15, >= 10 % clears."""

    def at_least(name: str) -> bool:
        value = figures.get(name)
        return value is not None and value >= TARGETS[name]

    ece = figures.get("ece")
    return {
        "auroc": at_least("auroc"),
        "clear_accuracy": at_least("clear_accuracy"),
        "ece": ece is not None and ece <= TARGETS["ece"],
        "clear_share": at_least("clear_share"),
    }


def _fmt(value: float | None, pct: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.0f} %" if pct else f"{value:.2f}"


def print_replay(result: Mapping[str, Any], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    n, threshold = result["n"], result["threshold"]
    acc = result["raw"]["accuracy"]
    print(f"held-out set (CRUXEval output prediction, delegate_task kind {KIND}): n={n}, accuracy {_fmt(acc, True)}",
          file=out)  # fmt: skip
    for model, label in result["calibration"].items():
        print(f"calibration now for {model}: {label}", file=out)
    print(f"the replay gives the live confidence on {result['matches_live']} of {n} answers "
          "(all of them while the table is the one the server had)", file=out)  # fmt: skip
    if result["sampled"]:
        print(f"agreement sampled on {result['sampled']} answers", file=out)
    header = f"{'score':<26} {'AUROC':>6} {'ECE':>6} {'clears':>7} {'right of clearing':>18}  targets"
    print(header, file=out)
    for name, title in (
        ("raw", "raw score"),
        ("live", "reported live (confidence)"),
        ("calibrated", "calibrated now (replay)"),
    ):
        f = result[name]
        ok = meets(f)
        verdict = "PASS" if all(ok.values()) else "FAIL (" + ", ".join(k for k, v in ok.items() if not v) + ")"
        print(
            f"{title:<26} {_fmt(f['auroc']):>6} {_fmt(f['ece']):>6} {_fmt(f['clear_share'], True):>7} "
            f"{_fmt(f['clear_accuracy'], True):>18}  {verdict}",
            file=out,
        )
    print(
        f"targets (issue 21): AUROC >= 0.80, ECE <= 0.15, >= 10 % clear {threshold:g}, >= 80 % of those right",
        file=out,
    )


# main -------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--build", type=Path, metavar="CRUXEVAL_JSONL", help="write the task file from CRUXEval")
    mode.add_argument("--record", action="store_true", help="record the model's answers through delegate_task")
    mode.add_argument("--record-agreement", action="store_true", help="sample agreement for the recorded answers")
    mode.add_argument("--replay", action="store_true", help="score the recording with the calibration as it is now")
    parser.add_argument("--url", default=DEFAULT_URL, help="the OpenAI-compatible host serving the model")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--limit", type=int, default=None, help="record at most N tasks this run")
    parser.add_argument("--concurrency", type=int, default=1, choices=(1, 2))
    parser.add_argument("--tasks", type=Path, default=TASKS)
    parser.add_argument("--recording", type=Path, default=None, help="default: recordings/<model>.jsonl")
    parser.add_argument(
        "--calibration", type=Path, default=None, help="a calibration.json over the shipped table (replay)"
    )
    parser.add_argument("--json", action="store_true", help="replay: print the figures as JSON")
    parser.add_argument(
        "--no-agreement", action="store_true", help="replay: without the agreement recorded by --record-agreement"
    )
    args = parser.parse_args(argv)
    recording = args.recording or RECORDINGS / f"{model_slug(args.model)}.jsonl"

    if args.build:
        built = build(args.build, args.tasks)
        print(f"{built.eligible} eligible rows, {built.picked} picked, {built.written} written to {args.tasks}")
        for line in built.dropped:
            print(f"  dropped {line}")
        return 0
    if args.record:
        import anyio

        tasks = load_tasks(args.tasks)

        async def run() -> RecordSummary:
            return await record(
                tasks, recording, url=args.url, model=args.model, limit=args.limit, concurrency=args.concurrency
            )

        summary = anyio.run(run)
        print(
            f"recorded {summary.recorded} ({summary.correct} right), {summary.skipped} there before, "
            f"{len(summary.failed)} failed (run again to retry them)",
            file=sys.stderr,
        )
        return 1 if summary.failed else 0
    if args.record_agreement:
        import anyio

        tasks = load_tasks(args.tasks)

        async def run_agreement() -> int:
            return await record_agreement(tasks, recording, url=args.url, model=args.model, limit=args.limit)

        written = anyio.run(run_agreement)
        print(f"sampled agreement for {written} answers into {agreement_path(recording)}", file=sys.stderr)
        return 0
    rows = read_jsonl(recording)
    if not rows:
        raise SystemExit(f"{recording} holds no recorded answers; run --record first")
    table = CalibrationTable.load(None, threshold=THRESHOLD)
    if table.problems:
        raise SystemExit("; ".join(table.problems))
    if args.calibration is not None:  # read, never moved aside as the server would a broken file
        try:
            prior, entries = CalibrationTable.read(args.calibration)
        except CalibrationError as exc:
            raise SystemExit(str(exc)) from exc
        merged = {**table.entries, **{e.key: e for e in entries}}
        table = CalibrationTable(merged.values(), prior=prior or table.prior, threshold=THRESHOLD)
    if not args.no_agreement:
        rows = with_agreement(rows, read_jsonl(agreement_path(recording)))
    result = replay(rows, table)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print_replay(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
