"""The :class:`Ledger`: what the router, the tools and the dashboard call, over one store.

It adds to the store what does not depend on the database: the observers told of each row, the
embedding syncs' single rows, the async wrappers (a commit runs in a worker thread), the clamping
and cutting of what callers hand in, and the clock.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import anyio.to_thread

from caelum_mcp.core.errors import ConfigError
from caelum_mcp.core.llm import CallCost
from caelum_mcp.engine.embedding_sync import current_sync
from caelum_mcp.engine.ledger.models import (
    MAX_ERROR_CHARS,
    BudgetFigures,
    CalibrationLabel,
    ExecutionPath,
    KindFigures,
    LabelCounts,
    LedgerEntry,
    LedgerObserver,
    LedgerSummary,
    Reservation,
    ToolCallChange,
    ToolCallRecord,
    utc_day_bounds,
)
from caelum_mcp.engine.ledger.sqlite_store import SQLiteStore
from caelum_mcp.engine.ledger.store import HistoryStore, LedgerStore

if TYPE_CHECKING:
    from caelum_mcp.engine.config import Config

log = logging.getLogger("caelum_mcp.engine.ledger")

POSTGRES_SCHEMES = ("postgresql", "postgres")


def open_store(location: Path | str) -> LedgerStore:
    """The store at ``location``: a ``postgresql://`` URL, or else the path of a SQLite file."""
    if isinstance(location, str) and "://" in location:
        scheme = urlsplit(location).scheme
        if scheme not in POSTGRES_SCHEMES:
            raise ConfigError(
                f"the cost ledger URL's scheme {scheme!r} is not supported; use postgresql://, "
                "or a file path for the SQLite ledger"
            )
        from caelum_mcp.engine.ledger.postgres_store import PostgresStore  # psycopg: only when asked for

        return PostgresStore(location)
    return SQLiteStore(Path(location))


