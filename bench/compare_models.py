"""``compare_models``: is the comparison as fast as its slowest model?

Two settings, each through the real MCP server (in-process client), pool, router and streaming:

1. five scripted hosts (``ScriptedBackend``), each serving its own model with its own delay
   (``--delays``, default 0.5 to 1.7 s), all compared at once;
2. two embedded llama.cpp instances (SmolLM2-135M, one CPU thread and one slot each), the same
   model listed twice, so that the pool sends one request to each.

For each round it prints the comparison's wall time (the tool's own ``wall_ms`` and as the client
saw it) against the slowest model's latency. Target: wall <= 1.1 x the slowest model.

Run: ``.venv/bin/python bench/compare_models.py [--rounds N] [--skip-embedded]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client

from caelum_mcp.embedded.server import EMBEDDED_MODEL_NAME, EmbeddedServer, embedded_status
from caelum_mcp.engine.backends.openai import OpenAIBackend
from caelum_mcp.engine.backends.scripted import ScriptedBackend, ScriptedReply
from caelum_mcp.engine.config import load_config
from caelum_mcp.engine.hosts import Host
from caelum_mcp.serving.server import create_server

TARGET = 1.1
PROMPT = "In one sentence: why is the sky blue?"


def scripted_hosts(delays: Sequence[float]) -> list[Host]:
    hosts = []
    for i, delay in enumerate(delays):
        body = json.dumps({"answer": f"Rayleigh scattering of sunlight (model {i}).", "confidence": 0.9})
        backend = ScriptedBackend(
            [(f"model-{i}:8b", 8.0)], ScriptedReply(body, delay_s=delay, logprob=-0.1), name=f"h{i}"
        )
        hosts.append(Host(name=f"h{i}", backend=backend))
    return hosts


async def compare(hosts: list[Host], args: dict[str, Any], rounds: int, data: Path) -> list[dict[str, float]]:
    config = load_config(
        None, environ={}, overrides={"data_dir": str(data), "embedded": "off", "implicit_ollama": False}
    )
    server, _ = create_server(config, extra_hosts=hosts)
    rows = []
    async with Client(server) as client:
        for _ in range(rounds):
            started = time.perf_counter()
            res = await client.call_tool("compare_models", args)
            client_ms = (time.perf_counter() - started) * 1000
            out = res.structured_content
            if res.is_error or out is None:
                raise SystemExit(f"compare_models failed: {res.content}")
            bad = [r["name"] for r in out["runs"] if r["status"] not in ("ok", "low_confidence")]
            if bad:
                raise SystemExit(f"models without an answer: {bad}: {out['runs']}")
            hosts = len({r["host"] for r in out["runs"]})
            rows.append({"wall": out["wall_ms"], "client": client_ms, "slowest": out["slowest_ms"], "hosts": hosts})
    return rows


def report(title: str, rows: list[dict[str, float]]) -> None:
    print(f"\n{title}")
    print(f"  {'round':<7}{'hosts':>6}{'slowest ms':>12}{'wall ms':>10}{'client ms':>11}{'wall/slowest':>14}")
    for i, row in enumerate(rows, start=1):
        ratio = row["wall"] / row["slowest"]
        figures = f"{row['slowest']:>12.0f}{row['wall']:>10.0f}{row['client']:>11.0f}{ratio:>14.3f}"
        print(f"  {i:<7}{row['hosts']:>6.0f}{figures}")
    ratio = statistics.median(r["wall"] / r["slowest"] for r in rows)
    client = statistics.median(r["client"] / r["slowest"] for r in rows)
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"  median wall / slowest: {ratio:.3f} (client-side {client:.3f}); target <= {TARGET}: {verdict}")


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="compare_models wall time against the slowest model")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--delays", type=float, nargs="+", default=[0.5, 0.8, 1.1, 1.4, 1.7])
    parser.add_argument("--skip-embedded", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(f"machine: {os.cpu_count()} CPU cores")
    with tempfile.TemporaryDirectory(prefix="caelum-bench-compare-") as tmp:
        rows = await compare(scripted_hosts(args.delays), {"prompt": PROMPT}, args.rounds, Path(tmp) / "a")
        report(f"{len(args.delays)} scripted hosts, delays {args.delays} s, all models at once", rows)
        if args.skip_embedded:
            return 0
        ok, detail = embedded_status()
        if not ok:
            print(f"\nembedded model unavailable: {detail}")
            return 1
        with EmbeddedServer(threads=1) as a, EmbeddedServer(threads=1) as b:
            async with httpx2.AsyncClient(timeout=120, trust_env=False) as http:
                hosts = [
                    Host(name=name, backend=OpenAIBackend(server.url or "", http, name=name))
                    for name, server in (("embedded-a", a), ("embedded-b", b))
                ]
                ask = {"prompt": PROMPT, "models": [EMBEDDED_MODEL_NAME] * 2, "max_tokens": 64}
                rows = await compare(hosts, ask, max(3, args.rounds // 2), Path(tmp) / "b")
        report("2 embedded llama.cpp instances (1 thread each), the same model listed twice", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(anyio.run(main))
