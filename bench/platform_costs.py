"""What the supervisor platform costs a user: the LLM gate with only the embedded model, and the
size of the tool definitions every client reads.

1. ``analyze_and_improve_code(task="security_scan")`` through the real MCP server on a copy of a
   third-party package (default: the installed ``starlette``, ~36 files), with only the embedded
   SmolLM2-135M model, as a first-run user has it. The review needs tier ``full``, so it is skipped
   at once: the call costs what the analysers cost. With ``--compare-micro`` the same call is also
   made with ``[router.tasks.review] min_tier = "micro"`` (what every call did before tasks
   declared their needs): the user then waits for the 135M model's review. Side by side, one run.
2. ``tools/list``: its size as sent, what a model sees of each tool (name, description and input
   schema, in estimated tokens), and the schema portability findings the MCP Inspector's
   ``--strict`` check would report (its rules, re-implemented in ``caelum_mcp.core.schemas``).

Run: ``.venv/bin/python bench/platform_costs.py [--project PATH] [--compare-micro] [--repeat N]``.
Prints figures; the targets are ≤ 5 s for (1) and ≤ 400 model-visible tokens per tool for (2).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

from caelum_mcp.core.llm import TaskKind
from caelum_mcp.core.schemas import lint_portability, model_visible_size
from caelum_mcp.core.types import Tier
from caelum_mcp.embedded.server import embedded_status
from caelum_mcp.engine.config import ClaudeConfig, Config, RouterConfig, TaskNeedsConfig
from caelum_mcp.serving.server import create_server

SCAN_TARGET_S = 5.0
VISIBLE_TARGET_TOKENS = 400


def default_project() -> Path:
    spec = importlib.util.find_spec("starlette")
    if spec is None or spec.origin is None:
        raise SystemExit("starlette is not installed; pass --project PATH")
    return Path(spec.origin).parent


def config(root: Path, data: Path, *, micro_review: bool) -> Config:
    """Only the embedded model, no implicit Ollama, no Claude: the first-run setting, made explicit."""
    tasks = {TaskKind.REVIEW: TaskNeedsConfig(min_tier=Tier.MICRO)} if micro_review else {}
    return Config(
        data_dir=data,
        embedded="on",
        implicit_ollama=False,
        allowed_roots=(root,),
        claude=ClaudeConfig(enabled=False),
        router=RouterConfig(tasks=tasks),
    )


async def scan(root: Path, data: Path, *, micro_review: bool, repeat: int) -> tuple[list[float], dict[str, Any]]:
    """Wall seconds of each call and the last result. Each call gets a fresh server and data folder,
    so no analyser result is reused (a cold call); the server's start is not timed."""
    times: list[float] = []
    out: dict[str, Any] = {}
    for run in range(repeat):
        server, _ = create_server(config(root, data / str(run), micro_review=micro_review))
        async with Client(server) as client:
            started = time.perf_counter()
            res = await client.call_tool(
                "analyze_and_improve_code", {"project": str(root), "task": "security_scan", "allow_claude": False}
            )
            times.append(time.perf_counter() - started)
        if res.is_error:
            raise SystemExit(f"the call failed: {res.content}")
        out = res.structured_content or {}
    return times, out


def describe(label: str, times: list[float], out: dict[str, Any]) -> str:
    step = out.get("llm") or {}
    ex = step.get("execution") or {}
    llm = f"LLM step {step.get('status', '?')}"
    if ex:
        llm += f" on {ex['model']}@{ex['host']}, {ex['latency_ms'] / 1000:.1f} s, confidence {ex['confidence']:.2f}"
    return (
        f"  {label:<34} median {statistics.median(times):7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times)}); "
        f"{out.get('findings_total', 0)} findings; {llm}"
    )


async def tools_list(data: Path) -> list[dict[str, Any]]:
    server, _ = create_server(Config(data_dir=data, embedded="off", implicit_ollama=False))
    async with Client(server) as client:
        listed = await client.list_tools()
    return [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in listed.tools]


async def main(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="caelum-bench-platform-"))
    try:
        print("== tools/list ==")
        wire = await tools_list(work / "list-data")
        total = len(json.dumps({"tools": wire}, separators=(",", ":")))
        visible = {w["name"]: model_visible_size(w) for w in wire}
        findings = sum(len(lint_portability(w.get(k, {}))) for w in wire for k in ("inputSchema", "outputSchema"))
        average = statistics.mean(tokens for _, tokens in visible.values())
        print(f"  {len(wire)} tools, {total} characters of compact JSON (output schemas included)")
        for name, (chars, tokens) in sorted(visible.items(), key=lambda kv: -kv[1][1]):
            print(f"  {name:<28} {tokens:4d} tokens ({chars} characters) seen by a model")
        verdict = "PASS" if average <= VISIBLE_TARGET_TOKENS else "FAIL"
        print(f"  model-visible average: {average:.0f} tokens per tool (target <= {VISIBLE_TARGET_TOKENS}): {verdict}")
        print(f"  schema portability findings (Inspector --strict rules): {findings}")

        ok, detail = embedded_status()
        if not ok:
            print(f"\n== security_scan: skipped, the embedded model is not available: {detail} ==")
            return 1
        source = args.project or default_project()
        root = work / "project"
        shutil.copytree(source, root, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        files = sum(1 for p in root.rglob("*") if p.is_file())
        print(f"\n== security_scan on a copy of {source} ({files} files), only the embedded model ==")
        times, out = await scan(root, work / "data-gate", micro_review=False, repeat=args.repeat)
        print(describe("review needs tier full (default)", times, out))
        median = statistics.median(times)
        print(f"  target <= {SCAN_TARGET_S:g} s: {'PASS' if median <= SCAN_TARGET_S else 'FAIL'}")
        if args.compare_micro:
            old_times, old = await scan(root, work / "data-micro", micro_review=True, repeat=1)
            print(describe("review forced onto micro (before)", old_times, old))
            print(f"  the gate saves the user {statistics.median(old_times) - median:.1f} s per call")
        print("\nside by side in this one run; every call is cold (fresh server and cache)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, help="the project to scan (default: a copy of starlette)")
    parser.add_argument("--repeat", type=int, default=3, help="calls with the default needs (default 3)")
    parser.add_argument("--compare-micro", action="store_true", help="also time the review forced onto micro")
    parsed = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if parsed.repeat < 1:
        parser.error("--repeat must be at least 1")
    sys.exit(anyio.run(main, parsed))
