"""A workflow's configured command: an argument list run in the project, never through a shell.

The program (the first argument) is fixed in the config; only later arguments may come from
templates, each as one argument. A program written as a bare name is the server's own, never the
project's: it is looked up in caelum-mcp's own environment (the folder of this interpreter and its
scripts folder) and then on the server's ``PATH`` without the entries that are relative or lie in
the project; a project's ``.venv/bin/ruff`` is a file of the project, and a cloned repository
would otherwise choose what runs (see :func:`program_search_path`). To run a program of the project
on purpose, write its path (``.venv/bin/python``, ``scripts/check.sh``): a relative path is taken
inside the project.

The working folder is the project or a folder inside it
(:func:`~caelum_mcp.tools.paths.resolve_within`). The command gets an allowlisted environment
(:func:`~caelum_mcp.tools.code.tests_runner.clean_test_env`: PATH, HOME, the locale and a few
more, plus the names the step lists in ``env``; never an API key, a ``CAELUM_*`` setting or a name
that looks like a secret, :func:`is_secret_looking_env_name`) with :func:`program_search_path` as
its ``PATH``, a timeout, an output cap, and is killed with everything it started when it times out
or the workflow is cancelled (:func:`~caelum_mcp.tools.process.run_command`).

:func:`inline_script_problem` is checked when a workflow loads: a placeholder inside the code an
interpreter runs (``sh -c "… {{ inputs.msg }}"``) would make a value into code.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from caelum_mcp.core.types import Frozen
from caelum_mcp.engine.config import ToolsConfig
from caelum_mcp.tools.code.tests_runner import clean_test_env
from caelum_mcp.tools.paths import resolve_within
from caelum_mcp.tools.process import run_command

from . import templates

TAIL_CHARS = 2000
MAX_OUTPUT_BYTES = 1024 * 1024


class CommandOutcome(Frozen):
    """What a workflow command did; ``exit_code`` is None when it was killed or could not start."""

    argv: tuple[str, ...]
    program: str | None = Field(default=None, description="the file that ran as argv[0]")
    exit_code: int | None
    timed_out: bool = False
    seconds: float = 0.0
    stdout_tail: str = Field(default="", description=f"the last {TAIL_CHARS} characters of stdout")
    stderr_tail: str = Field(default="", description=f"the last {TAIL_CHARS} characters of stderr")
    error: str | None = Field(default=None, description="why it did not run or did not finish")

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.error is None


# Parts of an environment variable's name that say it holds a credential (AWS_SECRET_ACCESS_KEY,
# GITHUB_TOKEN, PGPASSWORD, NPM_AUTH, GOOGLE_APPLICATION_CREDENTIALS, SSH_AUTH_SOCK ...).
_SECRET_NAME = re.compile(
    r"KEY|TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|AUTH|PRIVATE|COOKIE|_PAT$|_PWD$",
    re.IGNORECASE,
)


def is_secret_looking_env_name(name: str) -> bool:
    """Whether a workflow command may never be given ``name``: a ``CAELUM_*`` setting,
    ``ANTHROPIC_API_KEY`` (:meth:`ToolsConfig.is_secret_env_name`), or a name holding KEY, TOKEN,
    SECRET, PASSWORD, CREDENTIAL, AUTH and the like (case ignored)."""
    return ToolsConfig.is_secret_env_name(name) or bool(_SECRET_NAME.search(name))


def server_program_folders() -> list[str]:
    """Where caelum-mcp's own environment keeps its programs: the folder of this interpreter and
    the scripts folder of its prefix (the same folder in a virtualenv; both are kept when not)."""
    folders = [str(Path(sys.executable).parent), sysconfig.get_path("scripts")]
    return list(dict.fromkeys(f for f in folders if f))


def program_search_path(project: Path, server_path: str | None = None) -> str:
    """The ``PATH`` a workflow command is looked up on and runs with: :func:`server_program_folders`
    first, then ``server_path`` (default: the server's ``PATH``) less its entries that are relative
    (they would be read from the command's folder, inside the project) or lie inside ``project``.

    ``project`` must be resolved.
    """
    own = server_program_folders()
    kept: list[str] = []
    raw = os.environ.get("PATH", "") if server_path is None else server_path
    for entry in raw.split(os.pathsep):
        if not entry or not os.path.isabs(entry) or entry in own:
            continue
        if Path(os.path.realpath(entry)).is_relative_to(project):
            continue
        kept.append(entry)
    return os.pathsep.join(dict.fromkeys([*own, *kept]))


def find_program(name: str, project: Path, search_path: str) -> str | None:
    """Where ``name`` is: as written when absolute (the config is the user's own); inside the
    project when it is a relative path (the config named a file of the project on purpose); else
    the first on ``search_path`` (:func:`program_search_path`)."""
    if "/" in name or os.sep in name:
        candidate = Path(name) if Path(name).is_absolute() else resolve_within(project, name)
        return str(candidate) if os.access(candidate, os.X_OK) and candidate.is_file() else None
    return shutil.which(name, path=search_path)


def command_env(project: Path, pass_env: Sequence[str] = ()) -> dict[str, str]:
    """The environment a workflow command gets: the test runner's allowlist (for the server's own
    interpreter, so no ``VIRTUAL_ENV`` and no project folder on ``PATH``), the names in
    ``pass_env`` that are set and do not look like secrets, and :func:`program_search_path` as
    ``PATH``."""
    allowed = [n for n in pass_env if not is_secret_looking_env_name(n)]
    env = clean_test_env(project, sys.executable, allowed)
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = program_search_path(project)
    return env


# Programs that run code given on their command line, and the options that give it.
_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "csh", "tcsh", "fish", "yash", "posh"})
_SHELL_OPTIONS_WITH_VALUE = frozenset({"-o", "+o", "-O", "+O", "--rcfile", "--init-file"})
_PYTHON = re.compile(r"^(?:python|pypy)(?:\d+(?:\.\d+)*)?[tw]?$")
# name -> (options followed by code, whether one-letter options cluster: perl -ne CODE)
_CODE_OPTIONS: dict[str, tuple[frozenset[str], bool]] = {
    "node": (frozenset({"-e", "--eval", "-p", "--print"}), False),
    "nodejs": (frozenset({"-e", "--eval", "-p", "--print"}), False),
    "bun": (frozenset({"-e", "--eval", "-p", "--print"}), False),
    "deno": (frozenset({"eval"}), False),
    "perl": (frozenset({"-e", "-E"}), True),
    "ruby": (frozenset({"-e"}), True),
    "php": (frozenset({"-r"}), False),
    "lua": (frozenset({"-e"}), False),
    "luajit": (frozenset({"-e"}), False),
    "Rscript": (frozenset({"-e"}), False),
    "osascript": (frozenset({"-e"}), False),
    "pwsh": (frozenset({"-c", "-command", "-encodedcommand", "-ec"}), False),
    "powershell": (frozenset({"-c", "-command", "-encodedcommand", "-ec"}), False),
}


# perl and ruby options whose value is the rest of the cluster (-Mstrict, -Ilib, -rjson)
_TAKES_THE_REST = frozenset("MmIr")


def _program_name(arg: str) -> str:
    name = arg.replace("\\", "/").rsplit("/", 1)[-1]
    return name[:-4] if name.lower().endswith(".exe") else name


def _shell_script(argv: Sequence[str], start: int) -> int | None:
    """``sh [-abefux] -c [-o opt] SCRIPT [name [args]]``: the first operand after the options,
    when one of them was ``-c`` (alone or in a cluster such as ``-ec``)."""
    has_c = False
    j = start
    while j < len(argv):
        arg = argv[j]
        if arg == "--":
            return j + 1 if has_c else None
        if arg in _SHELL_OPTIONS_WITH_VALUE:
            j += 2
            continue
        if arg.startswith(("-", "+")) and len(arg) > 1:
            has_c = has_c or arg == "--command" or (not arg.startswith("--") and "c" in arg[1:])
            j += 1
            continue
        return j if has_c else None
    return None


def _python_script(argv: Sequence[str], start: int) -> int | None:
    """``python [-opts] -c CODE``: in a cluster (``-Bc``) ``c`` takes the rest of it or the next
    argument; ``-W``/``-X`` take a value the same way; ``-m`` and a script file end the options."""
    j = start
    while j < len(argv):
        arg = argv[j]
        if not arg.startswith("-") or arg == "-" or arg.startswith("--"):
            return None
        takes_next = False
        for k, letter in enumerate(arg[1:], start=1):
            if letter == "m":
                return None
            if letter == "c":
                return j if k + 1 < len(arg) else j + 1
            if letter in "WX":
                takes_next = k + 1 == len(arg)
                break
        j += 2 if takes_next else 1
    return None


def _other_script(argv: Sequence[str], start: int, options: frozenset[str], clusters: bool) -> int | None:
    for j in range(start, len(argv)):
        arg = argv[j]
        low = arg.lower()
        if low in options or arg in options:
            return j + 1
        if any(o.startswith("--") and low.startswith(o + "=") for o in options):
            return j
        if clusters and arg.startswith("-") and not arg.startswith("--"):
            for k, letter in enumerate(arg[1:], start=1):
                if letter in _TAKES_THE_REST:
                    break
                if f"-{letter}" in options:
                    return j if k + 1 < len(arg) else j + 1
    return None


def _script_index(argv: Sequence[str], at: int) -> int | None:
    """Index of the code the interpreter ``argv[at]`` is told to run on its command line, if any."""
    name = _program_name(argv[at])
    if name in _SHELLS:
        return _shell_script(argv, at + 1)
    if _PYTHON.match(name):
        return _python_script(argv, at + 1)
    if name in _CODE_OPTIONS:
        return _other_script(argv, at + 1, *_CODE_OPTIONS[name])
    return None


def inline_script_problem(command: Sequence[str]) -> str | None:
    """Why ``command`` may not run, when a placeholder sits in the code that a shell or an
    interpreter in it runs (``sh -c``, ``bash -lc``, ``python -c``, ``node -e``, ``perl -e`` ...,
    also behind ``env``, ``timeout`` or ``xargs``): a value would become code there, whatever it
    holds. None when there is none. Values go in as separate arguments instead."""
    for at in range(len(command)):
        script = _script_index(command, at)
        if script is None or script >= len(command):
            continue
        found = list(templates.paths_in(command[script]))
        if found:
            placeholder = f"{{{{ {found[0]} }}}}"
            return (
                f"{placeholder} is inside the code that {_program_name(command[at])} runs "
                f"({command[script][:60]!r}), where a value would become code; pass values as separate "
                f"arguments and read them there, e.g. ['sh', '-c', 'echo \"$1\"', 'sh', '{placeholder}'] "
                "(sys.argv[1] in python -c)"
            )
    return None


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
    outside the project raises :class:`~caelum_mcp.core.errors.PathNotAllowedError`."""
    folder = resolve_within(project, cwd or ".")
    env = command_env(project, pass_env)
    program = find_program(argv[0], project, env["PATH"])
    if program is None:
        return CommandOutcome(
            argv=tuple(argv),
            exit_code=None,
            error=(
                f"program {argv[0]!r} not found beside caelum-mcp's Python or on PATH (a project's own "
                "programs are not looked up by name: write their path, e.g. .venv/bin/NAME)"
            ),
        )
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
        return CommandOutcome(
            argv=tuple(argv), program=program, exit_code=None, error=f"cannot start {argv[0]!r}: {exc.strerror}"
        )
    error = f"timed out after {timeout_s:g} s" if result.timed_out else None
    return CommandOutcome(
        argv=tuple(argv),
        program=program,
        exit_code=result.returncode,
        timed_out=result.timed_out,
        seconds=result.duration_s,
        stdout_tail=result.stdout[-TAIL_CHARS:],
        stderr_tail=result.stderr[-TAIL_CHARS:],
        error=error,
    )
