"""``task=improve``: patches for the findings, each proven in a temporary copy of the project.

Two sources: ruff's own safe fixes, and LLM line edits (task kind ``code_edit``) for the top
findings ruff cannot fix. An LLM edit is grounded by the patch check itself: it must turn into a
diff that applies, leaves the file parsing, adds no lint finding and (with ``run_tests``) keeps the
tests passing. The same check feeds the router's confidence, so edits that do not apply lower it
and may escalate; only edits that pass reach the result. Every check uses the ``[tools]`` limits.
A ruff failure is reported in the result's ``errors``; it never fails the call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caelum_mcp.core.errors import PathNotAllowedError
from caelum_mcp.core.llm import GroundingResult, TaskKind
from caelum_mcp.supervisors.base import ToolContext
from caelum_mcp.supervisors.llm_steps import LLMStep, run_cited_list
from caelum_mcp.tools.code import review
from caelum_mcp.tools.code.models import AnalyzerError, Finding
from caelum_mcp.tools.code.patches import CheckedPatch, Patch, RuffFixError, check_patches, edit_patch, ruff_fix_patches

if TYPE_CHECKING:
    from .analyze import AnalyzeInput

MAX_FIX_FILES = 20
MAX_LLM_TARGETS = 3


class EditCheck:
    """The grounding check of ``code_fix``: turn each edit into a patch and check it in a copy.

    Remembers the checked patches of every answer it saw, so the step can return the ones that
    passed without checking them again.
    """

    def __init__(self, root: Path, ctx: ToolContext, *, run_tests: bool) -> None:
        self.root = root
        self.ctx = ctx
        self.run_tests = run_tests
        self.checked: dict[str, list[CheckedPatch | None]] = {}

    @staticmethod
    def key(output: Mapping[str, Any]) -> str:
        return json.dumps(output, sort_keys=True, default=str)

    async def __call__(self, output: dict[str, Any]) -> GroundingResult:
        edits = output.get("edits")
        items: list[Any] = edits if isinstance(edits, list) else []
        if not items:
            return GroundingResult(score=0.0, problems=("no edits given",))
        patches: list[tuple[int, Patch]] = []
        problems: list[str] = []
        for i, edit in enumerate(items):
            try:
                patch = edit_patch(
                    self.root,
                    str(edit["file"]),
                    int(edit["start_line"]),
                    int(edit["end_line"]),
                    str(edit["replacement"]),
                    description=str(edit.get("description", ""))[:300],
                    rules=(str(edit.get("rule", "")),),
                )
            except (ValueError, KeyError, TypeError, PathNotAllowedError) as exc:
                problems.append(f"edit {i + 1}: {exc}")
                continue
            patches.append((i, patch))
        results: list[CheckedPatch | None] = [None] * len(items)
        if patches:
            limits = self.ctx.limits
            checked = await check_patches(
                self.root,
                [p for _, p in patches],
                run_tests=self.run_tests,
                lint_timeout_s=limits.analyser_timeout_s,
                test_timeout_s=limits.analyser_timeout_s,
            )
            for (i, _), result in zip(patches, checked, strict=True):
                check = result.check
                if check.applies and check.lint_clean and check.tests_passed is not False:
                    results[i] = result
                else:
                    why = check.error or ("; ".join(check.new_findings[:2]) or "tests failed")
                    problems.append(f"edit {i + 1} ({result.patch.file}): {why}")
        self.checked[self.key(output)] = results
        valid = tuple(i for i, r in enumerate(results) if r is not None)
        return GroundingResult(score=len(valid) / len(items), problems=tuple(problems), valid=valid)


async def propose_patches(
    ctx: ToolContext, args: AnalyzeInput, root: Path, findings: Sequence[Finding], index: review.SourceIndex
) -> tuple[list[CheckedPatch], list[AnalyzerError], LLMStep | None]:
    """The checked patches, the analyser errors met on the way, and the LLM edit step's report
    (None when it was not asked for)."""
    limits = ctx.limits
    top_files = list(dict.fromkeys(f.file for f in findings if f.file in index.files))[:MAX_FIX_FILES]
    errors: list[AnalyzerError] = []
    ruff_patches: list[Patch] = []
    py_files = [f for f in top_files if f.endswith(".py")]
    if py_files:
        try:
            ruff_patches = await ruff_fix_patches(root, py_files, timeout_s=limits.analyser_timeout_s)
        except RuffFixError as exc:
            errors.append(AnalyzerError(tool="ruff", message=f"safe fixes unavailable: {exc}"))
    checked = (
        await check_patches(
            root,
            ruff_patches,
            run_tests=args.run_tests,
            lint_timeout_s=limits.analyser_timeout_s,
            test_timeout_s=limits.analyser_timeout_s,
        )
        if ruff_patches
        else []
    )
    fixable = {p.file for p in ruff_patches}
    targets = [f for f in findings if f.file in index.files and f.file not in fixable and f.tool != "dependencies"]
    if not targets[:MAX_LLM_TARGETS] or not args.llm_review:
        return checked, errors, None
    system, user = review.edits_task(targets[:MAX_LLM_TARGETS], index)
    check = EditCheck(root, ctx, run_tests=args.run_tests)
    got = await run_cited_list(
        ctx,
        name="code_fix",
        kind=TaskKind.CODE_EDIT,
        system=system,
        user=user,
        schema=review.EDITS_SCHEMA,
        key="edits",
        check=check,
        allow_claude=args.allow_claude,
        max_output_tokens=review.EDITS_TOKENS,
    )
    proven = [p for p in check.checked.get(EditCheck.key(got.output), []) if p is not None] if got.items else []
    return checked + proven, errors, got.step
