"""The workflow supervisor through a real MCP client (in-process): real tools composed by real
workflows, configured commands run as real subprocesses, the run store, history and costs.

The only stand-in is the model host that writes the summary (a :class:`ScriptedBackend`).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fakes.calibration_tables import write_calibrated_as_raw
from mcp import Client

from caelum_mcp.core.errors import ConfigError
from caelum_mcp.core.types import ChatRequest
from caelum_mcp.engine.backends.scripted import ScriptedBackend, ScriptedReply
from caelum_mcp.engine.config import load_config
from caelum_mcp.engine.hosts import Host
from caelum_mcp.supervisors.workflow import BUILTIN_WORKFLOWS, WorkflowsSettings
from caelum_mcp.tools.process import RUN_MARKER_VAR

from .test_development import PLANTED, make_server, write

PY = sys.executable
FAILING_TESTS = {
    "tests/test_calc.py": "def test_ok():\n    assert 1 + 1 == 2\n\n\ndef test_bad():\n    assert 1 + 1 == 3\n"
}


def git_project(root: Path, files: dict[str, str]) -> Path:
    project = write(root, files)
    run = {"cwd": project, "check": True, "capture_output": True}
    subprocess.run(["git", "init", "-q"], **run)  # type: ignore[call-overload]
    subprocess.run(["git", "add", "."], **run)  # type: ignore[call-overload]
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], **run)  # type: ignore[call-overload]
    return project


async def call(client: Client, tool: str, args: dict[str, Any], seen: list[str] | None = None) -> Any:
    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        if seen is not None:
            seen.append(message or "")

    res = await client.call_tool(tool, args, progress_callback=on_progress)
    assert not res.is_error, res.content
    return res.structured_content


@pytest.mark.slow  # over a second: kept out of make test-fast
async def test_pre_commit_runs_the_real_tools_in_parallel_and_stores_the_run(tmp_path: Path) -> None:
    project = git_project(tmp_path / "work" / "p", {**PLANTED, **FAILING_TESTS})
    (project / "app" / "calc.py").write_text((project / "app" / "calc.py").read_text() + "\nimport os\n")
    server, _ = make_server(tmp_path)
    seen: list[str] = []
    async with Client(server) as client:
        out = await call(client, "run_workflow", {"workflow": "pre-commit", "project": str(project)}, seen)
        history = await call(client, "workflow_history", {"project": str(project)})
    steps = {s["id"]: s for s in out["steps"]}
    assert out["status"] == "failed"
    assert steps["lint"]["status"] == "failed" and "counts_by_tool.ruff" in steps["lint"]["error"]
    # reported, not a failed commit: whole-project findings mostly predate the change
    assert steps["security"]["status"] == "passed" and steps["security"]["findings"] >= 3  # B608, B602, B307
    assert steps["tests"]["status"] == "failed" and steps["tests"]["findings"] == 1
    assert steps["tests"]["result"] == "some tests failed"  # the child's own exit meaning
    assert steps["review"]["status"] == "passed" and steps["review"]["target"] == "review_changes"
    # the three independent steps all started before the first of them ended; the review after all
    starts = [i for i, m in enumerate(seen) if m.startswith(("lint: started", "security: started", "tests: started"))]
    ends = [i for i, m in enumerate(seen) if m.startswith(("lint: failed", "security: passed", "tests: failed"))]
    assert len(starts) == len(ends) == 3 and max(starts) < min(ends)
    assert seen.index("review: started (review_changes)") > max(ends)
    # the child's own progress comes through, naming its step
    assert any(m.startswith("tests: run_project_tests:") for m in seen)
    # no model can summarise (tier small) and Claude is not configured: skipped at once, saying what to add
    assert out["llm"]["status"] == "skipped" and "tier small" in out["llm"]["note"]
    assert out["summary"].startswith("pre-commit failed") and out["cost"]["model_calls"] == 0
    (run,) = history["runs"]
    assert run["id"] == out["run_id"] and run["status"] == "failed"
    assert run["failed_steps"] == ["lint", "tests"]
    assert [s["id"] for s in run["steps"]] == ["lint", "security", "tests", "review"]
    assert history["counts"] == {"failed": 1}


FIXTURES_TEST = """\
import sqlite3

