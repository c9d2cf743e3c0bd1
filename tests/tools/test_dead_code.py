"""dead_code(): vulture across the whole project, confidence filter, unparsable files recorded."""

from __future__ import annotations

from pathlib import Path

from caelum_mcp.tools.code.dead_code import dead_code, parse_vulture_line

from .conftest import WriteProject, line_of

FILES: dict[str, str | bytes] = {
    "pkg/__init__.py": "",
    "pkg/lib.py": """
        import os


        def used_elsewhere():
            return 1


        def never_called():
            return 2


        def early_return():
            return 3
            print("never runs")
        """,
    "pkg/main.py": """
        from pkg.lib import early_return, used_elsewhere

        print(used_elsewhere(), early_return())
        """,
}


async def test_reports_unused_and_unreachable_code_at_its_line(write_project: WriteProject) -> None:
    root = write_project(FILES)
    result = await dead_code(root)
    assert result.errors == ()
    found = {(f.file, f.kind, f.name): f for f in result.findings}

    never = found[("pkg/lib.py", "unused function", "never_called")]
    assert never.line == line_of(root, "pkg/lib.py", "def never_called")
    assert never.confidence_pct == 60 and never.severity == "low" and never.tool == "vulture"

    unused_import = found[("pkg/lib.py", "unused import", "os")]
    assert unused_import.confidence_pct == 90

    unreachable = found[("pkg/lib.py", "unreachable code", None)]
    assert unreachable.line == line_of(root, "pkg/lib.py", "never runs")
    assert unreachable.severity == "medium" and unreachable.confidence_pct == 100

    # used from another file: the project is analysed as a whole
    assert not any(f.name == "used_elsewhere" for f in result.findings)


async def test_min_confidence_filters(write_project: WriteProject) -> None:
    root = write_project(FILES)
    result = await dead_code(root, min_confidence=100)
    assert [f.kind for f in result.findings] == ["unreachable code"]
    assert result.min_confidence == 100


async def test_unparsable_file_is_an_error_and_the_rest_is_analysed(write_project: WriteProject) -> None:
    root = write_project(FILES | {"pkg/broken.py": "def broken(:\n    pass\n"})
    result = await dead_code(root)
    assert [(e.tool, e.file) for e in result.errors] == [("vulture", "pkg/broken.py")]
    assert any(f.name == "never_called" for f in result.findings)


async def test_project_whitelist_in_pyproject_applies(write_project: WriteProject) -> None:
    root = write_project(FILES | {"pyproject.toml": '[tool.vulture]\nignore_names = ["never_called"]\n'})
    result = await dead_code(root)
    assert not any(f.name == "never_called" for f in result.findings)


async def test_no_python_files(tmp_path: Path) -> None:
    result = await dead_code(tmp_path)
    assert result.files_checked == 0 and result.findings == () and result.errors == ()


def test_parses_vulture_report_lines(tmp_path: Path) -> None:
    sized = parse_vulture_line(tmp_path, "a/b.py:7: unused class 'Thing' (60% confidence, 12 lines)")
    assert sized is not None
    assert (sized.file, sized.line, sized.kind, sized.name, sized.size_lines) == (
        "a/b.py",
        7,
        "unused class",
        "Thing",
        12,
    )
    assert parse_vulture_line(tmp_path, "not a report") is None
