"""The MCP Inspector CLI (our test bench) against the server, over stdio and streamable HTTP.

`make test` installs the Inspector (npm) into .tools/; without it the test is skipped locally and
fails in CI, where the Makefile must have installed it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_mcp_http import Served, start_server

pytestmark = [pytest.mark.model, pytest.mark.npm]

ROOT = Path(__file__).resolve().parents[2]
INSPECTOR = ROOT / ".tools" / "node_modules" / ".bin" / "mcp-inspector"


@pytest.fixture(scope="module")
def inspector() -> Path:
    if not INSPECTOR.exists():
        if os.environ.get("CI"):
            pytest.fail(f"the MCP Inspector is not installed at {INSPECTOR}; `make test` installs it")
        pytest.skip("MCP Inspector not installed (run `make inspector`)")
    return INSPECTOR


def run_inspector(inspector: Path, args: list[str], home: Path) -> dict[str, object]:
    return run_inspector_with_stderr(inspector, args, home)[0]


def run_inspector_with_stderr(inspector: Path, args: list[str], home: Path) -> tuple[dict[str, object], str]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home)}
    # The Inspector gives a server 15 s to answer `initialize`; the embedded model starts first (5 s
    # here alone), and under the suite's parallel load that once took longer: this tests behaviour,
    # the start-up time is not its business.
    proc = subprocess.run(
        [str(inspector), "--cli", "--connect-timeout", "100000", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data: dict[str, object] = json.loads(proc.stdout)
    return data, proc.stderr


def test_inspector_over_stdio_lists_and_calls(inspector: Path, tmp_path: Path) -> None:
    server = [
        "-e", f"CAELUM_DATA_DIR={tmp_path / 'data'}",
        "-e", "CAELUM_EMBEDDED=on",
        "-e", "CAELUM_IMPLICIT_OLLAMA=false",
        "-e", f"HOME={tmp_path}",
        sys.executable, "-m", "caelum_mcp", "serve",
    ]  # fmt: skip
    listed, stderr = run_inspector_with_stderr(inspector, [*server, "--method", "tools/list", "--strict"], tmp_path)
    # --strict reports each schema portability finding (e.g. `type` arrays Gemini rejects) on stderr
    assert "Warning: tool" not in stderr and "Error: tool" not in stderr and "portability" not in stderr, stderr
    tools = {t["name"]: t for t in listed["tools"]}  # type: ignore[attr-defined]
    assert {"analyze_and_improve_code", "delegate_task", "pool_status"} <= set(tools)
    assert tools["pool_status"]["annotations"]["readOnlyHint"] is True
    assert "outputSchema" in tools["delegate_task"]

    called = run_inspector(
        inspector,
        [*server, "--method", "tools/call", "--tool-name", "delegate_task",
         "--tool-arg", "prompt=Name a colour.", "tier=micro", "max_tokens=40"],
        tmp_path,
    )  # fmt: skip
    assert called["isError"] is False
    execution = called["structuredContent"]["execution"]  # type: ignore[index]
    assert execution["host"] == "embedded" and execution["output_tokens"] > 0


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from start_server(tmp_path_factory.mktemp("inspector-http"), {"CAELUM_EMBEDDED": "on"})


def test_inspector_over_streamable_http(inspector: Path, http_server: Served, tmp_path: Path) -> None:
    status = run_inspector(
        inspector,
        [http_server.mcp, "--method", "tools/call", "--tool-name", "pool_status"],
        tmp_path,
    )
    hosts = status["structuredContent"]["hosts"]  # type: ignore[index]
    assert any(h["name"] == "embedded" and h["healthy"] for h in hosts)
    resources = run_inspector(inspector, [http_server.mcp, "--method", "resources/list"], tmp_path)
    uris = {r["uri"] for r in resources["resources"]}  # type: ignore[attr-defined]
    assert {"caelum://status", "caelum://ledger/summary"} <= uris
