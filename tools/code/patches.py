"""Unified-diff patches for ``improve``: build them, and prove in a throwaway copy that they work.

A patch comes from ruff's own safe fixes (:func:`ruff_fix_patches`) or from an LLM edit turned into
a diff (:func:`edit_patch`). :func:`check_patch` never touches the user's files: it copies the
project's files (the same listing every tool uses) into a temporary folder, applies the diff there
with ``git apply`` (which works outside a repository, refuses paths that leave the tree, and applies
all-or-nothing), lints the patched file before and after, and optionally runs the tests. The
temporary folder is removed on every exit path, cancellation included.
"""

from __future__ import annotations

import ast
import difflib
import os
import re
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path, PurePosixPath
from typing import Literal

import anyio

from caelum_mcp.core.errors import CaelumError, PathNotAllowedError
from caelum_mcp.core.types import Frozen

from ..paths import relative_posix, resolve_root, resolve_within
from .analysers import ANALYSER_TIMEOUT_S, first_line, run_python_analyser
from .files import list_project_files, select_files
from .git_runner import GitError, run_git
from .lint import LintFinding, lint
from .models import AnalyzerError
from .tests_runner import run_tests as run_project_tests

PYTHON_SUFFIXES = (".py", ".pyi")  # notebooks are left out: ruff diffs their cells, not the file
MAX_COPY_BYTES = 200 * 1024 * 1024
GIT_APPLY_TIMEOUT_S = 30.0
_HUNK = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")


class RuffFixError(CaelumError):
    """ruff could not produce its fixes (not installed, timed out, bad configuration)."""


class Patch(Frozen):
    """A unified diff (git-style ``a/``/``b/`` headers) for one file, relative POSIX ``file``."""

    file: str
    diff: str
    source: Literal["ruff-fix", "llm"]
    finding_rules: tuple[str, ...] = ()
    description: str = ""


class PatchCheck(Frozen):
    """What applying a patch in a copy of the project showed.

    ``new_findings``/``resolved_findings`` compare ruff's findings on the patched file before and
    after by (rule, message), read as ``"F821 at x.py:3: Undefined name `y`"``. ``lint_clean`` means
    no new finding and the file still parses; files ruff does not check (not Python) count as clean.
    ``tests_passed`` is None when the tests were not run or collected nothing.
    """

    applies: bool
    lint_clean: bool
    new_findings: tuple[str, ...]
    resolved_findings: tuple[str, ...]
    tests_ran: bool = False
    tests_passed: bool | None = None
    error: str | None = None


class CheckedPatch(Frozen):
    patch: Patch
    check: PatchCheck


class _CopyError(Exception):
    """The project could not be copied for checking; becomes a ``PatchCheck.error``."""


# --- building patches ---------------------------------------------------------------------------


def _relative_file(root: Path, file: str) -> str:
    """``file`` as a clean relative POSIX path inside ``root`` (need not exist yet)."""
    pure = PurePosixPath(file.replace("\\", "/"))
    if not file.strip() or pure.is_absolute() or ".." in pure.parts or pure.as_posix() == ".":
        raise PathNotAllowedError(f"patch path {file!r} must be a relative path to a file inside the project")
    resolve_within(root, pure.as_posix(), must_exist=False)  # refuses links that lead outside
    return pure.as_posix()


def _split_lines(text: str) -> list[str]:
    """Lines with their ``\\n`` kept; only ``\\n`` ends a line, as for git (``\\r`` stays content)."""
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _git_headers(rel: str) -> str:
    return f"diff --git a/{rel} b/{rel}\n--- a/{rel}\n+++ b/{rel}\n"


def _mark_missing_newlines(diff_lines: Iterable[str]) -> str:
    # difflib leaves a last line without "\n" as is, which would glue it to the next diff line.
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in diff_lines)


