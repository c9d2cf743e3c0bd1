"""Run a project's pytest suite in a subprocess and read the outcome from its JUnit XML report.

The interpreter is the project's own ``.venv`` when it has one (its tests import its own
dependencies), else the one caelum-mcp runs on. ``-p no:cacheprovider`` keeps pytest from writing
``.pytest_cache`` into the project; the JUnit file goes to a private temporary folder.

A project's tests are code we did not write, so they run with a clean environment (see
:func:`clean_test_env`: never the server's secrets), and nothing they start outlives the run
(``run_command(kill_leftovers=True)``). When pytest itself fails (collection, internal or usage
error, or a crash before it could report), the result says so with pytest's own message in
``error``; it is never passed off as failing tests.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field

from caelum_mcp.core.errors import PathNotAllowedError
from caelum_mcp.core.types import Frozen
from caelum_mcp.engine.config import ToolsConfig

from ..paths import resolve_root, resolve_within
from ..process import CommandResult, run_command
from .models import tail

Outcome = Literal["passed", "failed", "error", "skipped"]

MAX_TESTS = 2000
MAX_MESSAGE_CHARS = 500
MAX_OUTPUT_TAIL_CHARS = 2000
# A failure's text is cut to about this much around the failing line (see trim_failure).
FAILURE_LINES = 40
FAILURE_CHARS = 4000
FAILURE_LINE_CHARS = 400
FAILURE_CONTEXT_LINES = 3  # kept above the failing line when the whole text does not fit
FAILURE_END_LINES = 4  # the end (the file:line of the failure) is always kept
# pytest's own message when it failed (see pytest_message).
ERROR_LINES = 30
ERROR_CHARS = 3000

# An error (e.g. in teardown) outranks a failure in the same test case.
_OUTCOME_TAGS: tuple[tuple[str, Outcome], ...] = (("error", "error"), ("failure", "failed"), ("skipped", "skipped"))

EXIT_MEANINGS = {
    0: "all tests passed",
    1: "some tests failed",
    2: "test run interrupted (collection errors or KeyboardInterrupt)",
    3: "pytest internal error",
    4: "pytest usage error (bad arguments, selection or configuration)",
    5: "no tests collected",
}
# Exit codes that are a verdict on the tests; any other outcome means pytest itself failed.
_VERDICTS = (0, 1, 5)

# Passed to every test run when set: what a process needs to behave normally, and no more.
BASE_TEST_ENV = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "CI")
# Python cannot start on Windows without these.
_WINDOWS_ENV = ("SYSTEMROOT", "SYSTEMDRIVE", "COMSPEC", "PATHEXT", "WINDIR") if sys.platform == "win32" else ()


class TestCaseResult(Frozen):
    """One test. ``message`` is pytest's one-line reason; ``detail`` its report trimmed to the part
    around the failing line (see :func:`trim_failure`), ``detail_lines_cut`` how many lines went."""

    node_id: str
    outcome: Outcome
    duration_s: float
    file: str | None = None
    line: int | None = None
    message: str | None = None
    detail: str | None = None
    detail_lines_cut: int = 0


class TestTotals(Frozen):
    tests: int = 0
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0


class TestRunResult(Frozen):
    """One pytest run.

    ``exit_meaning`` says what happened in words. ``error`` is pytest's own message when pytest
    itself failed (exit codes 2 to 4, or a crash before it reported anything); None when the exit
    code is a verdict on the tests. ``errors`` are this runner's own problems (no report written).
    ``leftovers_killed`` counts processes the tests left running that were killed.
    """

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
    error: str | None = None
    output_tail: str = ""
    errors: tuple[str, ...] = Field(default=())
    leftovers_killed: int = 0


def project_python(root: Path) -> str:
    """The project's virtualenv interpreter when present, else ours.

    The venv's ``python`` is usually a symlink to a system interpreter, so it is not resolved (that
    would leave the root); only its location inside the project is checked.
    """
    for candidate in (root / ".venv" / "bin" / "python", root / ".venv" / "Scripts" / "python.exe"):
        if candidate.is_file():
            return str(candidate)
    return sys.executable


def clean_test_env(
    root: Path, python: str, pass_env: Sequence[str] = (), *, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment a test run gets: an allowlist of ``environ`` (default ours), never all of it.

    PATH, HOME, TZ, TMPDIR, CI, the locale (LANG, LANGUAGE, LC_*), and the names in ``pass_env``
    (``[tools] test_env``) when they are set; names that hold secrets
    (:meth:`ToolsConfig.is_secret_env_name`) are dropped even when listed. When ``python`` is the
    project's own ``.venv``, the run looks activated: VIRTUAL_ENV names it and its scripts come
    first on PATH.
    """
    source = os.environ if environ is None else environ
    names = [*BASE_TEST_ENV, *_WINDOWS_ENV, *(n for n in source if n.startswith("LC_")), *pass_env]
    env = {n: source[n] for n in names if n in source and not ToolsConfig.is_secret_env_name(n)}
    venv = root / ".venv"
    if Path(python).is_relative_to(venv):
        env["VIRTUAL_ENV"] = str(venv)
        scripts = str(Path(python).parent)
        env["PATH"] = os.pathsep.join(p for p in (scripts, env.get("PATH", "")) if p)
    return env


