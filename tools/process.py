"""The one way internal tools run a subprocess: argument list, timeout, output cap, sure cleanup.

Every analyser (ruff, bandit, radon, vulture, lizard, pip-audit, pytest, git) goes through
:func:`run_command`. The child runs in its own session (process group), so that a timeout *or a
cancelled tool call* kills the child and everything it spawned (pytest workers, shells), not just the
direct child. Output beyond the cap is read and discarded, so a chatty child never blocks on a full
pipe; the result says it was truncated.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
from anyio.abc import ByteReceiveStream, Process

from caelum_mcp.types import Frozen

DEFAULT_MAX_OUTPUT_BYTES = 8 * 1024 * 1024


class CommandResult(Frozen):
    """What a finished (or killed) command produced.

    ``returncode`` is None when the command was killed on timeout.
    ``stdout``/``stderr`` are decoded as UTF-8 (invalid bytes replaced) and hold at most
    ``max_output_bytes`` each; ``truncated`` says that either one was cut.
    """

    argv: tuple[str, ...]
    returncode: int | None
    stdout: str
    stderr: str
    truncated: bool
    timed_out: bool
    duration_s: float


class _CappedBuffer:
    """Keeps the first ``limit`` bytes of a stream and counts what it dropped."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self.truncated = False

    def feed(self, chunk: bytes) -> None:
        room = self._limit - self._size
        if room <= 0:
            self.truncated = self.truncated or bool(chunk)
            return
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[:room]
        self._parts.append(chunk)
        self._size += len(chunk)

    def text(self) -> str:
        return b"".join(self._parts).decode("utf-8", errors="replace")


async def _drain(stream: ByteReceiveStream | None, sink: _CappedBuffer) -> None:
    if stream is None:
        return
    try:
        async for chunk in stream:
            sink.feed(chunk)
    except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
        return


def _kill_group(process: Process) -> None:
    """SIGKILL the child's whole process group (it leads its own session), then the child itself."""
    if sys.platform != "win32":
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if process.returncode is None:
        try:
            process.kill()
        except ProcessLookupError:
            pass


async def run_command(
    argv: Sequence[str],
    *,
    cwd: str | Path,
    timeout_s: float,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    env: Mapping[str, str] | None = None,
) -> CommandResult:
    """Run ``argv`` (never through a shell) in ``cwd`` and collect its output.

    On timeout the process group is killed and ``timed_out`` is set; on cancellation of the caller
    the process group is killed before the cancellation propagates. ``env`` replaces the environment
    when given (None inherits ours). Raises ``OSError`` (e.g. ``FileNotFoundError``) when the
    program cannot be started; callers turn that into an error entry in their result.
    """
    if not argv:
        raise ValueError("run_command needs a non-empty argument list")
    if timeout_s <= 0:
        raise ValueError("timeout_s must be positive")
    args = tuple(str(a) for a in argv)
    stdout = _CappedBuffer(max_output_bytes)
    stderr = _CappedBuffer(max_output_bytes)
    started = time.monotonic()
    process = await anyio.open_process(
        list(args),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    finished = False
    timed_out = False
    try:
        with anyio.move_on_after(timeout_s) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_drain, process.stdout, stdout)
                tg.start_soon(_drain, process.stderr, stderr)
            await process.wait()
            finished = True
        timed_out = scope.cancelled_caught
    finally:
        # Shielded: a cancelled caller must still not leave the child (or its children) running.
        with anyio.CancelScope(shield=True):
            if not finished:
                _kill_group(process)
            with anyio.move_on_after(10):
                await process.aclose()
    return CommandResult(
        argv=args,
        returncode=None if timed_out else process.returncode,
        stdout=stdout.text(),
        stderr=stderr.text(),
        truncated=stdout.truncated or stderr.truncated,
        timed_out=timed_out,
        duration_s=round(time.monotonic() - started, 3),
    )
