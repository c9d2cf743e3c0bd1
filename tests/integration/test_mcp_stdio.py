"""``python -m caelum_mcp serve`` as a real stdio child, the way Claude Code and Desktop start it.

The child gets an explicit environment (the SDK passes only a small safe set otherwise). Any
stray write to stdout would corrupt the JSON-RPC stream, so a working session proves stdout is
clean; the test also checks that the child (and its embedded model) exits when the client closes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import psutil
import pytest
from mcp import Client, StdioServerParameters
from mcp.types import TextContent

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[2]


def server_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "CAELUM_DATA_DIR": str(tmp_path / "data"),
        "CAELUM_EMBEDDED": "on",
        "CAELUM_IMPLICIT_OLLAMA": "false",
        "CAELUM_LOG_LEVEL": "debug",  # plenty of logging, all of which must stay off stdout
    }


def our_children(before: set[int], match: Callable[[psutil.Process], bool]) -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid not in before and match(child):
                found.append(child)
        except psutil.Error:
            continue
    return found


def is_server(proc: psutil.Process) -> bool:
    return "caelum_mcp" in proc.cmdline() and "serve" in proc.cmdline()


async def wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    while alive and time.monotonic() < deadline:
        await anyio.sleep(0.1)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    return alive


async def test_stdio_server_lists_calls_reads_and_exits_with_the_client(tmp_path: Path) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "caelum_mcp", "serve"], env=server_env(tmp_path), cwd=str(ROOT)
    )
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with anyio.fail_after(150):
        async with Client(params) as client:
            spawned = our_children(before, lambda p: True)
            assert any(is_server(p) for p in spawned), "no caelum-mcp child found"
            assert any("caelum_mcp.embedded" in p.cmdline() for p in spawned), "no embedded model child"

            tools = {t.name for t in (await client.list_tools()).tools}
            assert {"delegate_task", "pool_status", "set_host_enabled"} <= tools

            result = await client.call_tool(
                "delegate_task", {"prompt": "Say hello.", "tier": "micro", "max_tokens": 32}
            )
            assert not result.is_error, [c.text for c in result.content if isinstance(c, TextContent)]
            assert result.structured_content is not None
            execution = result.structured_content["execution"]
            assert execution["host"] == "embedded" and execution["output_tokens"] > 0

            res = await client.read_resource("caelum://status")
            status = json.loads(getattr(res.contents[0], "text", ""))
            assert status["ledger"]["calls"] == execution["attempts"]
            embedded = next(h for h in status["hosts"] if h["name"] == "embedded")
            assert embedded["healthy"] is True and embedded["served"] == execution["attempts"]

        # The client closed stdin: the server and the llama.cpp child it started must be gone.
        left = await wait_gone(spawned, timeout_s=15)
    assert not left, f"still running after the client closed: {[p.cmdline() for p in left]}"
    assert (tmp_path / "data" / "ledger.sqlite3").is_file()  # the ledger went where CAELUM_DATA_DIR says
