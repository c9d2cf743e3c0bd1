"""Kill and resume: a server killed mid-run (SIGKILL) leaves its run ``interrupted`` at the next
start, and ``resume`` reuses the steps that completed.

The first server is ``caelum-mcp serve --transport http`` driven by ``caelum-mcp call --url`` (both
real subprocesses); the second is started over stdio by the MCP client, so both transports carry
the workflow tools. The workflow is a real tool step (analyze_and_improve_code) followed by a
command that waits while a gate file exists.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fakes.served import tail
from mcp import Client, StdioServerParameters

from .test_development import PLANTED, write
from .test_mcp_http import start_server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WAIT = (
    "import pathlib, sys, time\n"
    "gate = pathlib.Path(sys.argv[1]); end = time.monotonic() + 60\n"
    "while gate.exists() and time.monotonic() < end: time.sleep(0.05)\n"
    "print('gate open')\n"
)


def config_file(tmp: Path, gate: Path) -> Path:
    path = tmp / "caelum.toml"
    path.write_text(
        f"""embedded = "off"
allowed_roots = ["{tmp / "work"}"]

[workflows.gated]
summary = false

[workflows.gated.steps.lint]
tool = "analyze_and_improve_code"
args = {{ project = "{{{{ project }}}}", task = "performance", llm_review = false }}

[workflows.gated.steps.wait]
command = [{json_list([sys.executable, "-c", WAIT, str(gate)])}]
needs = ["lint"]
"""
    )
    return path


def json_list(items: list[str]) -> str:
    return ", ".join(json.dumps(i) for i in items)


def steps_in_store(data: Path) -> dict[str, str]:
    db = data / "supervisors" / "workflow" / "runs.sqlite3"
    if not db.exists():
        return {}
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT step, status FROM steps").fetchall())


def output_saved(data: Path, step: str) -> bool:
    """Whether ``step``'s output file is on disk: the server writes it off the run's critical path,
    just after the step's row says passed, and a resume can reuse only a step whose output it finds
    (on a loaded machine the kill came in between and lint ran again)."""
    db = data / "supervisors" / "workflow" / "runs.sqlite3"
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT output_ref FROM steps WHERE step = ?", (step,)).fetchone()
    return bool(row and row[0]) and (db.parent / row[0]).is_file()


def run_until_killed(tmp_path: Path, config: Path, project: Path) -> None:
    """Start the run over HTTP and SIGKILL the server once the first step passed (its output saved)
    and the second runs."""
    servers = start_server(tmp_path, {"CAELUM_CONFIG": str(config)})
    served = next(servers)
    argv = [sys.executable, "-m", "caelum_mcp", "call", "--url", served.mcp, "run_workflow", "workflow=gated"]
    caller = subprocess.Popen(
        [*argv, f"project={project}"],
        env={**os.environ, "CAELUM_CONFIG": str(config), "CAELUM_DATA_DIR": str(tmp_path / "client-data")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 90
        while steps_in_store(tmp_path / "data") != {"lint": "passed", "wait": "running"} or not output_saved(
            tmp_path / "data", "lint"
        ):
            assert caller.poll() is None, caller.stderr.read().decode() if caller.stderr else ""
            assert time.monotonic() < deadline, f"the run did not reach its second step:\n{tail(served.log)}"
            time.sleep(0.1)
        served.proc.kill()  # SIGKILL: no lifespan exit, nothing is tidied
        served.proc.wait(timeout=10)
        caller.wait(timeout=30)
        assert caller.returncode != 0  # the client saw its server die
    finally:
        if caller.poll() is None:
            caller.kill()
        servers.close()


async def test_a_killed_server_leaves_the_run_interrupted_and_resume_reuses_its_steps(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "p", PLANTED)
    gate = tmp_path / "gate"
    gate.write_text("closed")
    config = config_file(tmp_path, gate)
    run_until_killed(tmp_path, config, project)
    gate.unlink()  # lets the orphaned wait command (and the resumed one) finish

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "caelum_mcp", "serve"],
        env={
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(tmp_path / "home"),
            "CAELUM_CONFIG": str(config),
            "CAELUM_DATA_DIR": str(tmp_path / "data"),
            "CAELUM_IMPLICIT_OLLAMA": "false",
        },
        cwd=str(ROOT),
    )
    async with Client(params) as client:
        history = await structured(client, "workflow_history", {"workflow": "gated"})
        (killed,) = history["runs"]
        assert killed["status"] == "interrupted"
        assert {s["id"]: s["status"] for s in killed["steps"]} == {"lint": "passed", "wait": "interrupted"}
        resumed = await structured(
            client, "run_workflow", {"workflow": "gated", "project": str(project), "resume": killed["id"]}
        )
        after = await structured(client, "workflow_history", {"workflow": "gated"})
    assert resumed["status"] == "passed" and resumed["resumed_from"] == killed["id"]
    steps = {s["id"]: s for s in resumed["steps"]}
    assert steps["lint"]["reused"] is True and steps["lint"]["findings"] == killed["steps"][0]["findings"]
    assert steps["wait"]["reused"] is False and steps["wait"]["status"] == "passed"
    assert steps["wait"]["result"] == "exit 0: gate open"
    assert [r["status"] for r in after["runs"]] == ["passed", "interrupted"]
    assert after["runs"][0]["steps"][0]["reused_from"] == killed["id"]


async def structured(client: Client, tool: str, args: dict[str, Any]) -> Any:
    res = await client.call_tool(tool, args)
    assert not res.is_error, res.content
    return res.structured_content
