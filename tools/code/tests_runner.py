"""Run a project's pytest suite in a subprocess and read the outcome from its JUnit XML report.

The interpreter is the project's own ``.venv`` when it has one (its tests import its own
dependencies), else the one caelum-mcp runs on. ``-p no:cacheprovider`` keeps pytest from writing
``.pytest_cache`` into the project; the JUnit file goes to a private temporary folder.
"""

from __future__ import annotations

import os
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field

from caelum_mcp.errors import PathNotAllowedError
from caelum_mcp.types import Frozen

from ..paths import resolve_root, resolve_within
from ..process import run_command
from .models import tail

Outcome = Literal["passed", "failed", "error", "skipped"]

MAX_TESTS = 2000
MAX_MESSAGE_CHARS = 500
MAX_DETAIL_CHARS = 4000
MAX_OUTPUT_TAIL_CHARS = 6000

# An error (e.g. in teardown) outranks a failure in the same test case.
_OUTCOME_TAGS: tuple[tuple[str, Outcome], ...] = (("error", "error"), ("failure", "failed"), ("skipped", "skipped"))

EXIT_MEANINGS = {
    0: "all tests passed",
    1: "some tests failed",
    2: "test run interrupted (collection error or KeyboardInterrupt)",
    3: "pytest internal error",
    4: "pytest usage error (bad arguments or selection)",
    5: "no tests collected",
}


class TestCaseResult(Frozen):
    """One test. ``message`` is pytest's one-line reason, ``detail`` the end of its report (capped)."""

    node_id: str
    outcome: Outcome
    duration_s: float
    file: str | None = None
    line: int | None = None
    message: str | None = None
    detail: str | None = None


class TestTotals(Frozen):
    tests: int = 0
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0


class TestRunResult(Frozen):
    root: str
    command: tuple[str, ...]
    python: str
    exit_code: int | None
    exit_meaning: str
    timed_out: bool
    duration_s: float
    totals: TestTotals
    tests: tuple[TestCaseResult, ...]
    tests_truncated: bool = False
    output_tail: str = ""
    errors: tuple[str, ...] = Field(default=())


def project_python(root: Path) -> str:
    """The project's virtualenv interpreter when present, else ours.

    The venv's ``python`` is usually a symlink to a system interpreter, so it is not resolved (that
    would leave the root); only its location inside the project is checked.
    """
    for candidate in (root / ".venv" / "bin" / "python", root / ".venv" / "Scripts" / "python.exe"):
        if candidate.is_file():
            return str(candidate)
    return sys.executable


def _node_id(case: ET.Element) -> tuple[str, str | None, int | None]:
    name = case.get("name", "?")
    classname = case.get("classname", "")
    file = case.get("file")
    line = int(case.get("line", "0")) + 1 if case.get("line", "").isdigit() else None
    if file:
        # classname is "pkg.module.Class": keep the parts after the module path as the class chain.
        module = file.removesuffix(".py").replace("/", ".")
        classes = classname.removeprefix(module).strip(".")
        parts = [file, *([c for c in classes.split(".") if c] if classes else []), name]
        return "::".join(parts), file, line
    return (f"{classname}::{name}" if classname else name), None, line


def parse_junit(path: Path) -> tuple[list[TestCaseResult], TestTotals, bool]:
    """Test cases and totals from pytest's JUnit XML (``junit_family=xunit1``)."""
    tree = ET.parse(path)  # noqa: S314 - our own report; expat refuses entity-expansion bombs
    cases: list[TestCaseResult] = []
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    truncated = False
    for case in tree.getroot().iter("testcase"):
        outcome: Outcome = "passed"
        reason: ET.Element | None = None
        for tag, kind in _OUTCOME_TAGS:
            element = case.find(tag)
            if element is not None:
                outcome, reason = kind, element
                break
        counts[outcome] += 1
        if len(cases) >= MAX_TESTS:
            truncated = True
            continue
        node_id, file, line = _node_id(case)
        message = reason.get("message") if reason is not None else None
        detail = (reason.text or "").strip() if reason is not None else ""
        cases.append(
            TestCaseResult(
                node_id=node_id,
                outcome=outcome,
                duration_s=round(float(case.get("time", "0") or 0), 4),
                file=file,
                line=line,
                message=message[:MAX_MESSAGE_CHARS] if message else None,
                detail=tail(detail, MAX_DETAIL_CHARS) if detail else None,
            )
        )
    total = sum(counts.values())
    totals = TestTotals(
        tests=total, passed=counts["passed"], failed=counts["failed"], errors=counts["error"], skipped=counts["skipped"]
    )
    return cases, totals, truncated


