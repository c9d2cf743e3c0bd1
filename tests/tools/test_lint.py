"""lint(): ruff findings with our severities, the project's own config, and safe path handling."""

from __future__ import annotations

from pathlib import Path

import pytest

from caelum_mcp.core.errors import PathNotAllowedError
from caelum_mcp.tools.code.lint import lint, ruff_severity

from .conftest import WriteProject, line_of

MODULE = """
import os
import sys


def greet(name):
    print(f"hello {name}")
    return undefined_helper(name)
"""


async def test_reports_rules_with_lines_severity_and_fix_availability(write_project: WriteProject) -> None:
    root = write_project({"pkg/mod.py": MODULE})
    result = await lint(root)
    assert result.errors == ()
    assert result.files_checked == 1
    by_rule = {f.rule: f for f in result.findings}

    unused = next(f for f in result.findings if f.rule == "F401" and "`os`" in f.message)
    assert unused.file == "pkg/mod.py"
    assert unused.line == line_of(root, "pkg/mod.py", "import os")
    assert unused.severity == "low"
    assert unused.fix_available and unused.fix_applicability == "safe"

    undefined = by_rule["F821"]
    assert undefined.line == line_of(root, "pkg/mod.py", "undefined_helper")
    assert undefined.severity == "high"
    assert undefined.column == 12
    assert "undefined_helper" in undefined.message
    assert result.findings[0].severity == "high"  # most severe first
    assert result.counts["high"] == 1 and result.fixable >= 2


async def test_syntax_error_is_a_high_finding_not_a_crash(write_project: WriteProject) -> None:
    root = write_project({"ok.py": "x = 1\n", "broken.py": "def f(:\n    pass\n"})
    result = await lint(root)
    assert result.errors == ()
    syntax = [f for f in result.findings if f.rule == "invalid-syntax"]
    assert syntax and all(f.file == "broken.py" and f.line == 1 and f.severity == "high" for f in syntax)


async def test_project_config_is_respected(write_project: WriteProject) -> None:
    root = write_project(
        {
            "pyproject.toml": """
                [tool.ruff]
                line-length = 20

                [tool.ruff.lint]
                select = ["F", "E501"]
                ignore = ["F401"]
                """,
            "mod.py": "import os\nVALUE = 'a string that is long'\n",
        }
    )
    result = await lint(root)
    rules = {f.rule for f in result.findings}
    assert "F401" not in rules  # ignored by the project
    assert "E501" in rules  # selected by the project, with its line length


async def test_files_argument_limits_the_check(write_project: WriteProject) -> None:
    root = write_project({"a.py": "import os\n", "b/c.py": "import sys\n", "b/d.py": "import re\n", "notes.txt": "x"})
    only_a = await lint(root, ["a.py"])
    assert {f.file for f in only_a.findings} == {"a.py"}
    folder = await lint(root, ["b"])
    assert {f.file for f in folder.findings} == {"b/c.py", "b/d.py"}
    non_python = await lint(root, ["notes.txt"])
    assert non_python.files_checked == 0 and non_python.findings == ()


async def test_paths_outside_the_root_are_refused(write_project: WriteProject, tmp_path: Path) -> None:
    root = write_project({"a.py": "x = 1\n"})
    (tmp_path / "outside.py").write_text("import os\n")
    (root / "escape.py").symlink_to(tmp_path / "outside.py")
    with pytest.raises(PathNotAllowedError):
        await lint(root, ["../outside.py"])
    with pytest.raises(PathNotAllowedError):
        await lint(root, ["escape.py"])


async def test_project_without_python_files(write_project: WriteProject, tmp_path: Path) -> None:
    root = write_project({"index.js": "console.log(1)\n"})
    result = await lint(root)
    assert result.files_checked == 0 and result.findings == () and result.errors == ()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (await lint(empty)).findings == ()


async def test_broken_ruff_config_is_reported_as_an_error(write_project: WriteProject) -> None:
    root = write_project({"ruff.toml": "[lint]\nselect = 42\n", "a.py": "import os\n"})
    result = await lint(root)
    assert result.findings == ()
    assert len(result.errors) == 1 and result.errors[0].tool == "ruff"


def test_severity_mapping() -> None:
    assert ruff_severity("invalid-syntax") == "high"
    assert ruff_severity("E999") == "high"
    assert ruff_severity("F821") == "high"
    assert ruff_severity("S608") == "medium"
    assert ruff_severity("B006") == "medium"
    assert ruff_severity("F401") == "low"
    assert ruff_severity("FBT001") == "low"  # not pyflakes although it starts with F
    assert ruff_severity("SIM108") == "low"  # not bandit although it starts with S
    assert ruff_severity("E501") == "low"
