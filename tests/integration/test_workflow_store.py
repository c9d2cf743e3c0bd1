"""A damaged workflow run store (issue 20 item 7): the server still starts and serves every tool;
the store is moved aside, rebuilt empty, and the next run_workflow result says where it went.
A real stdio server subprocess through the MCP client."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EVERY_TOOL = {
    "analyze_and_improve_code", "ask_knowledge", "check_system_health", "compare_models", "delegate_task",
    "diagnose_logs", "memory", "pool_status", "profile_data", "query_data", "review_changes", "run_project_tests",
    "run_workflow", "search_knowledge", "set_host_enabled", "workflow_history",
}  # fmt: skip
GARBAGE = b"this is not an SQLite database \x00\xff" * 200


async def test_a_corrupt_run_store_is_moved_aside_and_the_server_serves_on(tmp_path: Path) -> None:
    project = tmp_path / "work" / "p"
    project.mkdir(parents=True)
    (project / "a.py").write_text("x = 1\n")
    store = tmp_path / "data" / "supervisors" / "workflow" / "runs.sqlite3"
    store.parent.mkdir(parents=True)
    store.write_bytes(GARBAGE)
    config = tmp_path / "caelum.toml"
    echo = ", ".join(json.dumps(a) for a in [sys.executable, "-c", "print('ok')"])
    config.write_text(
        f'embedded = "off"\nallowed_roots = ["{tmp_path / "work"}"]\n\n'
        f"[workflows.echo]\nsummary = false\n\n[workflows.echo.steps.say]\ncommand = [{echo}]\n"
    )
    config.chmod(0o600)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path / "home"),
        "CAELUM_CONFIG": str(config),
        "CAELUM_DATA_DIR": str(tmp_path / "data"),
        "CAELUM_IMPLICIT_OLLAMA": "false",
    }
    params = StdioServerParameters(command=sys.executable, args=["-m", "caelum_mcp", "serve"], env=env, cwd=str(ROOT))
    async with Client(params) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert EVERY_TOOL <= names
        await ok(client, "pool_status", {})
        analysis = {"project": str(project), "task": "performance", "llm_review": False}
        assert (await ok(client, "analyze_and_improve_code", analysis))["project"] == str(project)
        assert (await ok(client, "workflow_history", {}))["runs"] == []  # the new store is empty
        first = await ok(client, "run_workflow", {"workflow": "echo", "project": str(project)})
        second = await ok(client, "run_workflow", {"workflow": "echo", "project": str(project)})
    (moved,) = list(store.parent.glob("runs.sqlite3.corrupt-*"))
    assert moved.read_bytes() == GARBAGE  # kept, for whoever wants to look
    assert first["status"] == "passed"
    (note,) = first["notes"]
    assert f"moved aside to {moved}" in note and "could not be read" in note
    assert second["status"] == "passed" and second["notes"] == []  # said once


async def ok(client: Client, tool: str, args: dict[str, Any]) -> Any:
    res = await client.call_tool(tool, args)
    assert not res.is_error, res.content
    return res.structured_content