def edit_patch(
    root: Path,
    file: str,
    start_line: int,
    end_line: int,
    replacement: str,
    *,
    description: str = "",
    rules: Sequence[str] = (),
    source: Literal["ruff-fix", "llm"] = "llm",
) -> Patch:
    """A patch replacing lines ``start_line..end_line`` (1-based, inclusive) of ``file``.

    ``replacement`` may span several lines, or be empty to delete the lines; ``end_line =
    start_line - 1`` inserts before ``start_line`` (``start_line`` one past the end appends). The
    file's CRLF line endings are kept. Raises :class:`PathNotAllowedError` for a path outside the
    project and ``ValueError`` for lines outside the file, a non-UTF-8 file, or an edit that
    changes nothing.
    """
    base = resolve_root(root)
    rel = _relative_file(base, file)
    path = resolve_within(base, rel)
    if not path.is_file():
        raise PathNotAllowedError(f"{rel!r} is not a regular file inside the project")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{rel} is not UTF-8 text; it cannot be edited as lines") from exc
    old = _split_lines(text)
    count = len(old)
    if not (1 <= start_line <= count + 1 and start_line - 1 <= end_line <= count):
        raise ValueError(
            f"lines {start_line}-{end_line} are outside {rel}, which has {count} lines "
            "(use 1-based inclusive lines; end_line = start_line - 1 inserts)"
        )
    crlf = sum(line.endswith("\r\n") for line in old) * 2 > count
    new_text = replacement.replace("\r\n", "\n")
    if crlf:
        new_text = new_text.replace("\n", "\r\n")
    eol = "\r\n" if crlf else "\n"
    # Replacing a last line that had no newline keeps it that way; anything else ends its lines.
    keeps_missing_newline = start_line <= count == end_line and not old[-1].endswith("\n")
    if new_text and not new_text.endswith("\n") and not keeps_missing_newline:
        new_text += eol
    new = [*old[: start_line - 1], *_split_lines(new_text), *old[end_line:]]
    # Appending after a last line without a newline must not glue the two lines together.
    new = [line if line.endswith("\n") or i == len(new) - 1 else line + eol for i, line in enumerate(new)]
    if new == old:
        raise ValueError(f"the replacement leaves lines {start_line}-{end_line} of {rel} unchanged")
    body = list(difflib.unified_diff(old, new, n=3))[2:]  # drop difflib's own ---/+++ lines
    return Patch(
        file=rel,
        diff=_git_headers(rel) + _mark_missing_newlines(body),
        source=source,
        finding_rules=tuple(dict.fromkeys(rules)),
        description=description,
    )


def split_file_diffs(text: str) -> list[tuple[str, str]]:
    """(path, hunks) per file of a plain unified diff such as ``ruff --diff`` prints.

    Hunks are consumed by their line counts, so a removed line that itself starts with ``-- `` is
    not taken for the next file's header; anything between files (blank lines, ruff's summary) is
    skipped.
    """
    lines = text.split("\n")
    result: list[tuple[str, str]] = []
    i = 0
    while i < len(lines) - 1:
        if not (lines[i].startswith("--- ") and lines[i + 1].startswith("+++ ")):
            i += 1
            continue
        path = lines[i + 1][4:].split("\t", 1)[0]
        i += 2
        hunks: list[str] = []
        while i < len(lines) and (match := _HUNK.match(lines[i])):
            old_left = int(match.group(1) or "1")
            new_left = int(match.group(2) or "1")
            hunks.append(lines[i] + "\n")
            i += 1
            while i < len(lines) and (old_left > 0 or new_left > 0 or lines[i].startswith("\\")):
                line = lines[i]
                kind = line[:1]
                if kind == "-":
                    old_left -= 1
                elif kind == "+":
                    new_left -= 1
                elif kind in (" ", ""):
                    old_left -= 1
                    new_left -= 1
                hunks.append(line + "\n")
                i += 1
        if hunks:
            result.append((path, "".join(hunks)))
    return result


