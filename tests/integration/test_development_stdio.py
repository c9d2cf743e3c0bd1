"""The development tools over a real stdio child, as Claude Code runs them, with progress."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from .test_development import PLANTED, _git, write
from .test_mcp_stdio import server_env

pytestmark = pytest.mark.model


async def test_each_development_tool_over_stdio(tmp_path: Path) -> None:
    work = tmp_path / "work"
    project = write(work / "planted", PLANTED)
    _git(project, "init", "-q")
    _git(project, "add", ".")
    _git(project, "commit", "-qm", "init")
    (project / "app" / "calc.py").write_text("def calculate(s):\n    return eval(s)\n")
    write(
        project,
        {
            "tests/test_calc.py": (
                "from app.calc import calculate\n\n\ndef test_calc():\n    assert calculate('1+1') == 3\n"
            )
        },
    )
    env = {**server_env(tmp_path), "CAELUM_ALLOWED_ROOTS": f'["{work}"]', "CAELUM_LOG_LEVEL": "info"}
    params = StdioServerParameters(command=sys.executable, args=["-m", "caelum_mcp", "serve"], env=env, cwd=str(work))
    progress: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    async with Client(params) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"analyze_and_improve_code", "review_changes", "run_project_tests"} <= names

        res = await client.call_tool(
            "analyze_and_improve_code",
            {"project": "planted", "task": "security_scan", "llm_review": False},
            progress_callback=on_progress,
        )
        assert not res.is_error, res.content
        assert res.structured_content is not None
        assert any(f["rule"] == "B608" for f in res.structured_content["findings"])
        assert any("security" in m for m in progress)

        res = await client.call_tool("review_changes", {"project": "planted"}, progress_callback=on_progress)
        assert not res.is_error, res.content
        assert res.structured_content is not None
        assert [f["path"] for f in res.structured_content["files"]] == ["app/calc.py", "tests/test_calc.py"]
        assert any(f["rule"] == "B307" and f["line"] == 2 for f in res.structured_content["findings"])

        res = await client.call_tool(
            "run_project_tests", {"project": "planted", "triage": False}, progress_callback=on_progress
        )
        assert not res.is_error, res.content
        assert res.structured_content is not None
        assert res.structured_content["totals"]["failed"] == 1

        outside = await client.call_tool("analyze_and_improve_code", {"project": str(tmp_path)})
        assert outside.is_error and "outside the allowed roots" in " ".join(
            getattr(c, "text", "") for c in outside.content
        )
