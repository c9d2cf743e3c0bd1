"""The development supervisor: analyse and improve code, review changes, run and triage tests.

Each external tool plans which internal tools to run (``caelum_mcp.tools.code``), runs the
independent ones concurrently with progress per stage, reuses their results when the files they
read have not changed (content-hash cache), and asks the router to reason over the findings with a
grounding check: every file, line and rule the model cites must exist. Only grounded items reach
the user. The user's files are never modified: patches are checked in a temporary copy.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field

from caelum_mcp.cache import fingerprint
from caelum_mcp.errors import CaelumError, PathNotAllowedError
from caelum_mcp.router import ExecutionRecord, GroundingResult, LLMTask, RoutedResult
from caelum_mcp.supervisors.base import ExternalTool, Supervisor, ToolContext, cached
from caelum_mcp.tools.code import review
from caelum_mcp.tools.code.complexity import ComplexityResult, complexity
from caelum_mcp.tools.code.dead_code import DeadCodeResult, dead_code
from caelum_mcp.tools.code.deps import DependencyResult, dependency_check
from caelum_mcp.tools.code.files import list_project_files
from caelum_mcp.tools.code.git import GitChanges, git_changes
from caelum_mcp.tools.code.lint import LintResult, lint
from caelum_mcp.tools.code.models import AnalyzerError, Finding, severity_counts, sort_findings
from caelum_mcp.tools.code.patches import CheckedPatch, Patch, check_patches, edit_patch, ruff_fix_patches
from caelum_mcp.tools.code.security import SecurityResult, security_scan
from caelum_mcp.tools.code.structure import ProjectStructure, project_structure
from caelum_mcp.tools.code.tests_runner import TestCaseResult, TestRunResult, run_tests
from caelum_mcp.tools.paths import resolve_project, resolve_within
from caelum_mcp.types import ChatMessage, Tier

log = logging.getLogger(__name__)

Task = Literal["analyze", "improve", "security_scan", "performance", "comprehensive"]

STAGES: dict[str, tuple[str, ...]] = {
    "analyze": ("structure", "lint", "security", "complexity", "dead_code", "dependencies"),
    "improve": ("structure", "lint", "security", "complexity", "dead_code"),
    "security_scan": ("structure", "security", "dependencies"),
    "performance": ("structure", "complexity", "lint"),
    "comprehensive": ("structure", "lint", "security", "complexity", "dead_code", "dependencies"),
}
AUDIT_TASKS = {"security_scan", "comprehensive"}
FOCUS = {
    "analyze": "overall code quality: correctness, security and maintainability",
    "improve": "the fixes with the best value for the effort",
    "security_scan": "security vulnerabilities and leaked secrets",
    "performance": "complexity hot spots and performance risks",
    "comprehensive": "everything: correctness, security, complexity, dead code and dependencies",
}


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("ruff", "bandit", "radon", "vulture", "lizard", "pip-audit", "caelum-mcp"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


ANALYSER_VERSIONS = _versions()


# models ---------------------------------------------------------------------------------------


class AnalyzeInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: str = Field(description="the project folder (inside the allowed roots); '.' = the server's root")
    task: Task = Field(default="analyze", description="analyze | improve | security_scan | performance | comprehensive")
    paths: list[str] | None = Field(default=None, description="only these files or folders, relative to project")
    max_findings: int = Field(default=50, ge=1, le=1000, description="findings listed in the result")
    run_tests: bool = Field(default=False, description="improve: also run the tests on each patched copy")
    llm_review: bool = Field(default=True, description="ask the local LLM to prioritise the findings")
    allow_claude: bool = Field(default=True, description="the LLM part may escalate to Claude")


class StageInfo(BaseModel):
    name: str
    seconds: float
    cached: bool


class LanguageMetrics(BaseModel):
    language: str
    files: int
    code_lines: int
    functions: int | None = None
    mean_complexity: float | None = None
    max_complexity: int | None = None


class Metrics(BaseModel):
    files: int
    code_lines: int
    languages: list[LanguageMetrics]
    mean_maintainability: float | None = None
    complex_functions: int = 0
    dead_code_items: int = 0
    dependency_issues: int = 0
    test_files: int = 0


class Recommendation(BaseModel):
    priority: int = Field(description="1 = most urgent")
    title: str
    file: str
    line: int
    rule: str
    rationale: str
    source: Literal["llm", "analyzers"]


class AnalyzeOutput(BaseModel):
    project: str
    task: Task
    summary: str
    findings: list[Finding]
    findings_total: int
    counts: dict[str, int] = Field(description="findings per severity")
    counts_by_tool: dict[str, int]
    metrics: Metrics
    recommendations: list[Recommendation]
    patches: list[CheckedPatch] = Field(default_factory=list, description="improve: each checked in a copy")
    dependency_audit: str | None = None
    errors: list[AnalyzerError]
    stages: list[StageInfo]
    llm_note: str | None = Field(default=None, description="why there is no LLM review, or what was dropped")
    execution: ExecutionRecord | None = None


# analysis ---------------------------------------------------------------------------------------


class _Run:
    """One analysis: the project, its files' fingerprint, and the stages' results."""

    def __init__(self, ctx: ToolContext, root: Path, files: tuple[str, ...], content: str) -> None:
        self.ctx = ctx
        self.root = root
        self.files = files
        self.content = content
        self.stages: list[StageInfo] = []
        self.done = 0
        self.total = 1

    async def stage(
        self, name: str, params: dict[str, Any], compute: Callable[[], Awaitable[Any]], model: type[BaseModel]
    ) -> Any:
        started = time.perf_counter()
        full = {**params, "root": str(self.root), "versions": ANALYSER_VERSIONS}
        value, hit = await cached(self.ctx, name, full, self.content, compute, model, reusable=_reusable)
        self.stages.append(StageInfo(name=name, seconds=round(time.perf_counter() - started, 3), cached=hit))
        self.done += 1
        await self.ctx.report(self.done, self.total, f"{name} {'(cached)' if hit else 'done'}")
        return value


def _reusable(result: BaseModel) -> bool:
    """Whether a stage's result may be served again while the files stay the same.

    A failure of the tool itself (a timeout, a crash, not installed) or an audit whose service did
    not answer says nothing lasting about the files, so the next call runs the tool again. A
    per-file error (bandit cannot parse one file) holds as long as that file is unchanged.
    """
    errors: Sequence[AnalyzerError] = getattr(result, "errors", ())
    if any(error.file is None for error in errors):
        return False
    return not (isinstance(result, DependencyResult) and result.audit.status == "unavailable")


async def _open_project(ctx: ToolContext, project: str, paths: list[str] | None) -> tuple[Path, tuple[str, ...], str]:
    root = resolve_project(project, ctx.roots)
    listing = await list_project_files(root)
    files = listing.files
    if paths:
        wanted = [resolve_within(root, p) for p in paths]
        rels = [w.relative_to(root).as_posix() for w in wanted]
        files = tuple(f for f in files if any(f == r or f.startswith(r.rstrip("/") + "/") or r == "." for r in rels))
    return root, files, await fingerprint(root, files)


async def analyze_and_improve_code(args: AnalyzeInput, ctx: ToolContext) -> AnalyzeOutput:
    root, files, content = await _open_project(ctx, args.project, args.paths)
    run = _Run(ctx, root, files, content)
    names = STAGES[args.task]
    run.total = len(names) + (1 if args.llm_review else 0) + (1 if args.task == "improve" else 0)
    await ctx.report(0, run.total, f"analysing {len(files)} files in {root.name}")
    selected = list(files) if args.paths else None
    audit = args.task in AUDIT_TASKS
    today = time.strftime("%Y-%m-%d", time.gmtime())
    limit = ctx.config.tools.analyser_timeout_s
    jobs: dict[str, Callable[[], Awaitable[Any]]] = {
        "structure": lambda: run.stage("structure", {}, lambda: project_structure(root), ProjectStructure),
        "lint": lambda: run.stage(
            "lint", {"files": selected}, lambda: lint(root, selected, timeout_s=limit), LintResult
        ),
        "security": lambda: run.stage(
            "security",
            {"files": selected},
            lambda: security_scan(root, selected, timeout_s=limit, store=ctx.cache),
            SecurityResult,
        ),
        "complexity": lambda: run.stage(
            "complexity",
            {"files": selected},
            lambda: complexity(root, selected, timeout_s=limit, store=ctx.cache),
            ComplexityResult,
        ),
        "dead_code": lambda: run.stage(
            "dead_code", {"files": selected}, lambda: dead_code(root, selected, timeout_s=limit), DeadCodeResult
        ),
        # a vulnerability audit's answer changes with the advisories, so it is cached for one day only
        "dependencies": lambda: run.stage(
            "dependencies",
            {"audit": audit, "day": today if audit else None},
            lambda: dependency_check(root, audit=audit, audit_timeout_s=ctx.config.tools.audit_timeout_s),
            DependencyResult,
        ),
    }
    results: dict[str, Any] = {}

    async def do(name: str) -> None:
        results[name] = await jobs[name]()

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(do, name)

    findings, errors = _collect(results)
    findings = list(sort_findings(findings))
    metrics = _metrics(results)
    out = AnalyzeOutput(
        project=str(root),
        task=args.task,
        summary=_static_summary(findings, metrics),
        findings=findings[: args.max_findings],
        findings_total=len(findings),
        counts=severity_counts(findings),
        counts_by_tool=dict(Counter(f.tool for f in findings)),
        metrics=metrics,
        recommendations=_analyzer_recommendations(findings),
        dependency_audit=_audit_note(results.get("dependencies")),
        errors=errors,
        stages=run.stages,
    )
    index = review.SourceIndex(root, files)
    if args.llm_review:
        out = await _llm_review(ctx, args, out, findings, index)
        run.done += 1
        await ctx.report(run.done, run.total, "LLM review done")
    if args.task == "improve":
        patches, note = await _improve(ctx, args, root, findings, index)
        out = out.model_copy(update={"patches": patches, "llm_note": _join(out.llm_note, note)})
        run.done += 1
        await ctx.report(
            run.done, run.total, f"{sum(p.check.applies and p.check.lint_clean for p in patches)} patches verified"
        )
    return out


def _collect(results: dict[str, Any]) -> tuple[list[Finding], list[AnalyzerError]]:
    findings: list[Finding] = []
    errors: list[AnalyzerError] = []
    for name in ("lint", "security", "complexity", "dead_code"):
        res = results.get(name)
        if res is not None:
            findings.extend(
                Finding.model_validate(f.model_dump(include=set(Finding.model_fields))) for f in res.findings
            )
            errors.extend(res.errors)
    deps = results.get("dependencies")
    if deps is not None:
        errors.extend(deps.errors)
        for issue in deps.issues:
            file, line = _source_location(issue.sources[0] if issue.sources else "")
            findings.append(
                Finding(
                    tool="dependencies",
                    rule=issue.kind,
                    severity=issue.severity,
                    file=file,
                    line=line,
                    message=f"{issue.package}: {issue.message}",
                )
            )
        for vuln in deps.audit.vulnerabilities:
            findings.append(
                Finding(
                    tool="pip-audit",
                    rule=vuln.id,
                    severity="high",
                    file="(dependencies)",
                    line=1,
                    message=f"{vuln.package} {vuln.version}: {vuln.id}"
                    + (f" (fix: {', '.join(vuln.fix_versions)})" if vuln.fix_versions else ""),
                )
            )
    return findings, errors


def _source_location(source: str) -> tuple[str, int]:
    """``"requirements.txt:3"`` -> (file, line); no line -> line 1."""
    file, _, line = source.rpartition(":")
    if file and line.isdigit():
        return file, int(line)
    return source or "(dependencies)", 1


def _metrics(results: dict[str, Any]) -> Metrics:
    structure: ProjectStructure | None = results.get("structure")
    comp: ComplexityResult | None = results.get("complexity")
    by_lang: dict[str, LanguageMetrics] = {}
    if structure is not None:
        for lang in structure.languages:
            by_lang[lang.language] = LanguageMetrics(
                language=lang.language, files=lang.files, code_lines=lang.code_lines
            )
    if comp is not None:
        for lc in comp.languages:
            base = by_lang.get(lc.language) or LanguageMetrics(language=lc.language, files=lc.files, code_lines=0)
            by_lang[lc.language] = base.model_copy(
                update={"functions": lc.functions, "mean_complexity": lc.mean_ccn, "max_complexity": lc.max_ccn}
            )
    mi = [m.mi for m in comp.maintainability] if comp else []
    dead = results.get("dead_code")
    deps = results.get("dependencies")
    return Metrics(
        files=structure.files_total if structure else 0,
        code_lines=sum(lang.code_lines for lang in by_lang.values()),
        languages=sorted(by_lang.values(), key=lambda m: -m.code_lines),
        mean_maintainability=round(sum(mi) / len(mi), 1) if mi else None,
        complex_functions=sum(lc.over_threshold for lc in comp.languages) if comp else 0,
        dead_code_items=len(dead.findings) if dead else 0,
        dependency_issues=len(deps.issues) if deps else 0,
        test_files=structure.tests.python_test_files + structure.tests.other_test_files if structure else 0,
    )


def _static_summary(findings: Sequence[Finding], metrics: Metrics) -> str:
    counts = severity_counts(findings)
    worst = ", ".join(f"{n} {sev}" for sev, n in reversed(counts.items()) if n) or "no findings"
    langs = ", ".join(f"{m.language} ({m.code_lines} lines)" for m in metrics.languages[:4]) or "no source files"
    return f"{metrics.files} files: {langs}. Findings: {worst}."


def _analyzer_recommendations(findings: Sequence[Finding], limit: int = 8) -> list[Recommendation]:
    """One recommendation per rule, worst rules first: what to fix even without an LLM."""
    by_rule: dict[tuple[str, str], list[Finding]] = {}
    for f in findings:
        by_rule.setdefault((f.tool, f.rule), []).append(f)
    ranked = sorted(by_rule.values(), key=lambda fs: (-_SEV[fs[0].severity], -len(fs)))
    recs = []
    for i, group in enumerate(ranked[:limit]):
        first = group[0]
        where = ", ".join(f"{f.file}:{f.line}" for f in group[:3]) + (" …" if len(group) > 3 else "")
        recs.append(
            Recommendation(
                priority=min(5, i + 1),
                title=f"{first.rule}: {first.message[:120]}",
                file=first.file,
                line=first.line,
                rule=first.rule,
                rationale=f"{len(group)} {first.severity} finding(s) from {first.tool} at {where}",
                source="analyzers",
            )
        )
    return recs


_SEV = {"info": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}


def _audit_note(deps: DependencyResult | None) -> str | None:
    if deps is None:
        return None
    audit = deps.audit
    return f"{audit.status}: {audit.reason}" if getattr(audit, "reason", None) else audit.status


def _join(*notes: str | None) -> str | None:
    parts = [n for n in notes if n]
    return "; ".join(parts) if parts else None


async def _route(ctx: ToolContext, task: LLMTask) -> tuple[RoutedResult | None, str | None]:
    """Run an LLM task; an unavailable pool is a note in the result, not a failed tool call."""
    try:
        return await ctx.router.run(task), None
    except CaelumError as exc:
        return None, f"LLM step skipped: {exc}"


@dataclass
class _Grounded:
    """An LLM task's answer with only the items that passed the grounding check."""

    items: list[dict[str, Any]]
    dropped: int
    output: dict[str, Any]
    execution: ExecutionRecord | None
    note: str | None