async def ruff_fix_patches(
    root: Path, files: Sequence[str] | None = None, *, timeout_s: float = ANALYSER_TIMEOUT_S
) -> list[Patch]:
    """One patch per file from ruff's safe fixes, under the project's ruff configuration.

    ``files=None`` means every Python file of the project. ``finding_rules`` lists the rules of the
    file's findings that have a safe fix (unsafe fixes are never applied here). Raises
    :class:`RuffFixError` when ruff cannot run and :class:`PathNotAllowedError` for paths outside
    the project.
    """
    base = resolve_root(root)
    targets = await select_files(base, files, PYTHON_SUFFIXES)
    if not targets:
        return []
    args = ["check", "--fix", "--diff", "--no-unsafe-fixes", "--exit-zero", "--no-cache", "--force-exclude"]
    run = await run_python_analyser("ruff", "ruff", [*args, "--", *targets], cwd=base, timeout_s=timeout_s)
    if isinstance(run, AnalyzerError):
        raise RuffFixError(f"ruff could not compute fixes: {run.message}")
    if run.returncode != 0:  # with --exit-zero only a failure of ruff itself is non-zero
        raise RuffFixError(f"ruff could not compute fixes: {first_line(run.stderr) or f'exit {run.returncode}'}")
    per_file = split_file_diffs(run.stdout)
    if not per_file:
        return []
    linted = await lint(base, [relative_posix(base, path) for path, _ in per_file], timeout_s=timeout_s)
    if linted.errors:
        raise RuffFixError(f"ruff could not list its findings: {linted.errors[0].message}")
    patches: list[Patch] = []
    for path, hunks in per_file:
        rel = relative_posix(base, path)
        fixed = [f for f in linted.findings if f.file == rel and f.fix_available and f.fix_applicability == "safe"]
        rules = tuple(sorted({f.rule for f in fixed}))
        patches.append(
            Patch(
                file=rel,
                diff=_git_headers(rel) + hunks,
                source="ruff-fix",
                finding_rules=rules,
                description=f"ruff safe fixes for {', '.join(rules) or 'style'} in {rel}",
            )
        )
    return patches


# --- checking patches in a copy -----------------------------------------------------------------


def _not_applied(reason: str) -> PatchCheck:
    return PatchCheck(applies=False, lint_clean=False, new_findings=(), resolved_findings=(), error=reason)


def _copy_files(root: Path, dest: Path, files: Sequence[str]) -> None:
    """Copy ``files`` (content, following in-project links) from ``root`` to ``dest``, within the cap."""
    chosen = [rel for rel in dict.fromkeys(files) if ".git" not in PurePosixPath(rel).parts]
    total = 0
    for rel in chosen:
        try:
            total += (root / rel).stat().st_size
        except OSError:
            continue
        if total > MAX_COPY_BYTES:
            raise _CopyError(
                f"the project holds more than {MAX_COPY_BYTES // (1024 * 1024)} MB of files; "
                "too large to copy for checking a patch"
            )
    for rel in chosen:
        target = dest / rel
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, target)
        except OSError:
            continue  # an unreadable file is left out; a patch to it then fails to apply, saying so


def _has_ruff_config(folder: Path) -> Path | None:
    """The ruff configuration file ruff would take from ``folder`` itself, if any."""
    for name in ("ruff.toml", ".ruff.toml"):
        if (folder / name).is_file():
            return folder / name
    pyproject = folder / "pyproject.toml"
    try:
        if pyproject.is_file() and "[tool.ruff" in pyproject.read_text("utf-8", "replace"):
            return pyproject
    except OSError:
        return None
    return None


def _inherited_ruff_config(root: Path) -> Path | None:
    """A ruff config above ``root`` that ruff applies to it (a subproject of a monorepo), if any.

    The copy lives elsewhere, so without this ruff would lint it with its defaults instead.
    """
    if _has_ruff_config(root):
        return None
    for folder in root.parents:
        found = _has_ruff_config(folder)
        if found:
            return found
    return None


