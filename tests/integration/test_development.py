"""The development supervisor's tools through a real MCP client session (in-process)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from textwrap import dedent
from typing import Any

import anyio
import pytest
from mcp import Client

from caelum_mcp.engine.config import load_config
from caelum_mcp.engine.hosts import Host
from caelum_mcp.serving.server import create_server

PLANTED = {
    "app/__init__.py": "",
    "app/db.py": """
        import sqlite3


        def find_user(conn: sqlite3.Connection, name: str):
            query = "SELECT * FROM users WHERE name = '%s'" % name
            return conn.execute(query).fetchall()
        """,
    "app/shell.py": """
        import os
        import subprocess


        def run(cmd):
            return subprocess.run(cmd, shell=True)
        """,
    "app/calc.py": """
        def calculate():
            return eval(input("expression: "))


        def label(x):
            return f"value"
        """,
}

MULTI = {
    "main.py": """
        def route(kind, x):
            if kind == "a":
                return x + 1
            elif kind == "b":
                return x * 2
            elif kind == "c":
                return x - 3
            return x
        """,
    "web/app.js": """
        function pick(a, b) {
          if (a > b) { return a; } else if (a < b) { return b; }
          return 0;
        }
        module.exports = { pick };
        """,
    "svc/main.go": """
        package main

        func classify(n int) string {
        \tif n < 0 {
        \t\treturn "neg"
        \t} else if n == 0 {
        \t\treturn "zero"
        \t}
        \treturn "pos"
        }

        func main() { println(classify(1)) }
        """,
}


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(text).lstrip("\n"), encoding="utf-8")
    return root


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".git" not in p.parts
    }


def make_server(tmp_path: Path, hosts: Sequence[Host] = (), **overrides: Any) -> tuple[Any, Any]:
    """A server reading only ``tmp_path/work``: no implicit Ollama, no Claude key, no embedded model
    unless asked (``embedded="on"``), plus ``hosts`` (e.g. scripted ones)."""
    config = load_config(
        None,
        environ={},
        overrides={
            "data_dir": str(tmp_path / "data"),
            "embedded": "off",
            "allowed_roots": [str(tmp_path / "work")],
            "hosts": [],
            "implicit_ollama": False,
            **overrides,
        },
    )
    return create_server(config, extra_hosts=hosts)


@asynccontextmanager
async def session(tmp_path: Path, **overrides: Any) -> AsyncIterator[Client]:
    server, _ = make_server(tmp_path, **overrides)
    async with Client(server) as client:
        yield client


async def call(client: Client, tool: str, args: dict[str, Any], progress: list[str] | None = None) -> Any:
    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        if progress is not None:
            progress.append(message or "")

    return await client.call_tool(tool, args, progress_callback=on_progress)


async def test_analyze_reports_planted_problems_with_progress_and_cache(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "planted", PLANTED)
    before = digest(project)
    async with session(tmp_path) as client:
        progress: list[str] = []
        res = await call(client, "analyze_and_improve_code", {"project": str(project), "task": "analyze"}, progress)
        assert not res.is_error, res.content
        out = res.structured_content
        rules = {(f["file"], f["rule"], f["line"]) for f in out["findings"]}
        assert ("app/db.py", "B608", 5) in rules
        assert ("app/shell.py", "B602", 6) in rules
        assert ("app/calc.py", "B307", 2) in rules
        assert ("app/shell.py", "F401", 1) in rules
        assert out["counts"]["high"] >= 2
        assert out["recommendations"], "at least the analyzers' recommendations"
        for rec in out["recommendations"]:
            assert (project / rec["file"]).is_file()
        # no local model can review code and Claude is not configured: skipped at once, saying what to add
        assert out["llm"]["status"] == "skipped" and out["llm"].get("execution") is None
        assert "tier full" in out["llm"]["note"] and "ANTHROPIC_API_KEY" in out["llm"]["note"]
        assert any("lint" in m for m in progress) and any("security" in m for m in progress)
        assert all(not s["cached"] for s in out["stages"])
        cold = sum(s["seconds"] for s in out["stages"])

        again = await call(client, "analyze_and_improve_code", {"project": str(project), "llm_review": False})
        stages = again.structured_content["stages"]
        assert stages and all(s["cached"] for s in stages), stages
        assert sum(s["seconds"] for s in stages) < cold
        assert again.structured_content["findings_total"] == out["findings_total"]

        (project / "app" / "new.py").write_text("import sys\n")
        third = await call(client, "analyze_and_improve_code", {"project": str(project), "llm_review": False})
        assert not any(s["cached"] for s in third.structured_content["stages"] if s["name"] == "lint")
        assert any(f["file"] == "app/new.py" for f in third.structured_content["findings"])
    (project / "app" / "new.py").unlink()
    assert digest(project) == before, "analysis must never modify the project"


async def test_improve_returns_verified_patches_and_leaves_files_alone(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "p", PLANTED)
    before = digest(project)
    async with session(tmp_path) as client:
        res = await call(client, "analyze_and_improve_code", {"project": str(project), "task": "improve"})
        assert not res.is_error, res.content
        patches = res.structured_content["patches"]
        ruff = [p for p in patches if p["patch"]["source"] == "ruff-fix"]
        assert ruff, patches
        for p in ruff:
            assert p["check"]["applies"] and p["check"]["lint_clean"], p
            assert p["patch"]["diff"].startswith("diff --git") or p["patch"]["diff"].startswith("---")
        fixed = {r for p in ruff for r in p["check"]["resolved_findings"]}
        assert any("F401" in r for r in fixed) and any("F541" in r for r in fixed)
    assert digest(project) == before


async def test_comprehensive_reports_complexity_for_each_language(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "multi", MULTI)
    async with session(tmp_path) as client:
        res = await call(
            client, "analyze_and_improve_code", {"project": str(project), "task": "comprehensive", "llm_review": False}
        )
        assert not res.is_error, res.content
        langs = {m["language"]: m for m in res.structured_content["metrics"]["languages"]}
        for lang in ("Python", "JavaScript", "Go"):
            assert lang in langs, langs
            assert langs[lang]["functions"] and langs[lang]["max_complexity"] >= 3, langs[lang]
        assert res.structured_content["dependency_audit"] is not None


async def test_an_analyser_past_its_time_limit_is_reported_and_not_cached(tmp_path: Path) -> None:
    """[tools] analyser_timeout_s applies, and a timed-out run is not served again from the cache."""
    project = write(tmp_path / "work" / "slow", {"app.py": "import os\n"})
    stage_of = {"ruff": "lint", "bandit": "security", "radon": "complexity", "lizard": "complexity"}
    async with session(tmp_path, embedded="off", tools={"analyser_timeout_s": 0.01}) as client:
        args = {"project": str(project), "llm_review": False}
        first = (await call(client, "analyze_and_improve_code", args)).structured_content
        # (a tool that starts and ends between two event-loop turns can still beat 10 ms)
        stopped = {
            stage_of.get(e["tool"], "dead_code")
            for e in first["errors"]
            if e["message"] == f"{e['tool']} did not finish within 0.01 s and was stopped"
        }
        assert stopped, first["errors"]
        second = (await call(client, "analyze_and_improve_code", args)).structured_content
    cached = {s["name"]: s["cached"] for s in second["stages"]}
    assert all(cached[stage] is False for stage in stopped), (stopped, cached)  # run again
    assert cached["structure"] is True  # a complete result is still reused


async def test_odd_projects_give_useful_results(tmp_path: Path) -> None:
    work = tmp_path / "work"
    empty = work / "empty"
    empty.mkdir(parents=True)
    docs = write(work / "docs", {"README.md": "# hi\n", "notes.txt": "plain text\n"})
    broken = write(work / "broken", {"bad.py": "def f(:\n    pass\n", "ok.py": "x = 1\n"})
    async with session(tmp_path) as client:
        for project in (empty, docs):
            res = await call(client, "analyze_and_improve_code", {"project": str(project), "llm_review": False})
            assert not res.is_error, res.content
            assert res.structured_content["findings_total"] == 0
        res = await call(client, "analyze_and_improve_code", {"project": str(broken), "llm_review": False})
        assert not res.is_error, res.content
        findings = res.structured_content["findings"]
        assert any(f["file"] == "bad.py" and f["severity"] == "high" for f in findings), findings


async def test_bad_arguments_give_clear_tool_errors(tmp_path: Path) -> None:
    work = write(tmp_path / "work" / "p", {"a.py": "x = 1\n"})
    outside = write(tmp_path / "elsewhere", {"b.py": "y = 2\n"})
    async with session(tmp_path) as client:
        cases = [
            ({"project": str(work), "task": "refactor"}, "task"),
            ({"project": str(tmp_path / "work" / "missing")}, "does not exist"),
            ({"project": str(outside)}, "outside the allowed roots"),
            ({"project": str(work / "a.py")}, "not a folder"),
            ({"project": str(work), "paths": ["../../elsewhere/b.py"]}, "outside"),
            ({}, "project"),
        ]
        for args, expected in cases:
            res = await call(client, "analyze_and_improve_code", args)
            text = " ".join(getattr(c, "text", "") for c in res.content)
            assert res.is_error, (args, text)
            assert expected in text, (args, text)


def _git(root: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True, timeout=30)


async def test_review_changes_only_flags_changed_lines(tmp_path: Path) -> None:
    repo = write(tmp_path / "work" / "repo", {"app.py": "import os\n\n\ndef f():\n    return 1\n"})
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "init")
    (repo / "app.py").write_text("import os\n\n\ndef f():\n    return eval(input())\n")
    async with session(tmp_path) as client:
        progress: list[str] = []
        res = await call(client, "review_changes", {"project": str(repo)}, progress)
        assert not res.is_error, res.content
        out = res.structured_content
        assert [f["path"] for f in out["files"]] == ["app.py"]
        assert {(f["rule"], f["line"]) for f in out["findings"]} >= {("B307", 5)}
        assert all(f["line"] == 5 for f in out["findings"]), "the unused import on line 1 was not changed"
        for c in out["comments"]:
            assert c["file"] == "app.py" and c["line"] == 5
        text = json.dumps(out)
        for f in out["findings"]:  # each finding once: not again as a comment
            assert text.count(json.dumps(f["message"])[1:-1]) == 1, f["message"]
        assert progress
        res = await call(client, "review_changes", {"project": str(repo), "base": "no-such-rev"})
        assert res.is_error


async def test_run_project_tests_reports_failures(tmp_path: Path) -> None:
    proj = write(
        tmp_path / "work" / "t",
        {
            "calc.py": "def add(a, b):\n    return a - b\n",
            "tests/test_calc.py": (
                "from calc import add\n\n\ndef test_add():\n    assert add(2, 2) == 4\n\n\n"
                "def test_ok():\n    assert True\n"
            ),
            "conftest.py": "",
        },
    )
    async with session(tmp_path) as client:
        res = await call(client, "run_project_tests", {"project": str(proj), "timeout_s": 120})
        assert not res.is_error, res.content
        out = res.structured_content
        assert out["passed"] is False
        assert out["totals"]["passed"] == 1 and out["totals"]["failed"] == 1
        (failure,) = out["failures"]
        assert failure["node_id"].endswith("test_add") and "assert" in (failure["detail"] or failure["message"])
        # the traceback is sent once, in `failures`: pytest's output tail keeps its summary, not a second copy
        assert "where 0 = add(2, 2)" in failure["detail"] and "where 0 = add(2, 2)" not in out["output_tail"]
        assert "1 failed, 1 passed" in out["output_tail"]
        for item in out["triage"]:
            assert item["test"] == failure["node_id"]
        assert out["llm"]["status"] == "skipped" and "tier small" in out["llm"]["note"]
        json.dumps(out)


@pytest.mark.slow  # over a second: kept out of make test-fast
async def test_a_quiet_stage_still_sends_progress(tmp_path: Path) -> None:
    """A test suite that runs for a while without output: the client keeps hearing that the call lives."""
    project = write(
        tmp_path / "work" / "slow",
        {"tests/test_slow.py": "import time\n\n\ndef test_slow():\n    time.sleep(1.5)\n"},
    )
    seen: list[tuple[float, float | None, str]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        seen.append((value, total, message or ""))

    async with session(tmp_path, embedded="off", server={"heartbeat_s": 0.25}) as client:
        res = await client.call_tool("run_project_tests", {"project": str(project)}, progress_callback=on_progress)
    assert not res.is_error, res.content
    assert res.structured_content["totals"]["passed"] == 1
    beats = [message for _, _, message in seen if "(still working, " in message]
    assert len(beats) >= 3, seen  # ~1.5 s of silence at 0.25 s
    values = [value for value, _, _ in seen]
    assert values == sorted(values) and len(set(values)) == len(values), "progress must strictly increase"


async def test_cancelling_the_call_stops_the_test_run(tmp_path: Path) -> None:
    """A client that gives up on a tool call must not leave the project's tests running."""
    pid_file = tmp_path / "pytest.pid"
    project = write(
        tmp_path / "work" / "hang",
        {
            "tests/test_hang.py": f"""
                import os, time


                def test_hang():
                    open({str(pid_file)!r}, "w").write(str(os.getpid()))
                    time.sleep(120)
            """
        },
    )
    async with session(tmp_path, embedded="off") as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.call_tool, "run_project_tests", {"project": str(project)})
            for _ in range(1200):  # up to 60 s for pytest to start
                if pid_file.exists() and pid_file.read_text():
                    break
                await anyio.sleep(0.05)
            tg.cancel_scope.cancel()  # the client gives up; the session stays open
        assert pid_file.exists(), "the tests never started"
        pid = int(pid_file.read_text())
        for _ in range(300):  # 30 s: a kill can take seconds to show on a loaded machine
            if not _alive(pid):
                break
            await anyio.sleep(0.1)
        assert not _alive(pid), "pytest still runs after the call was cancelled"
        assert (await client.list_tools()).tools, "the server still answers"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie no one has reaped yet is gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


