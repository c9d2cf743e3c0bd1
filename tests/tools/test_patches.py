"""Patches for ``improve``: built as git-applicable diffs, checked in a copy, the project left untouched."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import venv
from pathlib import Path

import anyio
import pytest

from caelum_mcp.core.errors import PathNotAllowedError
from caelum_mcp.tools.code.patches import Patch, check_patch, check_patches, edit_patch, ruff_fix_patches

from .conftest import WriteProject, git, line_of

MODULE = """
def scale(values, factor):
    total = []
    for value in values:
        total.append(value * factor)
    return total
"""

FIXABLE = """
import os


def greet(name):
    print(f"hello")
    return name
"""

CALC = {
    "calc.py": """
        def add(a, b):
            return a + b
    """,
    "tests/test_calc.py": """
        from calc import add


        def test_add():
            assert add(2, 3) == 5
    """,
}


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (caches and all) with its SHA-256: the project must stay byte-identical."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temporary folders of the code under test go here, so a test can see that they were removed."""
    folder = tmp_path / "scratch"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def apply_with_git(root: Path, patch: Patch, tmp_path: Path) -> Path:
    """Apply ``patch`` with plain ``git apply`` to a copy of ``root``; return the copy."""
    copy = tmp_path / "applied"
    shutil.copytree(root, copy)
    diff = tmp_path / "change.diff"
    diff.write_text(patch.diff, encoding="utf-8")
    git(copy, "apply", str(diff))
    return copy


def test_edit_patch_changes_exactly_the_intended_lines(write_project: WriteProject, tmp_path: Path) -> None:
    root = write_project({"pkg/mod.py": MODULE})
    before = tree_digest(root)
    old = (root / "pkg/mod.py").read_text(encoding="utf-8").splitlines(keepends=True)
    start = line_of(root, "pkg/mod.py", "total = []")
    end = line_of(root, "pkg/mod.py", "total.append")

    patch = edit_patch(
        root, "pkg/mod.py", start, end, "    total = [value * factor for value in values]", rules=["PERF401"]
    )

    assert patch.file == "pkg/mod.py" and patch.source == "llm" and patch.finding_rules == ("PERF401",)
    assert patch.diff.startswith("diff --git a/pkg/mod.py b/pkg/mod.py\n--- a/pkg/mod.py\n+++ b/pkg/mod.py\n@@ ")
    applied = (apply_with_git(root, patch, tmp_path) / "pkg/mod.py").read_text(encoding="utf-8")
    assert applied.splitlines(keepends=True) == [
        *old[: start - 1],
        "    total = [value * factor for value in values]\n",
        *old[end:],
    ]
    assert tree_digest(root) == before


def test_edit_patch_deletes_inserts_and_keeps_crlf_and_missing_final_newline(
    write_project: WriteProject, tmp_path: Path
) -> None:
    root = write_project({"crlf.py": b"a = 1\r\nb = 2\r\nc = 3\r\n", "tail.py": b"x = 1\ny = 2"})
    before = tree_digest(root)

    delete = edit_patch(root, "crlf.py", 2, 2, "")
    insert = edit_patch(root, "crlf.py", 1, 0, "import os\nimport sys")
    append = edit_patch(root, "tail.py", 3, 2, "z = 3")
    last = edit_patch(root, "tail.py", 2, 2, "y = 20")

    for patch, rel, expected in [
        (delete, "crlf.py", b"a = 1\r\nc = 3\r\n"),
        (insert, "crlf.py", b"import os\r\nimport sys\r\na = 1\r\nb = 2\r\nc = 3\r\n"),
        (append, "tail.py", b"x = 1\ny = 2\nz = 3\n"),
        (last, "tail.py", b"x = 1\ny = 20"),
    ]:
        workdir = tmp_path / f"case-{rel}-{len(expected)}"
        workdir.mkdir()
        assert (apply_with_git(root, patch, workdir) / rel).read_bytes() == expected
    assert tree_digest(root) == before


def test_edit_patch_refuses_bad_ranges_and_paths_outside_the_project(
    write_project: WriteProject, tmp_path: Path
) -> None:
    root = write_project({"mod.py": "a = 1\nb = 2\n"})
    (tmp_path / "outside.py").write_text("secret = 1\n", encoding="utf-8")
    (root / "link.py").symlink_to(tmp_path / "outside.py")
    before = tree_digest(root)

    with pytest.raises(ValueError, match=r"lines 2-5 are outside mod\.py, which has 2 lines"):
        edit_patch(root, "mod.py", 2, 5, "x = 1")
    with pytest.raises(ValueError, match=r"outside mod\.py"):
        edit_patch(root, "mod.py", 0, 1, "x = 1")
    with pytest.raises(ValueError, match=r"outside mod\.py"):
        edit_patch(root, "mod.py", 2, 0, "x = 1")
    with pytest.raises(ValueError, match="unchanged"):
        edit_patch(root, "mod.py", 1, 1, "a = 1")
    for path in ("../outside.py", str(tmp_path / "outside.py"), "link.py"):
        with pytest.raises(PathNotAllowedError):
            edit_patch(root, path, 1, 1, "x = 2")
    assert tree_digest(root) == before


