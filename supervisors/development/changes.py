"""``review_changes``: static checks on the lines a git change adds, plus anchored LLM comments.

The diff comes from git (the working tree against HEAD, or ``base..head``). ruff and the security
scan run on the changed files and only findings on added lines are kept. The LLM (task kind
``review``) comments on the added lines; a comment that does not anchor to one is dropped.

A change can be huge (a vendored library, a generated file), so everything this tool returns or
sends is bounded here, before the runtime fits the result to its token budget: at most
:data:`MAX_FILES_LISTED` files with :data:`MAX_HUNKS_LISTED` hunks each, :data:`MAX_FINDINGS`
findings, and an LLM excerpt capped per line, per file and in total. ``left_out`` counts what was
not listed or not shown, and the summary counts the whole change.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from caelum_mcp.core.errors import PathNotAllowedError
from caelum_mcp.core.llm import TaskKind
from caelum_mcp.supervisors.base import ToolContext, ToolOutput
from caelum_mcp.supervisors.llm_steps import LLMStep, run_cited_list, summary_of
from caelum_mcp.tools.code import review
from caelum_mcp.tools.code.git import MAX_DIFF_BYTES, FileChange, GitChanges, Hunk, git_changes
from caelum_mcp.tools.code.lint import lint
from caelum_mcp.tools.code.models import Finding, sort_findings
from caelum_mcp.tools.code.security import security_scan
from caelum_mcp.tools.paths import resolve_project, resolve_within
from caelum_mcp.tools.safe_read import NOT_REGULAR_MESSAGE, file_kind, off_loop, read_head

MAX_FILES_LISTED = 100
MAX_HUNKS_LISTED = 5  # per listed file
MAX_FINDINGS = 50
DIFF_EXCERPT_CHARS = 9000  # the whole excerpt the LLM reads
EXCERPT_FILE_CHARS = 3000  # one file's share, so that one big file cannot crowd out the rest
EXCERPT_LINES_PER_FILE = 120
EXCERPT_LINE_CHARS = 240  # a minified or generated line is cut
EXCERPT_READ_BYTES = 8 << 20  # of one changed file; added lines past it are not shown


class ReviewInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: str = Field(description="the project folder (a git work tree, inside the allowed roots)")
    base: str | None = Field(default=None, description="base revision (default: review the working tree vs HEAD)")
    head: str | None = Field(default=None, description="head revision (default HEAD when base is given)")
    allow_claude: bool = True


class ReviewComment(BaseModel):
    file: str
    line: int
    severity: str
    comment: str
    source: Literal["llm", "analyzers"]


class ChangedFile(BaseModel):
    path: str
    status: str
    additions: int
    deletions: int
    hunk_count: int = 0
    hunks: list[str] = Field(default_factory=list, description="the first hunks, as git heads them: '-12,3 +12,4'")


class LeftOut(BaseModel):
    """What this result does not list, and what the LLM review was not shown."""

    files: int = 0
    hunks: int = Field(default=0, description="hunks of listed files beyond each file's first ones")
    findings: int = 0
    review_files: int = Field(default=0, description="files with added lines the LLM was not shown")
    review_lines: int = Field(default=0, description="added lines the LLM was not shown")


class ReviewOutput(ToolOutput):
    project: str
    base: str
    head: str
    files: list[ChangedFile]
    findings: list[Finding] = Field(description="static findings on added or changed lines only")
    comments: list[ReviewComment] = Field(description="the LLM's anchored comments (static findings: `findings`)")
    summary: str
    left_out: LeftOut = Field(default_factory=LeftOut)
    notes: list[str] = Field(default_factory=list, description="changed files not read, and why (links out, FIFOs)")
    llm: LLMStep | None = None


@dataclass(frozen=True)
class DiffExcerpt:
    """The added lines the LLM reads, and how many it was not shown."""

    text: str
    files_left_out: int
    lines_left_out: int


async def review_changes(args: ReviewInput, ctx: ToolContext) -> ReviewOutput:
    root = resolve_project(args.project, ctx.roots)
    await ctx.report(0, 4, "reading the diff")
    changes: GitChanges = await git_changes(root, base=args.base, head=args.head, roots=ctx.roots)
    present = [c for c in changes.files if c.status != "deleted" and not c.binary]
    left_out = await off_loop(lambda stop: _not_read(root, present, stop), what="checking the changed files")
    changed_lines = {c.path: set(c.added_lines) for c in present if c.path not in left_out}
    notes = [f"{path} left out: {why}" for path, why in sorted(left_out.items()) if why != _ABSENT_OR_OUTSIDE]
    await ctx.report(1, 4, f"{len(changes.files)} changed files; running static checks")
    findings = await _findings_on(root, changed_lines, ctx)
    listed = findings[:MAX_FINDINGS]
    await ctx.report(2, 4, f"{len(findings)} findings on changed lines; asking the LLM for review comments")
    # The static findings are in ``findings`` only: repeating each as a comment sent it twice.
    comments: list[ReviewComment] = []
    summary = _summary(changes, len(findings))
    step: LLMStep | None = None
    excerpt = DiffExcerpt("", 0, 0)
    if changed_lines:
        excerpt = await off_loop(lambda stop: diff_excerpt(root, changes, stop), what="reading the changed files")
        system, user = review.comments_task(excerpt.text, listed)
        got = await run_cited_list(
            ctx,
            name="review_changes",
            kind=TaskKind.REVIEW,
            system=system,
            user=user,
            schema=review.COMMENTS_SCHEMA,
            key="comments",
            check=lambda output: review.ground_comments(output, changed_lines),
            allow_claude=args.allow_claude,
            max_output_tokens=review.COMMENTS_TOKENS,
        )
        step = got.step
        comments += [
            ReviewComment(
                file=str(c["file"]),
                line=int(c["line"]),
                severity=str(c.get("severity", "info")),
                comment=str(c.get("comment", ""))[:1000],
                source="llm",
            )
            for c in got.items
        ]
        llm_summary = summary_of(got.output, len(got.items))
        if llm_summary:
            summary = f"{llm_summary} ({summary})"
    await ctx.report(4, 4, "review done")
    files = [_listed_file(c) for c in changes.files[:MAX_FILES_LISTED]]
    shown_to_llm = step is not None and step.status != "skipped"
    return ReviewOutput(
        project=str(root),
        base=changes.base,
        head=changes.head,
        files=files,
        findings=listed,
        comments=sorted(comments, key=lambda c: (c.file, c.line)),
        summary=summary,
        left_out=LeftOut(
            files=len(changes.files) - len(files),
            hunks=sum(f.hunk_count - len(f.hunks) for f in files),
            findings=len(findings) - len(listed),
            review_files=excerpt.files_left_out if shown_to_llm else 0,
            review_lines=excerpt.lines_left_out if shown_to_llm else 0,
        ),
        notes=notes[:MAX_FILES_LISTED],
        llm=step,
    )


_ABSENT_OR_OUTSIDE = "missing, or a link leading outside the project"  # never noted: where a link points is not told


def _why_not_read(root: Path, rel: str) -> str | None:
    """Why the changed file ``rel`` is not read, or None when it is a regular file inside the
    project: a changed symlink may point anywhere, or at a FIFO that would block its reader."""
    try:
        resolved = resolve_within(root, rel)
    except PathNotAllowedError:
        return _ABSENT_OR_OUTSIDE
    try:
        mode = os.stat(resolved).st_mode
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    return None if stat.S_ISREG(mode) else f"{NOT_REGULAR_MESSAGE} (a {file_kind(mode)}): never read"


def _not_read(root: Path, changes: Iterable[FileChange], stop: threading.Event) -> dict[str, str]:
    left_out: dict[str, str] = {}
    for change in changes:
        if stop.is_set():
            break
        why = _why_not_read(root, change.path)
        if why is not None:
            left_out[change.path] = why
    return left_out


async def _findings_on(root: Path, changed_lines: dict[str, set[int]], ctx: ToolContext) -> list[Finding]:
    """ruff and the security scan on the changed files, keeping the findings on changed lines."""
    if not changed_lines:
        return []
    files = list(changed_lines)
    py = [p for p in files if p.endswith(".py")]
    limit = ctx.limits.analyser_timeout_s
    lint_res = await lint(root, py, timeout_s=limit) if py else None
    sec_res = await security_scan(root, files, timeout_s=limit, store=ctx.cache)
    findings: list[Finding] = []
    for res in (lint_res, sec_res):
        if res is not None:
            findings.extend(
                Finding.model_validate(f.model_dump(include=set(Finding.model_fields)))
                for f in res.findings
                if f.line in changed_lines.get(f.file, set())
            )
    return list(sort_findings(findings))


def _summary(changes: GitChanges, findings: int) -> str:
    added = sum(c.additions for c in changes.files)
    deleted = sum(c.deletions for c in changes.files)
    text = f"{len(changes.files)} files changed (+{added} -{deleted}), {findings} static findings on changed lines."
    if changes.truncated:
        text += f" The diff was over {MAX_DIFF_BYTES // 2**20} MB and was cut: files past the cut were not checked."
    return text


def _listed_file(change: FileChange) -> ChangedFile:
    return ChangedFile(
        path=change.path,
        status=change.status,
        additions=change.additions,
        deletions=change.deletions,
        hunk_count=len(change.hunks),
        hunks=[_hunk_header(h) for h in change.hunks[:MAX_HUNKS_LISTED]],
    )


def _hunk_header(hunk: Hunk) -> str:
    return f"-{hunk.old_start},{hunk.old_count} +{hunk.new_start},{hunk.new_count}"


def diff_excerpt(root: Path, changes: GitChanges, stop: threading.Event | None = None) -> DiffExcerpt:
    """The added lines with their new line numbers, per file (what a comment may anchor to).

    Each file gets at most :data:`EXCERPT_LINES_PER_FILE` lines and :data:`EXCERPT_FILE_CHARS`
    characters, and the whole excerpt :data:`DIFF_EXCERPT_CHARS`; the rest is counted. Files are
    read with blocking calls (run it off the event loop); once ``stop`` is set the rest is counted
    as left out.
    """
    blocks: list[str] = []
    room = DIFF_EXCERPT_CHARS
    files_left_out = lines_left_out = 0
    for change in changes.files:
        if change.binary or change.status == "deleted" or not change.added_lines:
            continue
        if stop is not None and stop.is_set():
            files_left_out += 1
            lines_left_out += len(change.added_lines)
            continue
        header = f"--- {change.path} ({change.status})"
        room_here = min(room, EXCERPT_FILE_CHARS) - len(header) - 1
        shown = _take_lines(_numbered_added_lines(root, change), room_here) if room_here > 0 else []
        lines_left_out += len(change.added_lines) - len(shown)
        if not shown:
            files_left_out += 1
            continue
        block = "\n".join([header, *shown])
        blocks.append(block)
        room -= len(block) + 2
    return DiffExcerpt("\n\n".join(blocks), files_left_out, lines_left_out)


def _numbered_added_lines(root: Path, change: FileChange) -> Iterator[str]:
    """``+   12 | text`` for the first added lines of ``change``, as the file reads now (long lines cut)."""
    if _why_not_read(root, change.path) is not None:
        return
    try:
        head = read_head(root / change.path, EXCERPT_READ_BYTES)
    except OSError:
        return
    lines = head.data.decode("utf-8", errors="replace").splitlines()
    if head.truncated and lines:
        lines.pop()  # cut at the byte cap: the last line is not whole
    for number in change.added_lines[:EXCERPT_LINES_PER_FILE]:
        if number <= len(lines):
            text = lines[number - 1]
            if len(text) > EXCERPT_LINE_CHARS:
                text = text[:EXCERPT_LINE_CHARS] + " [... line cut]"
            yield f"+{number:>5} | {text}"


def _take_lines(lines: Iterable[str], room: int) -> list[str]:
    """The leading ``lines`` that fit in ``room`` characters (one newline each)."""
    taken: list[str] = []
    for line in lines:
        room -= len(line) + 1
        if room < 0:
            break
        taken.append(line)
    return taken