async def _grounded_items(
    ctx: ToolContext,
    *,
    name: str,
    system: str,
    user: str,
    schema: dict[str, Any],
    key: str,
    check: Callable[[dict[str, Any]], review.Grounding],
    allow_claude: bool,
    max_tokens: int,
    tier: Tier | None = None,
) -> _Grounded:
    """Route one LLM task whose answer is a list under ``key``; keep the items ``check`` accepts.

    The same check feeds the router's confidence (as grounding) and filters the items shown.
    """

    def ground(output: dict[str, Any]) -> GroundingResult:
        g = check(output)
        return GroundingResult(score=g.score, problems=g.problems)

    task = LLMTask(
        name=name,
        messages=(ChatMessage(role="system", content=system), ChatMessage(role="user", content=user)),
        output_schema=schema,
        grounding=ground,
        tier=tier,
        allow_claude=allow_claude,
        max_tokens=max_tokens,
    )
    routed, note = await _route(ctx, task)
    if routed is None:
        return _Grounded([], 0, {}, None, note)
    output = routed.output or {}
    raw = output.get(key) or []
    valid = check(output).valid if raw else ()
    return _Grounded([raw[i] for i in valid], len(raw) - len(valid), output, routed.execution, note)


async def _llm_review(
    ctx: ToolContext, args: AnalyzeInput, out: AnalyzeOutput, findings: list[Finding], index: review.SourceIndex
) -> AnalyzeOutput:
    if not findings:
        return out.model_copy(update={"llm_note": "no findings to review"})
    system, user = review.review_task(findings, index, out.metrics.model_dump(exclude={"languages"}), FOCUS[args.task])
    got = await _grounded_items(
        ctx,
        name="code_review",
        system=system,
        user=user,
        schema=review.REVIEW_SCHEMA,
        key="recommendations",
        check=lambda output: review.ground_recommendations(output, findings, index),
        allow_claude=args.allow_claude,
        max_tokens=512,
        tier=Tier.CODE if Tier.CODE in ctx.router.pool.available_tiers() else None,
    )
    if got.execution is None:
        return out.model_copy(update={"llm_note": got.note})
    kept = [
        Recommendation(
            priority=int(rec.get("priority", 3)),
            title=str(rec.get("title", ""))[:200],
            file=str(rec["file"]),
            line=int(rec["line"]),
            rule=str(rec.get("rule", "")),
            rationale=str(rec.get("rationale", ""))[:1000],
            source="llm",
        )
        for rec in got.items
    ]
    covered = {(r.file, r.rule) for r in kept}
    merged = sorted(kept, key=lambda r: r.priority) + [
        r for r in out.recommendations if (r.file, r.rule) not in covered
    ]
    summary = got.output.get("summary") if isinstance(got.output.get("summary"), str) and kept else None
    return out.model_copy(
        update={
            "recommendations": merged,
            "summary": f"{summary.strip()} ({out.summary})" if summary else out.summary,
            "execution": got.execution,
            "llm_note": f"{got.dropped} ungrounded LLM recommendation(s) dropped" if got.dropped else None,
        }
    )


