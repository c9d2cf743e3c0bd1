"""One ledger row per background embedding sync, not one per batch.

A project's background sync sends thousands of embedding batches (2,292 rows in 10 minutes for one
mid-size repository), which as rows of their own flooded the ledger and its figures. Inside
:func:`embedding_sync` (and the tasks started from within it), the ledger sums the answered
embedding requests into one pending row per host and model and writes them when the block ends,
however it ends. It sits apart from :mod:`caelum_mcp.engine.ledger` so that a supervisor can open the
block without reaching behind the seam to the ledger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class SyncTally:
    """The rows one sync will write: ``pending[key]`` is (the writer, the summed row)."""

    task: str
    pending: dict[Hashable, tuple[Callable[[Any], object], Any]] = field(default_factory=dict)

    def flush(self) -> None:
        """Write every pending row once; a writer that fails (a ledger closed meanwhile) is logged."""
        rows, self.pending = list(self.pending.values()), {}
        for write, row in rows:
            try:
                write(row)
            except Exception as exc:  # the sync's vectors are stored whatever the bookkeeping does
                log.warning("an embedding sync's ledger row was not written: %s", exc)


_CURRENT: ContextVar[SyncTally | None] = ContextVar("caelum_embedding_sync", default=None)


def current_sync() -> SyncTally | None:
    """The tally of the embedding sync this code runs in, or None outside one."""
    return _CURRENT.get()


@contextmanager
def embedding_sync(task: str) -> Iterator[None]:
    """Sum the answered embedding requests made inside the block into one ledger row per host and
    model, task ``task``, written when the block ends (``attempts``: the number of requests,
    ``latency_ms``: their total time). Failed requests are still written one by one: they are few,
    a sync stops at the first that fails for good."""
    tally = SyncTally(task)
    token = _CURRENT.set(tally)
    try:
        yield
    finally:
        _CURRENT.reset(token)
        tally.flush()
