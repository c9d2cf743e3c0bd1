"""``caelum-mcp --log-format json serve --transport stdio --dashboard-port 0``, as a client starts it:
the dashboard is served beside the stdio session, and one request id ties a tool call's log lines,
its ledger rows and its dashboard row together.

The model host is a fake OpenAI-compatible server on loopback (``fakes/fault_host.py``); the
server is a real subprocess.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import anyio
import httpx2
import pytest
from fakes.fault_host import FaultHost
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from caelum_mcp.engine.ledger import Ledger

pytestmark = pytest.mark.slow

SERVE = ("serve", "--transport", "stdio", "--dashboard-port", "0")
DASHBOARD_LINE = re.compile(r"dashboard at (http://127\.0\.0\.1:\d+)/")


async def wait_for_line(path: Path, pattern: re.Pattern[str], timeout_s: float = 30) -> re.Match[str]:
    with anyio.fail_after(timeout_s):
        while True:
            match = pattern.search(await anyio.Path(path).read_text(errors="replace"))
            if match:
                return match
            await anyio.sleep(0.1)


async def test_stdio_serves_the_dashboard_and_json_logs_carry_the_request_id(tmp_path: Path) -> None:
    with FaultHost("openai", models=[("qwen3-8b-instruct", 8.2)]) as host:
        config = tmp_path / "caelum.toml"
        config.write_text(
            f'embedded = "off"\nimplicit_ollama = false\ndata_dir = "{tmp_path / "data"}"\n\n'
            f'[[hosts]]\nname = "fake-gpu"\nkind = "openai"\nurl = "{host.url}"\n'
        )
        home = tmp_path / "home"
        home.mkdir()
        params = StdioServerParameters(
            command=sys.executable,
            args=[*("-m", "caelum_mcp", "--config", str(config), "--log-format", "json"), *SERVE],
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(home)},
            cwd=str(tmp_path),
        )
        stderr = tmp_path / "stderr.log"
        with stderr.open("w") as errlog:
            async with Client(stdio_client(params, errlog=errlog)) as client:
                base = (await wait_for_line(stderr, DASHBOARD_LINE)).group(1)
                result = await client.call_tool("delegate_task", {"prompt": "Name a prime.", "tier": "full"})
                assert not result.is_error, result.content
                async with httpx2.AsyncClient(base_url=base, timeout=10) as http:
                    snapshot = (await http.get("/dashboard/api/snapshot")).json()
                    metrics = (await http.get("/metrics")).text
                    page = await http.get("/")
                    foreign = await http.get("/", headers={"host": "evil.example"})
            with Ledger(tmp_path / "data" / "ledger.sqlite3") as ledger:
                (call,) = ledger.tool_calls(limit=5)
                rows = [r for r in ledger.recent(10) if r.call_id == call.id]
        async with httpx2.AsyncClient(timeout=2) as http:  # the dashboard went with the session
            with pytest.raises(httpx2.TransportError):
                await http.get(f"{base}/health")

    assert page.status_code == 200 and "caelum-mcp dashboard" in page.text
    assert foreign.status_code == 421
    # one id: the ledger's tool call and model-call rows, the dashboard's row, the log lines
    assert call.tool == "delegate_task" and call.outcome == "ok"
    assert len(rows) == 1 and rows[0].host == "fake-gpu"
    (row,) = [c for c in snapshot["calls"] if c["id"] == call.id]
    assert (row["tool"], row["host"], row["model"]) == ("delegate_task", "fake-gpu", "qwen3-8b-instruct")
    assert [h["status"]["name"] for h in snapshot["hosts"]] == ["fake-gpu"]
    share = snapshot["share"]  # tool calls, model calls and embedding work, each apart
    assert (share["tool_calls"], share["calls"], share["embedding_rows"]) == (1, 1, 0)
    assert 'caelum_tool_calls_total{outcome="ok",tool="delegate_task"} 1.0' in metrics

    lines = [line for line in stderr.read_text().splitlines() if line.startswith("{")]
    entries = [json.loads(line) for line in lines]  # every log line is one JSON object
    assert entries and all({"ts", "level", "logger", "message"} <= set(e) for e in entries)
    tagged = [e for e in entries if e.get("request_id") == call.id]
    assert any(e["message"].startswith("tool delegate_task: ok in ") for e in tagged), tagged
    assert not any(line.startswith(("Traceback", "ERROR")) for line in stderr.read_text().splitlines())