def tree_first_env(root: Path, env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with ``root/src`` (when present) and ``root`` first on ``PYTHONPATH``.

    For a patched copy of a project whose ``.venv`` has the original installed in editable mode:
    that install points at the original files, and without this the copy's tests would import
    them instead of the patched ones. ``PYTHONPATH`` comes before site-packages and its ``.pth``
    entries, and setuptools' editable finder runs only after the path has been searched.
    """
    first = [str(root / "src")] if (root / "src").is_dir() else []
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**env, "PYTHONPATH": os.pathsep.join([*first, str(root), *rest])}


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


def _clip_line(line: str) -> str:
    if len(line) <= FAILURE_LINE_CHARS:
        return line
    return f"{line[:FAILURE_LINE_CHARS]}… [{len(line) - FAILURE_LINE_CHARS} characters cut]"


def _failing_line(lines: Sequence[str]) -> int | None:
    """Index of the line the failure happened on: the last one pytest marks with ``>`` (long
    tracebacks), else the first of the last block of ``E`` lines (short ones)."""
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith(">"):
            return index
    last_e = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].startswith("E ")), None)
    if last_e is None:
        return None
    while last_e > 0 and lines[last_e - 1].startswith("E "):
        last_e -= 1
    return last_e


def trim_failure(text: str) -> tuple[str, int]:
    """pytest's report of one failure cut to the part that explains it, and how many lines were cut.

    Kept, within :data:`FAILURE_LINES` lines and about :data:`FAILURE_CHARS` characters: the
    failing line (the innermost frame's) with a few lines above it, what follows it (the ``E``
    lines: the assertion and its values), and always the end (the ``file:line`` of the failure).
    What room is left goes to the lines above, so the frames nearest the failure come first. A cut
    is marked in the text with the number of lines it took; single lines are clipped to
    :data:`FAILURE_LINE_CHARS` characters.
    """
    lines = [_clip_line(line) for line in text.strip("\n").splitlines()]
    if len(lines) <= FAILURE_LINES and sum(len(line) + 1 for line in lines) <= FAILURE_CHARS:
        return "\n".join(lines), 0
    anchor = _failing_line(lines)
    start = len(lines) - 1 if anchor is None else max(0, anchor - FAILURE_CONTEXT_LINES)
    end_start = max(start, len(lines) - FAILURE_END_LINES)
    head = lines[start:end_start]  # the failing line and what follows it, before the end
    end = lines[end_start:]
    room_lines = FAILURE_LINES - len(end) - 2  # two lines for the cut markers
    room_chars = FAILURE_CHARS - sum(len(line) + 1 for line in end)
    kept_head: list[str] = []
    for line in head:
        if len(kept_head) >= room_lines or len(line) + 1 > room_chars:
            break
        kept_head.append(line)
        room_chars -= len(line) + 1
    middle_cut = len(head) - len(kept_head)
    above = start
    while above > 0 and middle_cut == 0 and len(kept_head) < room_lines and len(lines[above - 1]) + 1 <= room_chars:
        above -= 1
        kept_head.insert(0, lines[above])
        room_chars -= len(lines[above]) + 1
    out = [f"… [{above} lines cut] …"] if above else []
    out += kept_head
    out += [f"… [{middle_cut} lines cut] …"] if middle_cut else []
    out += end
    return "\n".join(out), above + middle_cut


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
        detail, cut = trim_failure(reason.text or "") if reason is not None else ("", 0)
        cases.append(
            TestCaseResult(
                node_id=node_id,
                outcome=outcome,
                duration_s=round(float(case.get("time", "0") or 0), 4),
                file=file,
                line=line,
                message=message[:MAX_MESSAGE_CHARS] if message else None,
                detail=detail or None,
                detail_lines_cut=cut,
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
        if not entry or entry.startswith("-") or "\0" in entry:
            shown = entry.replace("\0", "\\0")[:200]
            raise PathNotAllowedError(f"test selection {shown!r} is not a test path or node id inside the project")
        path_part = entry.split("::", 1)[0]
        resolve_within(root, path_part)
        chosen.append(entry)
    return chosen


def _first_lines(lines: Sequence[str]) -> str:
    return "\n".join(lines[:ERROR_LINES])[:ERROR_CHARS]


def _last_lines(lines: Sequence[str]) -> str:
    return tail("\n".join(lines[-ERROR_LINES:]), ERROR_CHARS)


def pytest_message(stdout: str, stderr: str) -> str:
    """What pytest said about why it could not run the tests, as short as it can be said.

    In order: its internal-error traceback (``INTERNALERROR>`` lines, the end of it); the short
    summary of a run interrupted by collection errors (before the usage check: a test's captured
    output shown above it may hold ``ERROR:`` lines); a usage or selection error (from the first
    ``ERROR:`` line); the last traceback on stderr (a crash before pytest started); else the end of
    whatever it printed.
    """
    out, err = stdout.splitlines(), stderr.splitlines()
    internal = [line for line in (*out, *err) if line.startswith("INTERNALERROR>")]
    if internal:
        return _last_lines(internal)
    summary = next((i for i, line in enumerate(out) if "short test summary info" in line), None)
    if summary is not None:
        return _first_lines(out[summary + 1 :])
    for lines in (err, out):
        usage = next((i for i, line in enumerate(lines) if line.startswith("ERROR: ")), None)
        if usage is not None:
            return _first_lines(lines[usage:])
    traceback = next((i for i in range(len(err) - 1, -1, -1) if err[i].startswith("Traceback (most recent")), None)
    if traceback is not None:
        return _last_lines(err[traceback:])
    return _last_lines([line for line in (*out, *err) if line.strip()])


_TRACEBACK_FILE = re.compile(r"""["(]([^"()]+\.py)[")]""")


