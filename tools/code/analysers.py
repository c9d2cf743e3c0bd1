"""Starting the Python-based analysers (ruff, bandit, radon, vulture, lizard, pip-audit).

They run as ``<this interpreter> -P -m <module>``: that finds the copies installed with caelum-mcp
whatever ``PATH`` says, and a missing analyser becomes an error entry instead of a crash. ``-P``
keeps the working directory (the project root) off ``sys.path``: without it a project file named
like a standard module (``logging.py``, ``glob.py``, ``types.py`` ...) is imported by the analyser
itself in place of the real one and crashes it.

They read hostile project files, and pip-audit talks to its index, so they get an allowlisted
environment (:func:`analyser_env`), never the server's: no API key or ``CAELUM_*`` setting reaches
them.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..process import CommandResult, run_command
from .models import AnalyzerError
from .tests_runner import clean_test_env

ANALYSER_TIMEOUT_S = 120.0
ANALYSER_MAX_OUTPUT_BYTES = 32 * 1024 * 1024


def analyser_installed(module: str) -> bool:
    """Whether ``python -m module`` can work in this interpreter (checked without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# What pip-audit needs to reach its index through a proxy, besides what a test run gets.
NETWORK_ENV = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_CERT",
)


def analyser_env(cwd: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment an analyser runs in: a test run's allowlist plus the proxy and index settings."""
    return clean_test_env(cwd, sys.executable, NETWORK_ENV, environ=os.environ if environ is None else environ)


def first_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of an analyser's stderr, capped: enough to say what went wrong."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:limit]
    return ""


def last_line(text: str, limit: int = 300) -> str:
    """The last non-empty line (where Python tracebacks put the exception), capped."""
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()[:limit]
    return ""


async def run_python_analyser(
    tool: str,
    module: str,
    args: Sequence[str],
    *,
    cwd: Path,
    timeout_s: float = ANALYSER_TIMEOUT_S,
    max_output_bytes: int = ANALYSER_MAX_OUTPUT_BYTES,
) -> CommandResult | AnalyzerError:
    """Run ``python -m module args`` in ``cwd``; an :class:`AnalyzerError` when it could not finish.

    Not finishing means: not installed, could not start, timed out, or its output hit the cap (a cut
    JSON document cannot be parsed). A non-zero exit status is *not* an error here: most analysers
    exit non-zero when they find something, so each caller judges the status itself.
    """
    if not analyser_installed(module):
        return AnalyzerError(tool=tool, message=f"{tool} is not installed in {sys.executable}")
    try:
        result = await run_command(
            [sys.executable, "-P", "-m", module, *args],
            cwd=cwd,
            env=analyser_env(cwd),
            timeout_s=timeout_s,
            max_output_bytes=max_output_bytes,
        )
    except OSError as exc:
        return AnalyzerError(tool=tool, message=f"{tool} could not be started: {exc.strerror or exc}")
    if result.timed_out:
        return AnalyzerError(tool=tool, message=f"{tool} did not finish within {timeout_s:g} s and was stopped")
    if result.truncated:
        return AnalyzerError(
            tool=tool, message=f"{tool} produced more than {max_output_bytes} bytes of output; result dropped"
        )
    return result
