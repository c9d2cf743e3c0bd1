"""``pool_status`` reads the cost ledger in a worker thread: at 1M rows the read took 2.4 s on the
event loop, and every other call waited for it (bench/faults.py measures the stall)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from caelum_mcp.engine.ledger import Ledger, LedgerSummary

from .test_platform import session


@pytest.mark.slow
async def test_pool_status_reads_the_ledger_off_the_event_loop(tmp_path: Path) -> None:
    async with session(tmp_path, []) as (client, holder):
        ledger: Ledger = holder.require().ledger
        loop_thread = threading.get_ident()
        readers: list[int] = []
        summary = ledger.summary

        def watched_summary(*args: object, **kwargs: object) -> LedgerSummary:
            readers.append(threading.get_ident())
            return summary(*args, **kwargs)  # type: ignore[arg-type]

        ledger.summary = watched_summary  # type: ignore[method-assign]
        res = await client.call_tool("pool_status", {})
        assert not res.is_error, res.content
        assert res.structured_content is not None and res.structured_content["ledger"]["calls"] == 0
        assert readers and loop_thread not in readers