def shadowed_stdlib(root: Path, message: str) -> list[str]:
    """Files at the top of ``root`` named in ``message`` that hide a standard-library module.

    ``python -m pytest`` puts the project folder first on ``sys.path``, so a ``random.py`` there is
    what ``import random`` finds, for pytest too, which then crashes before running a test.
    """
    found: list[str] = []
    for match in _TRACEBACK_FILE.finditer(message):
        path = Path(match.group(1))
        if path.parent == root and path.stem in sys.stdlib_module_names and path.name not in found:
            found.append(path.name)
    return found


def _verdict(base: Path, python: str, run: CommandResult, totals: TestTotals) -> tuple[str, str | None]:
    """``exit_meaning`` and ``error`` for a run that was not killed."""
    code = run.returncode
    if code == 1 and "No module named pytest" in run.stderr:
        return f"pytest is not installed for {python}", pytest_message(run.stdout, run.stderr)
    if code in _VERDICTS and not (code == 1 and totals.tests == 0):
        return EXIT_MEANINGS[code or 0], None
    message = pytest_message(run.stdout, run.stderr)
    shadows = shadowed_stdlib(base, message)
    if shadows:
        names = ", ".join(shadows)
        message += (
            f"\n[caelum] the project's {names} hides the standard library module of that name "
            "(the project folder comes first on sys.path); rename it"
        )
    if code is not None and code in EXIT_MEANINGS and code not in _VERDICTS:
        return EXIT_MEANINGS[code], message
    if code is not None and code < 0:
        return f"pytest was killed by signal {-code} before it finished", message
    return f"pytest failed before running any test (exit status {code})", message


async def run_tests(
    root: str | Path,
    *,
    selection: Sequence[str] | None = None,
    timeout_s: float = 300,
    tree_first: bool = False,
    pass_env: Sequence[str] = (),
) -> TestRunResult:
    """Run pytest for the project under ``root`` (all tests, or the ``selection`` of paths/node ids).

    The run sees only :func:`clean_test_env` (plus ``pass_env``, the ``[tools] test_env``
    names). A run past ``timeout_s`` is killed with everything it started (``timed_out``);
    results that were not reported by then are lost, and so is whatever the tests leave running
    when pytest exits. Exit code 5 means no tests were collected; a run where pytest itself
    failed has ``error`` set (see :class:`TestRunResult`). ``tree_first`` makes the tests import
    the code under ``root`` even where the project is installed elsewhere (see
    :func:`tree_first_env`).
    """
    base = resolve_root(root)
    chosen = _checked_selection(base, selection)
    python = project_python(base)
    env = clean_test_env(base, python, pass_env)
    if tree_first:
        env = tree_first_env(base, env)
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
            run = await run_command(
                argv, cwd=base, timeout_s=timeout_s, max_output_bytes=4 * 1024 * 1024, env=env, kill_leftovers=True
            )
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
        meaning, error = f"timed out after {timeout_s:g} s; the test process was killed", None
    else:
        meaning, error = _verdict(base, python, run, totals)
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
        error=error,
        output_tail=tail(output, MAX_OUTPUT_TAIL_CHARS),
        errors=tuple(errors),
        leftovers_killed=run.leftovers_killed,
    )
