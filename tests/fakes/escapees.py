"""Processes that try to outlive the command that started them, and how tests find them.

:func:`escaping_suite` is a pytest suite whose test starts a sleeper in its own session and a
double-forked daemon (reparented to init), both carrying ``mark`` on their command line, then sleeps.
:func:`marked` finds what still carries the mark; :func:`until` waits for a condition. The ``mark``
fixture (``tests/conftest.py``) kills whatever is left when a test ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import psutil


def escaping_suite(mark: str, *, then_sleep: float = 300) -> dict[str, str]:
    """Project files (relative path -> text) for the escaping test; ``then_sleep`` seconds after starting them."""
    return {
        "tests/test_escape.py": f"""
            import os, subprocess, sys, time

            SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)", {mark!r}]


            def test_escape():
                subprocess.Popen(SLEEPER, start_new_session=True)
                if os.fork() == 0:
                    os.setsid()
                    if os.fork() == 0:
                        os.execv(sys.executable, SLEEPER)
                    os._exit(0)
                time.sleep({then_sleep})
            """
    }


def marked(mark: str) -> list[psutil.Process]:
    """Live processes whose command line carries ``mark``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if mark in proc.cmdline() and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


async def until(check: Callable[[], bool], within_s: float) -> bool:
    """Whether ``check()`` became true within ``within_s`` seconds (polled every 50 ms)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if check():
            return True
        await anyio.sleep(0.05)
    return False
