"""What the router costs per task on top of the pool call it makes, beside another checkout's router.

One host answered by a :class:`~caelum_mcp.engine.backends.scripted.ScriptedBackend` (in process, no
HTTP, no delay), a real SQLite ledger in a temporary folder, and the default configuration (the
shipped calibration table, Claude not configured). Two paths, interleaved in blocks:

- ``pool``:   ``Pool.chat`` with the request the router would send (selection, slots, breaker);
- ``router``: ``Router.run`` of a task whose answer the host gives at once (availability, ladder
  planning, redaction, the pool call, parse, score, calibration, the ledger rows, the result).

``router - pool`` is the router's own cost per task, in wall time (p50, mean) and in the process's
CPU time (every thread's: the ledger writes in worker threads are the router's too).

With ``--reference DIR`` (a checkout, e.g. ``git worktree add /tmp/router-old <commit>``) the same
measurement runs on that checkout's code in a child process, alternating with this one's round by
round so that drift on a shared machine lands on both alike. Reports; asserts nothing.

    .venv/bin/python bench/router_overhead.py
    .venv/bin/python bench/router_overhead.py --reference /tmp/router-old --rounds 5 --calls 1000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REPLY = json.dumps({"verdict": "the loader reads the whole file before parsing", "confidence": 0.9})
SCHEMA = {"type": "object", "properties": {"verdict": {"type": "string"}}, "required": ["verdict"]}


def use_checkout(root: Path) -> None:
    """Import ``caelum_mcp`` from ``root`` instead of the editable install (its finder goes first)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
    sys.path.insert(0, str(root))
    import caelum_mcp

    caelum_mcp.__path__.append(str(root))  # caelum_mcp.tools and .supervisors live at the root


async def measure(calls: int, warmup: int, folder: str | None) -> dict[str, Any]:
    """Per-call times (ms) of both paths in this process's ``caelum_mcp``."""
    import caelum_mcp
    from caelum_mcp.core.llm import LLMTask, TaskKind
    from caelum_mcp.core.types import ChatMessage, ChatRequest, Tier
    from caelum_mcp.engine.backends.scripted import ScriptedBackend, ScriptedReply
    from caelum_mcp.engine.config import load_config
    from caelum_mcp.engine.hosts import Host
    from caelum_mcp.engine.ledger import Ledger
    from caelum_mcp.engine.pool import Pool
    from caelum_mcp.engine.router import Router

    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        config = load_config(None, environ={}, overrides={"data_dir": tmp, "implicit_ollama": False})
        backend = ScriptedBackend([("qwen2.5-coder:1.5b", 1.5)], ScriptedReply(REPLY, logprob=-0.05), name="h1")
        pool = Pool([Host(name="h1", backend=backend, max_concurrency=4)])
        await pool.refresh_all()
        messages = (
            ChatMessage(role="user", content="Why is this loader slow? def load(p): return parse(open(p).read())"),
        )
        task = LLMTask(name="bench", kind=TaskKind.GENERAL, messages=messages, output_schema=SCHEMA, tier=Tier.MICRO)
        request = ChatRequest(model="", messages=messages, json_schema=SCHEMA, logprobs=True, max_tokens=256)
        with Ledger(Path(tmp) / "ledger.sqlite3") as ledger:
            router = Router(pool, ledger, config)
            path = (await router.run(task)).execution.path

            async def via_router() -> None:
                await router.run(task)

            async def via_pool() -> None:
                await pool.chat(request, tier=Tier.MICRO)

            times: dict[str, list[float]] = {"router": [], "pool": []}
            cpu = {"router": 0.0, "pool": 0.0}  # the process's CPU seconds (every thread: the ledger's too)
            paths = (("pool", via_pool), ("router", via_router))
            for _ in range(warmup):
                for _name, fn in paths:
                    await fn()
            block = 50  # calls of one path in a row, then the other's
            for done in range(0, calls, block):
                for name, fn in paths:
                    cpu_started = time.process_time()
                    for _ in range(min(block, calls - done)):
                        started = time.perf_counter()
                        await fn()
                        times[name].append((time.perf_counter() - started) * 1000)
                    cpu[name] += time.process_time() - cpu_started
        await pool.aclose()
    cpu_ms = {f"{name}_cpu": [seconds * 1000 / len(times[name])] for name, seconds in cpu.items()}
    return {"code": str(Path(caelum_mcp.__file__).parent.parent), "path": path, **times, **cpu_ms}


