"""What changed in a git work tree: files, hunks, and the added line numbers a reviewer anchors to.

Two modes: the working tree (staged + unstaged changes against ``HEAD``, plus untracked files that
are not ignored) or a commit range (``base`` .. ``head``). Diffs are taken with ``-U0`` so every
hunk line is a change. Every git call goes through :class:`~.git_runner.GitRunner`, so a
repository's own config never makes this read-only review run its programs (filters, fsmonitor,
external diff and textconv drivers, pagers, hooks); ``base`` and ``head`` come from the caller and
are checked before git sees them. Given the allowed roots, a repository whose git folder, work tree
or alternates lie outside them is refused, and an untracked link that points outside them is
listed but never read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from caelum_mcp.core.types import Frozen

from ..paths import resolve_root, resolves_inside, shown
from ..process import CommandResult
from ..safe_read import open_regular
from .git_runner import GIT_TIMEOUT_S, GitError, GitRunner, RepositoryOutsideRootsError
from .secrets import looks_binary

ChangeStatus = Literal["added", "modified", "deleted", "renamed", "copied", "type_changed", "untracked"]

MAX_DIFF_BYTES = 32 * 1024 * 1024
MAX_UNTRACKED_BYTES = 2_000_000
MAX_REVISION_CHARS = 256
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
__all__ = [
    "FileChange",
    "GitChanges",
    "GitError",
    "Hunk",
    "RepositoryOutsideRootsError",
    "RevisionArgumentError",
    "check_revision_argument",
    "git_changes",
    "parse_diff",
]


class RevisionArgumentError(GitError):
    """A ``base`` or ``head`` argument that cannot name a revision; the message names the argument."""


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


def _checked(run: CommandResult, what: str) -> str:
    if run.timed_out:
        raise GitError(f"git {what} did not finish within {GIT_TIMEOUT_S:g} s")
    if run.returncode != 0:
        detail = run.stderr.strip().splitlines()[-1:] or [f"exit status {run.returncode}"]
        raise GitError(f"git {what} failed: {detail[0][:300]}")
    return run.stdout


def _revision_problem(rev: str) -> str | None:
    if not rev:
        return "it is empty"
    if "\0" in rev:
        return "it contains a NUL byte"
    if any(ord(c) < 32 or ord(c) == 127 for c in rev):
        return "it contains a control character"
    if rev.startswith("-"):
        return "it starts with '-'"
    if len(rev) > MAX_REVISION_CHARS:
        return f"it is longer than {MAX_REVISION_CHARS} characters"
    return None


def check_revision_argument(name: str, rev: str | None) -> None:
    """Raise :class:`RevisionArgumentError`, naming argument ``name``, when ``rev`` cannot be a revision."""
    problem = None if rev is None else _revision_problem(rev)
    if problem is not None:
        raise RevisionArgumentError(f"{name} {shown(rev or '')} is not a revision: {problem}")


async def _revision(git: GitRunner, rev: str) -> str:
    run = await git.run("rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}")
    if run.returncode != 0:
        raise GitError(f"unknown revision {shown(rev)} in {git.cwd}")
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


def _untracked_change(root: Path, rel: str, roots: Sequence[Path]) -> FileChange:
    """An untracked file as all-added lines; a link that resolves outside ``roots`` is listed, never read."""
    path = root / rel
    if path.is_symlink() and not any(resolves_inside(path, bound) for bound in roots):
        return FileChange(path=rel, status="untracked")
    try:
        # a FIFO (or a link to one) among the untracked files would block open() forever
        with open_regular(path) as handle:
            data = handle.read(MAX_UNTRACKED_BYTES + 1)
    except OSError:
        return FileChange(path=rel, status="untracked")
    if looks_binary(data[:8192]):
        return FileChange(path=rel, status="untracked", binary=True)
    count = len(data.decode("utf-8", "replace").splitlines())
    lines = tuple(range(1, count + 1))
    hunks = (Hunk(old_start=0, old_count=0, new_start=1, new_count=count, added_lines=lines),) if count else ()
    return FileChange(path=rel, status="untracked", additions=count, hunks=hunks, added_lines=lines)


async def git_changes(
    root: str | Path, *, base: str | None = None, head: str | None = None, roots: Sequence[Path] | None = None
) -> GitChanges:
    """Changed files and hunks under ``root``.

    ``roots``: the allowed roots (resolved). The repository's git folder, work tree and alternates
    must lie inside them (else :class:`RepositoryOutsideRootsError`), and an untracked link is read
    only when it points inside them. None: the repository is not checked, and links are read only
    when they point inside ``root``.

    - no ``base``/``head``: the working tree (staged, unstaged and untracked) against ``HEAD`` (an
      empty tree in a repository without commits);
    - ``base`` (and optionally ``head``, default ``HEAD``): the changes from ``base`` to ``head``;
    - only ``head``: the changes that commit introduced (``head^`` .. ``head``).

    Raises :class:`RevisionArgumentError` when ``base`` or ``head`` cannot be a revision (an option,
    a NUL or control character), and :class:`GitError` when ``root`` is not in a git work tree or a
    revision is unknown.
    """
    check_revision_argument("base", base)
    check_revision_argument("head", head)
    folder = resolve_root(root)
    git = await GitRunner.open(folder, within=roots)
    top = await git.run("rev-parse", "--show-toplevel", max_output_bytes=64 * 1024)
    if top.returncode != 0:
        raise GitError(f"{folder} is not inside a git work tree (git: {top.stderr.strip()[:200] or 'no repository'})")
    empty_tree = _checked(await git.run("hash-object", "-t", "tree", "--stdin"), "hash-object").strip()
    untracked: list[str] = []
    if base is None and head is None:
        head_rev = await git.run("rev-parse", "--verify", "--quiet", "HEAD^{commit}")
        old = head_rev.stdout.strip() if head_rev.returncode == 0 else empty_tree
        new_args: tuple[str, ...] = (old,)
        shown_base, shown_head = (old if old == empty_tree else "HEAD"), WORKTREE
        listing = _checked(
            await git.run("ls-files", "-z", "--others", "--exclude-standard", max_output_bytes=MAX_DIFF_BYTES),
            "ls-files",
        )
        untracked = [p for p in listing.split("\0") if p]
    else:
        new = await _revision(git, head or "HEAD")
        if base is not None:
            old = await _revision(git, base)
        else:
            parent = await git.run("rev-parse", "--verify", "--quiet", f"{new}^1")
            old = parent.stdout.strip() if parent.returncode == 0 else empty_tree
        new_args = (old, new)
        shown_base, shown_head = old, new
    # The runner adds --no-ext-diff, --no-textconv and --ignore-submodules=all to every diff.
    common = ("--relative", "--no-color", "--find-renames")
    status_run = await git.run("diff", "--name-status", "-z", *common, *new_args, "--", max_output_bytes=MAX_DIFF_BYTES)
    status_out = _checked(status_run, "diff")
    patch = await git.run("diff", "-U0", *common, *new_args, "--", max_output_bytes=MAX_DIFF_BYTES)
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
    bounds = tuple(roots) if roots is not None else (folder,)
    changes += [_untracked_change(folder, rel, bounds) for rel in untracked]
    return GitChanges(
        root=str(folder),
        repo_root=top.stdout.strip(),
        base=shown_base,
        head=shown_head,
        files=tuple(sorted(changes, key=lambda c: c.path)),
        truncated=patch.truncated or status_run.truncated,
    )
