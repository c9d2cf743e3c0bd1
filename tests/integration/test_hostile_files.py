"""Hostile files in a project: FIFOs and links to them are skipped with a note, never opened.

A FIFO opened for reading waits for a writer. Opened on the event loop, it froze the whole server:
every later call timed out. These tests go through the real MCP server (in process); a watchdog
thread plays the missing writer after a long grace period, so that a regression fails the test
(the watchdog says it had to free a reader) instead of hanging it. A client that cancels a long
diagnose_logs call stops its reading thread.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from caelum_mcp.tools.logs import diagnosis

from .test_development import _git, call, session, write

GRACE_S = 90.0  # far beyond any prompt answer; only a reader stuck on a FIFO lasts this long


class FifoWatchdog:
    """After ``grace_s``, opens each FIFO for writing (and closes it) whenever a reader holds it,
    which lets a reader stuck in ``open()`` go on; ``freed`` names the FIFOs it had to do that for."""

    def __init__(self, fifos: Sequence[Path], grace_s: float) -> None:
        self.fifos = list(fifos)
        self.grace_s = grace_s
        self.freed: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self._done.wait(self.grace_s):
            return
        while not self._done.wait(0.05):
            for fifo in self.fifos:
                try:
                    # succeeds only while a reader has the FIFO open
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError as exc:
                    if exc.errno not in (errno.ENXIO, errno.ENOENT):
                        raise
                    continue
                os.close(fd)
                self.freed.append(fifo.name)

    @contextmanager
    def watching(self) -> Iterator[FifoWatchdog]:
        self._thread.start()
        try:
            yield self
        finally:
            self._done.set()
            self._thread.join(timeout=5)


def _hostile_repo(root: Path) -> list[Path]:
    """A git project whose working tree holds FIFOs and links to them, as untracked files, as a
    requirements include and in a log folder; returns the FIFOs."""
    write(
        root,
        {
            "app.py": "import os\n\n\ndef f():\n    return 1\n",
            "requirements.txt": "requests==2.31.0\n",
            "logs/app.log": "2024-05-01 10:00:00,000 ERROR [main] db: query timed out\n" * 3,
        },
    )
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "init")
    fifos = [root / "pipe", root / "pipe-requirements.txt", root / "logs" / "pipe.log"]
    for fifo in fifos:
        os.mkfifo(fifo)
    (root / "link.py").symlink_to("pipe")
    (root / "logs" / "link.log").symlink_to("pipe.log")
    write(root, {"app.py": "import os\n\n\ndef f():\n    return eval(input())\n", "new.py": "x = 1\n"})
    (root / "requirements.txt").write_text("requests==2.31.0\n-r pipe-requirements.txt\n")
    return fifos


@pytest.mark.slow  # runs the analysers
async def test_fifos_and_links_to_them_are_skipped_with_a_note_and_the_server_keeps_serving(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "work" / "repo"
    fifos = _hostile_repo(repo)
    with FifoWatchdog(fifos, GRACE_S).watching() as dog:
        async with session(tmp_path) as client:
            review = await call(client, "review_changes", {"project": str(repo)})
            analysis = await call(client, "analyze_and_improve_code", {"project": str(repo), "llm_review": False})
            folder = await call(client, "diagnose_logs", {"paths": ["repo/logs"], "hypotheses": False})
            named = await call(
                client, "diagnose_logs", {"paths": ["repo/logs/app.log", "repo/logs/link.log"], "hypotheses": False}
            )
            later = await call(client, "review_changes", {"project": str(repo)})
    assert dog.freed == [], f"a tool blocked in open() on {dog.freed}: it froze the server until a writer came"

    for result in (review, analysis, folder, named, later):
        assert not result.is_error, result.content
    out = review.structured_content
    assert {f["path"] for f in out["files"]} >= {"app.py", "new.py", "link.py"}
    assert any("link.py" in note and "FIFO" in note for note in out["notes"]), out["notes"]
    assert any(f["file"] == "app.py" and f["rule"] == "B307" for f in out["findings"]), out["findings"]
    assert later.structured_content["notes"] == out["notes"]

    notes = analysis.structured_content["notes"]
    assert any("pipe-requirements.txt" in note and "FIFO" in note for note in notes), notes
    assert any("not regular files" in note for note in notes), notes
    assert any(f["file"] == "app.py" for f in analysis.structured_content["findings"])

    for result in (folder, named):
        diagnosis = result.structured_content
        assert [f["file"] for f in diagnosis["files"]] == ["repo/logs/app.log"], diagnosis["files"]
        assert diagnosis["entries"] == 3
        assert any("FIFO" in note and "link.log" in note for note in diagnosis["notes"]), diagnosis["notes"]


@pytest.mark.slow  # waits to see that the reading has stopped
async def test_cancelling_diagnose_logs_stops_the_reading_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = tmp_path / "work" / "logs"
    logs.mkdir(parents=True)
    lines = (f"2024-05-01 10:00:{i % 60:02d},000 ERROR [main] db: query {i} timed out\n" for i in range(200_000))
    (logs / "big.log").write_text("".join(lines))
    (logs / "small.log").write_text("2024-05-01 10:00:00,000 ERROR [main] db: query timed out\n")
    masked: list[int] = []
    real_mask = diagnosis.mask_message

    def slow_mask(message: str) -> str:
        masked.append(1)  # one per entry read
        time.sleep(0.001)  # 200 000 entries: minutes, unless the reading stops
        return real_mask(message)

    monkeypatch.setattr(diagnosis, "mask_message", slow_mask)
    async with session(tmp_path) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.call_tool, "diagnose_logs", {"paths": ["logs/big.log"], "hypotheses": False})
            for _ in range(1200):  # up to 60 s for the reading to start
                if len(masked) > 100:
                    break
                await anyio.sleep(0.05)
            tg.cancel_scope.cancel()  # the client gives up; the session stays open
        assert len(masked) > 100, "the reading never started"
        # The thread looks at its stop flag every few hundred lines: wait for the count to hold
        # still for a second (30 s at most: a loaded machine can be slow to get there; reading on
        # would take minutes and never hold still).
        deadline = time.monotonic() + 30
        settled = len(masked)
        while True:
            await anyio.sleep(1)
            if len(masked) == settled or time.monotonic() > deadline:
                break
            settled = len(masked)
        assert len(masked) == settled < 100_000, "the log is still being read after the call was cancelled"
        later = await call(client, "diagnose_logs", {"paths": ["logs/small.log"], "hypotheses": False})
    assert not later.is_error and later.structured_content["entries"] == 1
