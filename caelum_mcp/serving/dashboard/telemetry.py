"""The running server's live view: metrics, the LLM answers of recent tool calls, and a change signal.

One :class:`Telemetry` per server (the MCP server's state holder owns it). While the app runs
(:meth:`Telemetry.watching`) it observes the ledger: every model-call row moves the Prometheus
counters, and every row or tool call that starts or ends wakes the dashboard's SSE streams. The
MCP tool handler tells it when a call ends (:meth:`Telemetry.tool_call_finished`): the outcome is
counted, and the execution records in the result (where each LLM step ran, its confidence and
parts, escalations) are kept in memory for the last :data:`KEEP_CALLS` calls; the ledger holds the
rest of what the dashboard shows, so after a restart older calls show everything but confidence.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel

from caelum_mcp.core.llm import ExecutionRecord
from caelum_mcp.engine.hosts import Host
from caelum_mcp.engine.ledger import LedgerEntry, ToolCallChange
from caelum_mcp.serving.app import AppState
from caelum_mcp.serving.dashboard.history import LedgerHistory
from caelum_mcp.serving.metrics import BudgetSource, Metrics

log = logging.getLogger(__name__)

KEEP_CALLS = 500  # tool calls whose execution records are kept in memory
_MAX_DEPTH = 3  # how deep into a result to look for execution records (llm.execution is depth 2)
_MAX_ITEMS = 50  # list items looked at per list


class ChangeSignal:
    """A version number that goes up on every change, and a way to wait for the next one.

    :meth:`notify` may be called from any thread; waiters run on the event loop bound with
    :meth:`bind` (the server's).
    """

    def __init__(self) -> None:
        self.version = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def bind(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop
        self._event = asyncio.Event() if loop is not None else None

    def notify(self) -> None:
        with self._lock:
            self.version += 1
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake()
        else:
            try:
                loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop closed between the check and the call
                pass

    def _wake(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = asyncio.Event()

    async def wait(self, seen: int, limit_s: float) -> bool:
        """Wait until the version passes ``seen`` or ``limit_s`` seconds pass; True on a change."""
        if self.version != seen:
            return True
        event = self._event
        if event is None:
            await asyncio.sleep(limit_s)
            return self.version != seen
        try:
            await asyncio.wait_for(event.wait(), limit_s)
        except TimeoutError:
            pass
        return self.version != seen


class _LedgerBudget:
    def __init__(self, state: AppState) -> None:
        self.state = state

    def budget_figures(self) -> tuple[float, float, float | None]:
        figures = self.state.ledger.budget_figures()
        return figures.spent_usd, figures.reserved_usd, self.state.config.claude.daily_budget_usd


def executions_in(result: BaseModel | None) -> list[ExecutionRecord]:
    """The execution records a tool result carries (``execution``, ``llm.execution``, and those in
    lists of steps), in field order."""
    found: list[ExecutionRecord] = []

    def visit(value: Any, depth: int) -> None:
        if isinstance(value, ExecutionRecord):
            found.append(value)
        elif depth >= _MAX_DEPTH:
            return
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                visit(getattr(value, name, None), depth + 1)
        elif isinstance(value, list | tuple):
            for item in value[:_MAX_ITEMS]:
                visit(item, depth + 1)

    visit(result, 0)
    return found


class Telemetry:
    """Metrics, recent execution records and the change signal of one server."""

    def __init__(self, keep_calls: int = KEEP_CALLS) -> None:
        self.metrics = Metrics()
        self.changes = ChangeSignal()
        self.keep_calls = keep_calls
        self.history: LedgerHistory | None = None
        self._state: AppState | None = None
        self._executions: OrderedDict[str, tuple[ExecutionRecord, ...]] = OrderedDict()
        self._lock = threading.Lock()
        self.metrics.watch_pool(self._pool_source)

    @contextmanager
    def watching(self, state: AppState) -> Iterator[None]:
        """Observe ``state``'s ledger and pool while the app runs (from the event loop)."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self.changes.bind(loop)
        history = LedgerHistory(state.ledger)
        remove = state.ledger.add_observer(self._on_ledger)
        self._state, self.history = state, history
        try:
            yield
        finally:
            remove()
            self._state, self.history = None, None
            self.changes.bind(None)
            history.close()

    @property
    def state(self) -> AppState | None:
        return self._state

    def _pool_source(self) -> tuple[Sequence[Host], BudgetSource] | None:
        state = self._state
        if state is None:
            return None
        return list(state.pool.hosts.values()), _LedgerBudget(state)

    def _on_ledger(self, event: LedgerEntry | ToolCallChange) -> None:
        if isinstance(event, LedgerEntry):
            self.metrics.observe_row(event)
        self.changes.notify()

    def tool_call_finished(
        self, tool: str, call_id: str, outcome: str, seconds: float, result: BaseModel | None = None
    ) -> None:
        """An MCP tool call ended (``ok``, ``error``, ``internal_error`` or ``cancelled``)."""
        executions = executions_in(result)
        self.metrics.observe_tool_call(tool, outcome, seconds, executions)
        if executions:
            with self._lock:
                self._executions[call_id] = tuple(executions)
                while len(self._executions) > self.keep_calls:
                    self._executions.popitem(last=False)
        log.info("tool %s: %s in %.2f s", tool, outcome, seconds, extra={"request_id": call_id})
        self.changes.notify()

    def executions(self, call_id: str) -> tuple[ExecutionRecord, ...]:
        """The execution records of tool call ``call_id``'s result, if this process served it."""
        with self._lock:
            return self._executions.get(call_id, ())