FAKE_KEY = "AKIAIOSFODNN7EXAMPLE"
FAKE_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def test_fixtures() -> None:
    table = "users"
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE TABLE {table} (name TEXT)")
    assert conn.execute(f"SELECT * FROM {table}").fetchall() == []
    assert FAKE_KEY and FAKE_SECRET
"""
CLEAN_WITH_FIXTURES = {
    "app/__init__.py": "",
    "app/calc.py": "def add(a: int, b: int) -> int:\n    return a + b\n",
    "tests/test_calc.py": "from app.calc import add\n\n\ndef test_add() -> None:\n    assert add(1, 2) == 3\n",
    # what a project that handles credentials tests with: fake keys, SQL built on purpose
    "tests/test_redaction.py": FIXTURES_TEST,
}


@pytest.mark.slow
async def test_pre_commit_passes_with_its_defaults_on_a_clean_project_with_fake_keys_in_its_tests(
    tmp_path: Path,
) -> None:
    project = git_project(tmp_path / "work" / "p", CLEAN_WITH_FIXTURES)
    server, _ = make_server(tmp_path)
    async with Client(server) as client:
        out = await call(client, "run_workflow", {"workflow": "pre-commit", "project": str(project)})
    steps = {s["id"]: s for s in out["steps"]}
    assert out["status"] == "passed", out["steps"]
    assert steps["security"]["status"] == "passed" and steps["security"]["findings"] >= 2  # shown, not failing
    assert steps["tests"]["status"] == "passed"


def flip_workflow(counter: Path) -> dict[str, Any]:
    """A workflow whose check passes on odd runs and fails on even ones, on unchanged files."""
    code = (
        "import pathlib, sys; p = pathlib.Path(sys.argv[1]); n = int(p.read_text() or 0) + 1 if p.exists() else 1; "
        "p.write_text(str(n)); print('run', n); sys.exit(n % 2 == 0)"
    )
    return {"steps": {"check": {"command": [PY, "-c", code, str(counter)]}}, "summary": False}


def build_workflow() -> dict[str, Any]:
    show = "import json, sys; print(json.dumps(sys.argv[1:]))"
    return {
        "inputs": {"name": {"required": True, "description": "a name"}, "shout": {"default": False}},
        "summary": False,
        "steps": {
            "count": {"command": [PY, "-c", "import sys; print(len(sys.argv[1]))", "{{ inputs.name }}"]},
            "echo": {
                "command": [PY, "-c", show, "{{ inputs.name }}", "code={{ steps.count.output.exit_code }}"],
                "needs": ["count"],
                "cwd": "sub",
            },
            "loud": {"command": [PY, "-c", "print('LOUD')"], "when": "inputs.shout"},
            "after_loud": {"command": [PY, "-c", "print(1)"], "needs": ["loud"]},
            "strict": {"command": [PY, "-c", "raise SystemExit(2)"], "needs": ["echo"]},
            "never": {"command": [PY, "-c", "print(1)"], "needs": ["strict"]},
        },
    }


async def test_configured_commands_get_templated_arguments_and_follow_the_rules(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "p", {"sub/readme.txt": "x"})
    server, _ = make_server(tmp_path, workflows={"build": build_workflow()})
    async with Client(server) as client:
        args = {"workflow": "build", "project": str(project), "inputs": {"name": "a b; rm -rf $HOME"}}
        out = await call(client, "run_workflow", args)
        history = await call(client, "workflow_history", {"run_id": out["run_id"], "step": "echo"})
        hostile = await call(client, "run_workflow", {**args, "inputs": {"name": "--help"}})
        missing = await client.call_tool("run_workflow", {"workflow": "build", "project": str(project)})
        unknown = await client.call_tool("run_workflow", {"workflow": "nope", "project": str(project)})
    steps = {s["id"]: s for s in out["steps"]}
    assert {k: s["status"] for k, s in steps.items()} == {
        "count": "passed",
        "echo": "passed",
        "loud": "skipped",
        "after_loud": "skipped",
        "strict": "failed",
        "never": "skipped",
    }
    assert steps["loud"]["error"] == "when `inputs.shout` was false"
    assert steps["strict"]["error"] == "exit code 2" and "strict failed" in steps["never"]["error"]
    stored = history["step_output"]
    assert json.loads(stored["stdout_tail"]) == ["a b; rm -rf $HOME", "code=0"]  # one argument each, no shell
    assert stored["argv"][0] == PY
    assert {s["id"]: s["status"] for s in hostile["steps"]}["count"] == "failed"
    assert "read as an option" in hostile["steps"][0]["error"]
    assert missing.is_error and "input 'name' is required" in missing.content[0].text  # type: ignore[union-attr]
    assert unknown.is_error and "pre-commit" in unknown.content[0].text  # type: ignore[union-attr]


async def test_history_finds_flaky_steps_filters_and_counts(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "p", {"a.txt": "same files every run"})
    server, _ = make_server(tmp_path, workflows={"flip": flip_workflow(tmp_path / "counter")})
    async with Client(server) as client:
        runs = [await call(client, "run_workflow", {"workflow": "flip", "project": str(project)}) for _ in range(3)]
        everything = await call(client, "workflow_history", {"project": str(project), "workflow": "flip"})
        failed = await call(client, "workflow_history", {"status": "failed"})
        future = await call(client, "workflow_history", {"since": "2999-01-01"})
        bad_date = await client.call_tool("workflow_history", {"since": "last tuesday"})
    assert [r["status"] for r in runs] == ["passed", "failed", "passed"]
    (flaky,) = everything["flaky"]
    assert (flaky["workflow"], flaky["step"], flaky["passed"], flaky["failed"]) == ("flip", "check", 2, 1)
    assert everything["counts"] == {"passed": 2, "failed": 1}
    (stats,) = everything["step_stats"]
    assert (stats["runs"], stats["failures"]) == (3, 1) and stats["mean_seconds"] > 0
    assert [r["id"] for r in failed["runs"]] == [runs[1]["run_id"]]
    assert future["runs"] == [] and future["counts"] == {}
    assert bad_date.is_error and "ISO date" in bad_date.content[0].text  # type: ignore[union-attr]


def summariser(request: ChatRequest) -> ScriptedReply:
    """A small model summarising a run: three grounded points, one about a step that does not
    exist, one quoting a figure the step never showed."""
    user = request.messages[-1].content
    body: dict[str, Any] = {"answer": "ok", "confidence": 0.5}
    if "Workflow quick" in user:
        body = {
            "summary": "The build failed because make exited with an error.",
            "points": [
                {"step": "make", "point": "make failed with exit code 3; fix the build first"},
                {"step": "greet", "point": "greet printed its greeting"},
                {"step": "make", "point": "nothing else failed"},
                {"step": "deploy", "point": "deploy was skipped"},
                {"step": "greet", "point": "greet printed 42 lines"},
            ],
            "confidence": 0.9,
        }
    return ScriptedReply(json.dumps(body), logprob=-0.05)


async def test_the_summary_cites_step_results_and_the_run_cost_comes_from_the_ledger(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "p", {"a.txt": "x"})
    quick = {
        "steps": {
            "greet": {"command": [PY, "-c", "print('hello')"]},
            "make": {"command": [PY, "-c", "raise SystemExit(3)"], "needs": ["greet"]},
        }
    }
    host = Host(name="gpu", backend=ScriptedBackend([("qwen3:4b", 4.0)], summariser, name="gpu"))
    write_calibrated_as_raw(tmp_path / "data")  # qwen3:4b measured: its raw score is its P(correct)
    server, holder = make_server(tmp_path, [host], workflows={"quick": quick})
    async with Client(server) as client:
        out = await call(client, "run_workflow", {"workflow": "quick", "project": str(project)})
        history = await call(client, "workflow_history", {"workflow": "quick"})
        ledger = holder.require().ledger
        (call_row,) = [c for c in ledger.tool_calls() if c.tool == "run_workflow"]
        expected = ledger.call_cost(call_row.id)
    assert [p["step"] for p in out["points"]] == ["make", "greet", "make"]
    assert out["llm"]["status"] == "ran" and (out["llm"]["kept"], out["llm"]["dropped"]) == (3, 2)
    assert "deploy" in out["llm"]["note"]  # the first problem is named
    assert out["summary"].startswith("The build failed because make exited")
    assert out["cost"]["model_calls"] == expected.model_calls == 1
    assert (
        out["cost"]["counterfactual_cost_usd"] == pytest.approx(expected.counterfactual_cost_usd)
        and expected.counterfactual_cost_usd > 0
    )
    assert history["runs"][0]["counterfactual_cost_usd"] == out["cost"]["counterfactual_cost_usd"]


def test_a_bad_workflow_in_the_config_is_refused_when_it_loads(tmp_path: Path) -> None:
    bad = {"loop": {"steps": {"a": {"command": ["true"], "needs": ["b"]}, "b": {"command": ["true"], "needs": ["a"]}}}}
    with pytest.raises(ConfigError, match=r"workflows.*cycle: a -> b -> a"):
        load_config(None, environ={}, overrides={"data_dir": str(tmp_path), "workflows": bad})
    templated = {"x": {"steps": {"a": {"command": ["{{ inputs.prog }}"]}}, "inputs": {"prog": {}}}}
    with pytest.raises(ConfigError, match=r"program .* must be written out"):
        load_config(None, environ={}, overrides={"data_dir": str(tmp_path), "workflows": templated})
    for name in ("ANTHROPIC_API_KEY", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "CAELUM_FOO"):
        secret = {"x": {"steps": {"a": {"command": ["env"], "env": ["LANG", name]}}}}
        with pytest.raises(ConfigError, match=f"never passed to workflow commands: {name} looks like one"):
            load_config(None, environ={}, overrides={"data_dir": str(tmp_path), "workflows": secret})
    shell = {
        "x": {"inputs": {"msg": {}}, "steps": {"a": {"command": ["sh", "-c", "git commit -m '{{ inputs.msg }}'"]}}}
    }
    with pytest.raises(ConfigError, match=r"inside the code that sh runs.*separate arguments.*\$1"):
        load_config(None, environ={}, overrides={"data_dir": str(tmp_path), "workflows": shell})


@pytest.mark.slow
async def test_a_step_timeout_stops_its_command_and_keeps_its_output(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "p", {"a.txt": "x"})
    code = (
        "import sys, time; print('halfway', flush=True); print('warned', file=sys.stderr, flush=True); time.sleep(60)"
    )
    slow = {"steps": {"nap": {"command": [PY, "-c", code], "timeout_s": 1.5}}, "summary": False}
    server, _ = make_server(tmp_path, workflows={"slow": slow})
    started = time.monotonic()
    async with Client(server) as client:
        out = await call(client, "run_workflow", {"workflow": "slow", "project": str(project)})
        stored = await call(client, "workflow_history", {"run_id": out["run_id"], "step": "nap"})
    assert time.monotonic() - started < 15
    (step,) = out["steps"]
    # "timed out", not "failed", and what it printed before is kept, in the result and in the store
    assert step["status"] == "timed_out" and "timed out after 1.5 s" in step["error"]
    assert step["result"] == "timed out: halfway"
    assert out["status"] == "failed" and "nap timed out" in out["summary"]
    output = stored["step_output"]
    assert output["timed_out"] is True and output["stdout_tail"].strip() == "halfway"
    assert output["stderr_tail"].strip() == "warned"


def test_the_example_config_writes_out_the_builtins_and_the_readme_example_loads(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    example = load_config(root / "caelum.example.toml", environ={})
    assert example.section("workflows", WorkflowsSettings).root == BUILTIN_WORKFLOWS
    found = re.search(r"```toml\n(\[workflows\.check\].*?)```", (root / "README.md").read_text(), re.S)
    assert found, "the README lost its workflow example"
    (tmp_path / "caelum.toml").write_text(found.group(1))
    check = load_config(tmp_path / "caelum.toml", environ={}).section("workflows", WorkflowsSettings).workflows()
    assert list(check["check"].steps) == ["lint", "format", "tests"] and "pre-commit" in check


def plant_ruff(project: Path) -> Path:
    """What a hostile repository ships: a ``.venv`` (its ``python`` makes it look real) whose
    ``bin/ruff`` writes a marker and reports a clean tree."""
    bin_dir = project / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(PY)
    marker = project.parent / "planted-ruff-ran"
    (bin_dir / "ruff").write_text(f"#!/bin/sh\necho ran >> '{marker}'\necho 'All checks passed!'\n")
    (bin_dir / "ruff").chmod(0o755)
    return marker


@pytest.mark.slow  # over a second: kept out of make test-fast
async def test_a_projects_venv_does_not_choose_the_programs_a_workflow_runs(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "p", PLANTED)  # app/shell.py imports os and never uses it (F401)
    marker = plant_ruff(project)
    lint = {"steps": {"ruff": {"command": ["ruff", "check", "--no-cache", "--output-format=concise", "."]}}}
    server, _ = make_server(tmp_path, workflows={"lint-only": {**lint, "summary": False}})
    async with Client(server) as client:
        builtin = await call(
            client, "run_workflow", {"workflow": "pre-commit", "project": str(project), "inputs": {"review": False}}
        )
        configured = await call(client, "run_workflow", {"workflow": "lint-only", "project": str(project)})
        stored = await call(client, "workflow_history", {"run_id": configured["run_id"], "step": "ruff"})
    assert not marker.exists()
    lint_step = {s["id"]: s for s in builtin["steps"]}["lint"]
    assert lint_step["status"] == "failed" and "counts_by_tool.ruff" in lint_step["error"]  # the real ruff found F401
    (step,) = configured["steps"]
    assert step["status"] == "failed" and step["error"] == "exit code 1"
    output = stored["step_output"]
    assert "F401" in output["stdout_tail"] and "All checks passed" not in output["stdout_tail"]
    assert Path(output["program"]).parent == Path(PY).parent  # caelum-mcp's own ruff, beside its Python


async def test_a_step_sees_only_the_allowlisted_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = write(tmp_path / "work" / "p", {"a.txt": "x"})
    planted = {
        "ANTHROPIC_API_KEY": "sk-ant-api03-notforsteps",
        "AWS_SECRET_ACCESS_KEY": "notforsteps/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "GITHUB_TOKEN": "ghp_notforsteps0123456789abcdefghijkl",
        "CAELUM_FOO": "notforsteps",
    }
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("EXTRA_SETTING", "yes")
    code = (
        "import json, os; print(json.dumps({'names': sorted(os.environ), "
        "'leaked': sorted(n for n, v in os.environ.items() if 'notforsteps' in v)}))"
    )
    show = {"steps": {"env": {"command": [PY, "-c", code], "env": ["EXTRA_SETTING"]}}, "summary": False}
    server, _ = make_server(tmp_path, workflows={"show-env": show})
    async with Client(server) as client:
        out = await call(client, "run_workflow", {"workflow": "show-env", "project": str(project)})
        stored = await call(client, "workflow_history", {"run_id": out["run_id"], "step": "env"})
    assert out["status"] == "passed"
    seen = json.loads(stored["step_output"]["stdout_tail"])
    assert seen["leaked"] == [] and not set(planted) & set(seen["names"])
    assert "EXTRA_SETTING" in seen["names"] and "PATH" in seen["names"]
    assert [n for n in seen["names"] if n.startswith("CAELUM_")] == [RUN_MARKER_VAR]  # the run's kill marker


async def test_a_value_that_would_make_an_option_fails_its_step_before_it_runs(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "p", {"a.txt": "x"})
    marker = tmp_path / "ran"
    touch = f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')"
    wf = {
        "inputs": {"p": {"required": True}},
        "summary": False,
        "steps": {"s": {"command": [PY, "-c", touch, "{{ inputs.p }}/x"]}},
    }
    server, _ = make_server(tmp_path, workflows={"partial": wf})
    async with Client(server) as client:
        out = await call(
            client, "run_workflow", {"workflow": "partial", "project": str(project), "inputs": {"p": "--x"}}
        )
    (step,) = out["steps"]
    assert (
        step["status"] == "failed" and "would start with '-'" in step["error"] and "read as an option" in step["error"]
    )
    assert not marker.exists()
