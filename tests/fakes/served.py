"""A ``caelum-mcp serve --transport http`` subprocess in a test: a free loopback port, and waiting
until it answers ``/health`` (200 once a model host is healthy, 503 while none is: either way it is
serving), failing the test with the tail of its log when it exits or does not answer in time."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import httpx2
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tail(path: Path, limit: int = 4000) -> str:
    return path.read_bytes()[-limit:].decode(errors="replace") if path.exists() else ""


def wait_healthy(proc: subprocess.Popen[bytes], base: str, log: Path, *, deadline: float, name: str = "server") -> None:
    """Return once ``base``/health answers; ``deadline`` is a ``time.monotonic()`` value."""
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{name} exited with {proc.returncode}:\n{tail(log)}")
        try:
            if httpx2.get(f"{base}/health", timeout=2).status_code in (200, 503):
                return
        except httpx2.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{name} did not answer {base}/health in time:\n{tail(log)}")
        time.sleep(0.2)
