"""Which files belong to a project: git's view when there is one, else a walk honouring .gitignore.

Every analyser is handed an explicit file list from here, so that all of them agree on what "the
project" is and none of them wanders into ``.venv`` or ``node_modules`` (bandit, radon and vulture
do not read .gitignore themselves).
"""

from __future__ import annotations

import os
import re
import stat
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio

from caelum_mcp.core.types import Frozen

from ..paths import relative_posix, resolve_within, resolves_inside
from ..process import CommandResult
from ..safe_read import is_regular_file, read_text
from .git_runner import GitError, run_git
from .git_runner import git_env as git_env  # where tools.code.patches imports it from

# Skipped even when git tracks them: they are environments, caches or other repositories' metadata.
ALWAYS_SKIPPED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".venv",
        "node_modules",
        "__pycache__",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        ".tox",
        ".nox",
    }
)
LISTING_LIMIT = 200_000
GIT_TIMEOUT_S = 30.0
MAX_GITIGNORE_BYTES = 1 << 20
NOT_REGULAR = "not a regular file (FIFO, socket or device): never read"


class ProjectListing(Frozen):
    """The project's files (POSIX, relative to the root, sorted) and why others were left out."""

    files: tuple[str, ...]
    source: Literal["git", "walk"]
    excluded: dict[str, int]
    truncated: bool = False


@dataclass(frozen=True)
class _IgnorePattern:
    base: str
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool


