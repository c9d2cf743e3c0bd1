"""Lint a project with ruff, under the project's own ruff configuration.

Severity is ours, not ruff's (ruff calls every violation an error):

- ``high``: code that cannot run as written: syntax errors (``invalid-syntax``, E9), undefined
  names (F82), misplaced ``return``/``yield``/``break`` (F7), broken comparisons and asserts (F63),
  and pylint errors (PLE).
- ``medium``: likely bugs or risks: other pyflakes checks (F), bugbear (B), security (S), async
  misuse (ASYNC), pylint warnings (PLW), ``RUF006`` (dangling task).
- ``low``: everything else (style, imports, upgrades, naming, docs), including unused imports and
  variables (F401, F841), which are tidy-ups rather than bugs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import Field

from caelum_mcp.core.types import Frozen

from ..paths import relative_posix, resolve_root
from .analysers import ANALYSER_TIMEOUT_S, first_line, run_python_analyser
from .files import select_files
from .models import (
    AnalyzerError,
    Finding,
    Severity,
    severity_counts,
    sort_findings,
)

RUFF_SUFFIXES = (".py", ".pyi", ".ipynb")
# Prefixes are followed by a digit so that e.g. FBT, SIM or BLE are not taken for F, S or B.
_HIGH = re.compile(r"^(?:E9|F63|F7|F82|PLE)\d")
_LOW_PYFLAKES = re.compile(r"^F(?:401|841)$")
_MEDIUM = re.compile(r"^(?:(?:F|B|S|ASYNC|PLW)\d|RUF006$)")


class LintFinding(Finding):
    """A ruff finding; ``fix_available`` says ruff can fix it, ``fix_applicability`` how safely."""

    fix_available: bool = False
    fix_applicability: str | None = None
    url: str | None = None


class LintResult(Frozen):
    """Ruff's findings for the project (or the requested files), most severe first."""

    root: str
    files_checked: int
    findings: tuple[LintFinding, ...]
    counts: dict[str, int]
    fixable: int
    errors: tuple[AnalyzerError, ...] = Field(default=())


def ruff_severity(code: str | None) -> Severity:
    """Our severity for a ruff rule code (None or ``invalid-syntax`` for a syntax error)."""
    if not code or code == "invalid-syntax" or _HIGH.match(code):
        return "high"
    if _LOW_PYFLAKES.match(code):
        return "low"
    if _MEDIUM.match(code):
        return "medium"
    return "low"


def _finding(root: Path, item: dict[str, Any]) -> LintFinding:
    code = item.get("code") or "invalid-syntax"
    location = item.get("location") or {}
    end = item.get("end_location") or {}
    fix = item.get("fix")
    return LintFinding(
        tool="ruff",
        rule=str(code),
        severity=ruff_severity(code),
        file=relative_posix(root, str(item.get("filename", ""))),
        line=int(location.get("row") or 1),
        end_line=int(end["row"]) if end.get("row") else None,
        column=int(location["column"]) if location.get("column") else None,
        message=str(item.get("message", "")),
        fix_available=fix is not None,
        fix_applicability=str(fix.get("applicability")) if isinstance(fix, dict) else None,
        url=item.get("url"),
    )


async def lint(
    root: str | Path,
    files: Iterable[str | Path] | None = None,
    *,
    timeout_s: float = ANALYSER_TIMEOUT_S,
) -> LintResult:
    """Run ``ruff check`` over the project (``files=None``) or the given files/directories.

    The project's ruff configuration (pyproject.toml / ruff.toml, including its excludes) applies;
    ``--exit-zero`` and ``--no-cache`` are forced so that findings are never mistaken for a failure
    and nothing is written into the project. Paths must be inside ``root``.
    """
    base = resolve_root(root)
    targets = await select_files(base, files, RUFF_SUFFIXES)
    if not targets:
        return LintResult(root=str(base), files_checked=0, findings=(), counts=severity_counts(()), fixable=0)
    args = ["check", "--output-format", "json", "--no-cache", "--exit-zero", "--force-exclude", "--", *targets]
    run = await run_python_analyser("ruff", "ruff", args, cwd=base, timeout_s=timeout_s)
    errors: list[AnalyzerError] = []
    findings: list[LintFinding] = []
    if isinstance(run, AnalyzerError):
        errors.append(run)
    elif run.returncode != 0:
        # With --exit-zero a non-zero status means ruff itself failed (bad config, bad option).
        errors.append(AnalyzerError(tool="ruff", message=first_line(run.stderr) or f"ruff exited {run.returncode}"))
    else:
        try:
            items = json.loads(run.stdout or "[]")
        except json.JSONDecodeError:
            errors.append(AnalyzerError(tool="ruff", message="ruff printed output that is not JSON"))
            items = []
        findings = [_finding(base, item) for item in items if isinstance(item, dict)]
    return LintResult(
        root=str(base),
        files_checked=len(targets),
        findings=sort_findings(findings),
        counts=severity_counts(findings),
        fixable=sum(1 for f in findings if f.fix_available),
        errors=tuple(errors),
    )