@asynccontextmanager
async def _project_copy(root: Path, extra: Iterable[str], *, link_venv: bool) -> AsyncIterator[Path]:
    """A temporary copy of the project's listed files (plus ``extra`` existing files), always removed.

    With ``link_venv`` the project's ``.venv`` is linked (not copied) into the copy, so its tests run
    on the interpreter and dependencies they would use in place.
    """
    listing = await list_project_files(root)
    if listing.truncated:
        raise _CopyError("the project has too many files to copy for checking a patch")
    files = [*listing.files, *(rel for rel in extra if (root / rel).is_file())]
    tmp = Path(await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="caelum-patch-")))
    try:
        # Same folder name as the original: some tests and configs look at it.
        copy = tmp / (root.name or "project")
        copy.mkdir()
        await anyio.to_thread.run_sync(_copy_files, root, copy, files)
        inherited = _inherited_ruff_config(root)
        if inherited is not None:
            shutil.copy2(inherited, tmp / inherited.name)
        venv = root / ".venv"
        if link_venv and venv.is_dir() and not venv.is_symlink():
            (copy / ".venv").symlink_to(venv, target_is_directory=True)
        yield copy
    finally:
        # Shielded so that a cancelled check still removes its copy; rmtree unlinks the .venv link
        # without following it.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(tmp, ignore_errors=True))


def _numstat_paths(output: str) -> set[str]:
    """Paths from ``git apply --numstat -z`` (a rename lists its old and new path after an empty one)."""
    paths: set[str] = set()
    tokens = output.split("\0")
    i = 0
    while i < len(tokens):
        fields = tokens[i].split("\t", 2)
        if len(fields) == 3:
            if fields[2]:
                paths.add(fields[2])
            else:
                paths.update(t for t in tokens[i + 1 : i + 3] if t)
                i += 2
        i += 1
    return paths


