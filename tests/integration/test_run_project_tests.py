"""``run_project_tests`` through a real MCP session: bounded results, pytest's own failures, a clean
environment, and nothing left running after a timeout or a cancellation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from fakes.escapees import escaping_suite, marked, until
from pydantic import ValidationError

from caelum_mcp.engine.budget import result_size
from caelum_mcp.engine.config import RESULT_TOKENS_CAP
from caelum_mcp.supervisors.development.project_tests import (
    FAILURES_TOKENS,
    TESTS_TOKENS,
    RunTestsInput,
    compact_listing,
    failure_reports,
)
from caelum_mcp.tools.code import tests_runner

from .test_development import call, session, write

MANY_FAILURES = 500
# Every test fails a few frames deep with a long message: 500 full reports would be megabytes.
MANY_FAILING = {
    "tests/test_many.py": f"""
        import pytest


        def dive(n, i):
            if n == 0:
                assert i < 0, "value " + "x" * 3000
            return dive(n - 1, i)


        @pytest.mark.parametrize("i", range({MANY_FAILURES}))
        def test_fails(i):
            dive(6, i)
        """
}


@pytest.mark.slow  # runs a 500-test suite twice: seconds
async def test_a_suite_of_many_failures_gives_a_bounded_result(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "many", MANY_FAILING)
    # At the hard cap the tool's own bounds do the work: nothing is cut by the server.
    async with session(tmp_path, server={"result_tokens": RESULT_TOKENS_CAP}) as client:
        res = await call(client, "run_project_tests", {"project": str(project), "timeout_s": 300})
    assert not res.is_error, res.content
    out = res.structured_content
    assert result_size(out) <= RESULT_TOKENS_CAP
    assert "omitted" not in out
    assert out["totals"]["tests"] == out["totals"]["failed"] == MANY_FAILURES
    assert out["exit_code"] == 1 and out["exit_meaning"] == "some tests failed" and out["error"] is None
    assert out["failures"] and len(out["failures"]) + out["failures_omitted"] == MANY_FAILURES
    assert len(out["tests"]) + out["tests_omitted"] == MANY_FAILURES
    first = out["failures"][0]
    assert "assert i < 0" in first["detail"] and first["detail"].splitlines()[-1].endswith("AssertionError")
    assert set(out["tests"][0]) == {"node_id", "outcome", "duration_s"}  # no failure text repeated
    listed = {t["node_id"] for t in out["tests"]}
    assert {f["node_id"] for f in out["failures"]} <= listed
    assert len(out["output_tail"]) <= 2000

    # At the default budget the server cuts further, and says by how much.
    async with session(tmp_path) as client:
        res = await call(client, "run_project_tests", {"project": str(project), "timeout_s": 300})
    out = res.structured_content
    assert result_size(out) <= 4000
    assert out["totals"]["failed"] == MANY_FAILURES
    omitted = out["omitted"]
    assert len(out["tests"]) + omitted.get("tests", 0) + out["tests_omitted"] == MANY_FAILURES
    assert len(out["failures"]) + omitted.get("failures", 0) + out["failures_omitted"] == MANY_FAILURES
    assert "selection" in out["more"]


def synthetic_cases(count: int) -> list[tests_runner.TestCaseResult]:
    """``count`` tests, every third one failing with a 4,000-character report."""
    return [
        tests_runner.TestCaseResult(
            node_id=f"tests/test_synthetic.py::test_case[{i}]",
            outcome="failed" if i % 3 == 0 else "passed",
            duration_s=0.0123456,
            message="AssertionError" if i % 3 == 0 else None,
            detail="E   " + "y" * 3996 if i % 3 == 0 else None,
        )
        for i in range(count)
    ]


def test_each_list_keeps_to_its_own_budget() -> None:
    cases = synthetic_cases(2000)
    failing = [c for c in cases if c.outcome == "failed"]
    reports = failure_reports(failing)
    assert 1 < len(reports) < len(failing)
    assert result_size([r.model_dump() for r in reports]) <= FAILURES_TOKENS
    assert [r.node_id for r in reports] == [c.node_id for c in failing[: len(reports)]]  # run order

    listing = compact_listing(cases)
    assert 100 < len(listing) < len(cases)
    assert result_size([t.model_dump() for t in listing]) <= TESTS_TOKENS
    assert all(t.outcome == "failed" for t in listing[: len(failing)])  # failing first
    assert listing[0].duration_s == 0.012
    assert FAILURES_TOKENS + TESTS_TOKENS < RESULT_TOKENS_CAP * 0.75  # room for triage, tail, error


async def test_pytest_crashing_is_reported_as_such(tmp_path: Path) -> None:
    project = write(
        tmp_path / "work" / "shadow",
        {"random.py": "x = 1\n", "tests/test_one.py": "def test_one():\n    assert True\n"},
    )
    async with session(tmp_path) as client:
        res = await call(client, "run_project_tests", {"project": str(project), "timeout_s": 120})
    out = res.structured_content
    assert out["passed"] is False and out["exit_meaning"] != "some tests failed"
    assert "before running any test" in out["exit_meaning"]
    assert "random.py" in out["error"] and "hides the standard library module" in out["error"]
    assert out["totals"]["tests"] == 0 and out["failures"] == [] and out["triage"] == []


async def test_the_tests_see_the_configured_variables_and_no_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-api03-not-for-tests")
    monkeypatch.setenv("DATABASE_URL", "postgres://db/test")
    monkeypatch.setenv("OTHER_SETTING", "private")
    project = write(
        tmp_path / "work" / "env",
        {
            "tests/test_env.py": """
                import json, os, pathlib


                def test_dump():
                    pathlib.Path(__file__).with_name("env.json").write_text(json.dumps(dict(os.environ)))
                """
        },
    )
    async with session(tmp_path, tools={"test_env": ["DATABASE_URL"]}) as client:
        res = await call(client, "run_project_tests", {"project": str(project), "timeout_s": 120})
    assert res.structured_content["passed"] is True, res.structured_content
    seen = json.loads((project / "tests" / "env.json").read_text())
    assert seen["DATABASE_URL"] == "postgres://db/test"
    assert "ANTHROPIC_API_KEY" not in seen and "OTHER_SETTING" not in seen


def test_a_nul_byte_in_the_selection_is_a_validation_error_naming_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        RunTestsInput(project=".", selection=["tests/test_a.py", "tests/test_b.py::t\0"])
    assert info.value.errors()[0]["loc"] == ("selection",)
    assert "NUL byte" in str(info.value)


# --- nothing the tests start outlives the call -------------------------------------------------


def escaping_project(tmp_path: Path, mark: str) -> Path:
    """A test that starts a sleeper in its own session and a double-forked daemon, then hangs."""
    return write(tmp_path / "work" / "escape", escaping_suite(mark))


async def test_cancelling_the_call_kills_what_the_tests_started(tmp_path: Path, mark: str) -> None:
    project = escaping_project(tmp_path, mark)
    async with session(tmp_path) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.call_tool, "run_project_tests", {"project": str(project)})
            assert await until(lambda: len(marked(mark)) == 2, 60), "the sleepers never started"
            tg.cancel_scope.cancel()
        assert await until(lambda: not marked(mark), 10), "a process the tests started outlived the call"
        assert (await client.list_tools()).tools, "the server still answers"


@pytest.mark.slow  # waits out a real timeout
async def test_a_timed_out_call_kills_what_the_tests_started(tmp_path: Path, mark: str) -> None:
    project = escaping_project(tmp_path, mark)
    args: dict[str, Any] = {"project": str(project), "timeout_s": 4, "triage": False}
    async with session(tmp_path) as client:
        res = await call(client, "run_project_tests", args)
    assert res.structured_content["timed_out"] is True
    assert await until(lambda: not marked(mark), 10), "a process the tests started outlived the timeout"
