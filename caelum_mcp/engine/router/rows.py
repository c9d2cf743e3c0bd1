"""The ledger rows of the router's model calls: one per answered call, one per host a call failed on.

Rows are built by :func:`~caelum_mcp.engine.ledger.model_call_row` and
:func:`~caelum_mcp.engine.ledger.failed_call_row`, tagged with the tool call they were made for; a failed
local call is one row per host that failed it, naming the host and how many attempts it got there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from caelum_mcp.core.errors import DeadlineExceededError
from caelum_mcp.core.pricing import ModelPrice, cost_usd
from caelum_mcp.engine.ledger import Ledger, LedgerEntry, failed_call_row, model_call_row
from caelum_mcp.engine.pool import CallTrace, Pool
from caelum_mcp.engine.router.run import Reply, Run


def answer_row(run: Run, reply: Reply, *, local: bool, latency_ms: float, price: ModelPrice | None) -> LedgerEntry:
    """The answered call's row, its cost added to the run's figures (a local call's counterfactual:
    what Claude at ``price`` would have cost for its tokens)."""
    response = reply.response
    priced = cost_usd(response.usage, price) if price else 0.0
    run.usage.append(response.usage)
    if local:
        run.counterfactual += priced
    else:
        run.cost += priced
    return model_call_row(
        task=run.task.name,
        path="local" if local else "claude",
        provider=reply.provider,
        host=reply.host,
        model=reply.model,
        tier=reply.tier,
        usage=response.usage,
        latency_ms=latency_ms,
        cost=0.0 if local else priced,
        counterfactual=priced,
        attempts=1,
        call_id=run.call_id,
        kind=run.task.kind.value,
    )


def claude_failure_row(run: Run, provider: str, model: str, error: str, started: float) -> LedgerEntry:
    return failed_call_row(
        task=run.task.name,
        error=error,
        provider=provider,
        host="claude",
        model=model,
        latency_ms=(time.perf_counter() - started) * 1000,
        call_id=run.call_id,
    )


def record_local_failures(
    ledger: Ledger,
    pool: Pool,
    run: Run,
    trace: CallTrace,
    exc: Exception | None,
    model: str,
    started: float,
    *,
    answered_by: str | None = None,
    stopped: str | None = None,
) -> None:
    """The rows of a pool call's failed attempts: one per host that failed (or was stopped, or
    was being waited for), naming it and how many attempts it got; the host that answered in
    the end gets its own answered row. The call's time goes on the first row."""
    latency = (time.perf_counter() - started) * 1000 if answered_by is None else 0.0
    for host, attempts, error in failed_hosts(trace, exc, answered_by=answered_by, stopped=stopped):
        known = pool.hosts.get(host)
        ledger.record(
            failed_call_row(
                task=run.task.name,
                error=error,
                provider=known.kind if known is not None else "",
                host=host,
                model=model,
                attempts=attempts,
                latency_ms=latency,
                call_id=run.call_id,
            )
        )
        latency = 0.0


def failed_hosts(
    trace: CallTrace, exc: Exception | None, *, answered_by: str | None, stopped: str | None
) -> Iterator[tuple[str, int, str]]:
    """(host, attempts, error) for each host a pool call failed on, in the order it tried them.

    An attempt with no recorded outcome was in flight when the call stopped (``stopped`` says
    why) or is the one that answered (on ``answered_by``). A host the call was only waiting for
    has 0 attempts. When the deadline ended the call, the last host's row carries that message.
    Nothing tried at all: one row without a host, saying why.
    """
    hosts = list(dict.fromkeys(trace.hosts))
    if trace.waiting_for is not None and trace.waiting_for not in hosts:
        hosts.append(trace.waiting_for)
    if not hosts:
        if exc is not None or stopped is not None:
            yield "", 0, stopped or str(exc)
        return
    for host in hosts:
        tried = trace.hosts.count(host)
        errors = [error for name, error in trace.failures if name == host]
        pending = tried > len(errors)
        if host == answered_by:
            if errors:
                yield host, len(errors), str(errors[-1])
            continue
        if pending or tried == 0:
            error = stopped or (str(exc) if exc is not None else "no answer")
        elif isinstance(exc, DeadlineExceededError) and host == hosts[-1]:
            error = str(exc)
        else:
            error = str(errors[-1])
        yield host, tried, error
