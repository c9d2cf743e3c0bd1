"""Dead Python code (unused functions, classes, variables, imports; unreachable code) via vulture.

All files go to vulture in one run: it decides "unused" across the whole set, so analysing files
one by one would report names that other files use. Vulture's ``[tool.vulture]`` settings in the
project's pyproject.toml (ignore lists, whitelists) apply because it runs in the project root.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from pydantic import Field

from caelum_mcp.core.types import Frozen

from ..paths import relative_posix, resolve_root
from .analysers import ANALYSER_TIMEOUT_S, first_line, run_python_analyser
from .files import select_files
from .models import AnalyzerError, Finding, Severity

# "app/x.py:12: unused function 'f' (60% confidence)" and "..., 3 lines)" with --sort-by-size.
_REPORT_LINE = re.compile(
    r"^(?P<file>.+?):(?P<line>\d+): (?P<message>.+?) \((?P<confidence>\d+)% confidence(?:, (?P<size>\d+) lines?)?\)$"
)
_KIND_AND_NAME = re.compile(
    r"^(?P<kind>unused \w+|unreachable code|redundant if-condition|unsatisfiable \S+ condition)"
    r"(?: (?:after )?'(?P<name>[^']+)')?"
)
_ERROR_LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<message>.+)$")


class DeadCodeFinding(Finding):
    """A vulture report. ``kind`` is e.g. ``unused function``; ``confidence_pct`` is vulture's 60-100."""

    kind: str
    name: str | None = None
    confidence_pct: int
    size_lines: int | None = None


class DeadCodeResult(Frozen):
    root: str
    files_checked: int
    min_confidence: int
    findings: tuple[DeadCodeFinding, ...]
    errors: tuple[AnalyzerError, ...] = Field(default=())


def _severity(kind: str) -> Severity:
    # Unreachable code and never-true conditions usually hide a logic bug; unused names are tidy-ups.
    if kind.startswith(("unreachable", "unsatisfiable", "redundant")):
        return "medium"
    return "low"


def parse_vulture_line(root: Path, line: str) -> DeadCodeFinding | None:
    """One line of vulture's report, or None when the line is not a report."""
    match = _REPORT_LINE.match(line.strip())
    if not match:
        return None
    message = match.group("message")
    described = _KIND_AND_NAME.match(message)
    kind = described.group("kind") if described else "dead code"
    confidence = int(match.group("confidence"))
    return DeadCodeFinding(
        tool="vulture",
        rule=kind.replace(" ", "-"),
        severity=_severity(kind),
        file=relative_posix(root, match.group("file")),
        line=int(match.group("line")),
        message=message,
        confidence=f"{confidence}%",
        kind=kind,
        # "unreachable code after 'return'" quotes a keyword, not a name in the code.
        name=described.group("name") if described and kind.startswith("unused") else None,
        confidence_pct=confidence,
        size_lines=int(match.group("size")) if match.group("size") else None,
    )


async def dead_code(
    root: str | Path,
    files: Iterable[str | Path] | None = None,
    min_confidence: int = 60,
    *,
    timeout_s: float = ANALYSER_TIMEOUT_S,
) -> DeadCodeResult:
    """Vulture's dead-code report for the project's Python files (or the given files/directories).

    Files vulture cannot parse are listed in ``errors``; the rest are still analysed. Paths must
    be inside ``root``.
    """
    if not 0 <= min_confidence <= 100:
        raise ValueError("min_confidence must be between 0 and 100")
    base = resolve_root(root)
    targets = await select_files(base, files, (".py", ".pyi"))
    if not targets:
        return DeadCodeResult(root=str(base), files_checked=0, min_confidence=min_confidence, findings=())
    args = ["--min-confidence", str(min_confidence), "--", *targets]
    run = await run_python_analyser("vulture", "vulture", args, cwd=base, timeout_s=timeout_s)
    findings: list[DeadCodeFinding] = []
    errors: list[AnalyzerError] = []
    if isinstance(run, AnalyzerError):
        errors.append(run)
    else:
        for line in run.stdout.splitlines():
            finding = parse_vulture_line(base, line)
            if finding is not None:
                findings.append(finding)
        # Exit codes: 0 nothing found, 3 dead code found, 1 some input unparsable, 2 bad arguments;
        # an unparsable file goes to stderr as "file:line: message" whatever the exit code.
        for line in run.stderr.splitlines():
            match = _ERROR_LINE.match(line.strip())
            if match:
                errors.append(
                    AnalyzerError(
                        tool="vulture", message=match.group("message"), file=relative_posix(base, match.group("file"))
                    )
                )
        if run.returncode not in (0, 1, 3) or (run.returncode == 1 and not errors):
            errors.append(
                AnalyzerError(tool="vulture", message=first_line(run.stderr) or f"vulture exited {run.returncode}")
            )
    findings.sort(key=lambda f: (f.file, f.line))
    return DeadCodeResult(
        root=str(base),
        files_checked=len(targets),
        min_confidence=min_confidence,
        findings=tuple(findings),
        errors=tuple(errors),
    )
