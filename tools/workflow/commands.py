"""A workflow's configured command: an argument list run in the project, never through a shell.

The program (the first argument) is fixed in the config; only later arguments may come from
templates, each as one argument. The working folder is the project or a folder inside it
(:func:`~caelum_mcp.tools.paths.resolve_within`). The command gets the environment a test run
gets (:func:`~caelum_mcp.tools.code.tests_runner.clean_test_env`: PATH, HOME, the locale and a few
more, the project's ``.venv`` first on PATH, plus the names the step lists in ``env``; never an
API key), a timeout, an output cap, and is killed with everything it started when it times out
or the workflow is cancelled (:func:`~caelum_mcp.tools.process.run_command`).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from caelum_mcp.tools.code.tests_runner import clean_test_env, project_python
from caelum_mcp.tools.paths import resolve_within
from caelum_mcp.tools.process import run_command
from caelum_mcp.types import Frozen

TAIL_CHARS = 2000
MAX_OUTPUT_BYTES = 1024 * 1024


class CommandOutcome(Frozen):
    """What a workflow command did; ``exit_code`` is None when it was killed or could not start."""

    argv: tuple[str, ...]
    exit_code: int | None
    timed_out: bool = False
    seconds: float = 0.0
    stdout_tail: str = Field(default="", description=f"the last {TAIL_CHARS} characters of stdout")
    stderr_tail: str = Field(default="", description=f"the last {TAIL_CHARS} characters of stderr")
    error: str | None = Field(default=None, description="why it did not run or did not finish")

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.error is None


def find_program(name: str, project: Path, path_env: str) -> str | None:
    """Where ``name`` is: as written when absolute (the config is the user's own); inside the
    project when it is a relative path; else on ``path_env`` and then beside this interpreter
    (where caelum-mcp's own analysers are installed)."""
    if "/" in name or os.sep in name:
        candidate = Path(name) if Path(name).is_absolute() else resolve_within(project, name)
        return str(candidate) if os.access(candidate, os.X_OK) and candidate.is_file() else None
    search = os.pathsep.join(p for p in (path_env, str(Path(sys.executable).parent)) if p)
    return shutil.which(name, path=search)


async def run_workflow_command(
    argv: Sequence[str],
    *,
    project: Path,
    cwd: str | None = None,
    timeout_s: float,
    pass_env: Sequence[str] = (),
) -> CommandOutcome:
    """Run ``argv`` in ``project`` (or ``cwd`` inside it); see the module docstring. A program
    that cannot be found or started is an outcome with ``error``, not an exception; a path
    outside the project raises :class:`~caelum_mcp.errors.PathNotAllowedError`."""
    folder = resolve_within(project, cwd or ".")
    env = clean_test_env(project, project_python(project), pass_env)
    program = find_program(argv[0], project, env.get("PATH", ""))
    if program is None:
        return CommandOutcome(argv=tuple(argv), exit_code=None, error=f"program {argv[0]!r} not found on PATH")
    try:
        result = await run_command(
            [program, *argv[1:]],
            cwd=folder,
            timeout_s=timeout_s,
            max_output_bytes=MAX_OUTPUT_BYTES,
            env=env,
            kill_leftovers=True,
        )
    except OSError as exc:
        return CommandOutcome(argv=tuple(argv), exit_code=None, error=f"cannot start {argv[0]!r}: {exc.strerror}")
    error = f"timed out after {timeout_s:g} s" if result.timed_out else None
    return CommandOutcome(
        argv=tuple(argv),
        exit_code=result.returncode,
        timed_out=result.timed_out,
        seconds=result.duration_s,
        stdout_tail=result.stdout[-TAIL_CHARS:],
        stderr_tail=result.stderr[-TAIL_CHARS:],
        error=error,
    )
