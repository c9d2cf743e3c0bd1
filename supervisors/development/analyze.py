"""``analyze_and_improve_code``: real analysers over a project, then a grounded LLM review.

The tool plans which internal tools to run for its ``task`` (``caelum_mcp.tools.code``), runs them
concurrently with progress per stage, reuses their results while the files they read are unchanged
(content-hash cache), and asks for a review of the findings (task kind ``review``): every file,
line and rule the model cites must exist, or the item is dropped. When no model that can review
code is available the review is skipped at once and the result says what to configure; the
analysers' own recommendations are always there. ``task=improve`` adds verified patches
(:mod:`.improve`). The user's files are never modified.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field

from caelum_mcp.core.llm import TaskKind
from caelum_mcp.engine.cache import fingerprint
from caelum_mcp.engine.config import RESULT_TOKENS_CAP
from caelum_mcp.supervisors.base import ToolContext, ToolOutput, cached
from caelum_mcp.supervisors.llm_steps import LLMStep, run_cited_list, summary_of
from caelum_mcp.tools.code import review
from caelum_mcp.tools.code.complexity import ComplexityResult, complexity
from caelum_mcp.tools.code.dead_code import DeadCodeResult, dead_code
from caelum_mcp.tools.code.deps import DependencyResult, dependency_check
from caelum_mcp.tools.code.files import NOT_REGULAR, list_project_files
from caelum_mcp.tools.code.lint import LintResult, lint
from caelum_mcp.tools.code.models import AnalyzerError, Finding, severity_counts, sort_findings
from caelum_mcp.tools.code.patches import CheckedPatch
from caelum_mcp.tools.code.security import SecurityResult, security_scan
from caelum_mcp.tools.code.structure import ProjectStructure, project_structure
from caelum_mcp.tools.paths import resolve_project, resolve_within
from caelum_mcp.tools.safe_read import NOT_REGULAR_MESSAGE

from .improve import propose_patches

log = logging.getLogger(__name__)

DEFAULT_MAX_FINDINGS = 50
MAX_PRELOADED_FILES = 200  # findings whose files the LLM review may quote, read ahead in a worker thread
MAX_PATH_CHARS = 4096  # PATH_MAX on Linux

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

    project: str = Field(
        max_length=MAX_PATH_CHARS, description="the project folder (inside the allowed roots); '.' = the server's root"
    )
    task: Task = Field(default="analyze", description="analyze | improve | security_scan | performance | comprehensive")
    paths: list[Annotated[str, Field(max_length=MAX_PATH_CHARS)]] | None = Field(
        default=None, max_length=1000, description="only these files or folders, relative to project"
    )
    max_findings: int = Field(default=DEFAULT_MAX_FINDINGS, ge=1, le=1000, description="findings listed in the result")
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


class AnalyzeOutput(ToolOutput):
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
    notes: list[str] = Field(default_factory=list, description="files left out and why (FIFOs, devices, ...)")
    llm: LLMStep | None = Field(default=None, description="the LLM review (and improve's LLM edits)")


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


async def open_project(
    ctx: ToolContext, project: str, paths: list[str] | None
) -> tuple[Path, tuple[str, ...], str, list[str]]:
    """The project's root (inside the allowed roots), its files (``paths`` only, when given),
    their fingerprint, and notes on files the listing left out that a caller should hear about."""
    root = resolve_project(project, ctx.roots)
    listing = await list_project_files(root)
    files = listing.files
    if paths:
        wanted = [resolve_within(root, p) for p in paths]
        rels = [w.relative_to(root).as_posix() for w in wanted]
        files = tuple(f for f in files if any(f == r or f.startswith(r.rstrip("/") + "/") or r == "." for r in rels))
    notes: list[str] = []
    not_regular = listing.excluded.get(NOT_REGULAR, 0)
    if not_regular:
        notes.append(f"{not_regular} file(s) left out: not regular files (FIFOs, sockets, devices) are never read")
    return root, files, await fingerprint(root, files), notes


async def analyze_and_improve_code(args: AnalyzeInput, ctx: ToolContext) -> AnalyzeOutput:
    root, files, content, notes = await open_project(ctx, args.project, args.paths)
    run = _Run(ctx, root, files, content)
    names = STAGES[args.task]
    run.total = len(names) + (1 if args.llm_review else 0) + (1 if args.task == "improve" else 0)
    await ctx.report(0, run.total, f"analysing {len(files)} files in {root.name}")
    selected = list(files) if args.paths else None
    audit = args.task in AUDIT_TASKS
    today = time.strftime("%Y-%m-%d", time.gmtime())
    limit = ctx.limits.analyser_timeout_s
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
            lambda: dependency_check(root, audit=audit, audit_timeout_s=ctx.limits.audit_timeout_s),
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
    cited: list[AnalyzerError | Finding] = [*errors, *findings]
    notes += [f"{item.file}: {item.message}" for item in cited if item.file and NOT_REGULAR_MESSAGE in item.message]
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
        notes=notes,
    )
    index = review.SourceIndex(root, files)
    # the files the review and the patches quote, read off the event loop
    await index.load(f.file for f in findings[:MAX_PRELOADED_FILES])
    if args.llm_review:
        out = await _llm_review(ctx, args, out, findings, index)
        run.done += 1
        await ctx.report(run.done, run.total, f"LLM review {out.llm.status if out.llm else 'done'}")
    if args.task == "improve":
        patches, patch_errors, edits = await propose_patches(ctx, args, root, findings, index)
        update: dict[str, Any] = {"patches": patches, "errors": [*out.errors, *patch_errors]}
        if edits is not None:
            update["llm"] = _merge_steps(out.llm, edits)
        out = out.model_copy(update=update)
        run.done += 1
        verified = sum(p.check.applies and p.check.lint_clean for p in patches)
        await ctx.report(run.done, run.total, f"{verified} patches verified")
    return out


def result_tokens(args: AnalyzeInput) -> int | None:
    """A caller who asks for more findings than the default gets a result budget up to the cap."""
    return RESULT_TOKENS_CAP if args.max_findings > DEFAULT_MAX_FINDINGS else None


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


def _merge_steps(review_step: LLMStep | None, edits: LLMStep) -> LLMStep:
    """One report for the review and improve's edits: the edits' execution, both notes."""
    if review_step is None:
        return edits
    notes = [n for n in (review_step.note, edits.note) if n]
    return edits.model_copy(
        update={
            "note": "; ".join(notes) or None,
            "kept": review_step.kept + edits.kept,
            "dropped": review_step.dropped + edits.dropped,
            "execution": edits.execution or review_step.execution,
        }
    )


async def _llm_review(
    ctx: ToolContext, args: AnalyzeInput, out: AnalyzeOutput, findings: list[Finding], index: review.SourceIndex
) -> AnalyzeOutput:
    if not findings:
        return out.model_copy(update={"llm": LLMStep(status="skipped", note="no findings to review")})
    system, user = review.review_task(findings, index, out.metrics.model_dump(exclude={"languages"}), FOCUS[args.task])
    got = await run_cited_list(
        ctx,
        name="code_review",
        kind=TaskKind.REVIEW,
        system=system,
        user=user,
        schema=review.REVIEW_SCHEMA,
        key="recommendations",
        check=lambda output: review.ground_recommendations(output, findings, index),
        allow_claude=args.allow_claude,
        max_output_tokens=review.REVIEW_TOKENS,
    )
    kept = [
        Recommendation(
            priority=_int(rec.get("priority"), 3),
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
    summary = summary_of(got.output, len(kept))
    return out.model_copy(
        update={
            "recommendations": merged,
            "summary": f"{summary} ({out.summary})" if summary else out.summary,
            "llm": got.step,
        }
    )


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