def _glob_to_regex(glob: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        elif glob[i] == "[" and "]" in glob[i + 1 :]:
            end = glob.index("]", i + 1)
            body = glob[i + 1 : end].replace("\\", "\\\\")
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return "".join(out)


def parse_gitignore(text: str, base: str = "") -> list[_IgnorePattern]:
    """The simple .gitignore subset: globs, ``**``, anchoring by ``/``, trailing ``/``, ``!`` negation."""
    patterns: list[_IgnorePattern] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if negate:
            line = line[1:]
        line = line.removeprefix("\\")
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        anchored = "/" in line
        body = _glob_to_regex(line.lstrip("/"))
        regex = re.compile(("^" if anchored else "^(?:.*/)?") + body + "$")
        patterns.append(_IgnorePattern(base=base, regex=regex, negate=negate, dir_only=dir_only))
    return patterns


def is_ignored(rel_path: str, is_dir: bool, patterns: Sequence[_IgnorePattern]) -> bool:
    """Git semantics for one path: the last matching pattern decides."""
    ignored = False
    for pattern in patterns:
        if pattern.dir_only and not is_dir:
            continue
        if pattern.base:
            if not rel_path.startswith(pattern.base + "/"):
                continue
            candidate = rel_path[len(pattern.base) + 1 :]
        else:
            candidate = rel_path
        if pattern.regex.match(candidate):
            ignored = not pattern.negate
    return ignored


def _accept(root: Path, rel: str, excluded: Counter[str]) -> bool:
    parts = rel.split("/")
    if any(part in ALWAYS_SKIPPED_DIRS for part in parts[:-1]):
        excluded["environment or cache directory"] += 1
        return False
    path = root / rel
    if path.is_symlink() and resolves_inside(path, root) is not True:
        excluded["symlink leading outside the project"] += 1
        return False
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        excluded["missing or unreadable"] += 1
        return False
    if not stat.S_ISREG(mode):
        # a FIFO would block whoever opens it; a device or socket is no source file either
        excluded[NOT_REGULAR] += 1
        return False
    return True


def _walk(root: Path) -> ProjectListing:
    excluded: Counter[str] = Counter()
    files: list[str] = []
    patterns: list[_IgnorePattern] = []
    truncated = False
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        current = Path(dirpath)
        rel_dir = "" if current == root else current.relative_to(root).as_posix()
        gitignore = current / ".gitignore"
        if gitignore.exists():
            try:
                patterns = [*patterns, *parse_gitignore(read_text(gitignore, MAX_GITIGNORE_BYTES), rel_dir)]
            except OSError:
                excluded["unreadable .gitignore"] += 1
        kept: list[str] = []
        for name in sorted(dirnames):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if name in ALWAYS_SKIPPED_DIRS or (current / name / "pyvenv.cfg").exists():
                excluded["environment or cache directory"] += 1
            elif (current / name).is_symlink():
                excluded["symlinked directory"] += 1
            elif is_ignored(rel, True, patterns):
                excluded["ignored by .gitignore"] += 1
            else:
                kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if is_ignored(rel, False, patterns):
                excluded["ignored by .gitignore"] += 1
            elif _accept(root, rel, excluded):
                files.append(rel)
        if len(files) >= LISTING_LIMIT:
            truncated = True
            break
    return ProjectListing(files=tuple(sorted(files)), source="walk", excluded=dict(excluded), truncated=truncated)


async def list_project_files(root: Path) -> ProjectListing:
    """All files of the project under ``root`` (already resolved), honouring .gitignore.

    Inside a git work tree this is ``git ls-files --cached --others --exclude-standard`` (tracked
    plus untracked-but-not-ignored files); otherwise, or when git is missing, a directory walk with
    a simple .gitignore parser. Environments and caches are always skipped.
    """
    try:
        # Through the runner: a repository's core.fsmonitor would otherwise run on every listing.
        result = await run_git(
            root,
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
            timeout_s=GIT_TIMEOUT_S,
            max_output_bytes=64 * 1024 * 1024,
        )
    except GitError:
        result = None
    if result is None or result.returncode != 0 or result.truncated or await _ignored_by_outer_repo(root, result):
        return await anyio.to_thread.run_sync(_walk, root)

    def accept_all() -> ProjectListing:
        excluded: Counter[str] = Counter()
        names = list(dict.fromkeys(rel for rel in result.stdout.split("\0") if rel))
        truncated = len(names) > LISTING_LIMIT
        files = sorted(rel for rel in names[:LISTING_LIMIT] if _accept(root, rel, excluded))
        return ProjectListing(files=tuple(files), source="git", excluded=dict(excluded), truncated=truncated)

    return await anyio.to_thread.run_sync(accept_all)


async def _ignored_by_outer_repo(root: Path, listed: CommandResult) -> bool:
    """Whether git listed nothing because ``root`` itself is ignored by the repository around it
    (a vendored library, a folder under ``.venv``): the caller named it, so it is walked instead."""
    if listed.stdout.strip("\0"):
        return False
    try:
        check = await run_git(root, "check-ignore", "-q", ".", timeout_s=GIT_TIMEOUT_S)
    except GitError:
        return False
    return check.returncode == 0


async def select_files(root: Path, files: Iterable[str | Path] | None, suffixes: Iterable[str]) -> list[str]:
    """The project files with one of ``suffixes`` that a tool should analyse.

    ``files=None`` means the whole project. Otherwise each entry (file or directory) must resolve
    inside ``root`` (else :class:`~caelum_mcp.core.errors.PathNotAllowedError`); directories expand to
    the project files under them. Anything but a regular file (a FIFO, a socket) is left out.
    """
    wanted = tuple(s.lower() for s in suffixes)
    if files is None:
        listing = await list_project_files(root)
        return [f for f in listing.files if f.lower().endswith(wanted)]
    chosen: list[str] = []
    listing_files: tuple[str, ...] | None = None
    for entry in files:
        resolved = resolve_within(root, entry)
        rel = relative_posix(root, resolved)
        if resolved.is_dir():
            if listing_files is None:
                listing_files = (await list_project_files(root)).files
            prefix = "" if resolved == root else rel + "/"
            chosen.extend(f for f in listing_files if f.startswith(prefix) and f.lower().endswith(wanted))
        elif rel.lower().endswith(wanted) and is_regular_file(resolved):
            # a FIFO handed to an analyser would hold it until its time limit
            chosen.append(rel)
    return list(dict.fromkeys(chosen))
