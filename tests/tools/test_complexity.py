"""complexity(): radon for Python, lizard for other languages, summaries, worst offenders, MI."""

from __future__ import annotations

from pathlib import Path

from caelum_mcp.tools.code.complexity import complexity

from .conftest import WriteProject, line_of


def _branchy_python(branches: int) -> str:
    body = "\n".join(f"    if x == {i}:\n        return {i}" for i in range(branches))
    return f"def branchy(x):\n{body}\n    return -1\n"


FILES: dict[str, str | bytes] = {
    "pkg/simple.py": """
        def add(a, b):
            return a + b


        class Shape:
            def area(self, kind):
                if kind == "square":
                    return 1
                elif kind == "circle":
                    return 3
                return 0

            def nested(self):
                def helper(v):
                    return v or 0

                return helper(1)
        """,
    "pkg/branchy.py": _branchy_python(14),
    "web/app.js": """
        function route(a, b) {
          if (a) { return 1; } else if (b) { return 2; }
          for (let i = 0; i < 3; i++) { if (i && a) { return i; } }
          return 0;
        }
        const id = (x) => x;
        """,
    "cmd/main.go": """
        package main

        func main() {
            for i := 0; i < 3; i++ {
                if i > 1 {
                    println(i)
                }
            }
        }
        """,
}


async def test_per_function_complexity_across_languages(write_project: WriteProject) -> None:
    root = write_project(FILES)
    result = await complexity(root)
    assert result.errors == ()
    by_name = {(fn.file, fn.name): fn for fn in result.functions}

    assert by_name[("pkg/simple.py", "add")].ccn == 1
    area = by_name[("pkg/simple.py", "Shape.area")]
    assert area.ccn == 3 and area.line == line_of(root, "pkg/simple.py", "def area") and area.rank == "A"
    assert by_name[("pkg/simple.py", "Shape.nested.helper")].ccn == 2  # closures are measured too
    assert ("pkg/simple.py", "Shape") not in by_name  # a class is not a function

    route = by_name[("web/app.js", "route")]
    assert route.language == "JavaScript" and route.ccn == 6 and route.line == 1 and route.parameters == 2
    go_main = by_name[("cmd/main.go", "main")]
    assert go_main.language == "Go" and go_main.ccn == 3

    assert result.worst[0].name == "branchy" and result.worst[0].ccn == 15
    summary = {s.language: s for s in result.languages}
    assert summary["Python"].functions == 5 and summary["Python"].max_ccn == 15
    assert summary["Python"].over_threshold == 1 and summary["Python"].files == 2
    assert summary["JavaScript"].functions == 2 and summary["JavaScript"].mean_ccn == 3.5
    assert summary["Go"].functions == 1


async def test_complex_functions_become_findings(write_project: WriteProject) -> None:
    root = write_project(FILES | {"pkg/huge.py": _branchy_python(45)})
    result = await complexity(root)
    findings = {(f.file, f.line): f for f in result.findings}
    assert findings[("pkg/branchy.py", 1)].severity == "low"  # CCN 15
    assert findings[("pkg/huge.py", 1)].severity == "high"  # CCN 46
    assert findings[("pkg/huge.py", 1)].rule == "high-complexity"
    assert len(result.findings) == 2
    stricter = await complexity(root, threshold=2)
    assert {f.file for f in stricter.findings} >= {"pkg/simple.py", "web/app.js", "cmd/main.go"}


async def test_maintainability_index_per_python_file(write_project: WriteProject) -> None:
    root = write_project(FILES)
    result = await complexity(root)
    index = {mi.file: mi for mi in result.maintainability}
    assert set(index) == {"pkg/simple.py", "pkg/branchy.py"}
    assert all(0 <= mi.mi <= 100 and mi.rank in "ABC" for mi in index.values())
    assert index["pkg/branchy.py"].mi < index["pkg/simple.py"].mi


async def test_syntax_error_is_recorded_and_other_files_measured(write_project: WriteProject) -> None:
    root = write_project(FILES | {"pkg/broken.py": "def broken(:\n    pass\n"})
    result = await complexity(root, ["pkg"])
    assert [(e.tool, e.file) for e in result.errors] == [("radon", "pkg/broken.py")]
    assert {fn.file for fn in result.functions} == {"pkg/simple.py", "pkg/branchy.py"}


async def test_empty_and_non_code_projects(write_project: WriteProject, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = await complexity(empty)
    assert result.functions == () and result.languages == () and result.errors == ()
    docs = write_project({"README.md": "# hi\n"})
    assert (await complexity(docs)).functions == ()
