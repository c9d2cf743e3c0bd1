"""Reading files of a project that may be hostile: regular files only, bounded, off the event loop.

A project can hold a FIFO, a socket or a device node, or a link to one, under any name. A plain
``open()`` of a FIFO waits for a writer that never comes; on the event loop that freezes every
call the server is serving. So every read of a project file goes through :func:`open_regular`:
the path is checked with ``os.stat`` (links followed), then opened with ``O_NONBLOCK`` (which makes
opening a FIFO return at once) and checked again with ``fstat`` on the open descriptor, which closes
the race of a file swapped for a FIFO between the two. Anything but a regular file raises
:class:`NotRegularFileError`, an :class:`OSError`, so callers that already skip unreadable files
skip these too.

Reads are bounded in bytes (:func:`read_head` says whether it stopped at the cap), and
:func:`off_loop` runs blocking work in a worker thread under a time limit, handing it a
:class:`threading.Event` that is set when the call is cancelled or times out, so that long reads
stop at their next check instead of running on unseen.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import anyio

from caelum_mcp.core.errors import CaelumError

T = TypeVar("T")

READ_TIMEOUT_S = 30.0
"""Default time limit of one :func:`off_loop` call."""

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


NOT_REGULAR_MESSAGE = "not a regular file"
"""Starts the ``strerror`` of every :class:`NotRegularFileError`, so notes can be picked out of errors."""


class NotRegularFileError(OSError):
    """The path is a FIFO, socket, device or directory (possibly through a link): never read."""

    def __init__(self, path: str | Path, kind: str) -> None:
        super().__init__(errno.EINVAL, f"{NOT_REGULAR_MESSAGE} (a {kind}): never read", str(path))
        self.kind = kind


class ReadTimeoutError(OSError, CaelumError):
    """A read of project files did not finish within its time limit: an :class:`OSError` for the
    callers that skip what they cannot read, and a :class:`CaelumError`, so that a tool call that
    lets it through answers with its message rather than as an internal error."""

    def __init__(self, what: str, timeout_s: float) -> None:
        super().__init__(
            errno.ETIMEDOUT,
            f"{what} did not finish within {timeout_s:g} s and was stopped (a file on a slow or hung file system?)",
        )

    def __str__(self) -> str:
        return str(self.strerror)


def file_kind(mode: int) -> str:
    """A short name for the type in ``mode`` ("FIFO", "socket", ...), for notes and errors."""
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISDIR(mode):
        return "directory"
    return "special file"


def is_regular_file(path: str | Path) -> bool:
    """Whether ``path`` (links followed) is a regular file; False when it is missing or unreadable."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def open_regular(path: str | Path) -> BinaryIO:
    """``path`` opened for binary reading, only when it is a regular file.

    Raises :class:`NotRegularFileError` for anything else (a FIFO, socket, device or directory,
    directly or through a link), and :class:`OSError` as ``open`` does. Never blocks on a FIFO.
    """
    before = os.stat(path)
    if not stat.S_ISREG(before.st_mode):
        raise NotRegularFileError(path, file_kind(before.st_mode))
    fd = os.open(path, _OPEN_FLAGS)
    try:
        # the path may have been swapped for a FIFO since the stat: check what was really opened
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise NotRegularFileError(path, file_kind(opened.st_mode))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@dataclass(frozen=True)
class FileHead:
    """The first bytes of a file, and whether there was more than ``max_bytes``."""

    data: bytes
    truncated: bool


def read_head(path: str | Path, max_bytes: int) -> FileHead:
    """At most ``max_bytes`` of the regular file ``path`` (see :func:`open_regular`)."""
    if max_bytes < 0:
        raise ValueError("max_bytes must not be negative")
    with open_regular(path) as handle:
        data = handle.read(max_bytes + 1)
    return FileHead(data[:max_bytes], len(data) > max_bytes)


def read_text(path: str | Path, max_bytes: int) -> str:
    """The whole regular file ``path`` as UTF-8 (bad bytes replaced).

    Raises :class:`OSError` (``EFBIG``) when it is over ``max_bytes``: a parser must not be handed
    a file cut in the middle.
    """
    head = read_head(path, max_bytes)
    if head.truncated:
        raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes; not read", str(path))
    return head.data.decode("utf-8", errors="replace")


async def off_loop(
    work: Callable[[threading.Event], T], *, timeout_s: float = READ_TIMEOUT_S, what: str = "reading files"
) -> T:
    """``work(stop)`` in a worker thread, within ``timeout_s``; the event loop keeps serving.

    ``stop`` is set when the call is cancelled or the time runs out; ``work`` should check it
    between files or blocks and return early. On a timeout :class:`ReadTimeoutError` is raised at
    once, without waiting for the thread.
    """
    stop = threading.Event()
    try:
        with anyio.fail_after(timeout_s):
            return await anyio.to_thread.run_sync(work, stop, abandon_on_cancel=True)
    except TimeoutError:
        raise ReadTimeoutError(what, timeout_s) from None
    finally:
        stop.set()
