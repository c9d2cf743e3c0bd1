"""The one way internal tools run a subprocess: argument list, timeout, output cap, sure cleanup.

Every analyser (ruff, bandit, radon, vulture, lizard, pip-audit, pytest, git) goes through
:func:`run_command`. The child runs in its own session (process group), so that a timeout *or a
cancelled tool call* kills the child and everything it spawned (pytest workers, shells), not just the
direct child. A process group is not enough on its own: a descendant may start its own session
(``setsid``, ``start_new_session=True``) or double-fork away from the tree, so the command's
descendants are also tracked (see :class:`_Descendants`) and killed with the group. Output beyond
the cap is read and discarded, so a chatty child never blocks on a full pipe; the result says it was
truncated.

Commands never outlive the server. Each command running is listed in this process
(:func:`kill_running_commands`, which the stdio server's SIGTERM handler calls,
:mod:`caelum_mcp.serving.shutdown`) and with a guard: a small watchdog process (started with the first
command, in its own session) that reads the list over a pipe. When the server dies in any way,
``kill -9`` included, the pipe closes and the guard kills the groups of the commands still listed
(frozen first, and what is below them), and the processes carrying their run markers, then exits.
The guard hears of each command's run marker before the command starts, so one whose pid it was
never told (the server died in between) is still found by its marker. A caller may also be told
each command's pid as it starts and ends (:data:`COMMAND_WATCH`): a workflow step records them, so that a resumed
run can stop a copy that is still alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import IO, Protocol

import anyio
import psutil
from anyio.abc import ByteReceiveStream, Process

from caelum_mcp.core.types import Frozen

DEFAULT_MAX_OUTPUT_BYTES = 8 * 1024 * 1024
# Every command's environment carries a token unique to the run; descendants inherit it, so the ones
# that left the process tree (double fork, reparented to init) are still found when it is time to kill.
RUN_MARKER_VAR = "CAELUM_RUN_MARKER"
POLL_INTERVAL_S = 0.1  # how often the process tree is walked; commands shorter than this pay nothing
PIPE_GRACE_S = 1.0  # after the child exits, how long its output pipes may stay open (held by leftovers)
# Sweeps of freezing what the tree and the marker show before the kill: each catches what the
# processes stopped by the last one had forked just before they stopped (a generation a sweep).
_KILL_SWEEPS = 8


class CommandWatcher(Protocol):
    """Told of each command a piece of work starts (see :data:`COMMAND_WATCH`); both calls run on
    the event loop and must be quick."""

    def started(self, pid: int, create_time: float) -> None: ...

    def ended(self, pid: int, create_time: float) -> None: ...


# Set by a caller (a workflow step) around its work: every command started inside it, in its task
# or in tasks it starts, is reported. A contextvar, so parallel steps each see their own.
COMMAND_WATCH: ContextVar[CommandWatcher | None] = ContextVar("caelum_command_watch", default=None)

# The commands running now, pid (= process group id: each leads its own session) -> run marker,
# and -> what was seen below it (the shutdown hook kills that too).
_running: dict[int, str] = {}
_trees: dict[int, _Descendants] = {}
_running_lock = threading.Lock()

# The guard's program: it outlives the server only as long as it takes to clean up after it.
_GUARD_CODE = f"""
import os, signal, sys
live = {{}}
pending = set()
for line in sys.stdin.buffer:
    parts = line.split()
    if len(parts) != 3 or not parts[1].isdigit():
        continue
    marker = parts[2].decode("ascii", "replace")
    if parts[0] == b"m":
        pending.add(marker)
    elif parts[0] == b"+":
        live[int(parts[1])] = marker
    else:
        live.pop(int(parts[1]), None)
        pending.discard(marker)
try:
    import psutil
except ImportError:
    psutil = None
# Frozen first, a command's group cannot fork, and what left its session (an empty environment
# drops the marker too) is still below it: walk each tree, freeze what it holds, then kill it all.
for pid in live:
    try:
        os.killpg(pid, signal.SIGSTOP)
    except OSError:
        pass
below = []
if psutil is not None:
    for pid in live:
        try:
            below += psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            pass
    for proc in below:
        try:
            proc.suspend()
        except psutil.Error:
            pass
