"""The safe reader: only regular files are opened (never blocking on a FIFO, even one swapped in
after the check), reads are bounded, and work off the event loop stops when its call is cancelled."""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from caelum_mcp.engine.cache import file_digest
from caelum_mcp.tools import safe_read
from caelum_mcp.tools.code import deps, security, structure
from caelum_mcp.tools.code.files import ProjectListing
from caelum_mcp.tools.code.incremental import salt_for
from caelum_mcp.tools.safe_read import (
    NotRegularFileError,
    ReadTimeoutError,
    is_regular_file,
    off_loop,
    open_regular,
    read_head,
    read_text,
)


@pytest.fixture
def specials(tmp_path: Path) -> dict[str, Path]:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "link").symlink_to("pipe")
    (tmp_path / "folder").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    sock.close()
    return {"FIFO": tmp_path / "pipe", "link to a FIFO": tmp_path / "link", "socket": tmp_path / "sock"}


def test_fifos_sockets_and_links_to_them_are_refused_without_blocking(specials: dict[str, Path]) -> None:
    for what, path in specials.items():
        assert not is_regular_file(path), what
        with pytest.raises(NotRegularFileError, match="not a regular file"):
            open_regular(path)
        with pytest.raises(OSError):  # the callers that skip unreadable files skip these too
            file_digest(path)
    with pytest.raises(NotRegularFileError, match="directory"):
        open_regular(specials["FIFO"].parent / "folder")


def test_a_fifo_swapped_in_after_the_check_is_refused_by_the_check_on_the_open_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    regular = tmp_path / "a.py"
    regular.write_text("x = 1\n")
    os.mkfifo(tmp_path / "swapped.py")
    real_stat = os.stat
    # the path still looks regular when checked, but is a FIFO when opened
    monkeypatch.setattr(safe_read.os, "stat", lambda path, *a, **k: real_stat(regular))
    with pytest.raises(NotRegularFileError, match="FIFO"):
        open_regular(tmp_path / "swapped.py")


def test_reads_are_bounded_and_say_when_they_were_cut(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_bytes(b"a" * 5000)
    head = read_head(big, 1000)
    assert head.data == b"a" * 1000 and head.truncated
    assert not read_head(big, 5000).truncated
    with pytest.raises(OSError, match="larger than 1000 bytes"):
        read_text(big, 1000)
    assert read_text(big, 5000) == "a" * 5000


def test_a_config_file_that_is_a_fifo_counts_as_absent_for_the_cache_salt(tmp_path: Path) -> None:
    fifo = tmp_path / "pyproject.toml"
    os.mkfifo(fifo)
    salts: list[str] = []
    worker = threading.Thread(target=lambda: salts.append(salt_for("bandit", tmp_path, ["pyproject.toml"])))
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():  # blocked in open(): play the writer so that the thread ends, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=5)
        pytest.fail("salt_for blocked on a FIFO (it runs on the event loop)")
    assert salts == [salt_for("bandit", tmp_path / "none", ["pyproject.toml"])]


async def test_off_loop_gives_up_at_its_time_limit_and_tells_the_work_to_stop() -> None:
    stopped = threading.Event()

    def slow(stop: threading.Event) -> None:
        stop.wait(30)
        stopped.set()

    with pytest.raises(ReadTimeoutError, match=r"did not finish within 0\.2 s"):
        await off_loop(slow, timeout_s=0.2, what="reading")
    assert await anyio.to_thread.run_sync(stopped.wait, 10)


async def test_cancelling_the_caller_stops_the_work_in_the_thread() -> None:
    started, stopped = threading.Event(), threading.Event()

    def endless(stop: threading.Event) -> None:
        started.set()
        while not stop.wait(0.01):
            pass
        stopped.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: off_loop(endless, timeout_s=60))
        assert await anyio.to_thread.run_sync(started.wait, 10)
        tg.cancel_scope.cancel()
    assert await anyio.to_thread.run_sync(stopped.wait, 10)


async def test_a_file_swapped_for_a_fifo_after_the_listing_is_skipped_by_the_code_tools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.py").write_text("import os\n")
    fifo = tmp_path / "swapped.py"
    os.mkfifo(fifo)
    listing = ProjectListing(files=("a.py", "swapped.py"), source="walk", excluded={})

    async def listed(root: Path) -> ProjectListing:
        return listing  # as listed a moment before the file became a FIFO

    monkeypatch.setattr(structure, "list_project_files", listed)
    freed: list[str] = []

    def writer_after_grace() -> None:
        # plays the writer a blocked reader waits for, so that a regression fails instead of hanging
        if done.wait(30):
            return
        while not done.wait(0.05):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                freed.append(fifo.name)
            except OSError:
                pass

    done = threading.Event()
    watchdog = threading.Thread(target=writer_after_grace, daemon=True)
    watchdog.start()
    try:
        shape = await structure.project_structure(tmp_path)
        scan = await security.security_scan(tmp_path, ["a.py", "swapped.py"], timeout_s=60)
    finally:
        done.set()
        watchdog.join(timeout=5)
    assert freed == []
    assert any(g.reason.startswith("not a regular file") and g.examples == ("swapped.py",) for g in shape.skipped)
    assert scan.text_files_scanned == 1 and scan.python_files_scanned == 1 and not scan.errors, scan


async def test_manifests_that_take_too_long_to_read_are_an_analyser_error_not_a_failed_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def hung(base: Path) -> Any:
        time.sleep(3)  # a file on a hung network mount
        raise AssertionError("not reached in time")

    monkeypatch.setattr(deps, "_read_project", hung)
    monkeypatch.setattr(deps, "off_loop", functools.partial(off_loop, timeout_s=0.2))
    result = await deps.dependency_check(tmp_path, audit=False)
    assert [e.message for e in result.errors] == [
        "reading the dependency manifests did not finish within 0.2 s and was stopped "
        "(a file on a slow or hung file system?)"
    ]