async def test_client_mcp_roots_extend_the_allowed_roots(tmp_path: Path) -> None:
    from mcp.types import ListRootsResult, Root

    client_root = write(tmp_path / "client-workspace" / "proj", {"a.py": "import os\n"})
    (tmp_path / "work").mkdir()
    server, _ = make_server(tmp_path)
    args = {"project": str(client_root), "llm_review": False}

    async def on_roots(ctx: Any) -> ListRootsResult:
        return ListRootsResult(roots=[Root(uri=(tmp_path / "client-workspace").as_uri(), name="workspace")])

    # 2025-11-25 sessions are asked mid-call; 2026-07-28 ones through an input_required round
    for mode in ("legacy", "2026-07-28"):
        async with Client(server, mode=mode, list_roots_callback=on_roots) as client:
            res = await client.call_tool("analyze_and_improve_code", args)
            assert not res.is_error, (mode, res.content)
            assert any(f["rule"] == "F401" for f in res.structured_content["findings"])
            tools = await client.list_tools()
            schema = next(t.input_schema for t in tools.tools if t.name == "analyze_and_improve_code")
            assert "client_roots_listed" not in schema["properties"]  # filled by the server, not the model
        async with Client(server, mode=mode) as client:  # no roots offered: the configured ones only
            res = await client.call_tool("analyze_and_improve_code", args)
            assert res.is_error and "outside the allowed roots" in res.content[0].text