for pid in live:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
markers = set(live.values()) | pending
if psutil is not None:
    for proc in below:
        try:
            proc.kill()
        except psutil.Error:
            pass
    for proc in psutil.process_iter() if markers else ():
        try:
            if proc.environ().get({RUN_MARKER_VAR!r}) in markers:
                proc.kill()
        except (psutil.Error, OSError):
            pass
"""


class _Guard:
    """The watchdog process (see the module docstring), started on first use and again if it died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._broken = False

    @property
    def pid(self) -> int | None:
        """The guard's pid while it runs (tests look for it)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def tell(self, line: str) -> None:
        """Send one ``m 0 marker`` (a command is about to start with that run marker), ``+ pid
        marker`` or ``- pid marker`` line; a guard that cannot be started or
        written to is restarted once per line, else given up on quietly (the commands still die
        with their timeouts, cancellations and the SIGTERM handler)."""
        if sys.platform == "win32":
            return
        with self._lock:
            for _ in range(2):
                stdin = self._stdin()
                if stdin is None:
                    return
                try:
                    stdin.write(line.encode("ascii") + b"\n")
                    stdin.flush()
                    return
                except OSError:
                    self._proc = None

    def _stdin(self) -> IO[bytes] | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.stdin
        if self._broken:
            return None
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and code
                [sys.executable, "-c", _GUARD_CODE],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",  # never a project folder: -c puts the working folder first on sys.path
                start_new_session=True,  # a signal to the server's group must leave the guard to clean up
            )
        except OSError:
            self._broken = True
            return None
        # The commands already running were started before this guard: tell it about them.
        with _running_lock:
            known = list(_running.items())
        assert self._proc.stdin is not None
        for pid, marker in known:
            self._proc.stdin.write(f"+ {pid} {marker}\n".encode("ascii"))
        return self._proc.stdin


_guard = _Guard()


def guard_pid() -> int | None:
    """The pid of the guard that kills this server's commands when it dies, once one was started."""
    return _guard.pid


def kill_running_commands() -> int:
    """Kill every command running now with all it started, as a cancellation does: the groups
    frozen, each tree walked and its processes frozen, then all of it killed. Returns how many
    groups were stopped. For a signal handler: no locks of the event loop, no waiting on a
    process (it reads the process table)."""
    stopped = []
    for pid in list(_running):
        try:
            os.killpg(pid, signal.SIGSTOP)
            stopped.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in stopped:
        tree = _trees.get(pid)
        if tree is not None:
            tree.kill_all()  # the command itself carries its marker: it goes here as well
    for pid in stopped:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return len(stopped)


def _started(pid: int, marker: str) -> float | None:
    with _running_lock:
        _running[pid] = marker
    _guard.tell(f"+ {pid} {marker}")
    watcher = COMMAND_WATCH.get()
    if watcher is None:
        return None
    try:
        create_time = float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None
    watcher.started(pid, create_time)
    return create_time


def _ended(pid: int, marker: str, create_time: float | None) -> None:
    with _running_lock:
        _running.pop(pid, None)
    _trees.pop(pid, None)
    _guard.tell(f"- {pid} {marker}")
    watcher = COMMAND_WATCH.get()
    if watcher is not None and create_time is not None:
        watcher.ended(pid, create_time)


class CommandResult(Frozen):
    """What a finished (or killed) command produced.

    ``returncode`` is None when the command was killed on timeout.
    ``stdout``/``stderr`` are decoded as UTF-8 (invalid bytes replaced) and hold at most
    ``max_output_bytes`` each; ``truncated`` says that either one was cut.
    ``leftovers_killed`` counts the descendants killed because they were still running when the
    command was stopped, or (with ``kill_leftovers``) when it ended.
    """

    argv: tuple[str, ...]
    returncode: int | None
    stdout: str
    stderr: str
    truncated: bool
    timed_out: bool
    duration_s: float
    leftovers_killed: int = 0


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


async def _drain(stream: ByteReceiveStream | None, sink: _CappedBuffer, done: anyio.Event) -> None:
    try:
        if stream is None:
            return
        async for chunk in stream:
            sink.feed(chunk)
    except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
        return
    finally:
        done.set()


