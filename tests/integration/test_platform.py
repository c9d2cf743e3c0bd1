"""The supervisor platform through a real MCP client: LLM steps that know what they need, output
budgets, and the supervisors resource.

The capable "8B" host is a :class:`ScriptedBackend` that answers from the prompt it is given (as a
good model would: citing the findings listed); the analysers are the real ones.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fakes.calibration_tables import write_calibrated_as_raw
from mcp import Client

from caelum_mcp.core.types import ChatRequest
from caelum_mcp.engine.backends.scripted import ScriptedBackend, ScriptedReply
from caelum_mcp.engine.budget import result_size
from caelum_mcp.engine.config import RESULT_TOKENS_CAP
from caelum_mcp.engine.hosts import CircuitBreaker, Host

from .test_development import PLANTED, digest, make_server, write

FINDING = re.compile(r"^- (?P<file>\S+):(?P<line>\d+) \[(?P<rule>[^\]]+)\]", re.MULTILINE)
FIX_TARGET = re.compile(r"^(?P<file>\S+):(?P<line>\d+) \[(?P<rule>[^\]]+)\]", re.MULTILINE)


def capable_model(request: ChatRequest) -> ScriptedReply:
    """What a capable model would say to our prompts, plus one invented item each time."""
    system, user = request.messages[0].content, request.messages[-1].content
    if "senior engineer" in system:
        recs: list[dict[str, Any]] = [
            {"title": f"Fix {rule}", "priority": i + 1, "file": f, "line": int(n), "rule": rule, "rationale": "risky"}
            for i, (f, n, rule) in enumerate(FINDING.findall(user)[:3])
        ]
        recs.append({"title": "Invented", "priority": 5, "file": "ghost.py", "line": 1, "rule": "X1", "rationale": "?"})
        body = {"summary": "Injection risks first.", "recommendations": recs, "confidence": 0.9}
    elif "You fix code" in system:
        file, line, _ = FIX_TARGET.findall(user)[0]
        start = int(line)
        edits = [
            {
                "file": file,
                "start_line": start,
                "end_line": start + 1,
                "replacement": '    query = "SELECT * FROM users WHERE name = ?"\n'
                "    return conn.execute(query, (name,)).fetchall()\n",
                "rule": "B608",
                "description": "parameterised query",
            },
            {
                "file": "app/ghost.py",
                "start_line": 1,
                "end_line": 1,
                "replacement": "x\n",
                "rule": "X",
                "description": "",
            },
        ]
        body = {"edits": edits, "confidence": 0.9}
    else:
        body = {"answer": "ok", "confidence": 0.5}
    return ScriptedReply(json.dumps(body), logprob=-0.05)


def gpu_host(backend: ScriptedBackend) -> Host:
    return Host(name="gpu-1", backend=backend, breaker=CircuitBreaker(failure_threshold=3, cooldown_s=1))


@asynccontextmanager
async def session(tmp_path: Path, hosts: list[Host], **overrides: Any) -> AsyncIterator[tuple[Client, Any]]:
    server, holder = make_server(tmp_path, hosts, **overrides)
    async with Client(server) as client:
        yield client, holder


@pytest.mark.model
async def test_with_only_the_embedded_micro_model_security_scan_skips_the_review_at_once(tmp_path: Path) -> None:
    """The first-run setting: the embedded SmolLM2-135M is the only model. It cannot review code, so
    the review is not attempted (the old behaviour waited ~70 s for invalid JSON); the findings come
    back with a note saying what to configure. bench/platform_costs.py times this setting."""
    files = {**PLANTED, **{f"app/views/v{i:02d}.py": f"def view_{i}(request):\n    return {i}\n" for i in range(26)}}
    project = write(tmp_path / "work" / "flask-like", files)
    async with session(tmp_path, [], embedded="on") as (client, holder):
        res = await client.call_tool("analyze_and_improve_code", {"project": str(project), "task": "security_scan"})
        assert not res.is_error, res.content
        out = res.structured_content
        assert out["metrics"]["files"] == 30
        assert {"B608", "B602", "B307"} <= {f["rule"] for f in out["findings"]}
        step = out["llm"]
        assert step["status"] == "skipped" and step.get("execution") is None  # a nested null field is left out
        assert "tier full" in step["note"] and "smollm2:135m" in step["note"] and "ANTHROPIC_API_KEY" in step["note"]
        state = holder.require()
        assert "embedded" in state.pool.hosts  # the micro model was up, and was not asked
        assert state.ledger.summary().calls == 0


async def test_with_a_capable_host_the_review_runs_grounded(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "planted", PLANTED)
    backend = ScriptedBackend([("qwen3:8b", 8.0)], capable_model, name="gpu-1")
    write_calibrated_as_raw(tmp_path / "data")  # qwen3:8b measured: its raw score is its P(correct)
    async with session(tmp_path, [gpu_host(backend)]) as (client, holder):
        res = await client.call_tool("analyze_and_improve_code", {"project": str(project), "task": "security_scan"})
        assert not res.is_error, res.content
        out = res.structured_content
        step = out["llm"]
        assert (step["status"], step["kept"], step["dropped"]) == ("ran", 3, 1), step
        assert "ghost.py" in step["note"]  # says what was dropped and why
        assert (step["execution"]["host"], step["execution"]["tier"]) == ("gpu-1", "full")
        llm_recs = [r for r in out["recommendations"] if r["source"] == "llm"]
        assert len(llm_recs) == 3 and all((project / r["file"]).is_file() for r in llm_recs)
        assert out["summary"].startswith("Injection risks first.")
        (request,) = backend.requests
        assert request.max_tokens is not None and request.max_tokens <= 1000  # the review's output cap
        assert holder.require().ledger.summary().local_calls == 1


async def test_improve_keeps_only_llm_edits_that_the_patch_check_proves(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "p", PLANTED)
    before = digest(project)
    backend = ScriptedBackend([("qwen3:8b", 8.0)], capable_model, name="gpu-1")
    async with session(tmp_path, [gpu_host(backend)]) as (client, _):
        res = await client.call_tool("analyze_and_improve_code", {"project": str(project), "task": "improve"})
    assert not res.is_error, res.content
    out = res.structured_content
    llm_patches = [p for p in out["patches"] if p["patch"]["source"] == "llm"]
    assert [p["patch"]["file"] for p in llm_patches] == ["app/db.py"]
    check = llm_patches[0]["check"]
    assert check["applies"] and check["lint_clean"]
    assert "conn.execute(query, (name,))" in llm_patches[0]["patch"]["diff"]
    # the review's invented item and the edit to a file that does not exist were both dropped
    assert out["llm"]["dropped"] == 2 and "ghost.py" in out["llm"]["note"]
    assert digest(project) == before


async def test_a_ruff_failure_during_improve_is_an_error_in_the_result(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "p", {**PLANTED, "ruff.toml": "line-length = 'wide'\n"})
    async with session(tmp_path, []) as (client, _):
        res = await client.call_tool(
            "analyze_and_improve_code", {"project": str(project), "task": "improve", "llm_review": False}
        )
    assert not res.is_error, res.content
    errors = res.structured_content["errors"]
    assert any(e["tool"] == "ruff" and "safe fixes unavailable" in e["message"] for e in errors), errors
    assert res.structured_content["findings"], "the other analysers still report"


async def test_a_review_past_its_time_budget_returns_the_findings_and_says_so(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "planted", PLANTED)
    slow = ScriptedBackend([("qwen3:8b", 8.0)], ScriptedReply("{}", delay_s=60), name="gpu-1")
    async with session(tmp_path, [gpu_host(slow)], **{"router.tasks": {"review": {"time_budget_s": 0.5}}}) as (
        client,
        holder,
    ):
        res = await client.call_tool("analyze_and_improve_code", {"project": str(project), "task": "security_scan"})
        assert not res.is_error, res.content
        out = res.structured_content
        assert out["llm"]["status"] == "timed_out"
        assert "time budget of 0.5 s" in out["llm"]["note"] and "time_budget_s" in out["llm"]["note"]
        assert any(f["rule"] == "B608" for f in out["findings"])  # what it has
        (row,) = holder.require().ledger.recent(5)
        assert row.path == "failed" and row.host == "gpu-1" and "stopped" in (row.error or "")


@pytest.mark.slow  # over a second: kept out of make test-fast
async def test_five_thousand_findings_fit_under_the_cap_with_correct_counts(tmp_path: Path) -> None:
    # 100 unused imports (F401, in ruff's default rules) in each of 50 files
    files = {f"pkg/m{i:02d}.py": "".join(f"from os import path as p{j}\n" for j in range(100)) for i in range(50)}
    project = write(tmp_path / "work" / "noisy", files)
    args = {"project": str(project), "task": "performance", "llm_review": False}
    async with session(tmp_path, []) as (client, _):
        default = await client.call_tool("analyze_and_improve_code", args)
        many = await client.call_tool("analyze_and_improve_code", {**args, "max_findings": 1000})
    for res, budget in ((default, 4000), (many, RESULT_TOKENS_CAP)):
        assert not res.is_error, res.content
        out = res.structured_content
        assert out["counts_by_tool"]["ruff"] == 5000 and out["findings_total"] >= 5000
        assert result_size(out) <= budget
        assert json.loads(res.content[0].text) == out  # the text sent is the same data, compact
        assert len(res.content[0].text) < len(json.dumps(out, indent=2))
    shown = len(many.structured_content["findings"])
    assert shown + many.structured_content["omitted"]["findings"] == 1000  # max_findings, cut to the cap
    assert "max_findings" in many.structured_content["more"]
    assert len(default.structured_content["findings"]) == 50 and "omitted" not in default.structured_content


async def test_the_supervisors_resource_lists_every_supervisor_and_its_tools(tmp_path: Path) -> None:
    async with session(tmp_path, []) as (client, _):
        res = await client.read_resource("caelum://supervisors")
    (content,) = res.contents
    catalog = {s["name"]: s for s in json.loads(getattr(content, "text", ""))["supervisors"]}
    assert set(catalog) >= {"development", "ai"}
    dev = catalog["development"]
    assert {t["name"] for t in dev["external_tools"]} == {
        "analyze_and_improve_code",
        "review_changes",
        "run_project_tests",
    }
    internal = {t["name"]: t["description"] for t in dev["internal_tools"]}
    assert {"lint", "security_scan", "run_tests", "check_patches"} <= set(internal)
    assert all(internal.values()), "each internal tool says what it does"
    assert {t["name"] for t in catalog["ai"]["external_tools"]} == {
        "delegate_task",
        "compare_models",
        "run_batch",
        "batch_status",
        "pool_status",
        "set_host_enabled",
    }


async def test_an_attached_image_is_sent_as_image_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import base64
    from collections.abc import Sequence

    from mcp.types import ImageContent
    from pydantic import BaseModel

    import caelum_mcp.serving.server
    from caelum_mcp.supervisors.base import ExternalTool, Image, Supervisor, ToolContext, ToolOutput

    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 16

    class Empty(BaseModel):
        pass

    class Drawn(ToolOutput):
        title: str

    async def draw(args: Empty, ctx: ToolContext) -> Drawn:
        out = Drawn(title="a chart")
        out.attach(Image(png))
        return out

    class Painter(Supervisor):
        name = "painter"
        description = "draws"

        def external_tools(self) -> Sequence[ExternalTool[Any, Any]]:
            return (ExternalTool("draw", "Draw", "Draw a chart.", Empty, Drawn, draw),)

    monkeypatch.setattr(caelum_mcp.serving.server, "SUPERVISORS", (Painter,))
    async with session(tmp_path, []) as (client, _):
        res = await client.call_tool("draw", {})
    assert not res.is_error, res.content
    assert res.structured_content == {"title": "a chart"}
    (image,) = [c for c in res.content if isinstance(c, ImageContent)]
    assert image.mime_type == "image/png" and base64.b64decode(image.data) == png
