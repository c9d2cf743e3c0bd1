"""The ledger's half of issue 23's done-when (the whole of it, with four real servers over MCP, is
``tests/integration/test_shared_budget_servers.py``): four processes on one ledger, 40 concurrent
escalations against a $0.02 daily budget, made straight on the Ledger API. Spent never passes the
budget; a process killed with SIGKILL mid-run loses no row it committed, and its open reservation
stops counting at its deadline. On PostgreSQL (the ledger servers share) and on one SQLite file."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fakes import postgres

from caelum_mcp.engine.ledger import Ledger

# Fixtures: the session's PostgreSQL server, and a database of its own for each test.
postgres_server = postgres.postgres_server
postgres_url = postgres.postgres_url

pytestmark = pytest.mark.slow

WORKER = Path(__file__).resolve().parents[1] / "fakes" / "budget_worker.py"
PROCESSES, ESCALATIONS = 4, 10  # 40 escalations
BUDGET, COST = 0.02, 0.001  # room for 20 of them
TTL_S, HOLD_S = 6.0, 0.2
WAIT_S = 120


@dataclass
class Worker:
    """One server-like process and the lines it printed."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line.strip())
                self.changed.notify_all()
        with self.changed:
            self.lines.append("<eof>")
            self.changed.notify_all()

    def wait_until(self, done: Callable[[list[str]], bool]) -> None:
        with self.changed:
            ok = self.changed.wait_for(lambda: done(self.lines) or "<eof>" in self.lines, WAIT_S)
        assert ok and done(self.lines), f"the worker stopped short: {self.lines}, {self.stderr()}"

    def wait_for(self, prefix: str) -> str:
        with self.changed:
            found = self.changed.wait_for(lambda: any(x.startswith((prefix, "<eof>")) for x in self.lines), WAIT_S)
        line = next((x for x in self.lines if x.startswith(prefix)), None)
        assert found and line is not None, f"no {prefix!r} from the worker: {self.lines}, {self.stderr()}"
        return line

    def stderr(self) -> str:
        return self.proc.stderr.read()[-3000:] if self.proc.stderr and self.proc.poll() is not None else ""

    def tagged(self, tag: str) -> list[str]:
        return [x.split(" ", 1)[1] if " " in x else "" for x in self.lines if x.split(" ", 1)[0] == tag]


@pytest.fixture(params=["postgres", "sqlite"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "ledger.sqlite3")
    return str(request.getfixturevalue("postgres_url"))


def start(location: str, name: str, home: Path, *, hang: bool = False) -> Worker:
    args = [location, name, str(ESCALATIONS), str(BUDGET), str(COST), str(TTL_S), str(HOLD_S)]
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), *args, *(["hang"] if hang else [])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LC_ALL": "C.UTF-8"},
    )  # fmt: skip
    worker = Worker(proc)
    threading.Thread(target=worker.read, daemon=True).start()
    return worker


@pytest.fixture
def workers(location: str, tmp_path: Path) -> Iterator[list[Worker]]:
    started = [start(location, f"server{i}", tmp_path, hang=i == 0) for i in range(PROCESSES)]
    yield started
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
        worker.proc.wait(10)


def test_four_servers_never_spend_past_the_budget_and_a_killed_one_leaks_nothing_past_its_deadline(
    location: str, workers: list[Worker]
) -> None:
    for worker in workers:
        worker.wait_for("ready")
    for worker in workers:  # every escalation at once
        assert worker.proc.stdin is not None
        worker.proc.stdin.write("go\n")
        worker.proc.stdin.flush()
    victim, survivors = workers[0], workers[1:]
    held_id, held_expires = victim.wait_for("holding").split()[1:]

    def mid_run(lines: list[str]) -> bool:  # a row committed, or every other escalation refused
        return "committed" in {x.split(" ")[0] for x in lines} or lines.count("refused") == ESCALATIONS - 1

    victim.wait_until(mid_run)
    victim.proc.kill()  # SIGKILL mid-run: no cleanup, its held reservation stays in the ledger
    victim.proc.wait(10)
    for worker in survivors:
        worker.wait_for("done")
    killed_at = time.time()

    granted = sum(len(w.tagged("reserved")) for w in workers)
    committed = [task for w in workers for task in w.tagged("committed")]
    refused = sum(len(w.tagged("refused")) for w in workers)
    assert granted * COST <= BUDGET + 1e-9 and refused >= 1  # the budget, not the timing, stopped them
    for worker in survivors:  # each escalation of a survivor got its money or a refusal
        assert len(worker.tagged("reserved")) + len(worker.tagged("refused")) == ESCALATIONS, worker.lines
    assert len(committed) >= (PROCESSES - 1) * 2  # the survivors did get some money
    with Ledger(location) as ledger:
        spent = ledger.claude_spend_today()
        assert spent <= BUDGET + 1e-9
        assert spent == pytest.approx(len({r.task for r in ledger.recent(100)}) * COST)
        rows = {r.task for r in ledger.recent(100)}
        assert set(committed) <= rows, "a row the killed process had committed is gone"
        figures = ledger.budget_figures()
        if time.time() < float(held_expires):  # its reservation still counts before its deadline
            assert figures.reserved_usd >= COST - 1e-9
            assert figures.spent_usd + figures.reserved_usd <= BUDGET + 1e-9
        # The killed process's reservations (the held one, and any it took mid-run) end at their deadlines.
        deadline = max(float(line.split()[1]) for line in victim.tagged("reserved"))
        time.sleep(max(0.0, deadline - time.time()) + 0.1)
        after = ledger.budget_figures()
        assert after.reserved_usd == 0, f"reservation {held_id} still counts after its deadline"
        # The money it held is free again: a new escalation gets it whenever the budget has room.
        room = BUDGET - after.spent_usd
        granted_now, _ = ledger.reserve(COST, limit_usd=BUDGET, ttl_s=TTL_S)
        assert (granted_now is not None) == (room >= COST - 1e-9), (room, killed_at)
