"""Shapes shared by the code-analysis tools: one finding, one analyser error, severity order."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Literal, TypeVar

from caelum_mcp.core.types import Frozen

Severity = Literal["info", "low", "medium", "high", "critical"]

F = TypeVar("F", bound="Finding")

SEVERITY_ORDER: dict[Severity, int] = {"info": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}


class Finding(Frozen):
    """One problem an analyser reported at a place in the project.

    ``file`` is relative to the project root in POSIX form. ``line`` and ``column`` are 1-based
    (``column`` is None when the analyser does not report one). ``rule`` is the analyser's own id
    (ruff ``F401``, bandit ``B608``, ``aws-access-key-id`` for the secrets check).
    """

    tool: str
    rule: str
    severity: Severity
    file: str
    line: int
    end_line: int | None = None
    column: int | None = None
    message: str
    confidence: str | None = None


class AnalyzerError(Frozen):
    """An analyser failed, or could not read a file; the rest of the result is still valid.

    ``file`` is set when the failure concerns one file (e.g. a syntax error bandit could not parse).
    """

    tool: str
    message: str
    file: str | None = None


def severity_counts(findings: Iterable[Finding]) -> dict[str, int]:
    """Findings per severity, every severity present (zero when none), in ascending order."""
    counts = Counter(f.severity for f in findings)
    return {level: counts.get(level, 0) for level in SEVERITY_ORDER}


def sort_findings(findings: Iterable[F]) -> tuple[F, ...]:
    """Most severe first, then by file and line, so the worst problems lead any truncated view."""
    return tuple(sorted(findings, key=lambda f: (-SEVERITY_ORDER[f.severity], f.file, f.line, f.rule)))


def tail(text: str, limit: int) -> str:
    """The last ``limit`` characters of ``text`` (where tracebacks and summaries are), marked if cut."""
    if len(text) <= limit:
        return text
    return "…" + text[-(limit - 1) :]