async def test_ruff_fixes_apply_cleanly_and_resolve_their_rules(write_project: WriteProject, private_tmp: Path) -> None:
    root = write_project({"app/greet.py": FIXABLE, "app/clean.py": "VALUE = 1\n"})
    before = tree_digest(root)

    patches = await ruff_fix_patches(root)

    assert [p.file for p in patches] == ["app/greet.py"]  # the clean file needs no patch
    patch = patches[0]
    assert patch.source == "ruff-fix" and patch.finding_rules == ("F401", "F541")
    assert patch.diff.startswith("diff --git a/app/greet.py b/app/greet.py\n--- a/app/greet.py\n+++ b/app/greet.py\n")
    [checked] = await check_patches(root, patches)
    assert checked.patch == patch
    check = checked.check
    assert check.applies and check.lint_clean and check.error is None
    assert check.new_findings == ()
    assert {finding.split(" ", 1)[0] for finding in check.resolved_findings} == {"F401", "F541"}
    assert any("`os` imported but unused" in finding for finding in check.resolved_findings)
    assert not check.tests_ran and check.tests_passed is None
    assert tree_digest(root) == before
    assert leftovers(private_tmp) == []  # the copy is gone


async def test_ruff_fixes_follow_the_project_config(write_project: WriteProject) -> None:
    root = write_project({"pyproject.toml": '[tool.ruff.lint]\nselect = ["F541"]\n', "greet.py": FIXABLE})
    before = tree_digest(root)

    [patch] = await ruff_fix_patches(root, ["greet.py"])

    assert patch.finding_rules == ("F541",)
    assert "-import os" not in patch.diff and '+    print("hello")' in patch.diff
    check = await check_patch(root, patch)
    assert check.applies and check.lint_clean
    assert [f.split(" ", 1)[0] for f in check.resolved_findings] == ["F541"]
    assert tree_digest(root) == before


async def test_ruff_config_above_the_project_still_applies_in_the_copy(
    write_project: WriteProject, tmp_path: Path
) -> None:
    # A subproject of a monorepo: its ruff config lives in the folder above the project root.
    (tmp_path / "ruff.toml").write_text('[lint]\nselect = ["F401"]\n', encoding="utf-8")
    root = write_project({"mod.py": "import os\n\nVALUE = 1\n"})
    before = tree_digest(root)

    check = await check_patch(root, edit_patch(root, "mod.py", 3, 3, 'VALUE = f"one"'))

    # F541 is not selected by the project's config, so the f-string is not a new finding.
    assert check.applies and check.lint_clean and check.new_findings == ()
    assert tree_digest(root) == before


async def test_patch_that_adds_an_undefined_name_is_not_lint_clean(write_project: WriteProject) -> None:
    root = write_project({"pkg/mod.py": MODULE})
    before = tree_digest(root)
    line = line_of(root, "pkg/mod.py", "return total")

    check = await check_patch(root, edit_patch(root, "pkg/mod.py", line, line, "    return normalise(total)"))

    assert check.applies and not check.lint_clean
    assert check.new_findings == (f"F821 at pkg/mod.py:{line}: Undefined name `normalise`",)
    assert check.resolved_findings == ()
    assert tree_digest(root) == before


async def test_patch_that_breaks_the_syntax_is_not_lint_clean(write_project: WriteProject) -> None:
    root = write_project({"pkg/mod.py": MODULE})
    before = tree_digest(root)

    check = await check_patch(root, edit_patch(root, "pkg/mod.py", 1, 1, "def scale(values, factor:"))

    assert check.applies and not check.lint_clean
    assert check.new_findings and all(f.startswith("invalid-syntax at pkg/mod.py:") for f in check.new_findings)
    assert tree_digest(root) == before