async def _improve(
    ctx: ToolContext, args: AnalyzeInput, root: Path, findings: list[Finding], index: review.SourceIndex
) -> tuple[list[CheckedPatch], str | None]:
    top_files = list(dict.fromkeys(f.file for f in findings if f.file in index.files))[:20]
    patches: list[Patch] = []
    if top_files:
        py_files = [f for f in top_files if f.endswith(".py")] or None
        patches.extend(await ruff_fix_patches(root, py_files, timeout_s=ctx.config.tools.analyser_timeout_s))
    note: str | None = None
    fixable = {f.file for f in patches}
    targets = [f for f in findings if f.file in index.files and f.file not in fixable and f.tool != "dependencies"][:3]
    if targets and args.llm_review:
        system, user = review.edits_task(targets, index)
        task = LLMTask(
            name="code_fix",
            messages=(ChatMessage(role="system", content=system), ChatMessage(role="user", content=user)),
            output_schema=review.EDITS_SCHEMA,
            tier=Tier.CODE if Tier.CODE in ctx.router.pool.available_tiers() else None,
            allow_claude=args.allow_claude,
            max_tokens=512,
        )
        routed, note = await _route(ctx, task)
        for edit in (routed.output or {}).get("edits", []) if routed else []:
            try:
                patches.append(
                    edit_patch(
                        root,
                        str(edit["file"]),
                        int(edit["start_line"]),
                        int(edit["end_line"]),
                        str(edit["replacement"]),
                        description=str(edit.get("description", ""))[:300],
                        rules=(str(edit.get("rule", "")),),
                    )
                )
            except (ValueError, KeyError, TypeError, PathNotAllowedError) as exc:
                note = _join(note, f"LLM edit dropped: {exc}")
    checked = await check_patches(root, patches, run_tests=args.run_tests) if patches else []
    return checked, note