class _Descendants:
    """Every process a command started, found two ways, so that all of them can be killed.

    - The process tree, walked every :data:`POLL_INTERVAL_S` while the command runs: catches
      descendants that start their own session, or scrub their environment, while they are still
      below the command.
    - The run marker in the environment, searched when it is time to kill: catches descendants that
      left the tree (a double fork reparents them to init) before a walk saw them.

    When it is time to kill, every process found is frozen (SIGSTOP) before any is killed: a stopped
    process cannot fork, and what it forked just before stays its child, so walking below the frozen
    ones again finds it, however quickly it left the session and dropped the marker. A process that
    leaves the tree between two walks while the command runs (its parent exits) and drops the marker
    from its environment is still not found. Processes are kept as ``psutil.Process`` objects,
    which refuse to signal a process whose pid was reused (they compare its creation time), so a
    stale entry never kills a stranger.
    """

    def __init__(self, pid: int, marker: str) -> None:
        self._marker = marker
        self._seen: dict[tuple[int, float], psutil.Process] = {}
        self._killed: set[tuple[int, float]] = set()
        # The watcher's walks and a kill run in worker threads, possibly at the same time.
        self._lock = threading.RLock()
        try:
            self._root: psutil.Process | None = psutil.Process(pid)
        except psutil.NoSuchProcess:
            self._root = None

    def walk(self) -> None:
        """Remember what lives below the command, and below each remembered descendant that is no
        longer below it (orphaned, reparented to init, with children of its own); blocking: reads
        the process table once, and once more for each such orphan."""
        with self._lock:
            tops = [self._root] if self._root is not None else []
            known = {proc.pid for proc in (*tops, *self._seen.values())}
            tops += [proc for proc in self._seen.values() if _parent_pid(proc) not in known]
        for top in tops:
            try:
                children: list[psutil.Process] = top.children(recursive=True)
            except psutil.Error:
                continue
            with self._lock:
                for child in children:
                    self._remember(child)

    async def watch(self) -> None:
        """Walk the tree every :data:`POLL_INTERVAL_S` until cancelled."""
        while True:
            await anyio.sleep(POLL_INTERVAL_S)
            await anyio.to_thread.run_sync(self.walk)

    @property
    def killed(self) -> int:
        """How many descendants :meth:`kill_all` has killed so far."""
        return len(self._killed)

    def kill_all(self) -> None:
        """Freeze every remembered or marked descendant still alive, sweep after sweep until a sweep
        finds none it had not frozen, then SIGKILL them all (blocking: reads the process table)."""
        with self._lock:
            frozen: set[tuple[int, float]] = set()
            for _ in range(_KILL_SWEEPS):
                self.walk()
                for proc in self._marked():
                    self._remember(proc)
                fresh = {k: p for k, p in self._seen.items() if k not in self._killed and k not in frozen}
                if not fresh:
                    break
                for key, proc in fresh.items():
                    if _signal(proc, signal.SIGSTOP):
                        frozen.add(key)
                    else:
                        del self._seen[key]  # already gone: nothing to do next sweep
            for key in frozen:
                if _signal(self._seen[key], signal.SIGKILL):
                    self._killed.add(key)

    def _remember(self, proc: psutil.Process) -> None:
        try:
            self._seen.setdefault((proc.pid, proc.create_time()), proc)
        except psutil.Error:
            pass

    def _marked(self) -> list[psutil.Process]:
        me = os.getpid()
        found: list[psutil.Process] = []
        for proc in psutil.process_iter():
            if proc.pid == me:
                continue
            try:
                if proc.environ().get(RUN_MARKER_VAR) == self._marker:
                    found.append(proc)
            except (psutil.Error, OSError):
                continue  # gone, a zombie, or another user's process (which we could not kill anyway)
        return found


def _parent_pid(proc: psutil.Process) -> int | None:
    try:
        return int(proc.ppid())
    except psutil.Error:
        return None


def _signal(proc: psutil.Process, signum: int) -> bool:
    """Send ``signum`` to ``proc`` (psutil refuses a pid reused by another process); False when it
    is gone or a zombie already."""
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False  # already dead; only its parent (or init) can reap it
        proc.send_signal(signum)
    except psutil.Error:
        return False
    return True


