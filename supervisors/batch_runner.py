"""Running a batch: the workers, their concurrency, and the service that keeps batches going.

:class:`BatchService` holds the batch store and the task group of the ai supervisor's lifespan, so
a batch outlives the call that started it; it resumes the batches a stopped server left unfinished
(the items in flight run again, nothing finished does). :func:`run_batch_items` runs one batch:
workers take the next pending item, run it through the router (``llm.run``: the pool spreads the
items, the gate applies per item) and hand the result row to one writer, which commits rows to the
store and then appends them to the results JSONL. An item no model can take now (a host taken out
of rotation) goes back to pending while the batch waits, instead of failing. The number of workers
follows the pool's measured latencies (:func:`fill_concurrency`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import psutil

from caelum_mcp.core.errors import CaelumError, NoHostAvailableError, TaskSkippedError
from caelum_mcp.core.llm import LLMTask, TaskKind
from caelum_mcp.core.redaction import redact_all
from caelum_mcp.core.types import ChatMessage, Tier
from caelum_mcp.supervisors.base import LLMService, PoolAdmin
from caelum_mcp.tools.paths import resolves_inside

from .batch_inputs import Template, read_file_item
from .batch_store import BatchRow, BatchStore, ClaimedItem

log = logging.getLogger(__name__)

HOST_POLL_S = 2.0
CONTROL_S = 2.0  # how often a running batch fits its concurrency to the pool's measured latencies
# A fast host is queued at most this many times its slots (its wait stays within a slow host's time).
MAX_OVERSUBSCRIBE = 4
MAX_CONCURRENCY = 512
_RUNNING_HERE: set[str] = set()  # batches this process runs (two servers in one process: tests)


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
