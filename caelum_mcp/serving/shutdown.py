"""What the server does when it is told to stop by a signal: its commands stop with it.

The stdio server is stopped by its client with SIGTERM (or SIGHUP when the terminal goes). Python's
default for those ends the process at once, and the commands it runs, each in a session of its
own, would keep running. :func:`install_signal_handlers` makes both kill every running command with
what it started (:func:`~caelum_mcp.tools.process.kill_running_commands`) and then end the process
by the same signal, so that its exit status still says how it ended. ``kill -9`` cannot be
caught: the guard process of :mod:`caelum_mcp.tools.process` covers it.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

from caelum_mcp.tools.process import kill_running_commands

STOP_SIGNALS = ("SIGTERM", "SIGHUP")


def _stop(signum: int, frame: FrameType | None) -> None:
    killed = kill_running_commands()
    if killed:
        # os.write: a signal handler must not take the locks that sys.stderr or logging may hold.
        os.write(2, f"caelum-mcp: {signal.Signals(signum).name}: stopped {killed} running command(s)\n".encode())
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def install_signal_handlers() -> None:
    """Install the handlers (from the main thread, before the server starts); a no-op on Windows.
    A signal that is ignored (``nohup`` ignores SIGHUP) stays ignored."""
    if sys.platform == "win32":
        return
    for name in STOP_SIGNALS:
        signum = getattr(signal, name)
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _stop)