async def test_stale_garbage_and_misdirected_diffs_do_not_apply(write_project: WriteProject, private_tmp: Path) -> None:
    root = write_project({"pkg/mod.py": MODULE, "other.py": "x = 1\n"})
    stale = edit_patch(root, "pkg/mod.py", 2, 2, "    total: list[int] = []")
    write_project({"pkg/mod.py": MODULE.replace("total", "result")})  # the file moved on
    other = edit_patch(root, "other.py", 1, 1, "x = 2")
    before = tree_digest(root)

    garbage = Patch(file="pkg/mod.py", diff="this is not a diff\n", source="llm")
    misdirected = Patch(file="pkg/mod.py", diff=other.diff, source="llm")  # says mod.py, changes other.py
    escaping = Patch(file="../outside.py", diff=other.diff, source="llm")
    empty = Patch(file="pkg/mod.py", diff="", source="llm")
    results = await check_patches(root, [stale, garbage, misdirected, escaping, empty])

    assert [r.patch for r in results] == [stale, garbage, misdirected, escaping, empty]
    checks = [r.check for r in results]
    assert all(not c.applies and not c.lint_clean and c.error for c in checks)
    assert "does not apply" in (checks[0].error or "") and "patch failed: pkg/mod.py:" in (checks[0].error or "")
    assert "does not apply" in (checks[1].error or "")
    assert "must change only pkg/mod.py, but it changes other.py" in (checks[2].error or "")
    assert "inside the project" in (checks[3].error or "")
    assert "empty" in (checks[4].error or "")
    assert tree_digest(root) == before
    assert leftovers(private_tmp) == []


async def test_patches_sharing_a_copy_each_see_the_original_file(write_project: WriteProject) -> None:
    root = write_project({"pkg/mod.py": MODULE})
    before = tree_digest(root)
    first = edit_patch(root, "pkg/mod.py", 1, 1, "def scale(values, factor=2):")
    second = edit_patch(root, "pkg/mod.py", 1, 1, "def scale(values, factor=3):")

    # One worker, one copy: the second patch only applies if the first one was undone.
    results = await check_patches(root, [first, second], concurrency=1)

    assert [(r.check.applies, r.check.lint_clean) for r in results] == [(True, True), (True, True)]
    assert tree_digest(root) == before


async def test_tests_run_in_the_copy_tell_a_breaking_patch_from_a_harmless_one(
    write_project: WriteProject, private_tmp: Path
) -> None:
    root = write_project(CALC)
    before = tree_digest(root)
    line = line_of(root, "calc.py", "return a + b")
    breaking = edit_patch(root, "calc.py", line, line, "    return a - b")
    harmless = edit_patch(root, "calc.py", line, line, '    """Sum of a and b."""\n    return a + b')

    results = await check_patches(root, [breaking, harmless], run_tests=True)

    broken, fine = (r.check for r in results)
    assert broken.applies and broken.lint_clean and broken.tests_ran and broken.tests_passed is False
    assert fine.applies and fine.lint_clean and fine.tests_ran and fine.tests_passed is True
    assert tree_digest(root) == before  # no __pycache__ or .pytest_cache written into the project
    assert leftovers(private_tmp) == []


async def test_tests_in_the_copy_use_the_patched_code_despite_an_editable_install(
    write_project: WriteProject, private_tmp: Path
) -> None:
    """A src-layout project whose .venv has itself installed in editable mode (a .pth naming the
    original src/): the copy's tests must still exercise the patched files, not the original."""
    root = write_project({"src/calc/__init__.py": CALC["calc.py"], "tests/test_calc.py": CALC["tests/test_calc.py"]})
    venv.create(root / ".venv", with_pip=False, symlinks=True)
    (site,) = (root / ".venv" / "lib").glob("python3*/site-packages")
    (site / "__editable__.calc-0.1.pth").write_text(f"{root / 'src'}\n")  # what `pip install -e .` writes
    (site / "test-deps.pth").write_text(f"{Path(pytest.__file__).parent.parent}\n")  # pytest for the venv
    line = line_of(root, "src/calc/__init__.py", "return a + b")
    breaking = edit_patch(root, "src/calc/__init__.py", line, line, "    return a - b")

    (result,) = await check_patches(root, [breaking], run_tests=True)

    assert result.check.applies and result.check.tests_ran, result.check
    assert result.check.tests_passed is False, "the tests imported the unpatched original"
    assert leftovers(private_tmp) == []


@pytest.mark.slow  # waits out a real timeout
async def test_cancelled_check_removes_its_copy_and_stops_the_tests(
    write_project: WriteProject, private_tmp: Path
) -> None:
    root = write_project({**CALC, "tests/test_slow.py": "import time\n\n\ndef test_slow():\n    time.sleep(60)\n"})
    before = tree_digest(root)
    line = line_of(root, "calc.py", "return a + b")
    patch = edit_patch(root, "calc.py", line, line, "    return b + a")

    with anyio.move_on_after(3) as scope:
        await check_patch(root, patch, run_tests=True)

    assert scope.cancelled_caught
    assert leftovers(private_tmp) == []
    assert tree_digest(root) == before
