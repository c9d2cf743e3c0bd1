"""``review_changes``: static checks on the lines a git change adds, plus anchored LLM comments.

The diff comes from git (the working tree against HEAD, or ``base..head``). ruff and the security
scan run on the changed files and only findings on added lines are kept. The LLM (task kind
``review``) comments on the added lines; a comment that does not anchor to one is dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from caelum_mcp.llm import TaskKind
from caelum_mcp.supervisors.base import ToolContext, ToolOutput
from caelum_mcp.supervisors.llm_steps import LLMStep, run_cited_list, summary_of
from caelum_mcp.tools.code import review
from caelum_mcp.tools.code.git import GitChanges, git_changes
from caelum_mcp.tools.code.lint import lint
from caelum_mcp.tools.code.models import Finding, sort_findings
from caelum_mcp.tools.code.security import security_scan
from caelum_mcp.tools.paths import resolve_project

DIFF_EXCERPT_CHARS = 9000
ADDED_LINES_PER_FILE = 120


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


class ReviewOutput(ToolOutput):
    project: str
    base: str
    head: str
    files: list[ChangedFile]
    findings: list[Finding] = Field(description="static findings on added or changed lines only")
    comments: list[ReviewComment]
    summary: str
    llm: LLMStep | None = None


async def review_changes(args: ReviewInput, ctx: ToolContext) -> ReviewOutput:
    root = resolve_project(args.project, ctx.roots)
    await ctx.report(0, 4, "reading the diff")
    changes: GitChanges = await git_changes(root, base=args.base, head=args.head)
    changed_lines = {c.path: set(c.added_lines) for c in changes.files if c.status != "deleted" and not c.binary}
    existing = [p for p in changed_lines if (root / p).is_file()]
    await ctx.report(1, 4, f"{len(changes.files)} changed files; running static checks")
    findings: list[Finding] = []
    if existing:
        py = [p for p in existing if p.endswith(".py")]
        limit = ctx.limits.analyser_timeout_s
        lint_res = await lint(root, py, timeout_s=limit) if py else None
        sec_res = await security_scan(root, existing, timeout_s=limit, store=ctx.cache)
        for res in (lint_res, sec_res):
            if res is not None:
                findings.extend(
                    Finding.model_validate(f.model_dump(include=set(Finding.model_fields)))
                    for f in res.findings
                    if f.line in changed_lines.get(f.file, set())
                )
    findings = list(sort_findings(findings))
    await ctx.report(2, 4, f"{len(findings)} findings on changed lines; asking the LLM for review comments")
    comments = [
        ReviewComment(
            file=f.file, line=f.line, severity=f.severity, comment=f"[{f.rule}] {f.message}", source="analyzers"
        )
        for f in findings
    ]
    summary = f"{len(changes.files)} files changed, {len(findings)} static findings on changed lines."
    step: LLMStep | None = None
    if changed_lines:
        system, user = review.comments_task(_diff_excerpt(root, changes), findings)
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
    return ReviewOutput(
        project=str(root),
        base=changes.base,
        head=changes.head,
        files=[
            ChangedFile(path=c.path, status=c.status, additions=c.additions, deletions=c.deletions)
            for c in changes.files
        ],
        findings=findings,
        comments=sorted(comments, key=lambda c: (c.file, c.line)),
        summary=summary,
        llm=step,
    )


def _diff_excerpt(root: Path, changes: GitChanges, limit: int = DIFF_EXCERPT_CHARS) -> str:
    """The added lines with their new line numbers, per file (what a comment may anchor to)."""
    parts: list[str] = []
    for change in changes.files:
        if change.binary or change.status == "deleted" or not change.added_lines:
            continue
        try:
            lines = (root / change.path).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        body = "\n".join(
            f"+{n:>5} | {lines[n - 1]}" for n in change.added_lines[:ADDED_LINES_PER_FILE] if n <= len(lines)
        )
        parts.append(f"--- {change.path} ({change.status})\n{body}")
    text = "\n\n".join(parts)
    return text if len(text) <= limit else text[:limit] + "\n[... diff cut ...]"
