"""Cyclomatic complexity per function (radon for Python, lizard for other languages) and the
maintainability index of each Python file (radon).

Functions above the usual thresholds also become findings (rule ``high-complexity``): CCN 11-20
(radon rank C) is ``low``, 21-40 (D, E) ``medium``, above 40 (F) ``high``.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio
from pydantic import Field

from caelum_mcp.core.types import Frozen

from ..paths import relative_posix, resolve_root
from .analysers import ANALYSER_TIMEOUT_S, first_line, run_python_analyser
from .files import select_files
from .incremental import PartStore, per_file, salt_for
from .languages import LIZARD_SUFFIXES, language_for
from .models import AnalyzerError, Finding, Severity, sort_findings

WORST_COUNT = 10
MAX_FUNCTIONS = 5000


class FunctionComplexity(Frozen):
    """One function or method. ``name`` is qualified (``Class.method``, ``outer.inner``)."""

    language: str
    file: str
    name: str
    line: int
    end_line: int | None
    ccn: int
    nloc: int | None = None
    parameters: int | None = None
    rank: str | None = None


class LanguageComplexity(Frozen):
    language: str
    files: int
    functions: int
    mean_ccn: float
    max_ccn: int
    over_threshold: int


class MaintainabilityIndex(Frozen):
    """Radon's maintainability index (0-100; rank A >= 20, B 10-19, C < 10)."""

    file: str
    mi: float
    rank: str


class ComplexityResult(Frozen):
    root: str
    functions: tuple[FunctionComplexity, ...]
    worst: tuple[FunctionComplexity, ...]
    languages: tuple[LanguageComplexity, ...]
    maintainability: tuple[MaintainabilityIndex, ...]
    findings: tuple[Finding, ...]
    threshold: int
    truncated: bool = False
    errors: tuple[AnalyzerError, ...] = Field(default=())


def _severity_for(ccn: int) -> Severity:
    if ccn > 40:
        return "high"
    if ccn > 20:
        return "medium"
    return "low"


def _radon_blocks(root: Path, rel: str, blocks: list[Any], prefix: str = "") -> Iterable[FunctionComplexity]:
    for block in blocks:
        if not isinstance(block, dict) or block.get("type") == "class":
            continue  # classes are aggregates; their methods are listed on their own
        name = str(block.get("name", "?"))
        qualified = prefix + (f"{block['classname']}.{name}" if block.get("classname") and not prefix else name)
        yield FunctionComplexity(
            language="Python",
            file=relative_posix(root, rel),
            name=qualified,
            line=int(block.get("lineno") or 1),
            end_line=int(block["endline"]) if block.get("endline") else None,
            ccn=int(block.get("complexity") or 1),
            rank=block.get("rank"),
        )
        yield from _radon_blocks(root, rel, block.get("closures") or [], prefix=qualified + ".")


class _RadonPart(Frozen):
    """Radon's output for one file."""

    functions: tuple[FunctionComplexity, ...] = ()
    maintainability: MaintainabilityIndex | None = None
    errors: tuple[AnalyzerError, ...] = ()


# radon reads its settings from these (a [radon] section, or [tool.radon])
_RADON_CONFIG = ["radon.cfg", "setup.cfg", "pyproject.toml"]


async def _radon_per_file(
    root: Path, targets: list[str], timeout_s: float, store: PartStore | None
) -> tuple[list[FunctionComplexity], list[MaintainabilityIndex], list[AnalyzerError]]:
    """Radon over ``targets``, reusing each unchanged file's stored output (see ``incremental``)."""

    async def analyse(subset: list[str]) -> tuple[dict[str, _RadonPart], list[AnalyzerError]]:
        functions, indexes, errors = await _radon(root, subset, timeout_s)
        by_file: dict[str, dict[str, Any]] = defaultdict(lambda: {"functions": [], "errors": []})
        for fn in functions:
            by_file[fn.file]["functions"].append(fn)
        for index in indexes:
            by_file[index.file]["maintainability"] = index
        failures = []
        for error in errors:
            if error.file:
                by_file[error.file]["errors"].append(error)
            else:
                failures.append(error)
        return {rel: _RadonPart.model_validate(part) for rel, part in by_file.items()}, failures

    salt = salt_for("radon", root, _RADON_CONFIG)
    parts, failures = await per_file(store, "radon", salt, root, targets, _RadonPart, analyse)
    values = parts.values()
    return (
        [fn for part in values for fn in part.functions],
        [part.maintainability for part in values if part.maintainability is not None],
        [*failures, *(error for part in values for error in part.errors)],
    )


