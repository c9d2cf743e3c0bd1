"""Running ``caelum-mcp`` as a user does, for the CLI tests: a subprocess with its own HOME and
data folder under tmp, so no config or ledger of the machine's user is read."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    def __str__(self) -> str:  # what a failing assertion shows
        return f"exit {self.code}\n--- stdout\n{self.out[-3000:]}\n--- stderr\n{self.err[-3000:]}"


def cli_env(tmp: Path, **extra: str) -> dict[str, str]:
    """PATH, a HOME and data folder under ``tmp``, no implicit Ollama (whatever listens on 11434
    here must not change the outcome), then ``extra``."""
    home = tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "CAELUM_DATA_DIR": str(tmp / "data"),
        "CAELUM_IMPLICIT_OLLAMA": "false",
        **extra,
    }


def run_cli(args: tuple[str, ...], *, env: dict[str, str], cwd: Path, timeout_s: float) -> Run:
    proc = subprocess.run(
        [sys.executable, "-m", "caelum_mcp", *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout_s,
        check=False,
    )
    return Run(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))
