"""``caelum-mcp serve --transport http`` on loopback: streamable HTTP, SSE, DNS-rebinding
protection and the bearer token, each against a real server subprocess.

Two servers per module: an open one with the embedded model, and one that requires a bearer
token (embedded model off, so it costs no CPU; tools/list and pool_status still work).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from fakes.served import free_port, wait_healthy
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import ListRootsResult, Root, TextContent

pytestmark = pytest.mark.model

TOKEN_ENV = "CAELUM_HTTP_TOKEN"  # deliberately CAELUM_-prefixed: it must not be read as a setting
TOKEN = "test-token-5f0c1e9a7b2d4c68"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


@dataclass
class Served:
    base: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def mcp(self) -> str:
        return f"{self.base}/mcp"


def start_server(tmp: Path, env_extra: dict[str, str], host: str = "127.0.0.1") -> Iterator[Served]:
    # HOME beside the working folder, not inside it: a folder above home is never a default root.
    home = tmp.parent / f"{tmp.name}-home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "CAELUM_DATA_DIR": str(tmp / "data"),
        "CAELUM_IMPLICIT_OLLAMA": "false",
        **env_extra,
    }
    log = tmp / "server.log"
    args = [sys.executable, "-m", "caelum_mcp", "serve", "--transport", "http", "--host", host, "--port", str(port)]
    with log.open("wb") as sink:
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, cwd=tmp)
    served = Served(f"http://{host}:{port}", proc, log)
    try:
        wait_healthy(proc, served.base, log, deadline=time.monotonic() + 45)
        yield served
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from start_server(tmp_path_factory.mktemp("http-open"), {"CAELUM_EMBEDDED": "on"})


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("http-token")
    config = tmp / "caelum.toml"
    config.write_text(f'embedded = "off"\n\n[server]\nhost = "127.0.0.1"\nbearer_token_env = "{TOKEN_ENV}"\n')
    yield from start_server(tmp, {"CAELUM_CONFIG": str(config), TOKEN_ENV: TOKEN})


async def test_streamable_http_lists_and_calls(open_server: Served) -> None:
    # /health says 503 while the embedded model, the only host, loads behind the tool calls' gate
    deadline = time.monotonic() + 60
    while (health := httpx2.get(f"{open_server.base}/health", timeout=5)).status_code == 503:
        assert health.json()["ok"] is False and time.monotonic() < deadline, health.text
        await anyio.sleep(0.2)
    assert health.status_code == 200 and health.json()["ok"] is True
    async with Client(open_server.mcp) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert {"delegate_task", "pool_status", "set_host_enabled"} <= tools
        result = await client.call_tool("delegate_task", {"prompt": "Say yes.", "tier": "micro", "max_tokens": 32})
    assert not result.is_error, [c.text for c in result.content if isinstance(c, TextContent)]
    assert result.structured_content is not None
    assert result.structured_content["execution"]["host"] == "embedded"
    assert result.structured_content["execution"]["output_tokens"] > 0


async def test_client_roots_reach_the_server_over_streamable_http(open_server: Served, tmp_path: Path) -> None:
    """`make run` + a client offering its workspace as MCP roots: the project there may be analysed."""
    project = tmp_path / "workspace" / "proj"
    project.mkdir(parents=True)
    (project / "a.py").write_text("import os\n")
    args = {"project": str(project), "task": "analyze", "llm_review": False}

    async def on_roots(ctx: Any) -> ListRootsResult:
        return ListRootsResult(roots=[Root(uri=(tmp_path / "workspace").as_uri(), name="workspace")])

    async with Client(open_server.mcp, list_roots_callback=on_roots) as client:
        offered = await client.call_tool("analyze_and_improve_code", args)
    async with Client(open_server.mcp) as client:
        refused = await client.call_tool("analyze_and_improve_code", args)
    assert not offered.is_error, offered.content
    assert offered.structured_content is not None
    assert any(f["rule"] == "F401" for f in offered.structured_content["findings"])
    assert refused.is_error and "outside the allowed roots" in str(refused.content[0])


async def test_foreign_host_or_origin_is_rejected(open_server: Served) -> None:
    port = open_server.base.rsplit(":", 1)[1]
    async with httpx2.AsyncClient(timeout=10) as http:
        ok = await http.post(open_server.mcp, json=INITIALIZE, headers=MCP_HEADERS)
        assert ok.status_code == 200  # the same request from a loopback page is served
        rebinding = await http.post(
            open_server.mcp, json=INITIALIZE, headers={**MCP_HEADERS, "host": f"evil.example:{port}"}
        )
        assert rebinding.status_code in (421, 403)
        origin = await http.post(
            open_server.mcp, json=INITIALIZE, headers={**MCP_HEADERS, "origin": "http://evil.example"}
        )
        assert origin.status_code == 403


async def test_sse_transport_lists_tools(open_server: Served) -> None:
    async with Client(sse_client(f"{open_server.base}/sse")) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
    assert {"delegate_task", "pool_status"} <= tools


async def test_bearer_token_is_required_and_accepted(token_server: Served) -> None:
    async with httpx2.AsyncClient(timeout=10) as http:
        missing = await http.post(token_server.mcp, json=INITIALIZE, headers=MCP_HEADERS)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = await http.post(
            token_server.mcp, json=INITIALIZE, headers={**MCP_HEADERS, "authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401
        sse = await http.get(f"{token_server.base}/sse")
        assert sse.status_code == 401  # SSE is behind the same gate
        assert TOKEN not in missing.text + wrong.text

    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(token_server.mcp, http_client=http)) as client,
    ):
        tools = {t.name for t in (await client.list_tools()).tools}
        status = await client.call_tool("pool_status", {})
    assert "delegate_task" in tools
    assert not status.is_error and status.structured_content is not None
    assert status.structured_content["embedded"] == "off by configuration"


def test_cli_status_url_sends_the_configured_token(token_server: Served, tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text(f'[server]\nbearer_token_env = "{TOKEN_ENV}"\n')
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "CAELUM_DATA_DIR": str(tmp_path / "d"),
        "CAELUM_IMPLICIT_OLLAMA": "false",
    }
    args = [sys.executable, "-m", "caelum_mcp", "--config", str(config), "status", "--url", token_server.mcp]
    ok = subprocess.run(args, env={**env, TOKEN_ENV: TOKEN}, capture_output=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr[-2000:].decode()
    assert b'"config_source"' in ok.stdout

    refused = subprocess.run(args, env=env, capture_output=True, timeout=60, check=False)
    err = refused.stderr.decode()
    assert refused.returncode != 0
    assert "401" in err and TOKEN_ENV in err  # says what to set
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def other_loopback_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    env = {"CAELUM_EMBEDDED": "off", "CAELUM_SERVER__PUBLIC_NAMES": '["caelum.test"]'}
    yield from start_server(tmp_path_factory.mktemp("http-127-0-0-2"), env, host="127.0.0.2")


async def test_the_allowed_hosts_follow_the_bind_address_and_public_names(other_loopback_server: Served) -> None:
    async with Client(other_loopback_server.mcp) as client:  # Host: 127.0.0.2:<port>, once refused with 421
        assert "pool_status" in {t.name for t in (await client.list_tools()).tools}
    port = other_loopback_server.base.rsplit(":", 1)[1]
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}

    def post(host_header: str) -> int:
        response = httpx2.post(
            other_loopback_server.mcp, json=body, headers={**headers, "Host": host_header}, timeout=10
        )
        return response.status_code

    assert post("evil.example") == 421  # DNS rebinding: a name this server does not have
    assert post(f"caelum.test:{port}") != 421  # a configured public name
    assert post("caelum.test") != 421  # behind a proxy on the default port
