"""Paths given to the tools must stay inside the project root, whatever `..` or links say."""

from __future__ import annotations

from pathlib import Path

import pytest

from caelum_mcp.core.errors import PathNotAllowedError
from caelum_mcp.tools.paths import relative_posix, resolve_root, resolve_within


def test_paths_inside_the_root_resolve(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    root = resolve_root(tmp_path)
    assert resolve_within(root, "pkg/a.py") == root / "pkg" / "a.py"
    assert resolve_within(root, root / "pkg" / "a.py") == root / "pkg" / "a.py"
    assert resolve_within(root, "pkg/../pkg/a.py") == root / "pkg" / "a.py"
    assert resolve_within(root, ".") == root


def test_dotdot_escape_is_refused(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()
    (tmp_path / "secret.txt").write_text("no")
    root = resolve_root(tmp_path / "project")
    with pytest.raises(PathNotAllowedError, match="outside the project root"):
        resolve_within(root, "../secret.txt")
    with pytest.raises(PathNotAllowedError, match="outside the project root"):
        resolve_within(root, tmp_path / "secret.txt")


def test_symlink_escape_is_refused(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "data.py").write_text("x = 1\n")
    (tmp_path / "project" / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    root = resolve_root(tmp_path / "project")
    with pytest.raises(PathNotAllowedError, match="outside the project root"):
        resolve_within(root, "link/data.py")


def test_missing_paths_and_roots_are_refused(tmp_path: Path) -> None:
    root = resolve_root(tmp_path)
    with pytest.raises(PathNotAllowedError, match="does not exist"):
        resolve_within(root, "nope.py")
    with pytest.raises(PathNotAllowedError, match="does not exist"):
        resolve_root(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(PathNotAllowedError, match="not a directory"):
        resolve_root(tmp_path / "file.txt")


def test_relative_posix_normalises_analyser_paths(tmp_path: Path) -> None:
    assert relative_posix(tmp_path, tmp_path / "a" / "b.py") == "a/b.py"
    assert relative_posix(tmp_path, "./a/b.py") == "a/b.py"
    assert relative_posix(tmp_path, "/elsewhere/x.py") == "/elsewhere/x.py"


def test_outside_the_roots_says_only_that(tmp_path: Path) -> None:
    """A probing caller learns nothing about what lies outside: not existence, not link targets."""
    from caelum_mcp.tools.paths import resolve_project

    (tmp_path / "work").mkdir()
    roots = (resolve_root(tmp_path / "work"),)
    (tmp_path / "private").mkdir()
    (tmp_path / "work" / "link").symlink_to(tmp_path / "private", target_is_directory=True)
    messages = []
    for project in (tmp_path / "private", tmp_path / "no-such-dir", "../private", "link", "/etc"):
        with pytest.raises(PathNotAllowedError) as caught:
            resolve_project(project, roots)
        messages.append(str(caught.value).split(" is outside", 1)[1])  # the same words for each
        assert "private" not in str(caught.value).replace(str(project), "")  # no link target shown
    assert len(set(messages)) == 1 and messages[0].startswith(" the allowed roots")


def test_nul_bytes_and_huge_paths_get_short_clear_errors(tmp_path: Path) -> None:
    from caelum_mcp.tools.paths import resolve_project

    root = resolve_root(tmp_path)
    with pytest.raises(PathNotAllowedError, match="NUL byte"):
        resolve_within(root, "a\0b.py")
    with pytest.raises(PathNotAllowedError, match="NUL byte"):
        resolve_project("x\0y", (root,))
    with pytest.raises(PathNotAllowedError, match="NUL byte"):
        resolve_root("x\0y")
    with pytest.raises(PathNotAllowedError) as caught:
        resolve_project("a" * 5_000_000, (root,))
    assert len(str(caught.value)) < 600
