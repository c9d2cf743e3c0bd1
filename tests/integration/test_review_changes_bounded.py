"""review_changes stays bounded on a huge change, says what it left out, and names a bad revision argument."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from caelum_mcp.engine.budget import result_size
from caelum_mcp.engine.config import RESULT_TOKENS_CAP
from caelum_mcp.supervisors.development.changes import (
    DIFF_EXCERPT_CHARS,
    EXCERPT_FILE_CHARS,
    EXCERPT_LINE_CHARS,
    diff_excerpt,
)
from caelum_mcp.tools.code.git import FileChange, GitChanges

from .test_development import _git, call, session, write

FILES = 150
LINES = 200


def _text_file(i: int, version: str) -> str:
    # Every other line changes between versions: about 100 one-line hunks per file.
    return "".join(
        f"{i:03d}-{n:04d} {version if n % 2 else 'same'} {'lorem ipsum dolor sit amet ' * 2}\n" for n in range(LINES)
    )


def _big_change(root: Path) -> tuple[Path, int]:
    """A repository whose working tree differs from HEAD by a diff of the returned size in bytes."""
    files = {f"data/f{i:03d}.txt": _text_file(i, "old") for i in range(FILES)}
    files["code.py"] = "def f():\n    return 1\n"
    write(root, files)
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "init")
    write(root, {f"data/f{i:03d}.txt": _text_file(i, "new") for i in range(FILES)})
    # 80 findings on added lines (bandit B307), more than a result lists.
    write(root, {"code.py": "def f():\n    return 1\n" + "".join(f"v{n} = eval(input())\n" for n in range(80))})
    diff = subprocess.run(["git", "diff", "HEAD"], cwd=root, capture_output=True, check=True, timeout=60).stdout
    return root, len(diff)


@pytest.mark.slow  # over a second: kept out of make test-fast
async def test_a_two_megabyte_diff_gives_a_bounded_result_with_counts(tmp_path: Path) -> None:
    repo, diff_bytes = _big_change(tmp_path / "work" / "big")
    assert diff_bytes > 2_000_000, diff_bytes

    # At the largest budget the runtime allows, review_changes' own caps must keep it inside.
    async with session(tmp_path, server={"result_tokens": RESULT_TOKENS_CAP}) as client:
        result = await call(client, "review_changes", {"project": str(repo)})
    assert not result.is_error, result.content
    out = result.structured_content
    assert result_size(out) <= RESULT_TOKENS_CAP
    assert "omitted" not in out, "review_changes bounds itself; the runtime had nothing to cut"
    left_out = out["left_out"]
    assert len(out["files"]) + left_out["files"] == FILES + 1 and left_out["files"] > 0
    assert left_out["hunks"] > 0 and all(len(f["hunks"]) <= 5 for f in out["files"])
    assert all(f["hunk_count"] >= len(f["hunks"]) for f in out["files"])
    assert left_out["findings"] > 0 and len(out["findings"]) + left_out["findings"] >= 80
    assert f"{FILES + 1} files changed" in out["summary"]

    # At the default budget the runtime cuts further, and says so.
    async with session(tmp_path) as client:
        result = await call(client, "review_changes", {"project": str(repo)})
    assert not result.is_error, result.content
    assert result_size(result.structured_content) <= RESULT_TOKENS_CAP


async def test_a_nul_byte_in_a_revision_is_a_clear_tool_error(tmp_path: Path) -> None:
    repo = write(tmp_path / "work" / "r", {"a.py": "x = 1\n"})
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "init")
    async with session(tmp_path) as client:
        for argument in ("base", "head"):
            result = await call(client, "review_changes", {"project": str(repo), argument: "HEAD\0" + "x" * 10_000})
            text = " ".join(getattr(c, "text", "") for c in result.content)
            assert result.is_error and argument in text and "NUL byte" in text, text
            assert len(text) < 500, text


def test_the_llm_excerpt_is_capped_per_line_per_file_and_in_total(tmp_path: Path) -> None:
    root = tmp_path / "p"
    lines = 300
    write(root, {f"f{i}.txt": "".join(f"line {n} {'x' * 50}\n" for n in range(lines)) for i in range(10)})
    write(root, {"long.txt": "y" * 5000 + "\n"})
    files = [
        FileChange(path=f"f{i}.txt", status="modified", added_lines=tuple(range(1, lines + 1)), additions=lines)
        for i in range(10)
    ]
    files.append(FileChange(path="long.txt", status="added", added_lines=(1,), additions=1))
    changes = GitChanges(root=str(root), repo_root=str(root), base="HEAD", head="WORKTREE", files=tuple(files))

    excerpt = diff_excerpt(root, changes)
    assert len(excerpt.text) <= DIFF_EXCERPT_CHARS
    blocks = excerpt.text.split("\n\n")
    assert all(len(block) <= EXCERPT_FILE_CHARS for block in blocks)
    assert len(blocks) >= 3, "one big file does not crowd out the next ones"
    shown = excerpt.text.count("\n+")
    assert excerpt.lines_left_out == 10 * lines + 1 - shown
    assert excerpt.files_left_out == 11 - len(blocks)
    assert all(len(line) <= EXCERPT_LINE_CHARS + 40 for line in excerpt.text.splitlines())
