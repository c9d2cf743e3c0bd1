"""``run_project_tests``: the project's pytest suite, per-test results, and grounded triage.

pytest runs in a subprocess with a timeout (the project's own ``.venv`` when it has one) and JUnit
output. Each failure is triaged by the LLM (task kind ``triage``): the likely cause and the place
to look, which must appear in the failure text or exist in the project.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from caelum_mcp.llm import TaskKind
from caelum_mcp.supervisors.base import ToolContext, ToolOutput
from caelum_mcp.supervisors.llm_steps import LLMStep, run_cited_list
from caelum_mcp.tools.code import review
from caelum_mcp.tools.code.files import list_project_files
from caelum_mcp.tools.code.tests_runner import TestCaseResult, TestRunResult, run_tests
from caelum_mcp.tools.paths import resolve_project


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


class RunTestsOutput(ToolOutput):
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
    llm: LLMStep | None = None


async def run_project_tests(args: RunTestsInput, ctx: ToolContext) -> RunTestsOutput:
    root = resolve_project(args.project, ctx.roots)
    await ctx.report(0, 2, "running the tests")
    result: TestRunResult = await run_tests(root, selection=args.selection, timeout_s=args.timeout_s)
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
        llm=step,
    )