# review_changes ---------------------------------------------------------------------------------


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


class ReviewOutput(BaseModel):
    project: str
    base: str
    head: str
    files: list[ChangedFile]
    findings: list[Finding] = Field(description="static findings on added or changed lines only")
    comments: list[ReviewComment]
    summary: str
    llm_note: str | None = None
    execution: ExecutionRecord | None = None


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
        limit = ctx.config.tools.analyser_timeout_s
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
    note: str | None = None
    execution = None
    if changed_lines:
        diff_text = _diff_excerpt(root, changes)
        system, user = review.comments_task(diff_text, findings)
        got = await _grounded_items(
            ctx,
            name="review_changes",
            system=system,
            user=user,
            schema=review.COMMENTS_SCHEMA,
            key="comments",
            check=lambda output: review.ground_comments(output, changed_lines),
            allow_claude=args.allow_claude,
            max_tokens=800,
        )
        note, execution = got.note, got.execution
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
        if got.dropped:
            note = f"{got.dropped} LLM comment(s) not anchored to changed lines were dropped"
        if isinstance(got.output.get("summary"), str) and got.items:
            summary = f"{got.output['summary'].strip()} ({summary})"
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
        llm_note=note,
        execution=execution,
    )


def _diff_excerpt(root: Path, changes: GitChanges, limit: int = 9000) -> str:
    """The added lines with their new line numbers, per file (what a comment may anchor to)."""
    parts: list[str] = []
    for change in changes.files:
        if change.binary or change.status == "deleted" or not change.added_lines:
            continue
        try:
            lines = (root / change.path).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        body = "\n".join(f"+{n:>5} | {lines[n - 1]}" for n in change.added_lines[:120] if n <= len(lines))
        parts.append(f"--- {change.path} ({change.status})\n{body}")
    text = "\n\n".join(parts)
    return text if len(text) <= limit else text[:limit] + "\n[... diff cut ...]"


