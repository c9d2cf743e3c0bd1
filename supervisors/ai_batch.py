"""``run_batch`` and ``batch_status``: one prompt template over many inputs, across the whole pool.

A batch is read (streamed, :mod:`.batch_inputs`) into the batch store (:mod:`.batch_store`) when
the call comes in, then run by a task that outlives the call: ``concurrency`` workers (the summed
slots of the hosts that serve the tier) each take the next pending item and run it through
``ctx.llm.run``, so the pool spreads the items by free slots (a slow host takes fewer) and the
confidence gate applies per item (Claude only when ``allow_claude``, inside the daily budget). A
low-confidence answer is kept and marked ``low_confidence``; a bad item (too big, not JSON, a
malformed CSV row, a field the template needs and the item lacks) gets an ``error`` row and the
rest runs.

Results are appended as JSONL to ``<data dir>/supervisors/ai/batches/<id>.jsonl`` (or ``output``
under the roots) as items finish: ``index``, ``id``, ``status``, ``answer`` or ``data``,
``error``, ``confidence``, ``path``, ``host``, ``model``, tokens, ``cost_usd``, ``seconds``.

A small batch (at most :data:`INLINE_ITEMS` items, expected within :data:`INLINE_S`) is waited for
inside the call with progress notes; a larger one returns at once with its id. Cancelling a call
that waits cancels its batch. After a kill -9 or a restart, unfinished batches resume when the
server starts (and when ``batch_status`` asks about one whose server is gone): the items that were
in flight run again, nothing finished does.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import psutil
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from caelum_mcp.errors import CaelumError, NoHostAvailableError, TaskSkippedError, ToolInputError
from caelum_mcp.llm import LLMTask, TaskKind
from caelum_mcp.pricing import CHARS_PER_TOKEN, DEFAULT_PRICES, price_for
from caelum_mcp.redaction import redact_all, redact_secrets
from caelum_mcp.supervisors.base import LLMService, PoolAdmin, ToolContext, ToolOutput
from caelum_mcp.tools.paths import resolve_project, resolves_inside, shown
from caelum_mcp.types import ChatMessage, Tier

from .ai_compare import object_schema
from .batch_inputs import (
    RawItem,
    Template,
    glob_files,
    inline_items,
    read_csv,
    read_file_item,
    read_jsonl,
    resolve_in_roots,
)
from .batch_store import BatchRow, BatchStore, ClaimedItem, Counts

log = logging.getLogger(__name__)

INLINE_ITEMS = 50  # at most this many items are waited for inside the call by default
INLINE_S = 120.0  # ... and only when expected within this time; a waiting call returns after it regardless
MAX_ITEMS = 100_000
DEFAULT_ITEM_BYTES = 100_000
HOST_POLL_S = 2.0
CANCEL_WAIT_S = 30.0  # batch_status(cancel) waits this long for the items in flight, then says 'running'
CONTROL_S = 2.0  # how often a running batch fits its concurrency to the pool's measured latencies
# A fast host is queued at most this many times its slots (its wait stays within a slow host's time).
MAX_OVERSUBSCRIBE = 4
MAX_CONCURRENCY = 512
FIRST_ERRORS = 5
_RUNNING_HERE: set[str] = set()  # batches this process runs (two servers in one process: tests)


class RunBatchInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str = Field(
        min_length=1, max_length=50_000, description="prompt with {{ item }}, {{ item.FIELD }}, {{ id }}"
    )
    items: list[Any] | None = Field(default=None, max_length=10_000, description="inline inputs")
    file: str | None = Field(default=None, max_length=4096, description=".jsonl or .csv (header row) file")
    glob: str | None = Field(default=None, max_length=500, description="files under `project`; text is the item")
    project: str | None = Field(default=None, max_length=4096, description="base folder of `glob`")
    id_field: str | None = Field(default=None, max_length=200, description="item field used as its id")
    system: str | None = Field(default=None, max_length=50_000)
    json_schema: dict[str, Any] | None = Field(default=None, description="object schema each answer must match")
    tier: Tier | None = None
    model: str | None = Field(default=None, max_length=200)
    allow_claude: bool = True
    max_tokens: int | None = Field(default=None, ge=16, le=32768)
    max_item_bytes: int = Field(default=DEFAULT_ITEM_BYTES, ge=16, le=5_000_000)
    output: str | None = Field(default=None, max_length=4096, description="results .jsonl under the roots")
    dry_run: bool = Field(default=False, description="estimate only: items, tokens, time, Claude ceiling")
    wait: bool | None = Field(default=None, description="wait in this call (default: when small)")

    @field_validator("json_schema")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return object_schema(value)

    @field_validator("tier")
    @classmethod
    def _chat_tier(cls, value: Tier | None) -> Tier | None:
        if value is Tier.EMBEDDING:
            raise ValueError("embedding models do not chat; use micro, small, full, large or code")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> RunBatchInput:
        given = [name for name in ("items", "file", "glob") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `items`, `file` or `glob`")
        return self


class BatchStatusInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_id: str | None = Field(default=None, max_length=64, description="default: the latest batch")
    cancel: bool = Field(default=False, description="stop taking new items; finished ones are kept")


class HostRate(BaseModel):
    host: str
    slots: int
    s_per_item: float | None = Field(description="measured seconds a call (ledger mean); null: unmeasured")


class BatchOutput(ToolOutput):
    batch_id: str | None
    status: Literal["estimate", "running", "done", "cancelled", "failed"]
    total: int
    done: int = 0
    ok: int = 0
    low_confidence: int = 0
    errors: int = 0
    in_flight: int = 0
    repeated: int = Field(default=0, description="items started twice (in flight at a crash)")
    concurrency: int = 0
    results: str | None = Field(default=None, description="results JSONL, one row an item as it finishes")
    elapsed_s: float | None = None
    eta_s: float | None = None
    input_tokens: int | None = Field(default=None, description="estimated, ~4 characters a token")
    expected_local_s: float | None = None
    claude_ceiling_usd: float | None = Field(default=None, description="if every item went to Claude")
    hosts: list[HostRate] = Field(default_factory=list)
    first_errors: list[str] = Field(default_factory=list)
    note: str | None = None


@dataclass
class Estimate:
    input_tokens: int
    expected_local_s: float | None
    claude_ceiling_usd: float | None
    hosts: list[HostRate]
    concurrency: int
    note: str | None


# reading the inputs -------------------------------------------------------------------------


@dataclass
class Source:
    """Where a batch's items come from, checked against the roots; :meth:`items` streams them."""

    kind: Literal["items", "jsonl", "csv", "glob"]
    label: str
    args: RunBatchInput
    path: Path | None = None
    files: list[Path] = field(default_factory=list)

    @classmethod
    def of(cls, args: RunBatchInput, roots: tuple[Path, ...]) -> Source:
        if args.items is not None:
            return cls("items", f"{len(args.items)} inline items", args)
        if args.file is not None:
            path = resolve_in_roots(args.file, roots, what="file")
            suffix = path.suffix.lower()
            if suffix not in (".jsonl", ".ndjson", ".csv"):
                raise ToolInputError(f"file {shown(args.file)}: give a .jsonl (one JSON value a line) or .csv file")
            return cls("csv" if suffix == ".csv" else "jsonl", str(path), args, path=path)
        assert args.glob is not None
        base = resolve_project(args.project or ".", roots)
        files = glob_files(base, args.glob, roots, MAX_ITEMS)
        if not files:
            raise ToolInputError(f"glob {shown(args.glob)} matches no files under {shown(str(base))}")
        return cls("glob", f"{args.glob} under {base}", args, path=base, files=files)

    def items(self) -> Iterator[RawItem]:
        limit, id_field = self.args.max_item_bytes, self.args.id_field
        if self.kind == "items":
            yield from inline_items(self.args.items or [], limit, id_field)
        elif self.kind == "jsonl":
            assert self.path is not None
            yield from read_jsonl(self.path, limit, id_field)
        elif self.kind == "csv":
            assert self.path is not None
            yield from read_csv(self.path, limit, id_field)
        else:
            assert self.path is not None
            for file in self.files:
                yield RawItem(file.relative_to(self.path).as_posix(), {"file": str(file)})

    def stored_rows(
        self, template: Template, system_chars: int, tally: list[int]
    ) -> Iterator[tuple[str, str | None, str | None]]:
        """``(id, payload JSON, input error)`` for the store, adding each item's estimated prompt
        characters to ``tally[0]``; stops with an error past :data:`MAX_ITEMS`."""
        for count, raw in enumerate(self.items(), 1):
            if count > MAX_ITEMS:
                raise ToolInputError(f"over {MAX_ITEMS:,} items; split the input into several batches")
            if raw.error is None:
                tally[0] += system_chars + _prompt_chars(self.kind, template, raw)
            # Kept redacted: the store never holds a secret, and the router would redact the prompt anyway.
            payload = None if raw.error is not None else json.dumps(redact_all(raw.value), ensure_ascii=False)
            yield redact_secrets(raw.item_id), payload, raw.error


