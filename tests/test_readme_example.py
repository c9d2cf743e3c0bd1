"""The worked example of a new supervisor that README "Adding a supervisor" points to runs as written
(so the instructions stay true)."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

from caelum_mcp.core.types import ChatRequest
from caelum_mcp.engine.backends.scripted import ScriptedBackend, ScriptedReply
from caelum_mcp.engine.config import load_config
from caelum_mcp.engine.hosts import Host
from caelum_mcp.serving.app import open_app
from caelum_mcp.serving.runtime import ToolRuntime

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLE = Path(__file__).resolve().parent / "examples" / "logs_supervisor.py"


def example_module() -> types.ModuleType:
    assert EXAMPLE.is_file(), "the worked example of a supervisor is gone"
    module = types.ModuleType("logs_supervisor_example")
    exec(compile(EXAMPLE.read_text(), str(EXAMPLE), "exec", dont_inherit=True), module.__dict__)
    return module


def test_the_readme_points_to_the_example_supervisor_and_fits_on_one_screen() -> None:
    found = re.search(r"^## Adding a supervisor\n(.*?)(?=^## )", README.read_text(), re.S | re.M)
    assert found, "README has no '## Adding a supervisor' section"
    assert "tests/examples/logs_supervisor.py" in found.group(0)
    assert len(found.group(0).splitlines()) <= 50, "README's 'Adding a supervisor' no longer fits on one screen"


def answer(request: ChatRequest) -> ScriptedReply:
    causes = [{"cause": "the database timed out", "line": 3}, {"cause": "invented", "line": 99}]
    return ScriptedReply(json.dumps({"causes": causes, "confidence": 0.9}), logprob=-0.05)


async def test_the_worked_example_skips_without_a_capable_model_and_grounds_with_one(tmp_path: Path) -> None:
    logs = example_module()
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "app.log").write_text("start\nconnect db\nERROR timeout talking to db\n")
    runtime = ToolRuntime([logs.LogsSupervisor()])
    args = {"project": str(tmp_path / "proj"), "path": "app.log"}
    gpu = Host(name="gpu", backend=ScriptedBackend([("qwen3:8b", 8.0)], answer, name="gpu"))
    outcomes = []
    for hosts in ([], [gpu]):
        config = load_config(
            environ={},
            overrides={"data_dir": str(tmp_path / "data"), "embedded": "off", "implicit_ollama": False},
        )
        async with open_app(config, health_loop=False, extra_hosts=hosts) as state, runtime.serving(state):
            outcomes.append(await runtime.invoke("explain_log", args, roots=(tmp_path,)))
    skipped, ran = outcomes
    assert skipped.llm.status == "skipped" and "tier small" in skipped.llm.note
    assert ran.causes == [{"cause": "the database timed out", "line": 3}]
    assert (ran.llm.kept, ran.llm.dropped) == (1, 1) and "no such line" in ran.llm.note
