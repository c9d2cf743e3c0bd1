"""What changed in a git work tree: files, hunks, and the added line numbers a reviewer anchors to.

Two modes: the working tree (staged + unstaged changes against ``HEAD``, plus untracked files that
are not ignored) or a commit range (``base`` .. ``head``). Diffs are taken with ``-U0`` so every
hunk line is a change, with external diff drivers, text conversion and fsmonitor hooks switched
off: a repository's own config must not make a read-only review run its programs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from caelum_mcp.errors import CaelumError
from caelum_mcp.types import Frozen

from ..paths import resolve_root
from ..process import CommandResult, run_command
from .files import git_env
from .secrets import looks_binary

ChangeStatus = Literal["added", "modified", "deleted", "renamed", "copied", "type_changed", "untracked"]

GIT_TIMEOUT_S = 60.0
MAX_DIFF_BYTES = 32 * 1024 * 1024
MAX_UNTRACKED_BYTES = 2_000_000
WORKTREE = "WORKTREE"

_HUNK = re.compile(r"^@@ -(?P<os>\d+)(?:,(?P<oc>\d+))? \+(?P<ns>\d+)(?:,(?P<nc>\d+))? @@")
_STATUS: dict[str, ChangeStatus] = {
    "A": "added",
    "M": "modified",
    "D": "deleted",
    "R": "renamed",
    "C": "copied",
    "T": "type_changed",
}
_SAFE_CONFIG = ("-c", "core.quotepath=off", "-c", "core.fsmonitor=false", "-c", "diff.noprefix=false")


class GitError(CaelumError):
    """A git operation failed: not a repository, unknown revision, or git missing.

    Defined here until the shared error tree in ``caelum_mcp.errors`` has a home for tool errors.
    """


class Hunk(Frozen):
    """One ``@@`` hunk; ``added_lines`` are line numbers in the new file."""

    old_start: int
    old_count: int
    new_start: int
    new_count: int
    added_lines: tuple[int, ...]


class FileChange(Frozen):
    path: str
    old_path: str | None = None
    status: ChangeStatus
    binary: bool = False
    additions: int = 0
    deletions: int = 0
    hunks: tuple[Hunk, ...] = ()
    added_lines: tuple[int, ...] = ()


class GitChanges(Frozen):
    """Changes under ``root`` (paths relative to it). ``head`` is ``"WORKTREE"`` for the working tree."""

    root: str
    repo_root: str
    base: str
    head: str
    files: tuple[FileChange, ...]
    truncated: bool = False


async def _git(root: Path, *args: str, max_bytes: int = MAX_DIFF_BYTES) -> CommandResult:
    try:
        return await run_command(
            ["git", *_SAFE_CONFIG, *args], cwd=root, timeout_s=GIT_TIMEOUT_S, max_output_bytes=max_bytes, env=git_env()
        )
    except OSError as exc:
        raise GitError(f"git could not be started: {exc.strerror or exc}") from exc


def _checked(run: CommandResult, what: str) -> str:
    if run.timed_out:
        raise GitError(f"git {what} did not finish within {GIT_TIMEOUT_S:g} s")
    if run.returncode != 0:
        detail = run.stderr.strip().splitlines()[-1:] or [f"exit status {run.returncode}"]
        raise GitError(f"git {what} failed: {detail[0][:300]}")
    return run.stdout


async def _revision(root: Path, rev: str) -> str:
    if not rev or rev.startswith("-"):
        raise GitError(f"{rev!r} is not a revision")
    run = await _git(root, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}")
    if run.returncode != 0:
        raise GitError(f"unknown revision {rev!r} in {root}")
    return run.stdout.strip()


def parse_diff(text: str) -> dict[str, tuple[bool, list[Hunk]]]:
    """Per new-side path (old path for deletions): binary flag and hunks of a ``-U0`` unified diff."""
    files: dict[str, tuple[bool, list[Hunk]]] = {}
    current: str | None = None
    old_name: str | None = None
    hunk: dict[str, int] | None = None
    added: list[int] = []
    next_line = 0

    def flush() -> None:
        nonlocal hunk, added
        if current is not None and hunk is not None:
            files[current][1].append(Hunk(**hunk, added_lines=tuple(added)))
        hunk, added = None, []

    for line in text.split("\n"):
        if line.startswith("diff --git "):
            flush()
            current, old_name = None, None
        elif hunk is None and line.startswith("--- "):
            old_name = _strip_prefix(line[4:], "a/")
        elif hunk is None and line.startswith("+++ "):
            new_name = _strip_prefix(line[4:], "b/")
            current = old_name if new_name is None else new_name
            if current is not None:
                files.setdefault(current, (False, []))
        elif line.startswith("rename to ") and hunk is None:
            current = _unquote(line[len("rename to ") :])
            files.setdefault(current, (False, []))
        elif line.startswith("Binary files ") and line.endswith(" differ"):
            match = re.match(r"^Binary files (?:a/)?(.+?) and (?:b/)?(.+?) differ$", line)
            if match:
                name = match.group(2) if match.group(2) != "/dev/null" else match.group(1)
                files[_unquote(name)] = (True, [])
        elif (match := _HUNK.match(line)) is not None:
            flush()
            hunk = {
                "old_start": int(match.group("os")),
                "old_count": int(match.group("oc") or 1),
                "new_start": int(match.group("ns")),
                "new_count": int(match.group("nc") or 1),
            }
            next_line = hunk["new_start"]
        elif hunk is not None and line.startswith("+"):
            added.append(next_line)
            next_line += 1
    flush()
    return files


def _unquote(name: str) -> str:
    # git C-quotes names with control characters or quotes even with core.quotepath=off.
    if len(name) >= 2 and name[0] == name[-1] == '"':
        escaped = name[1:-1].encode("utf-8").decode("unicode_escape")
        return escaped.encode("latin-1").decode("utf-8", "replace")
    return name


def _strip_prefix(name: str, prefix: str) -> str | None:
    name = _unquote(name.rstrip("\t"))
    if name == "/dev/null":
        return None
    return name.removeprefix(prefix)


def _name_status(text: str) -> list[tuple[ChangeStatus, str, str | None]]:
    """``--name-status -z`` output: (status, path, old path for renames/copies)."""
    fields = text.split("\0")
    entries: list[tuple[ChangeStatus, str, str | None]] = []
    i = 0
    while i < len(fields) and fields[i]:
        code = fields[i][0]
        if code in ("R", "C"):
            entries.append((_STATUS[code], fields[i + 2], fields[i + 1]))
            i += 3
        else:
            entries.append((_STATUS.get(code, "modified"), fields[i + 1], None))
            i += 2
    return entries


def _untracked_change(root: Path, rel: str) -> FileChange:
    path = root / rel
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_UNTRACKED_BYTES + 1)
    except OSError:
        return FileChange(path=rel, status="untracked")
    if looks_binary(data[:8192]):
        return FileChange(path=rel, status="untracked", binary=True)
    count = len(data.decode("utf-8", "replace").splitlines())
    lines = tuple(range(1, count + 1))
    hunks = (Hunk(old_start=0, old_count=0, new_start=1, new_count=count, added_lines=lines),) if count else ()
    return FileChange(path=rel, status="untracked", additions=count, hunks=hunks, added_lines=lines)


async def git_changes(root: str | Path, *, base: str | None = None, head: str | None = None) -> GitChanges:
    """Changed files and hunks under ``root``.

    - no ``base``/``head``: the working tree (staged, unstaged and untracked) against ``HEAD`` (an
      empty tree in a repository without commits);
    - ``base`` (and optionally ``head``, default ``HEAD``): the changes from ``base`` to ``head``;
    - only ``head``: the changes that commit introduced (``head^`` .. ``head``).

    Raises :class:`GitError` when ``root`` is not in a git work tree or a revision is unknown.
    """
    folder = resolve_root(root)
    top = await _git(folder, "rev-parse", "--show-toplevel", max_bytes=64 * 1024)
    if top.returncode != 0:
        raise GitError(f"{folder} is not inside a git work tree (git: {top.stderr.strip()[:200] or 'no repository'})")
    empty_tree = _checked(await _git(folder, "hash-object", "-t", "tree", "/dev/null"), "hash-object").strip()
    untracked: list[str] = []
    if base is None and head is None:
        head_rev = await _git(folder, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
        old = head_rev.stdout.strip() if head_rev.returncode == 0 else empty_tree
        new_args: tuple[str, ...] = (old,)
        shown_base, shown_head = (old if old == empty_tree else "HEAD"), WORKTREE
        listing = _checked(await _git(folder, "ls-files", "-z", "--others", "--exclude-standard"), "ls-files")
        untracked = [p for p in listing.split("\0") if p]
    else:
        new = await _revision(folder, head or "HEAD")
        if base is not None:
            old = await _revision(folder, base)
        else:
            parent = await _git(folder, "rev-parse", "--verify", "--quiet", f"{new}^1")
            old = parent.stdout.strip() if parent.returncode == 0 else empty_tree
        new_args = (old, new)
        shown_base, shown_head = old, new
    common = ("--relative", "--no-ext-diff", "--no-textconv", "--no-color", "--find-renames")
    status_run = await _git(folder, "diff", "--name-status", "-z", *common, *new_args, "--")
    status_out = _checked(status_run, "diff")
    patch = await _git(folder, "diff", "-U0", *common, *new_args, "--")
    parsed = parse_diff(_checked(patch, "diff"))
    changes: list[FileChange] = []
    for status, path, old_path in _name_status(status_out):
        binary, hunks = parsed.get(path, (False, []))
        added = tuple(n for h in hunks for n in h.added_lines)
        changes.append(
            FileChange(
                path=path,
                old_path=old_path,
                status=status,
                binary=binary,
                additions=len(added),
                deletions=sum(h.old_count for h in hunks),
                hunks=tuple(hunks),
                added_lines=added,
            )
        )
    changes += [_untracked_change(folder, rel) for rel in untracked]
    return GitChanges(
        root=str(folder),
        repo_root=top.stdout.strip(),
        base=shown_base,
        head=shown_head,
        files=tuple(sorted(changes, key=lambda c: c.path)),
        truncated=patch.truncated or status_run.truncated,
    )