def _prompt_chars(kind: str, template: Template, raw: RawItem) -> int:
    if kind == "glob":  # a file is read when its item runs; its size stands in for its text here
        try:
            return len(template.text) + os.stat(raw.value["file"]).st_size
        except OSError:
            return len(template.text)
    try:
        return len(template.render(raw.item_id, raw.value))
    except KeyError:
        return 0


# running ------------------------------------------------------------------------------------


def fill_concurrency(hosts: list[tuple[int, float | None]]) -> int:
    """Items in flight that keep every serving host's slots busy: ``(slots, latency ms)`` each.

    The pool sends a request to the host with the lowest expected completion time (latency times
    its queue once its slots are taken), so a slow host gets work only once the fast hosts' queues
    make them slower than it. Each host therefore needs ``slots x slowest / its latency`` requests
    (at most :data:`MAX_OVERSUBSCRIBE` times its slots); a host not measured yet counts its slots.
    """
    measured = [latency for _, latency in hosts if latency]
    slowest = max(measured, default=0.0)
    total = 0.0
    for slots, latency in hosts:
        factor = min(max(slowest / latency, 1.0), MAX_OVERSUBSCRIBE) if latency else 1.0
        total += slots * factor
    return max(1, min(MAX_CONCURRENCY, math.ceil(total)))


