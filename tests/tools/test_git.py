"""git_changes(): changed files, hunks and added line numbers for the work tree and for ranges."""

from __future__ import annotations

from pathlib import Path

import pytest

from caelum_mcp.tools.code.git import GitError, RevisionArgumentError, git_changes, parse_diff

from .conftest import WriteProject, git


def _repo(write_project: WriteProject) -> Path:
    root = write_project(
        {
            ".gitignore": "*.log\n",
            "app.py": "a = 1\nb = 2\nc = 3\n",
            "old name.py": "".join(f"x{i} = {i}\n" for i in range(8)),
            "gone.py": "y = 1\n",
            "pkg/mod.py": "z = 1\n",
        }
    )
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "first")
    return root


async def test_working_tree_changes_staged_unstaged_and_untracked(write_project: WriteProject) -> None:
    root = _repo(write_project)
    (root / "app.py").write_text("a = 1\nB = 2\nc = 3\nd = 4\n")  # unstaged: line 2 changed, line 4 added
    git(root, "mv", "old name.py", "new name.py")  # staged rename with an edit
    (root / "new name.py").write_text((root / "new name.py").read_text() + "added = 9\n")
    git(root, "rm", "-q", "gone.py")
    write_project({"fresh.py": "n = 1\nm = 2\n", "debug.log": "ignored\n"})

    changes = await git_changes(root)
    assert changes.head == "WORKTREE" and changes.base == "HEAD"
    files = {f.path: f for f in changes.files}
    assert set(files) == {"app.py", "new name.py", "gone.py", "fresh.py"}

    app = files["app.py"]
    assert app.status == "modified" and app.added_lines == (2, 4)
    assert app.additions == 2 and app.deletions == 1
    assert [(h.old_start, h.old_count, h.new_start, h.new_count) for h in app.hunks] == [(2, 1, 2, 1), (3, 0, 4, 1)]

    renamed = files["new name.py"]
    assert renamed.status == "renamed" and renamed.old_path == "old name.py" and renamed.added_lines == (9,)
    assert files["gone.py"].status == "deleted" and files["gone.py"].added_lines == ()
    fresh = files["fresh.py"]
    assert fresh.status == "untracked" and fresh.added_lines == (1, 2)


async def test_commit_range_and_single_commit(write_project: WriteProject) -> None:
    root = _repo(write_project)
    first = git(root, "rev-parse", "HEAD").strip()
    (root / "pkg" / "mod.py").write_text("z = 1\nzz = 2\n")
    (root / "logo.bin").write_bytes(b"\x00\x01\x02")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "second")
    (root / "app.py").write_text("changed\n")  # uncommitted: not part of a commit range

    ranged = await git_changes(root, base=first)
    files = {f.path: f for f in ranged.files}
    assert set(files) == {"pkg/mod.py", "logo.bin"}
    assert files["pkg/mod.py"].added_lines == (2,)
    assert files["logo.bin"].binary and files["logo.bin"].status == "added"
    assert ranged.base == first

    single = await git_changes(root, head="HEAD")
    assert {f.path for f in single.files} == {"pkg/mod.py", "logo.bin"}
    root_commit = await git_changes(root, head=first)  # no parent: compared with the empty tree
    assert {f.path for f in root_commit.files} == {".gitignore", "app.py", "old name.py", "gone.py", "pkg/mod.py"}


async def test_subfolder_root_sees_only_its_files_with_relative_paths(write_project: WriteProject) -> None:
    root = _repo(write_project)
    (root / "pkg" / "mod.py").write_text("z = 2\n")
    (root / "app.py").write_text("changed\n")
    changes = await git_changes(root / "pkg")
    assert [f.path for f in changes.files] == ["mod.py"]
    assert Path(changes.repo_root) == root.resolve()


async def test_repository_without_commits(write_project: WriteProject) -> None:
    root = write_project({"a.py": "x = 1\n", "b.py": "y = 1\n"})
    git(root, "init", "-q")
    git(root, "add", "a.py")
    changes = await git_changes(root)
    assert {(f.path, f.status) for f in changes.files} == {("a.py", "added"), ("b.py", "untracked")}


async def test_clear_errors(write_project: WriteProject, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(GitError, match="not inside a git work tree"):
        await git_changes(plain)
    root = _repo(write_project)
    with pytest.raises(GitError, match="unknown revision"):
        await git_changes(root, base="no-such-branch")
    with pytest.raises(GitError, match="not a revision"):
        await git_changes(root, base="--output=/tmp/owned")


def test_parse_diff_handles_quoted_names_and_pure_additions() -> None:
    diff = "\n".join(
        [
            'diff --git "a/tab\\there.py" "b/tab\\there.py"',
            "index 1..2 100644",
            '--- "a/tab\\there.py"',
            '+++ "b/tab\\there.py"',
            "@@ -0,0 +1,2 @@",
            "+one",
            "+two",
        ]
    )
    parsed = parse_diff(diff)
    binary, hunks = parsed["tab\there.py"]
    assert not binary and hunks[0].added_lines == (1, 2)


@pytest.mark.parametrize(
    ("arguments", "name", "problem"),
    [
        ({"base": "main\0--output=/tmp/owned"}, "base", "contains a NUL byte"),
        ({"head": "HEAD\0"}, "head", "contains a NUL byte"),
        ({"base": "HEAD", "head": "a\nb"}, "head", "contains a control character"),
        ({"base": "x" * 100_000}, "base", "longer than 256 characters"),
        ({"head": ""}, "head", "is empty"),
    ],
)
async def test_revision_arguments_that_cannot_be_revisions_are_named(
    write_project: WriteProject, arguments: dict[str, str], name: str, problem: str
) -> None:
    root = _repo(write_project)
    with pytest.raises(RevisionArgumentError) as caught:
        await git_changes(root, **arguments)
    message = str(caught.value)
    assert message.startswith(f"{name} ") and message.endswith(problem), message
    assert len(message) < 320, "the echoed input is cut"
