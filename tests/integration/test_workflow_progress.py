"""Workflow progress and time limits through a real MCP client (in-process server, real commands
and the real run_project_tests tool): the heartbeat names the step running now, not the last one
that ended, and a step stopped at its limit is ``timed_out`` with the output it had."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from mcp import Client

from .test_development import make_server, write
from .test_workflow import call

pytestmark = pytest.mark.slow
PY = sys.executable


async def test_heartbeats_name_the_step_running_now_not_the_one_that_failed(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "p", {"a.txt": "x"})
    workflow = {
        "summary": False,
        "steps": {
            "security": {"command": [PY, "-c", "raise SystemExit(1)"], "on_failure": "continue"},
            "tests": {"command": [PY, "-c", "import time; time.sleep(2.5)"]},
        },
    }
    server, _ = make_server(tmp_path, workflows={"two": workflow}, server={"heartbeat_s": 0.3})
    seen: list[str] = []
    async with Client(server) as client:
        out = await call(client, "run_workflow", {"workflow": "two", "project": str(project)}, seen)
    assert {s["id"]: s["status"] for s in out["steps"]} == {"security": "failed", "tests": "passed"}
    failed = next(i for i, m in enumerate(seen) if m.startswith("security: failed"))
    done = next(i for i, m in enumerate(seen) if m.startswith("tests: passed"))
    between = seen[failed + 1 : done]
    beats = [m for m in between if "(still working" in m]
    assert len(beats) >= 3, seen  # 2.5 s of quiet at 0.3 s a beat
    # every message while the tests step ran says so; none repeats the step that had already ended
    assert all(m.startswith("running: tests") for m in between), between
    assert not any("security" in m for m in beats), beats


TESTS = {
    "tests/test_slow.py": (
        "import time\n\n\ndef test_quick():\n    assert True\n\n\ndef test_slow():\n    time.sleep(60)\n"
    )
}


async def test_a_tests_step_past_its_limit_is_timed_out_and_keeps_what_it_had(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "p", TESTS)
    workflow = {
        "summary": False,
        "steps": {
            # the tool's own limit: its result (with pytest's output so far) comes back whole
            "own": {
                "tool": "run_project_tests",
                "args": {"project": "{{ project }}", "timeout_s": 4, "triage": False},
                "on_failure": "continue",
            },
            # the step's limit, shorter than the tool's: the step keeps the progress it had reported
            "cut": {
                "tool": "run_project_tests",
                "args": {"project": "{{ project }}", "triage": False},
                "timeout_s": 4,
                "needs": ["own"],
            },
        },
    }
    server, _ = make_server(tmp_path, workflows={"slow-tests": workflow})
    seen: list[str] = []
    async with Client(server) as client:
        out = await call(client, "run_workflow", {"workflow": "slow-tests", "project": str(project)}, seen)
        own = await call(client, "workflow_history", {"run_id": out["run_id"], "step": "own"})
        cut = await call(client, "workflow_history", {"run_id": out["run_id"], "step": "cut"})
    steps = {s["id"]: s for s in out["steps"]}
    assert steps["own"]["status"] == "timed_out" and "timed out" in steps["own"]["error"]
    assert own["step_output"]["timed_out"] is True and "." in own["step_output"]["output_tail"]  # test_quick passed
    assert steps["cut"]["status"] == "timed_out" and "timed out after 4 s" in steps["cut"]["error"]
    assert cut["step_output"] == {"timed_out": True, "progress": ["run_project_tests: running the tests"]}
    assert out["status"] == "failed" and "own timed out" in out["summary"]
    assert any(m == "own: run_project_tests: running the tests" for m in seen)  # the child's progress names its step