# run_project_tests --------------------------------------------------------------------------------


class RunTestsInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: str = Field(description="the project folder (inside the allowed roots)")
    selection: list[str] | None = Field(default=None, description="test files or node ids, relative to project")
    timeout_s: float = Field(default=300, gt=0, le=3600, description="kill the test run after this many seconds")
    triage: bool = Field(default=True, description="ask the LLM to triage each failure")
    allow_claude: bool = True


class Triage(BaseModel):
    test: str
    likely_cause: str
    file: str
    line: int


class RunTestsOutput(BaseModel):
    project: str
    passed: bool
    exit_meaning: str
    timed_out: bool
    duration_s: float
    totals: dict[str, int]
    failures: list[TestCaseResult]
    tests: list[TestCaseResult]
    triage: list[Triage]
    output_tail: str
    llm_note: str | None = None
    execution: ExecutionRecord | None = None


async def run_project_tests(args: RunTestsInput, ctx: ToolContext) -> RunTestsOutput:
    root = resolve_project(args.project, ctx.roots)
    await ctx.report(0, 2, "running the tests")
    result: TestRunResult = await run_tests(root, selection=args.selection, timeout_s=args.timeout_s)
    failures = [t for t in result.tests if t.outcome in ("failed", "error")]
    await ctx.report(1, 2, f"{result.totals.passed} passed, {len(failures)} failed; triaging")
    triage: list[Triage] = []
    note: str | None = None
    execution = None
    if failures and args.triage:
        texts = {t.node_id: f"{t.message or ''}\n{t.detail or ''}" for t in failures[:6]}
        listing = await list_project_files(root)
        index = review.SourceIndex(root, listing.files)
        system, user = review.triage_task(list(texts.items()))
        got = await _grounded_items(
            ctx,
            name="test_triage",
            system=system,
            user=user,
            schema=review.TRIAGE_SCHEMA,
            key="triage",
            check=lambda output: review.ground_triage(output, texts, index),
            allow_claude=args.allow_claude,
            max_tokens=700,
        )
        note, execution = got.note, got.execution
        triage = [
            Triage(
                test=str(item["test"]),
                likely_cause=str(item.get("likely_cause", ""))[:1000],
                file=str(item["file"]),
                line=int(item["line"]),
            )
            for item in got.items
        ]
        if got.dropped:
            note = f"{got.dropped} ungrounded triage item(s) dropped"
    await ctx.report(2, 2, "tests done")
    ok = result.exit_code == 0 and not result.timed_out
    return RunTestsOutput(
        project=str(root),
        passed=ok,
        exit_meaning=result.exit_meaning,
        timed_out=result.timed_out,
        duration_s=result.duration_s,
        totals=result.totals.model_dump(),
        failures=failures,
        tests=list(result.tests),
        triage=triage,
        output_tail=result.output_tail,
        llm_note=note,
        execution=execution,
    )