def _signal_group(process: Process, signum: int) -> None:
    """Send ``signum`` to the child's whole process group (it leads its own session)."""
    if sys.platform != "win32":
        try:
            os.killpg(process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _kill_group(process: Process) -> None:
    """SIGKILL the child's whole process group, then the child itself."""
    _signal_group(process, signal.SIGKILL)
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
    kill_leftovers: bool = False,
) -> CommandResult:
    """Run ``argv`` (never through a shell) in ``cwd`` and collect its output.

    On timeout the child, its process group and every descendant found (see :class:`_Descendants`)
    are killed and ``timed_out`` is set; on cancellation of the caller the same happens before the
    cancellation propagates. The command is over when the child exits: output that descendants
    still holding its pipes write after :data:`PIPE_GRACE_S` is not collected. With
    ``kill_leftovers`` the descendants still running when the child exits are killed too (a test
    run must not leave servers behind); without it they are left alone (``git gc`` detaches on
    purpose). ``env`` replaces the environment when given (None inherits ours); the run marker is
    added either way. Raises ``OSError`` (e.g. ``FileNotFoundError``) when the program cannot be
    started; callers turn that into an error entry in their result.
    """
    if not argv:
        raise ValueError("run_command needs a non-empty argument list")
    if timeout_s <= 0:
        raise ValueError("timeout_s must be positive")
    args = tuple(str(a) for a in argv)
    stdout = _CappedBuffer(max_output_bytes)
    stderr = _CappedBuffer(max_output_bytes)
    marker = uuid.uuid4().hex
    started = time.monotonic()
    # The guard hears of the marker before the command exists: a server killed between the start
    # and the ``+ pid`` line still leaves the guard a way to find the command (by its marker).
    _guard.tell(f"m 0 {marker}")
    try:
        process = await anyio.open_process(
            list(args),
            cwd=cwd,
            env={**(os.environ if env is None else env), RUN_MARKER_VAR: marker},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except BaseException:
        _guard.tell(f"- 0 {marker}")
        raise
    descendants = _Descendants(process.pid, marker)
    _trees[process.pid] = descendants
    finished = False
    timed_out = False
    create_time: float | None = None
    try:
        create_time = _started(process.pid, marker)
        with anyio.move_on_after(timeout_s) as scope:
            await _collect(process, descendants, stdout, stderr, kill_leftovers=kill_leftovers)
            finished = True
        # Not a timeout when the child had exited and only a leftover kept its pipes open past it.
        timed_out = scope.cancelled_caught and process.returncode is None
    finally:
        # Shielded: a cancelled caller must still not leave the child (or its descendants) running.
        with anyio.CancelScope(shield=True):
            if not finished:
                # Frozen, the group cannot fork and the tree stays whole while it is walked: a child
                # forked at this instant, gone to its own session with no marker, is still below it.
                _signal_group(process, signal.SIGSTOP)
                await anyio.to_thread.run_sync(descendants.kill_all)
                _kill_group(process)
                await anyio.to_thread.run_sync(descendants.kill_all)  # anything the marker shows now
            with anyio.move_on_after(10):
                await process.aclose()
            _ended(process.pid, marker, create_time)
    return CommandResult(
        argv=args,
        returncode=None if timed_out else process.returncode,
        stdout=stdout.text(),
        stderr=stderr.text(),
        truncated=stdout.truncated or stderr.truncated,
        timed_out=timed_out,
        duration_s=round(time.monotonic() - started, 3),
        leftovers_killed=descendants.killed,
    )


async def _collect(
    process: Process,
    descendants: _Descendants,
    stdout: _CappedBuffer,
    stderr: _CappedBuffer,
    *,
    kill_leftovers: bool,
) -> None:
    """Read both pipes and watch the descendants until the child exits and its pipes close.

    Pipes still open :data:`PIPE_GRACE_S` after the child exited are held by descendants that
    outlived it: reading stops there rather than waiting for them (until the timeout).
    """
    out_closed, err_closed = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_drain, process.stdout, stdout, out_closed)
        tg.start_soon(_drain, process.stderr, stderr, err_closed)
        tg.start_soon(descendants.watch)
        await process.wait()
        if kill_leftovers:
            await anyio.to_thread.run_sync(descendants.kill_all)
        with anyio.move_on_after(PIPE_GRACE_S):
            await out_closed.wait()
            await err_closed.wait()
        tg.cancel_scope.cancel()