def child(args: argparse.Namespace) -> None:
    import anyio

    if args.checkout is not None:
        use_checkout(args.checkout)
    print(json.dumps(anyio.run(measure, args.calls, args.warmup, args.folder)))


def summary(times: list[float]) -> tuple[float, float]:
    return statistics.median(times), statistics.fmean(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=None, help="root of another checkout to compare with")
    parser.add_argument("--rounds", type=int, default=3, help="child processes per checkout, alternating")
    parser.add_argument("--calls", type=int, default=1000, help="measured calls per path per round")
    parser.add_argument("--warmup", type=int, default=100, help="calls per path before measuring")
    parser.add_argument(
        "--folder",
        default="/dev/shm" if Path("/dev/shm").is_dir() else None,
        help="where the scratch ledger lives (default /dev/shm: a disk's fsync would swamp the router's own cost)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkout", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1 or args.calls < 1 or args.warmup < 0:
        parser.error("--rounds and --calls must be at least 1, --warmup at least 0")
    if args.reference is not None and not (args.reference / "caelum_mcp" / "__init__.py").is_file():
        parser.error(f"--reference {args.reference} is not a checkout of caelum-mcp (no caelum_mcp/__init__.py)")
    if args.child:
        child(args)
        return
    sides: list[tuple[str, Path | None]] = [("this checkout", None)]
    if args.reference is not None:
        sides.insert(0, (f"reference {args.reference}", args.reference.resolve()))
    names = ("router", "pool", "router_cpu", "pool_cpu")
    collected: dict[str, dict[str, list[float]]] = {label: {name: [] for name in names} for label, _ in sides}
    paths: dict[str, set[str]] = {label: set() for label, _ in sides}
    for round_no in range(args.rounds):
        order = sides if round_no % 2 == 0 else sides[::-1]
        for label, checkout in order:
            command = [sys.executable, __file__, "--child", "--calls", str(args.calls), "--warmup", str(args.warmup)]
            command += ["--folder", args.folder] if args.folder else []
            if checkout is not None:
                command += ["--checkout", str(checkout)]
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=900, check=True, env=dict(os.environ)
            )
            got = json.loads(done.stdout.strip().splitlines()[-1])
            paths[label].add(f"{got['path']} ({got['code']})")
            for name in names:
                collected[label][name] += got[name]
    print(f"{args.rounds} rounds x {args.calls} calls per path, after {args.warmup} warm-up calls (ms per call)")
    heads = ("pool p50", "router p50", "own p50", "pool mean", "router mean", "own mean", "own CPU")
    print(f"{'code':<40} " + " ".join(f"{h:>11}" for h in heads))
    for label, _ in sides:
        pool_p50, pool_mean = summary(collected[label]["pool"])
        router_p50, router_mean = summary(collected[label]["router"])
        own_cpu = statistics.fmean(collected[label]["router_cpu"]) - statistics.fmean(collected[label]["pool_cpu"])
        own_p50, own_mean = router_p50 - pool_p50, router_mean - pool_mean
        figures = (pool_p50, router_p50, own_p50, pool_mean, router_mean, own_mean, own_cpu)
        print(f"{label[:40]:<40} " + " ".join(f"{f:11.3f}" for f in figures))
        print(f"    answered as: {', '.join(sorted(paths[label]))}")


if __name__ == "__main__":
    main()
