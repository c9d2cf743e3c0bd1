"""project_structure on fixture projects: languages, lines, entry points, tests, ignores and caps."""

from __future__ import annotations

import json
from pathlib import Path

from caelum_mcp.tools.code.structure import project_structure

from .conftest import WriteProject, git

PYPROJECT = """
[project]
name = "demo"
version = "0.1"

[project.scripts]
demo = "demo.cli:main"

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

APP_FILES: dict[str, str | bytes] = {
    "pyproject.toml": PYPROJECT,
    "demo/__init__.py": "",
    "demo/__main__.py": "from demo.cli import main\n\nmain()\n",
    "demo/cli.py": """
        # entry point
        def main() -> None:

            print("hi")


        if __name__ == "__main__":
            main()
        """,
    "tests/conftest.py": "",
    "tests/test_cli.py": "def test_x():\n    assert True\n",
    "tests/unit/test_more.py": "def test_y():\n    assert True\n",
    "web/package.json": json.dumps({"name": "@acme/web", "main": "index.js", "bin": {"acme": "bin/acme.js"}}),
    "web/index.js": "// comment\nconst x = 1;\n\nmodule.exports = x;\n",
    "web/index.test.js": "test('x', () => {});\n",
    "cmd/server/main.go": "package main\n\n// starts the server\nfunc main() {\n}\n",
    "README.md": "# Demo\n",
    "logo.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00",
}


async def test_describes_languages_entry_points_and_tests(write_project: WriteProject) -> None:
    root = write_project(APP_FILES)
    result = await project_structure(root)

    assert result.listing_source == "walk"
    languages = {lang.language: lang for lang in result.languages}
    assert languages["Python"].files == 6
    # cli.py has 4 code lines (blank lines and the comment do not count), __main__.py and the two
    # test files 2 each, the empty files none
    assert languages["Python"].code_lines == 4 + 2 + 2 + 2
    assert languages["JavaScript"].files == 2
    assert languages["JavaScript"].lines == 5 and languages["JavaScript"].code_lines == 3
    assert languages["Go"].code_lines == 3
    assert result.other_files == 1  # logo.png

    entries = {(e.kind, e.name, e.file, e.target) for e in result.entry_points}
    assert ("console_script", "demo", "pyproject.toml", "demo.cli:main") in entries
    assert ("python_package_main", "demo", "demo/__main__.py", None) in entries
    assert ("python_main_guard", "cli", "demo/cli.py", None) in entries
    assert ("go_main", "cmd/server", "cmd/server/main.go", None) in entries
    assert ("node_main", "@acme/web", "web/package.json", "index.js") in entries
    assert ("node_bin", "acme", "web/package.json", "bin/acme.js") in entries

    assert result.tests.test_dirs == ("tests",)
    assert result.tests.python_test_files == 2
    assert result.tests.other_test_files == 1
    assert result.tests.conftest_files == 1
    assert result.tests.pytest_configured
    assert result.skipped_count == 0 and not result.truncated


async def test_walk_honours_gitignore_and_always_skips_environments(write_project: WriteProject) -> None:
    root = write_project(
        {
            ".gitignore": "build/\n*.log\n/generated.py\n!keep.log\n",
            "app.py": "x = 1\n",
            "build/out.py": "y = 2\n",
            "debug.log": "noise\n",
            "keep.log": "kept\n",
            "generated.py": "z = 3\n",
            "sub/generated.py": "w = 4\n",  # the pattern is anchored to the root
            ".venv/lib/site.py": "v = 5\n",
            "node_modules/pkg/index.js": "n = 6\n",
            "env/pyvenv.cfg": "home = /usr/bin\n",
            "env/lib/mod.py": "e = 7\n",
        }
    )
    result = await project_structure(root)
    counted = {lang.language: lang.files for lang in result.languages}
    assert counted["Python"] == 2  # app.py and sub/generated.py only
    assert result.files_total == 4  # .gitignore, app.py, keep.log (re-included by !), sub/generated.py
    reasons = {group.reason: group.count for group in result.skipped}
    assert reasons["ignored by .gitignore"] == 3  # build/, debug.log, generated.py
    assert reasons["environment or cache directory"] == 3  # .venv, node_modules, env (has pyvenv.cfg)


async def test_git_listing_includes_untracked_but_not_ignored_files(write_project: WriteProject) -> None:
    root = write_project({".gitignore": "secret_dir/\n", "tracked.py": "a = 1\n", "secret_dir/x.py": "b = 2\n"})
    git(root, "init", "-q")
    git(root, "add", "tracked.py", ".gitignore")
    git(root, "commit", "-q", "-m", "init")
    write_project({"untracked.py": "c = 3\n"})
    result = await project_structure(root)
    assert result.listing_source == "git"
    assert result.files_total == 3  # .gitignore, tracked.py, untracked.py
    assert next(lang for lang in result.languages if lang.language == "Python").files == 2


async def test_caps_report_what_was_skipped(write_project: WriteProject) -> None:
    root = write_project({f"m{i:02}.py": "x = 1\n" for i in range(12)} | {"big.py": "x = 1\n" * 5000})
    result = await project_structure(root, max_files=10, max_file_bytes=1000)
    assert result.truncated
    assert result.files_analysed == 10
    groups = {group.reason: group for group in result.skipped}
    assert groups["over the max_files limit"].count == 3
    assert groups["over the max_files limit"].examples == ("m09.py", "m10.py", "m11.py")
    assert groups["larger than max_file_bytes"].examples == ("big.py",)
    assert result.skipped_count == 4
    python = next(lang for lang in result.languages if lang.language == "Python")
    assert python.files == 10 and python.lines == 9  # big.py was counted as a file but not read


async def test_empty_project_gives_an_empty_description(tmp_path: Path) -> None:
    result = await project_structure(tmp_path)
    assert result.files_total == 0
    assert result.languages == () and result.entry_points == ()
    assert result.tests.test_dirs == () and not result.tests.pytest_configured


async def test_broken_manifest_does_not_break_the_description(write_project: WriteProject) -> None:
    root = write_project({"pyproject.toml": "[project\nname=", "package.json": "{not json", "a.py": "x = 1\n"})
    result = await project_structure(root)
    reasons = {group.reason for group in result.skipped}
    assert {"unparseable pyproject.toml", "unparseable package.json"} <= reasons
    assert next(lang for lang in result.languages if lang.language == "Python").code_lines == 1