async def pool_concurrency(pool_admin: PoolAdmin, llm: LLMService, probe: LLMTask) -> int | None:
    """:func:`fill_concurrency` over the hosts that serve ``probe`` now; None when none does."""
    serving = {entry.rsplit("@", 1)[1] for entry in llm.availability(probe).local_models if "@" in entry}
    report = await pool_admin.astatus()
    hosts = [(h.max_concurrency, h.latency_ewma_ms) for h in report.hosts if h.name in serving and h.enabled]
    return fill_concurrency(hosts) if hosts else None


def owner_identity() -> tuple[int, float]:
    return os.getpid(), float(psutil.Process().create_time())


def owner_gone(row: BatchRow) -> bool:
    """Whether the process that ran ``row`` is gone (or is this one, no longer running it)."""
    if row.owner_pid == os.getpid():
        return row.id not in _RUNNING_HERE
    try:
        started = float(psutil.Process(row.owner_pid).create_time())
        return abs(started - row.owner_started) > 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return True


class NoHostNow(Exception):
    """No model may take the item now: it goes back to pending and the worker waits."""


@dataclass
class ActiveBatch:
    batch_id: str
    cancel: anyio.Event = field(default_factory=anyio.Event)
    finished: anyio.Event = field(default_factory=anyio.Event)
    changed: anyio.Event = field(default_factory=anyio.Event)
    started: float = field(default_factory=time.monotonic)
    done_here: int = 0
    concurrency: int = 0
    drained: bool = False  # no pending item was left to claim
    wake: anyio.Event = field(default_factory=anyio.Event)  # cancelled or drained: the controller ends

    def stop(self) -> None:
        """Cancel: no new items are taken; those in flight finish and are kept."""
        self.cancel.set()
        self.wake.set()

    def touch(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


def item_task(spec: dict[str, Any], batch_id: str, item_id: str, prompt: str) -> LLMTask:
    messages = ([ChatMessage(role="system", content=spec["system"])] if spec.get("system") else []) + [
        ChatMessage(role="user", content=prompt)
    ]
    return LLMTask(
        name="run_batch",
        kind=TaskKind.GENERAL,
        messages=tuple(messages),
        output_schema=spec.get("json_schema"),
        tier=Tier(spec["tier"]) if spec.get("tier") else None,
        model=spec.get("model"),
        allow_claude=bool(spec.get("allow_claude", True)),
        max_output_tokens=spec.get("max_tokens"),
        metadata={"batch": batch_id, "item": item_id[:200]},
    )


def _row(item: ClaimedItem, started: float, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "index": item.index,
        "id": item.item_id,
        "status": "error",
        "answer": None,
        "data": None,
        "error": None,
        "confidence": None,
        "path": None,
        "reason": None,
        "host": None,
        "model": None,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_usd": 0.0,
        "seconds": 0.0,
    }
    row.update(fields)
    row["seconds"] = round(time.monotonic() - started, 3)
    return row


async def run_item(item: ClaimedItem, row: BatchRow, template: Template, llm: LLMService) -> dict[str, Any]:
    """One item's result row; raises :class:`NoHostNow` when no model may take it at the moment."""
    started = time.monotonic()
    if item.input_error is not None:
        return _row(item, started, error=item.input_error)
    value = item.payload
    spec = row.spec
    if spec.get("source_kind") == "glob":
        file, base = Path(value["file"]), Path(spec["base"])
        if not resolves_inside(file, base):
            return _row(item, started, error="the file now resolves outside the project (a link changed?)")
        try:
            value = await anyio.to_thread.run_sync(read_file_item, file, int(spec["max_item_bytes"]))
        except ValueError as exc:
            return _row(item, started, error=str(exc))
    try:
        prompt = template.render(item.item_id, value)
    except KeyError as exc:
        return _row(item, started, error=f"{exc.args[0]}; fix the template or the item")
    task = item_task(spec, row.id, item.item_id, prompt)
    try:
        result = await llm.run(task)
    except (TaskSkippedError, NoHostAvailableError) as exc:
        raise NoHostNow(str(exc)) from exc
    except CaelumError as exc:
        return _row(item, started, error=str(exc))
    ex = result.execution
    structured = spec.get("json_schema") is not None
    answer = None
    if not structured:
        text = result.output.get("answer") if result.output else None
        answer = text if isinstance(text, str) else result.text
    return _row(
        item,
        started,
        status="low_confidence" if ex.path == "local_low_confidence" else "ok",
        answer=answer,
        data=result.output if structured else None,
        confidence=round(ex.confidence, 4),
        path=ex.path,
        reason=ex.reason,
        host=ex.host,
        model=ex.model,
        input_tokens=ex.input_tokens,
        output_tokens=ex.output_tokens,
        cost_usd=ex.cost_usd,
    )


async def run_batch_items(
    store: BatchStore, active: ActiveBatch, llm: LLMService, pool_admin: Callable[[], PoolAdmin | None]
) -> None:
    """Run every pending item of a batch to its end (or until cancelled), writing results as they
    come. Its concurrency starts at the stored figure and follows the pool's measured latencies
    (:func:`fill_concurrency`) while ``pool_admin()`` gives the pool's view."""
    row = await anyio.to_thread.run_sync(store.batch, active.batch_id)
    limiter = anyio.CapacityLimiter(max(1, row.concurrency))
    template = Template(row.spec["template"])
    results = Path(row.results)
    send, receive = anyio.create_memory_object_stream[dict[str, Any]](max_buffer_size=math.inf)
    claim_lock = anyio.Lock()
    waiting = anyio.Lock()

    async def wait_for_host(reason: str) -> None:
        async with waiting:  # one worker polls; the others queue behind it
            await anyio.to_thread.run_sync(store.set_note, row.id, f"waiting for a model: {reason}")
            probe = item_task(row.spec, row.id, "probe", "probe")
            while not active.cancel.is_set() and not llm.availability(probe).runnable:
                with anyio.move_on_after(HOST_POLL_S):
                    await active.cancel.wait()
            await anyio.to_thread.run_sync(store.set_note, row.id, None)

    async def worker(results_out: anyio.abc.ObjectSendStream[dict[str, Any]]) -> None:
        async with results_out:
            while not active.cancel.is_set():
                reason = ""
                result: dict[str, Any] | None = None
                async with limiter:
                    if active.cancel.is_set():
                        return
                    async with claim_lock:
                        claimed = await anyio.to_thread.run_sync(store.claim, row.id, 1)
                    if not claimed:
                        active.drained = True
                        active.wake.set()
                        return
                    try:
                        result = await run_item(claimed[0], row, template, llm)
                    except NoHostNow as exc:
                        await anyio.to_thread.run_sync(store.unclaim, row.id, [claimed[0].index])
                        reason = str(exc)
                if result is None:
                    await wait_for_host(reason)
                    continue
                await results_out.send(result)

    def write(rows: list[dict[str, Any]], out: Any) -> None:
        rows = [redact_all(r) for r in rows]
        store.finish(row.id, rows)  # committed first: a crash before the append is mended on resume
        out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        out.flush()

    async def writer() -> None:
        out = await anyio.to_thread.run_sync(lambda: open(results, "a", encoding="utf-8"))
        try:
            async with receive:
                async for first in receive:
                    rows = [first]
                    while True:
                        try:
                            rows.append(receive.receive_nowait())
                        except (anyio.WouldBlock, anyio.EndOfStream):
                            break
                    with anyio.CancelScope(shield=True):  # a result paid for is recorded, even at shutdown
                        await anyio.to_thread.run_sync(write, rows, out)
                    active.done_here += len(rows)
                    active.touch()
        finally:
            out.close()

    spawned = 0

    def spawn(tg: anyio.abc.TaskGroup, target: int) -> None:
        nonlocal spawned
        limiter.total_tokens = target
        while spawned < target:
            spawned += 1
            tg.start_soon(worker, send.clone())

    async def control(tg: anyio.abc.TaskGroup) -> None:
        probe = item_task(row.spec, row.id, "probe", "probe")
        wait_s = CONTROL_S / 4  # the first look comes soon: the first answers measured the hosts
        while not active.drained and not active.cancel.is_set():
            with anyio.move_on_after(wait_s):
                await active.wake.wait()
            wait_s = CONTROL_S
            admin = pool_admin()
            if admin is None or active.drained or active.cancel.is_set():
                continue
            target = await pool_concurrency(admin, llm, probe)
            if target is not None and target != limiter.total_tokens:
                spawn(tg, target)
                active.concurrency = target

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        async with send:  # open while the controller may start workers (each holds a clone)
            spawn(tg, max(1, row.concurrency))
            active.concurrency = row.concurrency
            await control(tg)


class BatchService:
    """The batches of one data folder while the server runs: the store, and the task group the
    batches run in so that they outlive the calls that started them."""

    def __init__(self, state_dir: Path, llm: LLMService, tg: anyio.abc.TaskGroup | None) -> None:
        self.state_dir = state_dir
        self.store = BatchStore(state_dir)
        self.llm = llm
        self.tg = tg
        self.active: dict[str, ActiveBatch] = {}
        # The pool's view, handed to each call of the ai supervisor's tools (not to the lifespan):
        # a batch resumed at start runs at its stored concurrency until the first call brings it.
        self.pool_admin: PoolAdmin | None = None
        self.resuming = anyio.Lock()

    def close(self) -> None:
        self.store.close()

    def start(self, batch_id: str, llm: LLMService) -> ActiveBatch:
        if self.tg is None:
            raise CaelumError("run_batch needs the running server (its lifespan runs the batches)")
        active = self.active[batch_id] = ActiveBatch(batch_id)
        _RUNNING_HERE.add(batch_id)
        self.tg.start_soon(self._run, active, llm)
        return active

    async def _run(self, active: ActiveBatch, llm: LLMService) -> None:
        batch_id = active.batch_id
        try:
            await run_batch_items(self.store, active, llm, lambda: self.pool_admin)
            row = await anyio.to_thread.run_sync(self.store.batch, batch_id)
            cancelled = active.cancel.is_set() or row.status == "cancelled"
            status: Literal["done", "cancelled"] = "cancelled" if cancelled else "done"
            await anyio.to_thread.run_sync(self.store.set_status, batch_id, status)
        except Exception as exc:
            log.exception("batch %s stopped", batch_id)
            await anyio.to_thread.run_sync(self.store.set_status, batch_id, "failed", f"stopped: {exc}")
        finally:  # at shutdown the batch stays 'running' in the store and resumes at the next start
            _RUNNING_HERE.discard(batch_id)
            self.active.pop(batch_id, None)
            active.finished.set()
            active.touch()

    async def resume(self, batch_id: str) -> bool:
        """Take over ``batch_id`` if it is unfinished and its runner is gone; True when resumed."""
        async with self.resuming:  # the start's resume and a batch_status call may ask at once
            row = await anyio.to_thread.run_sync(self.store.batch, batch_id)
            if row.status != "running" or batch_id in self.active or not owner_gone(row):
                return False

            def mend() -> None:
                self.store.take_over(batch_id, owner_identity())
                self.store.requeue(batch_id)
                self.store.write_results(batch_id, Path(row.results))

            await anyio.to_thread.run_sync(mend)
            log.info("resuming batch %s", batch_id)
            self.start(batch_id, self.llm)
            return True

    async def resume_all(self) -> None:
        for batch_id in await anyio.to_thread.run_sync(self.store.unfinished):
            try:
                await self.resume(batch_id)
            except Exception:  # one damaged batch does not keep the others from resuming
                log.exception("batch %s could not be resumed", batch_id)


# estimate -----------------------------------------------------------------------------------


async def estimate(ctx: ToolContext, probe: LLMTask, items: int, input_tokens: int, allow_claude: bool) -> Estimate:
    """Expected time from each serving host's measured seconds a call and its slots, and what the
    batch would cost if every item went to Claude (at the full output allowance)."""
    availability = ctx.llm.availability(probe)
    if not availability.runnable:
        raise CaelumError(f"no model can run this batch: {availability.reason}")
    serving = {entry.rsplit("@", 1)[1] for entry in availability.local_models if "@" in entry}
    max_out = probe.max_output_tokens or availability.needs.max_output_tokens
    if ctx.pool_admin is None:  # outside the server: no pool figures, one slot a serving host
        hosts = [HostRate(host=h, slots=1, s_per_item=None) for h in sorted(serving)]
        return Estimate(input_tokens, None, None, hosts, max(1, len(hosts)), "pool figures unavailable")
    report = await ctx.pool_admin.astatus()
    measured = {h.host: h for h in report.ledger.by_host}
    hosts = []
    fill: list[tuple[int, float | None]] = []
    for host in report.hosts:
        if host.name in serving and host.enabled:
            usage = measured.get(host.name)
            seconds = usage.mean_latency_ms / 1000 if usage and usage.calls and usage.mean_latency_ms > 0 else None
            hosts.append(HostRate(host=host.name, slots=host.max_concurrency, s_per_item=seconds))
            fill.append((host.max_concurrency, host.latency_ewma_ms))
    rate = sum(h.slots / h.s_per_item for h in hosts if h.s_per_item)
    expected = round(items / rate, 2) if rate and items else (0.0 if not items else None)
    notes = []
    unmeasured = [h.host for h in hosts if h.s_per_item is None]
    if unmeasured:
        notes.append(f"no calls measured yet on {', '.join(unmeasured)}: left out of the time")
    ceiling: float | None = None
    if allow_claude and report.claude.enabled and report.claude.configured:
        price = price_for(report.claude.model, DEFAULT_PRICES)
        if price is not None:
            ceiling = round((input_tokens * price.input + items * max_out * price.output) / 1_000_000, 6)
        if report.claude.daily_budget_usd is not None:
            left = max(0.0, report.claude.daily_budget_usd - report.claude.spent_today_usd)
            notes.append(f"the daily Claude budget caps spend at ${left:.2f} more today")
    elif not allow_claude:
        ceiling = 0.0
    concurrency = fill_concurrency(fill) if fill else 1
    return Estimate(input_tokens, expected, ceiling, hosts, concurrency, "; ".join(notes) or None)


# the tools ----------------------------------------------------------------------------------


def results_path(args: RunBatchInput, ctx: ToolContext, batch_id: str) -> Path:
    if args.output is None:
        folder = ctx.state_dir / "batches"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{batch_id}.jsonl"
    path = resolve_in_roots(args.output, ctx.roots, what="output", must_exist=False)
    if path.suffix.lower() != ".jsonl":
        raise ToolInputError(f"output {shown(args.output)} must end in .jsonl")
    if not path.parent.is_dir():
        raise ToolInputError(f"output {shown(args.output)}: its folder does not exist; create it first")
    if path.exists():
        raise ToolInputError(f"output {shown(args.output)} exists; choose a new file (results are never overwritten)")
    return path


def _count_only(source: Source, template: Template, system_chars: int) -> tuple[int, int]:
    tally = [0]
    count = sum(1 for _ in source.stored_rows(template, system_chars, tally))
    return count, tally[0] // CHARS_PER_TOKEN


async def start_batch(args: RunBatchInput, ctx: ToolContext, service: BatchService) -> BatchOutput:
    template = Template(args.template)
    source = await anyio.to_thread.run_sync(Source.of, args, ctx.roots)
    spec = {
        "template": redact_secrets(args.template),
        "system": redact_secrets(args.system) if args.system else None,
        "json_schema": args.json_schema,
        "tier": args.tier.value if args.tier else None,
        "model": args.model,
        "allow_claude": args.allow_claude,
        "max_tokens": args.max_tokens,
        "max_item_bytes": args.max_item_bytes,
        "source_kind": source.kind,
        "base": str(source.path) if source.kind == "glob" else None,
    }
    probe = item_task(spec, "-", "-", args.template)
    system_chars = len(args.system or "")
    if args.dry_run:
        total, tokens = await anyio.to_thread.run_sync(_count_only, source, template, system_chars)
        est = await estimate(ctx, probe, total, tokens, args.allow_claude)
        return BatchOutput(
            batch_id=None,
            status="estimate",
            total=total,
            concurrency=est.concurrency,
            input_tokens=est.input_tokens,
            expected_local_s=est.expected_local_s,
            claude_ceiling_usd=est.claude_ceiling_usd,
            hosts=est.hosts,
            note=est.note,
        )
    availability = ctx.llm.availability(probe)
    if not availability.runnable:
        raise CaelumError(f"no model can run this batch: {availability.reason}")
    batch_id = uuid.uuid4().hex[:12]
    results = results_path(args, ctx, batch_id)
    store = service.store
    pre = await estimate(ctx, probe, 0, 0, args.allow_claude)  # hosts and slots only
    await anyio.to_thread.run_sync(
        store.create, batch_id, spec, source.label, results, pre.concurrency, owner_identity()
    )
    tally = [0]
    try:
        total = await anyio.to_thread.run_sync(
            store.add_items, batch_id, source.stored_rows(template, system_chars, tally)
        )
    except BaseException:
        with anyio.CancelScope(shield=True):  # a cancelled call too leaves no batch that looks alive
            await anyio.to_thread.run_sync(store.set_status, batch_id, "failed", "its input could not be read")
        raise
    est = await estimate(ctx, probe, total, tally[0] // CHARS_PER_TOKEN, args.allow_claude)
    results.touch()
    active = service.start(batch_id, ctx.llm)
    wait = args.wait
    if wait is None:
        wait = total <= INLINE_ITEMS and (est.expected_local_s is None or est.expected_local_s <= INLINE_S)
    if wait:
        await wait_with_progress(ctx, service, active, total)
    out = await status_of(service, batch_id)
    out.input_tokens, out.expected_local_s, out.claude_ceiling_usd = (
        est.input_tokens,
        est.expected_local_s,
        est.claude_ceiling_usd,
    )
    out.hosts = est.hosts
    if out.status == "running":
        out.note = (out.note + "; " if out.note else "") + f"runs in the background: batch_status('{batch_id}')"
    return out


async def wait_with_progress(ctx: ToolContext, service: BatchService, active: ActiveBatch, total: int) -> None:
    """Wait for the batch (at most :data:`INLINE_S`), a progress note each time items finish.
    A cancelled call cancels its batch."""
    await ctx.report(0, total, f"0/{total} items done")
    try:
        with anyio.move_on_after(INLINE_S):
            while not active.finished.is_set():
                changed = active.changed
                await changed.wait()
                counts = await anyio.to_thread.run_sync(service.store.counts, active.batch_id)
                extra = f", {counts.error} errors" if counts.error else ""
                await ctx.report(counts.done, total, f"{counts.done}/{total} items done{extra}")
    except anyio.get_cancelled_exc_class():
        active.stop()
        raise


async def status_of(service: BatchService, batch_id: str) -> BatchOutput:
    def read() -> tuple[BatchRow, Counts, int, list[tuple[str, str]]]:
        return (
            service.store.batch(batch_id),
            service.store.counts(batch_id),
            service.store.attempts_over_one(batch_id),
            service.store.first_errors(batch_id, FIRST_ERRORS),
        )

    row, counts, repeated, errors = await anyio.to_thread.run_sync(read)
    end = row.finished if row.finished is not None else time.time()
    elapsed = round(end - row.created, 1)
    active = service.active.get(batch_id)
    eta = None
    if row.status == "running" and active is not None and active.done_here:
        rate = active.done_here / max(time.monotonic() - active.started, 1e-3)
        eta = round((counts.pending + counts.running) / rate, 1)
    note = row.note
    if row.status == "running" and active is None:
        note = (note + "; " if note else "") + "not running in this server (another server runs it)"
    return BatchOutput(
        batch_id=batch_id,
        status=row.status,
        total=counts.total,
        done=counts.done,
        ok=counts.ok,
        low_confidence=counts.low_confidence,
        errors=counts.error,
        in_flight=counts.running,
        repeated=repeated,
        concurrency=active.concurrency if active is not None and active.concurrency else row.concurrency,
        results=row.results,
        elapsed_s=elapsed,
        eta_s=eta,
        first_errors=[f"{item_id}: {error}"[:300] for item_id, error in errors],
        note=note,
    )


async def batch_status(args: BatchStatusInput, ctx: ToolContext, service: BatchService) -> BatchOutput:
    batch_id = args.batch_id
    if batch_id is None:
        recent = await anyio.to_thread.run_sync(service.store.recent, 1)
        if not recent:
            raise ToolInputError("no batches yet; start one with run_batch")
        batch_id = recent[0]
    try:
        await service.resume(batch_id)  # a batch whose server died continues here
    except KeyError:
        raise ToolInputError(f"no batch {shown(batch_id)}; batch_status without batch_id shows the latest") from None
    if args.cancel:
        active = service.active.get(batch_id)
        if active is not None:
            active.stop()
            with anyio.move_on_after(CANCEL_WAIT_S):  # the items in flight finish and are kept
                await active.finished.wait()
        else:
            row = await anyio.to_thread.run_sync(service.store.batch, batch_id)
            if row.status == "running":
                await anyio.to_thread.run_sync(service.store.set_status, batch_id, "cancelled")
    return await status_of(service, batch_id)
