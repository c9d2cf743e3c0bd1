"""run_tests(): a real pytest run in a subprocess, read back from its JUnit report."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from caelum_mcp.errors import PathNotAllowedError
from caelum_mcp.tools.code.tests_runner import run_tests

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