def _git_failure(stderr: str, default: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return "; ".join(lines[:4])[:500] if lines else default


async def _lint_file(copy: Path, rel: str, timeout_s: float) -> tuple[tuple[LintFinding, ...], str | None]:
    result = await lint(copy, [rel], timeout_s=timeout_s)
    return result.findings, (result.errors[0].message if result.errors else None)


def _parse_error(path: Path, rel: str) -> str | None:
    """Why ``path`` is not valid Python to this interpreter, or None when it parses (or is absent)."""
    try:
        source = path.read_bytes()
    except OSError:
        return None
    # Invalid escape sequences warn at parse time; under warnings-as-errors they would read as syntax errors.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ast.parse(source, filename=rel)
        except SyntaxError as exc:
            return f"invalid-syntax at {rel}:{exc.lineno or 1}: {exc.msg}"
        except ValueError as exc:  # e.g. null bytes
            return f"invalid-syntax at {rel}:1: {exc}"
    return None


def _unmatched(findings: Sequence[LintFinding], others: Sequence[LintFinding]) -> list[str]:
    """``findings`` not matched one-for-one by (rule, message) in ``others``: line shifts do not count."""
    left = Counter((f.rule, f.message) for f in others)
    out: list[str] = []
    for finding in sorted(findings, key=lambda f: (f.line, f.rule)):
        key = (finding.rule, finding.message)
        if left[key] > 0:
            left[key] -= 1
        else:
            out.append(f"{finding.rule} at {finding.file}:{finding.line}: {finding.message}")
    return out


async def _test_outcome(copy: Path, timeout_s: float) -> tuple[bool, bool | None, str | None]:
    """(tests_ran, tests_passed, error) for the project's tests in the patched copy."""
    run = await run_project_tests(copy, timeout_s=timeout_s, tree_first=True)  # not an editable install's original
    if run.timed_out:
        return True, False, run.exit_meaning
    if run.exit_code is None or (run.errors and run.totals.tests == 0):
        # Never started, or died before reporting (e.g. pytest missing from the project's venv).
        return False, None, f"tests: {run.exit_meaning}"
    if run.exit_code == 5:  # nothing collected: there is no verdict to report
        return False, None, None
    if run.exit_code == 0:
        return True, True, None
    return True, False, None if run.exit_code == 1 else f"tests: {run.exit_meaning}"


async def _measure(
    copy: Path, rel: str, diff_file: Path, *, run_tests: bool, test_timeout_s: float, lint_timeout_s: float
) -> PatchCheck:
    async def git_apply(*args: str) -> tuple[bool, str]:
        # The copy lives outside any repository; the ceiling keeps git from finding one above it.
        run = await run_git(
            copy,
            "apply",
            *args,
            "--",
            str(diff_file),
            timeout_s=GIT_APPLY_TIMEOUT_S,
            extra_env={"GIT_CEILING_DIRECTORIES": str(copy.parent)},
        )
        if run.timed_out:
            return False, "git apply did not finish in time"
        return run.returncode == 0, run.stdout if run.returncode == 0 else _git_failure(run.stderr, "git apply failed")

    try:
        ok, detail = await git_apply("--check", "--numstat", "-z")
    except GitError as exc:
        return _not_applied(f"git is needed to apply patches: {exc}")
    if not ok:
        return _not_applied(f"the patch does not apply to {rel}: {detail}")
    touched = _numstat_paths(detail)
    if touched != {rel}:
        return _not_applied(
            f"the patch must change only {rel}, but it changes {', '.join(sorted(touched)) or 'nothing'}"
        )

    target = copy / rel
    python = rel.lower().endswith(PYTHON_SUFFIXES)
    before: tuple[LintFinding, ...] = ()
    parsed_before = True
    if python and target.is_file():
        before, lint_error = await _lint_file(copy, rel, lint_timeout_s)
        if lint_error:
            return PatchCheck(
                applies=True, lint_clean=False, new_findings=(), resolved_findings=(), error=f"ruff: {lint_error}"
            )
        parsed_before = _parse_error(target, rel) is None

    ok, detail = await git_apply()
    if not ok:
        return _not_applied(f"the patch does not apply to {rel}: {detail}")

    after: tuple[LintFinding, ...] = ()
    error: str | None = None
    if python and target.is_file():
        after, lint_error = await _lint_file(copy, rel, lint_timeout_s)
        error = f"ruff: {lint_error}" if lint_error else None
    new = _unmatched(after, before)
    resolved = _unmatched(before, after)
    syntax_error = _parse_error(target, rel) if python and target.is_file() else None
    if syntax_error and parsed_before and not any(f.rule == "invalid-syntax" for f in after):
        new.append(syntax_error)  # ruff did not check the file (excluded), Python still cannot parse it
    lint_clean = error is None and not new and (syntax_error is None or not parsed_before)

    tests_ran, tests_passed, test_error = False, None, None
    if run_tests:
        tests_ran, tests_passed, test_error = await _test_outcome(copy, test_timeout_s)
    return PatchCheck(
        applies=True,
        lint_clean=lint_clean,
        new_findings=tuple(new),
        resolved_findings=tuple(resolved),
        tests_ran=tests_ran,
        tests_passed=tests_passed,
        error=error or test_error,
    )


def _snapshot(target: Path) -> tuple[bytes, int] | None:
    return (target.read_bytes(), target.stat().st_mode) if target.is_file() else None


def _restore(target: Path, snapshot: tuple[bytes, int] | None) -> None:
    """Put the copy's file back as :func:`_snapshot` saw it (absent, or these bytes and mode)."""
    if snapshot is None:
        if target.is_file() or target.is_symlink():
            target.unlink()
        return
    target.write_bytes(snapshot[0])
    target.chmod(snapshot[1])


def _write_diff(folder: Path, diff: str) -> Path:
    fd, name = tempfile.mkstemp(prefix="patch-", suffix=".diff", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        # git refuses a patch whose last line has no newline ("corrupt patch"); LLM output often lacks it.
        handle.write(diff if diff.endswith("\n") else diff + "\n")
    return Path(name)


async def _check_in_copy(
    copy: Path, rel: str, patch: Patch, *, run_tests: bool, test_timeout_s: float, lint_timeout_s: float
) -> PatchCheck:
    """Check ``patch`` in ``copy`` and put the patched file back as it was, so the copy can be reused."""
    if not patch.diff.strip():
        return _not_applied("the patch is empty")
    target = copy / rel
    snapshot = _snapshot(target)
    # The diff lives beside the copy, not in it: it must not be linted, tested or listed.
    diff_file = _write_diff(copy.parent, patch.diff)
    try:
        return await _measure(
            copy, rel, diff_file, run_tests=run_tests, test_timeout_s=test_timeout_s, lint_timeout_s=lint_timeout_s
        )
    finally:
        _restore(target, snapshot)
        os.unlink(diff_file)


async def check_patch(
    root: Path,
    patch: Patch,
    *,
    run_tests: bool = False,
    test_timeout_s: float = 300,
    lint_timeout_s: float = ANALYSER_TIMEOUT_S,
) -> PatchCheck:
    """Apply ``patch`` to a temporary copy of the project and report what it does there.

    The copy holds the project's listed files (``list_project_files``; no ``.git``, at most
    ``MAX_COPY_BYTES``); the user's files are never written. ``git apply`` checks the diff (it must
    change only ``patch.file``), ruff lints the file before and after, and with ``run_tests`` the
    project's pytest suite runs in the copy (with the project's ``.venv`` linked in, when it has
    one). Problems with the patch are reported in the result, not raised; only a bad ``root``
    raises :class:`PathNotAllowedError`.
    """
    checked = await check_patches(
        root,
        [patch],
        run_tests=run_tests,
        concurrency=1,
        test_timeout_s=test_timeout_s,
        lint_timeout_s=lint_timeout_s,
    )
    return checked[0].check


async def check_patches(
    root: Path,
    patches: Sequence[Patch],
    *,
    run_tests: bool = False,
    concurrency: int = 2,
    test_timeout_s: float = 300,
    lint_timeout_s: float = ANALYSER_TIMEOUT_S,
) -> list[CheckedPatch]:
    """:func:`check_patch` for each patch, in order, ``concurrency`` at a time.

    ``lint_timeout_s`` bounds each ruff run (``[tools] analyser_timeout_s``), ``test_timeout_s``
    each test run.

    Without tests each worker reuses one copy and restores the patched file after every check;
    with tests every patch gets a fresh copy, since a test run may write anywhere in it.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    base = resolve_root(root)
    results: list[PatchCheck | None] = [None] * len(patches)
    todo: list[tuple[int, str]] = []
    for index, patch in enumerate(patches):
        try:
            todo.append((index, _relative_file(base, patch.file)))
        except PathNotAllowedError as exc:
            results[index] = _not_applied(str(exc))
    extra = [rel for _, rel in todo]
    queue = iter(todo)  # shared by the workers; the event loop hands out each item once

    async def check_each_in_fresh_copy() -> None:
        for index, rel in queue:
            try:
                async with _project_copy(base, [rel], link_venv=run_tests) as copy:
                    results[index] = await _check_in_copy(
                        copy,
                        rel,
                        patches[index],
                        run_tests=run_tests,
                        test_timeout_s=test_timeout_s,
                        lint_timeout_s=lint_timeout_s,
                    )
            except _CopyError as exc:
                results[index] = _not_applied(str(exc))

    async def check_all_in_one_copy() -> None:
        try:
            async with _project_copy(base, extra, link_venv=False) as copy:
                for index, rel in queue:
                    results[index] = await _check_in_copy(
                        copy,
                        rel,
                        patches[index],
                        run_tests=False,
                        test_timeout_s=test_timeout_s,
                        lint_timeout_s=lint_timeout_s,
                    )
        except _CopyError as exc:
            for index, _ in queue:
                results[index] = _not_applied(str(exc))

    worker = check_each_in_fresh_copy if run_tests else check_all_in_one_copy
    async with anyio.create_task_group() as group:
        for _ in range(min(concurrency, len(todo))):
            group.start_soon(worker)
    checked: list[CheckedPatch] = []
    for patch, check in zip(patches, results, strict=True):
        if check is None:  # every index is either refused up front or taken by a worker
            raise RuntimeError(f"patch for {patch.file} was not checked")
        checked.append(CheckedPatch(patch=patch, check=check))
    return checked
