"""``run_batch`` and ``batch_status``: one prompt template over many inputs, across the whole pool.

A batch is read (streamed, :mod:`.batch_inputs`) into the batch store (:mod:`.batch_store`) when
the call comes in, then run (:mod:`.batch_runner`) by a task that outlives the call: workers (as
many as keep every host that serves the tier busy: its slots, more for a fast host) each take the
next pending item and run it through ``ctx.llm.run``, so the pool spreads the items (a slow host
takes fewer) and the confidence gate applies per item (Claude only when ``allow_claude``, inside
the daily budget). A
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
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from caelum_mcp.core.errors import CaelumError, ToolInputError
from caelum_mcp.core.llm import LLMTask
from caelum_mcp.core.pricing import CHARS_PER_TOKEN, DEFAULT_PRICES, price_for
from caelum_mcp.core.redaction import redact_all, redact_secrets
from caelum_mcp.core.types import Tier
from caelum_mcp.supervisors.base import ToolContext, ToolOutput
from caelum_mcp.tools.paths import resolve_project, shown

from .ai_compare import chat_tier, object_schema
from .batch_inputs import (
    RawItem,
    Template,
    glob_files,
    inline_items,
    read_csv,
    read_jsonl,
    resolve_in_roots,
)
from .batch_runner import ActiveBatch, BatchService, fill_concurrency, item_task, owner_identity
from .batch_store import BatchRow, Counts

log = logging.getLogger(__name__)

INLINE_ITEMS = 50  # at most this many items are waited for inside the call by default
INLINE_S = 120.0  # ... and only when expected within this time; a waiting call returns after it regardless
MAX_ITEMS = 100_000
DEFAULT_ITEM_BYTES = 100_000
CANCEL_WAIT_S = 30.0  # batch_status(cancel) waits this long for the items in flight, then says 'running'
FIRST_ERRORS = 5


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
        return chat_tier(value)

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
    s_per_item: float | None = Field(description="measured seconds a call; null: unmeasured")


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


# estimate -----------------------------------------------------------------------------------


async def estimate(ctx: ToolContext, probe: LLMTask, items: int, input_tokens: int, allow_claude: bool) -> Estimate:
    """Expected time from each serving host's measured seconds a call (the pool's latency average,
    else the ledger's mean) and its slots, and what the batch would cost if every item went to
    Claude (at the full output allowance)."""
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
            # The pool's average is the host's own time a call; the ledger's mean (kept across
            # restarts) also holds the time calls waited for a slot, so it is only the fallback.
            usage = measured.get(host.name)
            seconds = (
                host.latency_ewma_ms / 1000
                if host.latency_ewma_ms
                else usage.mean_latency_ms / 1000
                if usage and usage.calls and usage.mean_latency_ms > 0
                else None
            )
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
    else:
        ceiling = 0.0
        if allow_claude:
            notes.append("Claude is off or not configured: nothing escalates")
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
