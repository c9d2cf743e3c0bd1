"""Throughput through the pool and the router against what the hosts deliver driven directly.

The measurement behind the fault matrix's capacity row: ``bench/faults.py`` prints it against its
target (a timing target is a benchmark row, never a test assertion). Each round drives, for
``seconds`` each and one after another: one dedicated caller per host slot straight at the
backends (no pool: what the hosts deliver, HTTP included), 8 callers through ``Pool.chat``, and 8
through ``Router.run``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from caelum_mcp.core.llm import GroundingResult, LLMTask, TaskKind
from caelum_mcp.core.types import ChatMessage, ChatRequest, Tier
from caelum_mcp.engine.pool import Pool
from caelum_mcp.engine.router import Router

Make = Callable[[], Awaitable[Any]]


def capacity_task(schema: dict[str, Any]) -> LLMTask:
    """A structured task any host answers at once (grounding always passes)."""
    return LLMTask(
        name="capacity",
        kind=TaskKind.GENERAL,
        messages=(ChatMessage(role="user", content="Is it fine?"),),
        output_schema=schema,
        grounding=lambda output: GroundingResult(score=1.0),
        tier=Tier.FULL,
        allow_claude=False,
    )


async def capacity_rates(
    pool: Pool,
    router: Router,
    task: LLMTask,
    hello: ChatRequest,
    slots: Sequence[int],
    *,
    rounds: int = 3,
    seconds: float = 2.0,
    call: Callable[[Make], Awaitable[Any]] | None = None,
) -> dict[str, list[float]]:
    """Requests a second per round for ``direct``, ``pool`` and ``router``. ``call`` wraps each
    request (e.g. to count outcomes); the hosts are the pool's, in order, with ``slots`` each."""
    invoke = call or (lambda make: make())
    request = hello.model_copy(update={"model": next(iter(pool.hosts["h0"].models))})
    backends = [h.backend for h in pool.hosts.values()]

    async def rate(makers: Sequence[Make]) -> float:
        done = 0
        stop = time.monotonic() + seconds

        async def loop(make: Make) -> None:
            nonlocal done
            while time.monotonic() < stop:
                await invoke(make)
                done += 1

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for make in makers:
                tg.start_soon(loop, make)
        return done / (time.monotonic() - started)

    direct: list[Make] = [lambda b=b: b.chat(request) for b, n in zip(backends, slots, strict=True) for _ in range(n)]
    rates: dict[str, list[float]] = {"direct": [], "pool": [], "router": []}
    for _ in range(rounds):
        rates["direct"].append(await rate(direct))
        rates["pool"].append(await rate([lambda: pool.chat(hello, tier=Tier.FULL)] * 8))
        rates["router"].append(await rate([lambda: router.run(task)] * 8))
    return rates
