"""The development supervisor: analyse and improve code, review changes, run and triage tests.

One module per external tool (:mod:`.analyze` with :mod:`.improve`, :mod:`.changes`,
:mod:`.project_tests`); this module declares them and the internal tools they use
(``caelum_mcp.tools.code``). Every LLM step is grounded (what the model cites must exist) and
declares what it needs, so with no model able to do it the step is skipped at once and the
analysers' results come back on their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from caelum_mcp.supervisors.base import ExternalTool, InternalTool, Supervisor
from caelum_mcp.tools.code.complexity import complexity
from caelum_mcp.tools.code.dead_code import dead_code
from caelum_mcp.tools.code.deps import dependency_check
from caelum_mcp.tools.code.git import git_changes
from caelum_mcp.tools.code.lint import lint
from caelum_mcp.tools.code.patches import check_patches, ruff_fix_patches
from caelum_mcp.tools.code.security import security_scan
from caelum_mcp.tools.code.structure import project_structure
from caelum_mcp.tools.code.tests_runner import run_tests

from .analyze import AnalyzeInput, AnalyzeOutput, analyze_and_improve_code, result_tokens
from .changes import ReviewInput, ReviewOutput, review_changes
from .project_tests import RunTestsInput, RunTestsOutput, run_project_tests

__all__ = ["DevelopmentSupervisor"]


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
                    "on a project, then have a local LLM prioritise the findings (grounded: every cited file, "
                    "line and rule must exist). task=improve also returns patches, each verified in a copy to "
                    "apply and lint clean. Never modifies the project."
                ),
                input_model=AnalyzeInput,
                output_model=AnalyzeOutput,
                handler=analyze_and_improve_code,
                uses_roots=True,
                more_hint="narrow with `paths`, or raise `max_findings` (up to 1000)",
                result_tokens=result_tokens,
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
                more_hint="review a smaller range of commits (`base`/`head`)",
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
                more_hint="run fewer tests with `selection` (files or node ids)",
            ),
        )

    def internal_tools(self) -> Sequence[InternalTool]:
        return (
            InternalTool("project_structure", project_structure),
            InternalTool("lint", lint),
            InternalTool("security_scan", security_scan),
            InternalTool("complexity", complexity),
            InternalTool("dead_code", dead_code),
            InternalTool("dependency_check", dependency_check),
            InternalTool("run_tests", run_tests),
            InternalTool("git_changes", git_changes),
            InternalTool("ruff_fix_patches", ruff_fix_patches),
            InternalTool("check_patches", check_patches),
        )