async def _radon(
    root: Path, targets: list[str], timeout_s: float
) -> tuple[list[FunctionComplexity], list[MaintainabilityIndex], list[AnalyzerError]]:
    functions: list[FunctionComplexity] = []
    indexes: list[MaintainabilityIndex] = []
    errors: list[AnalyzerError] = []
    if not targets:
        return functions, indexes, errors
    for command in ("cc", "mi"):
        run = await run_python_analyser(
            "radon", "radon", [command, "-j", "-s", "--", *targets], cwd=root, timeout_s=timeout_s
        )
        if isinstance(run, AnalyzerError):
            errors.append(run)
            continue
        try:
            report = json.loads(run.stdout or "{}")
        except json.JSONDecodeError:
            errors.append(AnalyzerError(tool="radon", message=first_line(run.stderr) or "radon printed no JSON"))
            continue
        for rel, value in report.items():
            if isinstance(value, dict) and "error" in value:
                # Radon reports a file it cannot parse per file; record it once (from cc).
                if command == "cc":
                    errors.append(
                        AnalyzerError(tool="radon", message=str(value["error"]), file=relative_posix(root, rel))
                    )
            elif command == "cc" and isinstance(value, list):
                functions.extend(_radon_blocks(root, rel, value))
            elif command == "mi" and isinstance(value, dict):
                indexes.append(
                    MaintainabilityIndex(
                        file=relative_posix(root, rel), mi=round(float(value["mi"]), 2), rank=str(value["rank"])
                    )
                )
    return functions, indexes, errors


async def _lizard(
    root: Path, targets: list[str], timeout_s: float
) -> tuple[list[FunctionComplexity], list[AnalyzerError]]:
    if not targets:
        return [], []
    run = await run_python_analyser("lizard", "lizard", ["--csv", "--", *targets], cwd=root, timeout_s=timeout_s)
    if isinstance(run, AnalyzerError):
        return [], [run]
    if run.returncode not in (0, 1):
        return [], [AnalyzerError(tool="lizard", message=first_line(run.stderr) or f"lizard exited {run.returncode}")]
    functions: list[FunctionComplexity] = []
    # Columns: NLOC, CCN, tokens, parameters, length, location, file, name, long name, start, end.
    for row in csv.reader(io.StringIO(run.stdout)):
        if len(row) < 11 or not row[0].isdigit():
            continue
        rel = relative_posix(root, row[6])
        functions.append(
            FunctionComplexity(
                language=language_for(rel) or "unknown",
                file=rel,
                name=row[7],
                line=int(row[9]),
                end_line=int(row[10]),
                ccn=int(row[1]),
                nloc=int(row[0]),
                parameters=int(row[3]),
            )
        )
    return functions, []


def _summaries(functions: list[FunctionComplexity], threshold: int) -> tuple[LanguageComplexity, ...]:
    by_language: dict[str, list[FunctionComplexity]] = defaultdict(list)
    for fn in functions:
        by_language[fn.language].append(fn)
    return tuple(
        LanguageComplexity(
            language=language,
            files=len({fn.file for fn in fns}),
            functions=len(fns),
            mean_ccn=round(statistics.fmean(fn.ccn for fn in fns), 2),
            max_ccn=max(fn.ccn for fn in fns),
            over_threshold=sum(1 for fn in fns if fn.ccn > threshold),
        )
        for language, fns in sorted(by_language.items())
    )


async def complexity(
    root: str | Path,
    files: Iterable[str | Path] | None = None,
    *,
    threshold: int = 10,
    timeout_s: float = ANALYSER_TIMEOUT_S,
    store: PartStore | None = None,
) -> ComplexityResult:
    """Complexity of every function in the project (``files=None``) or the given files/directories.

    ``worst`` holds the most complex functions; ``functions`` is capped at 5000 (most complex kept,
    ``truncated`` set). Files radon cannot parse are listed in ``errors``. Paths must be inside ``root``.
    With a ``store``, radon runs only on the Python files whose content it has not seen.
    """
    base = resolve_root(root)
    chosen = await select_files(base, files, (".py", *LIZARD_SUFFIXES))
    python_files = [f for f in chosen if f.endswith(".py")]
    other_files = [f for f in chosen if not f.endswith(".py")]
    radon_out: tuple[list[FunctionComplexity], list[MaintainabilityIndex], list[AnalyzerError]] = ([], [], [])
    lizard_out: tuple[list[FunctionComplexity], list[AnalyzerError]] = ([], [])

    async def radon_task() -> None:
        nonlocal radon_out
        radon_out = await _radon_per_file(base, python_files, timeout_s, store)

    async def lizard_task() -> None:
        nonlocal lizard_out
        lizard_out = await _lizard(base, other_files, timeout_s)

    async with anyio.create_task_group() as tg:
        tg.start_soon(radon_task)
        tg.start_soon(lizard_task)
    functions = sorted([*radon_out[0], *lizard_out[0]], key=lambda fn: (-fn.ccn, fn.file, fn.line))
    findings = [
        Finding(
            tool="radon" if fn.language == "Python" else "lizard",
            rule="high-complexity",
            severity=_severity_for(fn.ccn),
            file=fn.file,
            line=fn.line,
            end_line=fn.end_line,
            message=f"{fn.name} has cyclomatic complexity {fn.ccn} (threshold {threshold}); split it up",
        )
        for fn in functions
        if fn.ccn > threshold
    ]
    return ComplexityResult(
        root=str(base),
        functions=tuple(functions[:MAX_FUNCTIONS]),
        worst=tuple(functions[:WORST_COUNT]),
        languages=_summaries(functions, threshold),
        maintainability=tuple(sorted(radon_out[1], key=lambda m: (m.mi, m.file))),
        findings=sort_findings(findings),
        threshold=threshold,
        truncated=len(functions) > MAX_FUNCTIONS,
        errors=(*radon_out[2], *lizard_out[1]),
    )
