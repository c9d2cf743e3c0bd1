"""run_tests(): a real pytest run in a subprocess, read back from its JUnit report."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import anyio
import pytest
from fakes.escapees import escaping_suite, marked, until

from caelum_mcp.core.errors import PathNotAllowedError
from caelum_mcp.tools.code.tests_runner import BASE_TEST_ENV, clean_test_env, run_tests, trim_failure
from caelum_mcp.tools.process import RUN_MARKER_VAR

from .conftest import WriteProject, line_of

SUITE: dict[str, str | bytes] = {
    "tests/test_mixed.py": """
        import pytest


        def test_ok():
            assert 1 + 1 == 2


        def test_bad():
            assert [1, 2] == [1, 3], "lists differ"


        @pytest.mark.skip(reason="not today")
        def test_skipped():
            pass


        @pytest.fixture
        def broken():
            raise RuntimeError("fixture exploded")


        def test_error(broken):
            pass


        class TestGroup:
            def test_in_class(self):
                pass
        """,
    "tests/test_other.py": "def test_also_ok():\n    assert True\n",
}


async def test_reports_each_outcome_with_messages_and_totals(write_project: WriteProject) -> None:
    root = write_project(SUITE)
    result = await run_tests(root, timeout_s=120)
    assert result.exit_code == 1 and result.exit_meaning == "some tests failed"
    assert not result.timed_out and result.errors == ()
    t = result.totals
    assert (t.tests, t.passed, t.failed, t.errors, t.skipped) == (6, 3, 1, 1, 1)

    by_id = {case.node_id: case for case in result.tests}
    failed = by_id["tests/test_mixed.py::test_bad"]
    assert failed.outcome == "failed"
    assert failed.file == "tests/test_mixed.py" and failed.line == line_of(root, "tests/test_mixed.py", "def test_bad")
    assert failed.message and "lists differ" in failed.message
    assert failed.detail and "AssertionError" in failed.detail
    errored = by_id["tests/test_mixed.py::test_error"]
    assert errored.outcome == "error" and errored.message and "fixture exploded" in errored.message
    assert by_id["tests/test_mixed.py::test_skipped"].message == "not today"
    assert by_id["tests/test_mixed.py::TestGroup::test_in_class"].outcome == "passed"
    assert "1 failed" in result.output_tail
    assert not (root / ".pytest_cache").exists()  # nothing written into the project


async def test_selection_runs_only_the_chosen_tests(write_project: WriteProject) -> None:
    root = write_project(SUITE)
    result = await run_tests(root, selection=["tests/test_other.py", "tests/test_mixed.py::test_ok"], timeout_s=120)
    assert result.exit_code == 0 and result.exit_meaning == "all tests passed"
    assert sorted(case.node_id for case in result.tests) == [
        "tests/test_mixed.py::test_ok",
        "tests/test_other.py::test_also_ok",
    ]


async def test_selection_must_be_paths_inside_the_project(write_project: WriteProject) -> None:
    root = write_project(SUITE)
    with pytest.raises(PathNotAllowedError):
        await run_tests(root, selection=["-p", "evil_plugin"])
    with pytest.raises(PathNotAllowedError):
        await run_tests(root, selection=["../elsewhere/test_x.py"])


async def test_no_tests_is_exit_code_five(write_project: WriteProject) -> None:
    root = write_project({"pkg/mod.py": "x = 1\n"})
    result = await run_tests(root, timeout_s=120)
    assert result.exit_code == 5 and result.exit_meaning == "no tests collected"
    assert result.totals.tests == 0


async def test_collection_error_is_reported(write_project: WriteProject) -> None:
    root = write_project({"tests/test_broken.py": "import not_a_real_module_xyz\n\ndef test_x():\n    pass\n"})
    result = await run_tests(root, timeout_s=120)
    assert result.exit_code == 2
    assert result.totals.errors == 1
    assert "not_a_real_module_xyz" in (result.tests[0].detail or "") + result.output_tail
    assert result.exit_meaning.startswith("test run interrupted")
    assert result.error and "Interrupted: 1 error during collection" in result.error


@pytest.mark.slow  # waits out a real timeout
async def test_timeout_kills_the_run(write_project: WriteProject) -> None:
    root = write_project({"tests/test_slow.py": "import time\n\ndef test_slow():\n    time.sleep(60)\n"})
    started = time.monotonic()
    result = await run_tests(root, timeout_s=3)
    assert time.monotonic() - started < 20
    assert result.timed_out and result.exit_code is None
    assert "timed out" in result.exit_meaning


async def test_uses_the_projects_own_virtualenv(write_project: WriteProject) -> None:
    # A stand-in for the project's .venv interpreter that forwards to ours (which has pytest).
    root = write_project({"tests/test_one.py": "def test_one():\n    pass\n"})
    venv_python = root / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    venv_python.chmod(0o755)
    result = await run_tests(root, timeout_s=120)
    assert result.python == str(venv_python) and result.command[0] == str(venv_python)
    assert result.exit_code == 0 and result.totals.passed == 1


async def test_missing_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PathNotAllowedError):
        await run_tests(tmp_path / "missing")


# --- a clean environment -------------------------------------------------------------------------

DUMP_ENV = {
    "tests/test_env.py": """
        import json, os, pathlib


        def test_dump():
            pathlib.Path(__file__).with_name("env.json").write_text(json.dumps(dict(os.environ)))
        """
}


async def test_the_tests_see_only_the_allowlisted_environment(
    write_project: WriteProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-api03-not-for-tests")
    monkeypatch.setenv("CAELUM_CLAUDE__API_KEY", "sk-ant-api03-not-either")
    monkeypatch.setenv("DATABASE_URL", "postgres://db/test")
    monkeypatch.setenv("SERVER_ONLY_SETTING", "private")
    monkeypatch.setenv("LC_TIME", "C")
    root = write_project(DUMP_ENV)
    result = await run_tests(root, timeout_s=120, pass_env=["DATABASE_URL", "ANTHROPIC_API_KEY", "NOT_SET_ANYWHERE"])
    assert result.exit_code == 0, result.output_tail
    seen = json.loads((root / "tests" / "env.json").read_text())
    assert seen["DATABASE_URL"] == "postgres://db/test" and seen["LC_TIME"] == "C"
    assert seen["PATH"] == os.environ["PATH"] and seen["HOME"] == os.environ["HOME"]
    for name in ("ANTHROPIC_API_KEY", "CAELUM_CLAUDE__API_KEY", "SERVER_ONLY_SETTING", "NOT_SET_ANYWHERE"):
        assert name not in seen
    assert "VIRTUAL_ENV" not in seen  # our interpreter, not the project's venv
    allowed = {*BASE_TEST_ENV, "LC_TIME", "DATABASE_URL", RUN_MARKER_VAR}
    # what the interpreter and pytest add themselves
    extra = {n for n in set(seen) - allowed if not n.startswith(("PYTEST_", "LC_", "_PYTEST"))}
    assert not extra, extra


async def test_without_extras_only_the_basics_pass(
    write_project: WriteProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://db/test")
    root = write_project(DUMP_ENV)
    result = await run_tests(root, timeout_s=120)
    assert result.exit_code == 0, result.output_tail
    assert "DATABASE_URL" not in json.loads((root / "tests" / "env.json").read_text())


def test_a_project_venv_looks_activated(tmp_path: Path) -> None:
    python = tmp_path / ".venv" / "bin" / "python"
    env = clean_test_env(tmp_path, str(python), environ={"PATH": "/usr/bin", "VIRTUAL_ENV": "/elsewhere"})
    assert env["VIRTUAL_ENV"] == str(tmp_path / ".venv")
    assert env["PATH"] == os.pathsep.join([str(python.parent), "/usr/bin"])
    assert "VIRTUAL_ENV" not in clean_test_env(tmp_path, sys.executable, environ={"VIRTUAL_ENV": "/elsewhere"})


# --- pytest's own failures are reported as such -------------------------------------------------


async def test_an_internal_error_is_exit_code_three_with_pytests_message(write_project: WriteProject) -> None:
    root = write_project(
        {
            "conftest.py": "def pytest_collection_modifyitems(items):\n    raise RuntimeError('hook exploded')\n",
            "tests/test_one.py": "def test_one():\n    pass\n",
        }
    )
    result = await run_tests(root, timeout_s=120)
    assert result.exit_code == 3 and result.exit_meaning == "pytest internal error"
    assert result.error and "RuntimeError: hook exploded" in result.error
    assert "INTERNALERROR>" in result.error and len(result.error) <= 3000


@pytest.mark.parametrize(
    ("files", "selection", "said"),
    [
        ({"pytest.ini": "[pytest]\naddopts = --no-such-option\n"}, None, "unrecognized arguments: --no-such-option"),
        ({}, ["tests/test_one.py::test_missing"], "not found"),
    ],
    ids=["bad-ini", "unknown-node-id"],
)
async def test_a_usage_error_is_exit_code_four_with_pytests_message(
    write_project: WriteProject, files: dict[str, str], selection: list[str] | None, said: str
) -> None:
    root = write_project({**files, "tests/test_one.py": "def test_one():\n    pass\n"})
    result = await run_tests(root, selection=selection, timeout_s=120)
    assert result.exit_code == 4 and result.exit_meaning.startswith("pytest usage error")
    assert result.error and said in result.error, result.error


@pytest.mark.parametrize("module", ["random", "typing"])
async def test_a_project_file_shadowing_the_stdlib_is_reported_as_pytests_crash(
    write_project: WriteProject, module: str
) -> None:
    root = write_project({f"{module}.py": "x = 1\n", "tests/test_one.py": "def test_one():\n    pass\n"})
    result = await run_tests(root, timeout_s=120)
    assert result.exit_code == 1
    assert result.exit_meaning == "pytest failed before running any test (exit status 1)"
    assert result.exit_meaning != "some tests failed"
    assert result.error and "ImportError" in result.error and f"{module}.py" in result.error
    assert f"the project's {module}.py hides the standard library module" in result.error


async def test_a_normal_failure_has_no_error(write_project: WriteProject) -> None:
    result = await run_tests(write_project(SUITE), timeout_s=120)
    assert result.exit_code == 1 and result.error is None


# --- failure text trimmed around the failing line -----------------------------------------------

DEEP = {
    "tests/test_deep.py": """
        import pytest


        def dive(n):
            if n == 0:
                data = list(range(300))
                assert data == list(range(1, 301)), "x" * 5000
            return dive(n - 1)


        @pytest.mark.parametrize("depth", [40])
        def test_deep(depth):
            dive(depth)
        """
}


async def test_a_long_failure_keeps_the_failing_line_and_its_location(write_project: WriteProject) -> None:
    root = write_project(DEEP)
    result = await run_tests(root, timeout_s=120)
    (case,) = result.tests
    detail = case.detail or ""
    assert case.detail_lines_cut > 0 and "lines cut] …" in detail
    lines = detail.splitlines()
    assert len(lines) <= 40 and len(detail) <= 4000 + 200
    assert any(line.startswith(">") and "assert data == list(range(1, 301))" in line for line in lines)
    assert lines[-1].startswith("tests/test_deep.py:") and lines[-1].endswith("AssertionError")
    assert any(line.startswith("E ") for line in lines)


def test_trim_failure_counts_what_it_cuts() -> None:
    frames = [f"frame {i}" for i in range(100)]
    text = "\n".join(
        [*frames, ">       assert a == b", *[f"E   line {i}" for i in range(100)], "t.py:3: AssertionError"]
    )
    trimmed, cut = trim_failure(text)
    lines = trimmed.splitlines()
    assert len(lines) <= 40
    assert ">       assert a == b" in lines and lines[-1] == "t.py:3: AssertionError"
    assert "frame 97" in lines  # the context just above the failing line
    assert lines[0] == "… [97 lines cut] …"
    kept = [line for line in lines if not line.startswith("… [")]
    assert cut == len(text.splitlines()) - len(kept)
    assert trim_failure("short\ntext") == ("short\ntext", 0)


def test_trim_failure_clips_a_huge_line() -> None:
    trimmed, cut = trim_failure("E   " + "y" * 100_000)
    assert len(trimmed) < 500 and "characters cut]" in trimmed and cut == 0


# --- nothing the tests start outlives the run ----------------------------------------------------


@pytest.mark.slow  # over a second: kept out of make test-fast
async def test_what_the_tests_leave_running_is_killed_when_pytest_exits(write_project: WriteProject, mark: str) -> None:
    root = write_project(escaping_suite(mark, then_sleep=0.5))
    started = time.monotonic()
    result = await run_tests(root, timeout_s=120)
    assert result.exit_code == 0 and result.totals.passed == 1, result.output_tail
    assert time.monotonic() - started < 60, "the leftovers holding the output must not hold the run"
    assert await until(lambda: not marked(mark), 5), "a process the tests started outlived the run"
    assert result.leftovers_killed >= 2


async def test_cancelling_a_run_kills_what_the_tests_started(write_project: WriteProject, mark: str) -> None:
    root = write_project(escaping_suite(mark, then_sleep=300))
    with anyio.move_on_after(60) as outer:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: run_tests(root, timeout_s=300))
            assert await until(lambda: len(marked(mark)) == 2, 50), "the sleepers never started"
            tg.cancel_scope.cancel()
    assert not outer.cancelled_caught
    assert await until(lambda: not marked(mark), 5), "a process the tests started outlived the cancellation"


@pytest.mark.slow  # waits out a real timeout
async def test_a_timed_out_run_kills_what_the_tests_started(write_project: WriteProject, mark: str) -> None:
    root = write_project(escaping_suite(mark, then_sleep=300))
    result = await run_tests(root, timeout_s=4)
    assert result.timed_out
    assert await until(lambda: not marked(mark), 5), "a process the tests started outlived the timeout"


async def test_a_nul_byte_in_the_selection_is_refused(write_project: WriteProject) -> None:
    root = write_project(SUITE)
    with pytest.raises(PathNotAllowedError, match="not a test path"):
        await run_tests(root, selection=["tests/test_mixed.py::test_ok\0"])
