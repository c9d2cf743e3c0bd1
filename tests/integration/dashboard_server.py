"""The HTTP server (``/mcp``, the dashboard, ``/metrics``) in this process, on an ephemeral loopback
port, with scripted model hosts: what the dashboard, auth and metrics tests talk to over real HTTP.

``serving(...)`` runs the real app (:func:`caelum_mcp.serving.server.http_app`) under uvicorn in the test's
event loop; ``seed_ledger`` writes past model calls into the real ledger file first, so that the
charts have days to show.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import uvicorn

from caelum_mcp.core.types import Usage
from caelum_mcp.engine.backends.scripted import ScriptedBackend, ScriptedReply
from caelum_mcp.engine.config import Config, load_config
from caelum_mcp.engine.hosts import CircuitBreaker, Host
from caelum_mcp.engine.ledger import Ledger, LedgerEntry, model_call_row
from caelum_mcp.serving.server import http_app

CONFIDENT = ScriptedReply(json.dumps({"answer": "4", "confidence": 0.9}), logprob=-0.05, delay_s=0.03)
UNSURE = ScriptedReply(json.dumps({"answer": "maybe 5", "confidence": 0.2}), delay_s=0.06)


def two_hosts() -> list[Host]:
    """gpu-a serves qwen3:8b and answers surely; gpu-b serves llama3.2:3b and is unsure."""
    return [
        Host(
            name="gpu-a",
            backend=ScriptedBackend([("qwen3:8b", 8.2), ("qwen2.5-coder:7b", 7.6)], CONFIDENT, name="gpu-a"),
            max_concurrency=2,
            breaker=CircuitBreaker(failure_threshold=2, cooldown_s=60),
        ),
        Host(
            name="gpu-b",
            backend=ScriptedBackend([("llama3.2:3b", 3.2)], UNSURE, name="gpu-b"),
            max_concurrency=1,
            breaker=CircuitBreaker(failure_threshold=2, cooldown_s=60),
        ),
    ]


@dataclass
class Served:
    base: str
    config: Config

    @property
    def mcp(self) -> str:
        return f"{self.base}/mcp"

    @property
    def ledger_path(self) -> Path:
        return self.config.data_dir / "ledger.sqlite3"


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    return load_config(
        None,
        environ={},
        overrides={
            "data_dir": str(tmp_path / "data"),
            "embedded": "off",
            "allowed_roots": [str(tmp_path)],
            "hosts": [],
            "implicit_ollama": False,
            **overrides,
        },
    )


@asynccontextmanager
async def serving(
    tmp_path: Path, hosts: Sequence[Host] = (), *, token: str | None = None, **overrides: Any
) -> AsyncIterator[Served]:
    """The real HTTP app on 127.0.0.1:<free port> until the block ends."""
    config = make_config(tmp_path, **overrides)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    app = http_app(config, host="127.0.0.1", port=port, token=token, extra_hosts=hosts)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", log_config=None, lifespan="on", timeout_graceful_shutdown=2)
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(30):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
                await anyio.sleep(0.02)
        try:
            yield Served(f"http://127.0.0.1:{port}", config)
        finally:
            server.should_exit = True


DAY = 86400.0


def claude_row(ts: float, usage: Usage, latency_ms: int, cost: float) -> LedgerEntry:
    """A review escalated to Claude at ``ts`` (its counterfactual cost is its cost)."""
    row = model_call_row(
        task="review",
        path="claude",
        provider="anthropic",
        host="claude",
        model="claude-sonnet-5-5",
        tier=None,
        usage=usage,
        latency_ms=latency_ms,
        cost=cost,
        counterfactual=cost,
    )
    return row.model_copy(update={"ts": ts})


def seed_ledger(path: Path, *, days: int = 10, now: float | None = None) -> None:
    """Past model calls over the last ``days`` days: local calls on both hosts (with what Claude
    would have cost) and some Claude calls (with what they cost), and one Claude call today."""
    now = time.time() if now is None else now
    with Ledger(path) as ledger:
        for back in range(days, 0, -1):
            ts = now - back * DAY
            for i in range(3 + back % 4):
                host, model = ("gpu-a", "qwen3:8b") if i % 3 else ("gpu-b", "llama3.2:3b")
                row = model_call_row(
                    task="delegate",
                    path="local",
                    provider="ollama",
                    host=host,
                    model=model,
                    tier="full" if host == "gpu-a" else "small",
                    usage=Usage(input_tokens=1800 + 100 * i, output_tokens=350),
                    latency_ms=900 + 40 * i,
                    cost=0.0,
                    counterfactual=0.011 + 0.002 * i,
                )
                ledger.record(row.model_copy(update={"ts": ts + i * 60}))
            if back % 3 == 0:
                ledger.record(claude_row(ts + 600, Usage(input_tokens=4000, output_tokens=700), 5200, 0.0225))
        ledger.record(claude_row(now - 1, Usage(input_tokens=90_000, output_tokens=9000), 8100, 0.405))
