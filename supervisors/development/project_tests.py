"""``run_project_tests``: the project's pytest suite, per-test results, and grounded triage.

pytest runs in a subprocess with a timeout (the project's own ``.venv`` when it has one), a clean
environment (``[tools] test_env`` names what it may see besides the basics) and JUnit output. Each
failure is triaged by the LLM (task kind ``triage``): the likely cause and the place to look, which
must appear in the failure text or exist in the project.

The result sends each failure's text once, in ``failures`` (trimmed around the failing line), and
lists the tests compactly in ``tests``; both lists are bounded by their own token budgets so that
a suite of thousands of failing tests still gives a result well under the server's cap.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from caelum_mcp.core.llm import TaskKind
from caelum_mcp.engine.budget import result_size
from caelum_mcp.supervisors.base import ToolContext, ToolOutput
from caelum_mcp.supervisors.llm_steps import LLMStep, run_cited_list
from caelum_mcp.tools.code import review
from caelum_mcp.tools.code.files import list_project_files
from caelum_mcp.tools.code.tests_runner import Outcome, TestCaseResult, TestRunResult, run_tests
from caelum_mcp.tools.paths import resolve_project

# Token budgets of the two lists (estimated as the runtime does); with the triage, the output tail
# and pytest's error message the whole result stays under caelum_mcp.engine.config.RESULT_TOKENS_CAP.
FAILURES_TOKENS = 6_000
TESTS_TOKENS = 8_000
# Failing tests first, then skipped, then passed: when a list is cut, the end goes first.
_LISTING_ORDER = {"failed": 0, "error": 0, "skipped": 1, "passed": 2}


class RunTestsInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: str = Field(description="the project folder (inside the allowed roots)")
    selection: list[str] | None = Field(default=None, description="test files or node ids, relative to project")
    timeout_s: float = Field(default=300, gt=0, le=3600, description="kill the test run after this many seconds")
    triage: bool = Field(default=True, description="ask the LLM to triage each failure")
    allow_claude: bool = True

    @field_validator("selection")
    @classmethod
    def _no_nul(cls, value: list[str] | None) -> list[str] | None:
        # A NUL byte cannot reach a command line; say so here, with the field's name.
        if value and any("\0" in entry for entry in value):
            raise ValueError("an entry contains a NUL byte; give test files or node ids")
        return value


class Triage(BaseModel):
    test: str
    likely_cause: str
    file: str
    line: int


class ListedTest(BaseModel):
    """One test, compactly: its failure text, if any, is in ``failures``."""

    node_id: str
    outcome: Outcome
    duration_s: float


class FailureReport(BaseModel):
    """A failed or errored test with pytest's reason and its failure text trimmed around the
    failing line (``detail_lines_cut`` lines were left out)."""

    node_id: str
    outcome: Outcome
    file: str | None = None
    line: int | None = None
    message: str | None = None
    detail: str | None = None
    detail_lines_cut: int = 0


class RunTestsOutput(ToolOutput):
    project: str
    passed: bool
    exit_code: int | None = Field(description="pytest's exit status; None when it was killed or did not start")
    exit_meaning: str
    error: str | None = Field(
        default=None,
        description="pytest's own message when pytest itself failed (collection, internal or usage error, crash)",
    )
    timed_out: bool
    duration_s: float
    totals: dict[str, int]
    failures: list[FailureReport] = Field(description="failed and errored tests with their failure text")
    failures_omitted: int = Field(default=0, description="failing tests whose text did not fit (still in `tests`)")
    tests: list[ListedTest] = Field(description="the tests, failing first: node id, outcome, duration")
    tests_omitted: int = Field(default=0, description="tests not listed in `tests` (counted in `totals`)")
    triage: list[Triage]
    output_tail: str
    llm: LLMStep | None = None


def failure_reports(failures: Sequence[TestCaseResult], budget_tokens: int = FAILURES_TOKENS) -> list[FailureReport]:
    """The failures that fit ``budget_tokens``, in run order (the first always fits)."""
    reports: list[FailureReport] = []
    spent = 0
    for case in failures:
        report = FailureReport(
            node_id=case.node_id,
            outcome=case.outcome,
            file=case.file,
            line=case.line,
            message=case.message,
            detail=case.detail,
            detail_lines_cut=case.detail_lines_cut,
        )
        size = result_size(report.model_dump()) + 1  # and the comma before it
        if reports and spent + size > budget_tokens:
            break
        reports.append(report)
        spent += size
    return reports


# Shorter lines (blank ones, "_____", a lone bracket) say nothing on their own and are kept.
_MIN_SHARED_LINE = 8


def tail_without_failures(tail: str, reports: Sequence[FailureReport]) -> str:
    """pytest's last output less the lines that ``reports`` already carry: its FAILURES section
    repeats each traceback that ``failures`` holds, and sending it twice doubled a failing run's
    result. Each run of such lines becomes one marker; the rest (the short summary, warnings,
    a crash's own text) stays."""
    carried = {
        _shared_key(line)
        for report in reports
        for line in (report.detail or "").splitlines()
        if len(_shared_key(line)) >= _MIN_SHARED_LINE
    }
    if not carried:
        return tail
    out: list[str] = []
    dropped = 0
    for line in [*tail.splitlines(), None]:
        if line is not None and _shared_key(line) in carried:
            dropped += 1
            continue
        if dropped:
            out.append(f"… [{dropped} lines of the failure text in `failures`] …")
            dropped = 0
        if line is not None:
            out.append(line)
    return "\n".join(out)


def _shared_key(line: str) -> str:
    """A line as both copies show it: the traceback marks explanation lines ``E   ``, the short
    summary (which pytest prints whole where ``CI`` is set) does not."""
    text = line.strip()
    if text[:1] == "E" and text[1:2] in (" ", "\t"):
        text = text[1:].strip()
    return text


def compact_listing(cases: Sequence[TestCaseResult], budget_tokens: int = TESTS_TOKENS) -> list[ListedTest]:
    """The tests as compact entries, failing first, as many as fit ``budget_tokens``."""
    ordered = sorted(cases, key=lambda case: _LISTING_ORDER[case.outcome])
    listing: list[ListedTest] = []
    spent = 0
    for case in ordered:
        entry = ListedTest(node_id=case.node_id, outcome=case.outcome, duration_s=round(case.duration_s, 3))
        spent += result_size(entry.model_dump()) + 1  # and the comma before it
        if spent > budget_tokens:
            break
        listing.append(entry)
    return listing


async def run_project_tests(args: RunTestsInput, ctx: ToolContext) -> RunTestsOutput:
    root = resolve_project(args.project, ctx.roots)
    await ctx.report(0, 2, "running the tests")
    result: TestRunResult = await run_tests(
        root, selection=args.selection, timeout_s=args.timeout_s, pass_env=ctx.limits.test_env
    )
    failures = [t for t in result.tests if t.outcome in ("failed", "error")]
    await ctx.report(1, 2, f"{result.totals.passed} passed, {len(failures)} failed; triaging")
    triage: list[Triage] = []
    step: LLMStep | None = None
    if failures and args.triage:
        texts = {t.node_id: f"{t.message or ''}\n{t.detail or ''}" for t in failures[: review.MAX_TRIAGE]}
        listing = await list_project_files(root)
        index = review.SourceIndex(root, listing.files)
        system, user = review.triage_task(list(texts.items()))
        got = await run_cited_list(
            ctx,
            name="test_triage",
            kind=TaskKind.TRIAGE,
            system=system,
            user=user,
            schema=review.TRIAGE_SCHEMA,
            key="triage",
            check=lambda output: review.ground_triage(output, texts, index),
            allow_claude=args.allow_claude,
            max_output_tokens=review.TRIAGE_TOKENS,
        )
        step = got.step
        triage = [
            Triage(
                test=str(item["test"]),
                likely_cause=str(item.get("likely_cause", ""))[:1000],
                file=str(item["file"]),
                line=int(item["line"]),
            )
            for item in got.items
        ]
    await ctx.report(2, 2, "tests done")
    reports = failure_reports(failures)
    listed = compact_listing(result.tests)
    ok = result.exit_code == 0 and not result.timed_out
    return RunTestsOutput(
        project=str(root),
        passed=ok,
        exit_code=result.exit_code,
        exit_meaning=result.exit_meaning,
        error=result.error,
        timed_out=result.timed_out,
        duration_s=result.duration_s,
        totals=result.totals.model_dump(),
        failures=reports,
        failures_omitted=result.totals.failed + result.totals.errors - len(reports),
        tests=listed,
        tests_omitted=result.totals.tests - len(listed),
        triage=triage,
        output_tail=tail_without_failures(result.output_tail, reports),
        llm=step,
    )