def _checked_selection(root: Path, selection: Sequence[str] | None) -> list[str]:
    """Node ids / paths only: an option here could load plugins or write files outside the project."""
    chosen: list[str] = []
    for entry in selection or ():
        if not entry or entry.startswith("-"):
            raise PathNotAllowedError(f"test selection {entry!r} is not a test path or node id inside the project")
        path_part = entry.split("::", 1)[0]
        resolve_within(root, path_part)
        chosen.append(entry)
    return chosen


def tree_first_env(root: Path) -> dict[str, str]:
    """Our environment with ``root/src`` (when present) and ``root`` first on ``PYTHONPATH``.

    For a patched copy of a project whose ``.venv`` has the original installed in editable mode:
    that install points at the original files, and without this the copy's tests would import
    them instead of the patched ones. ``PYTHONPATH`` comes before site-packages and its ``.pth``
    entries, and setuptools' editable finder runs only after the path has been searched.
    """
    first = [str(root / "src")] if (root / "src").is_dir() else []
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*first, str(root), *rest])}


async def run_tests(
    root: str | Path,
    *,
    selection: Sequence[str] | None = None,
    timeout_s: float = 300,
    tree_first: bool = False,
) -> TestRunResult:
    """Run pytest for the project under ``root`` (all tests, or the ``selection`` of paths/node ids).

    A run past ``timeout_s`` is killed with its whole process group (``timed_out``); results that
    were not reported by then are lost. Exit code 5 means no tests were collected. ``tree_first``
    makes the tests import the code under ``root`` even where the project is installed elsewhere
    (see :func:`tree_first_env`).
    """
    base = resolve_root(root)
    chosen = _checked_selection(base, selection)
    python = project_python(base)
    env = tree_first_env(base) if tree_first else None
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="caelum-pytest-") as tmp:
        report = Path(tmp) / "junit.xml"
        argv = [
            python,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "junit_family=xunit1",
            f"--junitxml={report}",
            *chosen,
        ]
        try:
            run = await run_command(argv, cwd=base, timeout_s=timeout_s, max_output_bytes=4 * 1024 * 1024, env=env)
        except OSError as exc:
            return TestRunResult(
                root=str(base),
                command=tuple(argv),
                python=python,
                exit_code=None,
                exit_meaning=f"could not start {python}: {exc.strerror or exc}",
                timed_out=False,
                duration_s=0.0,
                totals=TestTotals(),
                tests=(),
                errors=(f"could not start {python}",),
            )
        cases: list[TestCaseResult] = []
        totals = TestTotals()
        truncated = False
        if report.is_file():
            try:
                cases, totals, truncated = parse_junit(report)
            except ET.ParseError as exc:
                errors.append(f"could not read pytest's JUnit report: {exc}")
        elif not run.timed_out:
            errors.append("pytest wrote no JUnit report")
    output = run.stdout + ("\n" + run.stderr if run.stderr.strip() else "")
    if run.timed_out:
        meaning = f"timed out after {timeout_s:g} s; the test process was killed"
    elif run.returncode == 1 and "No module named pytest" in run.stderr:
        meaning = f"pytest is not installed for {python}"
    else:
        meaning = EXIT_MEANINGS.get(run.returncode or 0, f"pytest exited with status {run.returncode}")
    return TestRunResult(
        root=str(base),
        command=tuple(argv),
        python=python,
        exit_code=run.returncode,
        exit_meaning=meaning,
        timed_out=run.timed_out,
        duration_s=run.duration_s,
        totals=totals,
        tests=tuple(cases),
        tests_truncated=truncated,
        output_tail=tail(output, MAX_OUTPUT_TAIL_CHARS),
        errors=tuple(errors),
    )
