"""Helpers for the internal-tool tests: small fixture projects written into tmp_path."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from textwrap import dedent

import pytest

WriteProject = Callable[[Mapping[str, str | bytes]], Path]


@pytest.fixture
def write_project(tmp_path: Path) -> WriteProject:
    """Write ``{relative path: text or bytes}`` under ``tmp_path/project`` and return that root."""
    root = tmp_path / "project"
    root.mkdir(exist_ok=True)

    def write(files: Mapping[str, str | bytes]) -> Path:
        for rel, content in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(dedent(content).lstrip("\n"), encoding="utf-8")
        return root

    return write


def git(root: Path, *args: str) -> str:
    """Run git in ``root`` with a fixed identity (tests must not depend on the user's git config)."""
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(root.parent),
    }
    done = subprocess.run(["git", *args], cwd=root, env=env, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout


def line_of(root: Path, rel: str, needle: str) -> int:
    """1-based line of the first line containing ``needle``: tests assert positions against the source."""
    for number, line in enumerate((root / rel).read_text(encoding="utf-8").splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {rel}")