class DevelopmentSupervisor(Supervisor):
    name = "development"
    description = "Analyse, improve and review code; run tests and triage failures."

    def external_tools(self) -> Sequence[ExternalTool[Any, Any]]:
        return (
            ExternalTool(
                name="analyze_and_improve_code",
                title="Analyse and improve a project's code",
                description=(
                    "Run ruff, bandit + a secrets check, radon/lizard complexity, vulture and a dependency check "
                    "on a project, then have the local LLM prioritise the findings (grounded: every cited file, "
                    "line and rule must exist). task=improve also returns unified-diff patches, each verified in "
                    "a temporary copy to apply and lint clean. The project's files are never modified."
                ),
                input_model=AnalyzeInput,
                output_model=AnalyzeOutput,
                handler=analyze_and_improve_code,
                uses_roots=True,
                read_only=True,
                idempotent=True,
                open_world=False,
            ),
            ExternalTool(
                name="review_changes",
                title="Review a git diff",
                description=(
                    "Static checks restricted to the lines a change adds, plus LLM review comments anchored to "
                    "those lines; the working tree vs HEAD, or base..head."
                ),
                input_model=ReviewInput,
                output_model=ReviewOutput,
                handler=review_changes,
                uses_roots=True,
            ),
            ExternalTool(
                name="run_project_tests",
                title="Run the project's tests and triage failures",
                description=(
                    "Run pytest with a timeout, return per-test results, and have the LLM say for each failure "
                    "the likely cause and where to look (grounded in the failure text)."
                ),
                input_model=RunTestsInput,
                output_model=RunTestsOutput,
                handler=run_project_tests,
                uses_roots=True,
                read_only=False,
                idempotent=False,
            ),
        )
