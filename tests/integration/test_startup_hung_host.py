"""A host that accepts connections and never answers must not hold up the server's start.

``python -m caelum_mcp serve`` runs as a real stdio child (as Claude Code starts it) with two
hosts in its config: one that never answers any request (its health check included) and one that
works. Before: ``initialize`` waited for the hung host's health check, 303 s (the HTTP client's
``request_timeout_s``), past the 30-60 s a client gives a server. Now the first health checks run in
the background with their own limit; the benchmark row (``bench/faults.py --only startup``) shows
the real figure, this test only that it is nowhere near the old one.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import anyio
import pytest
from fakes.fault_host import Fault, FaultHost
from mcp import Client, StdioServerParameters
from mcp.types import TextContent

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def config_with(tmp_path: Path, hung: str, healthy: str) -> Path:
    path = tmp_path / "caelum.toml"
    path.write_text(
        f"""embedded = "off"
implicit_ollama = false

[[hosts]]
name = "hung"
kind = "openai"
url = "{hung}"

[[hosts]]
name = "works"
kind = "openai"
url = "{healthy}"
""",
        encoding="utf-8",
    )
    return path


async def test_a_hung_host_does_not_hold_up_initialize_and_calls_go_to_the_working_host(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with FaultHost(fault=Fault("silent")) as hung, FaultHost() as healthy:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(home),
            "CAELUM_CONFIG": str(config_with(tmp_path, hung.url, healthy.url)),
            "CAELUM_DATA_DIR": str(tmp_path / "data"),
        }
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "caelum_mcp", "serve"], env=env, cwd=str(ROOT)
        )
        started = time.monotonic()
        # Before the fix this waited 300 s; the margin covers a slow interpreter start on a loaded machine.
        with anyio.fail_after(30):
            async with Client(params) as client:
                initialized = time.monotonic() - started
                assert hung.by_path["/health"] >= 1, "the hung host's health check was sent"

                result = await client.call_tool("delegate_task", {"prompt": "Say hello.", "max_tokens": 16})
                assert not result.is_error, [c.text for c in result.content if isinstance(c, TextContent)]
                assert result.structured_content is not None
                assert result.structured_content["execution"]["host"] == "works"

                res = await client.read_resource("caelum://status")
                status = {h["name"]: h for h in json.loads(getattr(res.contents[0], "text", ""))["hosts"]}
                assert status["works"]["healthy"] is True
                assert status["hung"]["healthy"] is False and not status["hung"]["models"]
    print(f"initialize answered after {initialized:.2f} s")
    assert initialized < 20.0, initialized
    assert hung.chats == 0, "no model call went to a host that never answered its health check"
