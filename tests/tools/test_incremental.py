"""Per-file reuse of bandit and radon output: an edited file is analysed again, the rest is not."""

from __future__ import annotations

from pathlib import Path

from caelum_mcp.engine.cache import ResultCache
from caelum_mcp.tools.code.complexity import complexity
from caelum_mcp.tools.code.security import security_scan

from .conftest import WriteProject

FILES = {
    "app/run.py": """
        import subprocess


        def run(cmd):
            return subprocess.call(cmd, shell=True)
    """,
    "app/calc.py": """
        def calculate(expr):
            return eval(expr)
    """,
    "app/branchy.py": """
        def label(x):
            if x == 1:
                return "one"
            elif x == 2:
                return "two"
            elif x == 3:
                return "three"
            return "many"
    """,
    "app/broken.py": "def f(:\n    pass\n",
}


def counts(store: ResultCache) -> tuple[int, int]:
    return store.part_hits, store.part_misses


async def test_bandit_runs_again_only_on_the_edited_file(write_project: WriteProject, tmp_path: Path) -> None:
    root = write_project(FILES)
    store = ResultCache(tmp_path / "cache.sqlite3")
    first = await security_scan(root, store=store)
    assert counts(store) == (0, 4)
    assert {(f.file, f.rule) for f in first.findings if f.tool == "bandit"} >= {
        ("app/run.py", "B602"),
        ("app/calc.py", "B307"),
    }
    assert [e.file for e in first.errors] == ["app/broken.py"]  # a per-file error is reused too

    again = await security_scan(root, store=store)
    assert counts(store) == (4, 4)
    assert again == first

    (root / "app" / "calc.py").write_text("import pickle\n\n\ndef load(data):\n    return pickle.loads(data)\n")
    edited = await security_scan(root, store=store)
    assert counts(store) == (7, 5)  # three reused, the edited one analysed
    fresh = await security_scan(root)  # no store: everything from scratch
    assert edited == fresh
    rules = {(f.file, f.rule) for f in edited.findings}
    assert ("app/calc.py", "B301") in rules and ("app/calc.py", "B307") not in rules
    store.close()


async def test_radon_runs_again_only_on_the_edited_file(write_project: WriteProject, tmp_path: Path) -> None:
    root = write_project(FILES)
    store = ResultCache(tmp_path / "cache.sqlite3")
    first = await complexity(root, store=store, threshold=3)
    assert counts(store) == (0, 4)
    assert any(fn.name == "label" and fn.ccn == 4 for fn in first.functions)
    assert await complexity(root, store=store, threshold=3) == first
    assert counts(store) == (4, 4)

    (root / "app" / "run.py").write_text("def run(cmd):\n    return cmd if cmd else None\n")
    edited = await complexity(root, store=store, threshold=3)
    assert counts(store) == (7, 5)
    assert edited == await complexity(root, threshold=3)
    assert [m.file for m in edited.maintainability if m.file == "app/run.py"] == ["app/run.py"]
    store.close()


async def test_a_run_where_the_tool_failed_is_not_reused(write_project: WriteProject, tmp_path: Path) -> None:
    root = write_project(FILES)
    store = ResultCache(tmp_path / "cache.sqlite3")
    stopped = await security_scan(root, store=store, timeout_s=0.001)
    assert any(e.tool == "bandit" and e.file is None and "did not finish" in e.message for e in stopped.errors)
    complete = await security_scan(root, store=store)
    assert counts(store) == (0, 8)  # nothing from the stopped run was stored
    assert any(f.rule == "B602" for f in complete.findings)
    store.close()