class Ledger:
    """The persistent record of LLM calls, over a :class:`~caelum_mcp.engine.ledger.store.LedgerStore`.
    Thread-safe; usable as a context manager.

    ``Ledger(path)`` opens (or creates) the SQLite file at ``path``; ``Ledger("postgresql://…")``
    a PostgreSQL database several servers can share; :meth:`from_config` whichever the config names.
    """

    def __init__(self, location: Path | str) -> None:
        self._bind(open_store(location))

    @classmethod
    def over(cls, store: LedgerStore) -> Ledger:
        """A ledger over a store already open."""
        ledger = cls.__new__(cls)
        ledger._bind(store)
        return ledger

    @classmethod
    def from_config(cls, config: Config) -> Ledger:
        """The ledger ``[ledger] url`` names, else ``ledger.sqlite3`` in the data folder."""
        if config.ledger.url is not None:
            return cls(config.ledger.url.get_secret_value())
        return cls(config.data_dir / "ledger.sqlite3")

    def _bind(self, store: LedgerStore) -> None:
        self.store = store
        # The file of a SQLite ledger (another process may open it); None on a database server.
        self.path: Path | None = store.path if isinstance(store, SQLiteStore) else None
        self._observers: tuple[LedgerObserver, ...] = ()
        self._observers_lock = threading.Lock()

    @property
    def location(self) -> str:
        """Where the rows live, for messages (a URL without its password)."""
        return self.store.location

    def open_history(self) -> HistoryStore:
        """A reader for the dashboard on a connection of its own (close it when done)."""
        return self.store.open_history()

    def add_observer(self, observer: LedgerObserver) -> Callable[[], None]:
        """Call ``observer`` after each model-call row is committed and each tool call starts or
        ends, in the writing thread (a worker thread for :meth:`arecord`): it must be quick and
        thread-safe. Its exceptions are logged, never raised to the writer. Returns the remover."""
        # A tuple replaced whole: a writer iterating the old one is never disturbed.
        with self._observers_lock:
            self._observers = (*self._observers, observer)

        def remove() -> None:
            with self._observers_lock:
                self._observers = tuple(o for o in self._observers if o is not observer)

        return remove

    def _notify(self, event: LedgerEntry | ToolCallChange) -> None:
        for observer in self._observers:
            try:
                observer(event)
            except Exception:
                log.exception("ledger observer %r failed", observer)

    def record(self, entry: LedgerEntry) -> int:
        """Append ``entry``; committed (durably) before this returns. Returns the row id."""
        rowid = self.store.insert(entry)
        self._notify(entry)
        return rowid

    async def arecord(self, entry: LedgerEntry) -> int:
        """:meth:`record` from async code: the commit (an fsync, ~0.3 ms) runs in a worker thread, so
        the event loop serves other requests meanwhile. Committed when this returns; a cancelled
        caller still waits for the write to finish."""
        return await anyio.to_thread.run_sync(self.record, entry)

    def record_embedding(self, entry: LedgerEntry) -> int | None:
        """Append an embedding request's row; inside
        :func:`~caelum_mcp.engine.embedding_sync.embedding_sync` an answered one is added to the sync's
        single row for its host and model instead (written when the sync ends; None then)."""
        tally = current_sync()
        if tally is None or not entry.ok:
            return self.record(entry)
        key = (id(self), entry.host, entry.model)
        held = tally.pending.get(key)
        if held is None:
            tally.pending[key] = (self.record, entry.model_copy(update={"task": tally.task}))
            return None
        total: LedgerEntry = held[1]
        tally.pending[key] = (
            self.record,
            total.model_copy(
                update={
                    "ts": entry.ts,
                    "attempts": total.attempts + entry.attempts,
                    "input_tokens": total.input_tokens + entry.input_tokens,
                    "output_tokens": total.output_tokens + entry.output_tokens,
                    "latency_ms": total.latency_ms + entry.latency_ms,
                }
            ),
        )
        return None

    def annotate(self, row_id: int, *, confidence: float | None = None, path: ExecutionPath | None = None) -> None:
        """Add what is known only after a call's row was written: the confidence its answer scored,
        and ``local_low_confidence`` when that answer was handed back below the threshold."""
        self.store.annotate(row_id, None if confidence is None else min(1.0, max(0.0, confidence)), path)

    def kind_figures(self, threshold: float) -> list[KindFigures]:
        """Each model's answers per task kind, all time, from the running counts (a few rows):
        how many, how many were scored, and how many reached ``threshold`` (to the hundredth)."""
        return self.store.kind_figures(math.ceil(min(1.0, max(0.0, threshold)) * 100 - 1e-6))

    def add_label(self, label: CalibrationLabel) -> int:
        """Append one labelled outcome; committed (durably) before this returns. Returns its id."""
        return self.store.add_label(label)

    async def aadd_label(self, label: CalibrationLabel) -> int:
        """:meth:`add_label` from async code (the commit runs in a worker thread)."""
        return await anyio.to_thread.run_sync(self.add_label, label)

    def labels(self, model: str, kind: str, *, labelled_only: bool = True) -> list[CalibrationLabel]:
        """The outcomes recorded for (``model``, ``kind``), oldest first (through the pair's index);
        only those with a label unless ``labelled_only`` is false."""
        return self.store.labels(model, kind, labelled_only)

    def label_counts(self) -> list[LabelCounts]:
        """Per (model, kind): outcomes recorded, labelled, and right; most labelled first."""
        return self.store.label_counts()

    def reserve(
        self, amount_usd: float, *, limit_usd: float | None, ttl_s: float, now: float | None = None
    ) -> tuple[Reservation | None, BudgetFigures]:
        """Hold ``amount_usd`` of today's Claude budget, if it fits: atomically across connections,
        processes and (on PostgreSQL) servers. Returns the reservation (None when it would not fit
        under ``limit_usd``; None as the limit means no limit) and the figures it was judged on.
        The reservation lapses after ``ttl_s`` unless settled or released first."""
        now = time.time() if now is None else now
        return self.store.reserve(amount_usd, limit_usd=limit_usd, ttl_s=ttl_s, now=now, day=utc_day_bounds(now))

    def settle(self, reservation: Reservation, entry: LedgerEntry | None = None) -> int | None:
        """End a reservation: write the call's row (when given) and remove the reservation in one
        transaction, so the money is never counted twice or not at all. Returns the row id."""
        rowid = self.store.settle(reservation.id, entry)
        if entry is not None:
            self._notify(entry)
        return rowid

    def release(self, reservation: Reservation) -> None:
        """Give a reservation back unused (the call was never made)."""
        self.settle(reservation, None)

    def budget_figures(self, now: float | None = None) -> BudgetFigures:
        """Today's Claude spend and what live reservations hold, from one snapshot."""
        now = time.time() if now is None else now
        return self.store.budget_figures(now, utc_day_bounds(now))

    def claude_spend_today(self, now: float | None = None) -> float:
        """Real money spent on the UTC calendar day containing ``now`` (default: the present)."""
        return self.store.spend_between(*utc_day_bounds(time.time() if now is None else now))

    def summary(self, since: float | None = None, *, now: float | None = None) -> LedgerSummary:
        """Figures over every call with ``ts >= since`` (all calls when ``since`` is None).

        All time reads the running totals (a few rows), a window the calls in it through the
        ``ts`` index; either is a blocking read, so async code calls it in a worker thread."""
        return self.store.summary(since, utc_day_bounds(time.time() if now is None else now))

    def start_tool_call(self, call_id: str, tool: str, *, parent_id: str | None = None) -> None:
        """Note that an external tool call began (a child names its parent)."""
        self.store.start_tool_call(call_id, tool, parent_id, time.time())
        self._notify(ToolCallChange(call_id=call_id, tool=tool, parent_id=parent_id))

    def finish_tool_call(self, call_id: str, *, seconds: float, outcome: str, error: str | None = None) -> None:
        """Note how an external tool call ended: ``ok``, ``error`` or ``cancelled``."""
        self.store.finish_tool_call(call_id, seconds, outcome, error[:MAX_ERROR_CHARS] if error else None)
        self._notify(ToolCallChange(call_id=call_id, outcome=outcome))

    def tool_calls(self, *, parent_id: str | None = None, limit: int = 50) -> list[ToolCallRecord]:
        """The latest tool calls (children of ``parent_id`` when given, else top-level ones), newest first."""
        return self.store.tool_calls(parent_id, limit)

    def call_cost(self, call_id: str) -> CallCost:
        """What the model calls of tool call ``call_id`` and of every call beneath it cost."""
        return self.store.call_cost(call_id)

    def recent(self, limit: int = 20) -> list[LedgerEntry]:
        """The last ``limit`` entries, newest first."""
        return self.store.recent(max(0, limit))

    def close(self) -> None:
        """Close the store's connection; calling it again does nothing."""
        self.store.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
