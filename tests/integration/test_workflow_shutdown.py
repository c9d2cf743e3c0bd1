"""Workflow commands die with the server (issue 20 item 5): a real stdio server subprocess runs a
workflow whose step holds a lock and waits; the server is then stopped with SIGTERM or SIGKILL,
and a killed run is resumed by a second server.

The first server is driven with raw JSON-RPC lines over its stdin (the test needs its pid and no
answer to the tool call); the second through the MCP client.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import anyio
import psutil
import pytest
from mcp import Client, StdioServerParameters
from mcp.types import LATEST_PROTOCOL_VERSION

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# Holds an exclusive lock while it waits for the gate to go: a second copy started while the first
# runs cannot take the lock and says so in `overlap`.
STEP = (
    "import fcntl, os, pathlib, sys, time\n"
    "d = pathlib.Path(sys.argv[1])\n"
    "lock = open(d / 'lock', 'w')\n"
    "try:\n"
    "    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
    "except OSError:\n"
    "    (d / 'overlap').write_text(str(os.getpid()))\n"
    "    sys.exit(3)\n"
    "with open(d / 'pids', 'a') as f:\n"
    "    f.write(f'{os.getpid()}\\n')\n"
    "end = time.monotonic() + 120\n"
    "while (d / 'gate').exists() and time.monotonic() < end:\n"
    "    time.sleep(0.05)\n"
    "print('gate open')\n"
)


def setup(tmp: Path) -> tuple[Path, Path, dict[str, str]]:
    project = tmp / "work" / "p"
    project.mkdir(parents=True)
    (project / "a.txt").write_text("x")
    box = tmp / "box"
    box.mkdir()
    (box / "gate").write_text("closed")
    config = tmp / "caelum.toml"
    command = ", ".join(json.dumps(a) for a in [sys.executable, "-c", STEP, str(box)])
    config.write_text(
        f'embedded = "off"\nallowed_roots = ["{tmp / "work"}"]\n\n'
        f"[workflows.held]\nsummary = false\n\n[workflows.held.steps.hold]\ncommand = [{command}]\n"
    )
    config.chmod(0o600)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp / "home"),
        "CAELUM_CONFIG": str(config),
        "CAELUM_DATA_DIR": str(tmp / "data"),
        "CAELUM_IMPLICIT_OLLAMA": "false",
    }
    return project, box, env


def send(stdin: IO[bytes], message: dict[str, Any]) -> None:
    stdin.write(json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n")
    stdin.flush()


def start_run(tmp: Path, project: Path, box: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    """A stdio server running the workflow, once its step has started: the server and the step's pid."""
    log = (tmp / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "caelum_mcp", "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
        cwd=ROOT,
    )
    assert server.stdin is not None and server.stdout is not None
    info = {"name": "test", "version": "0"}
    params = {"protocolVersion": LATEST_PROTOCOL_VERSION, "capabilities": {}, "clientInfo": info}
    send(server.stdin, {"id": 1, "method": "initialize", "params": params})
    assert json.loads(server.stdout.readline())["id"] == 1, (tmp / "server.log").read_text()
    send(server.stdin, {"method": "notifications/initialized"})
    call = {"name": "run_workflow", "arguments": {"workflow": "held", "project": str(project)}}
    send(server.stdin, {"id": 2, "method": "tools/call", "params": call})
    deadline = time.monotonic() + 60
    while not (box / "pids").exists() or not (box / "pids").read_text().endswith("\n"):
        assert server.poll() is None, (tmp / "server.log").read_text()
        assert time.monotonic() < deadline, "the step did not start"
        time.sleep(0.05)
    return server, int((box / "pids").read_text().split()[0])


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_sigterm_to_the_stdio_server_stops_the_running_step(tmp_path: Path) -> None:
    project, box, env = setup(tmp_path)
    server, step = start_run(tmp_path, project, box, env)
    try:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == -signal.SIGTERM  # it still ends by the signal it was sent
        assert gone_within(step, 5), "the step outlived its server's SIGTERM"
        assert "SIGTERM: stopped 1 running command" in (tmp_path / "server.log").read_text()
    finally:
        server.kill()
        stop(step)


def test_sigkill_to_the_server_stops_the_running_step(tmp_path: Path) -> None:
    project, box, env = setup(tmp_path)
    server, step = start_run(tmp_path, project, box, env)
    try:
        server.kill()  # nothing in the server runs after this: its guard process cleans up
        server.wait(timeout=10)
        # the guard may have to find it by its run marker (a process scan): room for a loaded machine
        assert gone_within(step, 30), "the step outlived its server's SIGKILL"
    finally:
        stop(step)


async def test_resume_after_a_kill_never_runs_a_step_beside_its_earlier_copy(tmp_path: Path) -> None:
    project, box, env = setup(tmp_path)
    server, first = start_run(tmp_path, project, box, env)
    try:
        # The worst case: the guard dies with the server (a kill of every process of the user's
        # session, an OOM kill), so the first copy of the step is still running.
        for child in psutil.Process(server.pid).children():
            if child.pid != first:
                child.kill()
        server.kill()
        server.wait(timeout=10)
        await anyio.sleep(0.5)
        assert psutil.Process(first).is_running(), "the scenario needs the first copy alive"
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "caelum_mcp", "serve"], env=env, cwd=str(ROOT)
        )
        async with Client(params) as client:
            history = await client.call_tool("workflow_history", {"workflow": "held"})
            (killed,) = history.structured_content["runs"]  # type: ignore[index]
            assert killed["status"] == "interrupted"
            result: dict[str, Any] = {}

            async def resume() -> None:
                args = {"workflow": "held", "project": str(project), "resume": killed["id"]}
                res = await client.call_tool("run_workflow", args)
                assert not res.is_error, res.content
                result.update(res.structured_content or {})

            async with anyio.create_task_group() as tg:
                tg.start_soon(resume)
                with anyio.fail_after(60):
                    # another process writes these files: there is no event to wait on
                    while len((box / "pids").read_text().split()) < 2 and not (box / "overlap").exists():  # noqa: ASYNC110
                        await anyio.sleep(0.05)
                (box / "gate").unlink()  # lets the resumed copy finish
        assert not (box / "overlap").exists(), "the resumed step ran beside its earlier copy"
        assert gone_within(first, 1)
        assert result["status"] == "passed"
        (note,) = result["notes"]
        assert f"step hold of run {killed['id']} was still running (pid {first})" in note and "killed" in note
    finally:
        stop(first)
