"""Issue 23's done-when, end to end: four ``caelum-mcp serve --transport http`` processes on one
ledger, 40 escalations (``delegate_task`` over MCP) against a $0.02 daily Claude budget, and one
server killed with SIGKILL while its Claude call is in flight. The killed server's ten calls arrive
one every 2 s; once it has committed a Claude answer and holds a reservation for a call that hangs,
the other three servers' thirty start at once, and the kill lands while their Claude calls run.

- spent never passes the budget, summed over every server;
- no row the killed server committed is lost (each answer its client received from Claude is a
  row, with its cost);
- what the killed server had reserved stops counting at the reservation's deadline (its call's
  time budget plus ``[ledger] reservation_grace_s``), and the survivors can spend it after.

Real parts: the server processes, MCP over streamable HTTP, the ledger (a real PostgreSQL the
suite starts, or one SQLite file the servers share) and the anthropic SDK over HTTP. Faked: the
local model host and Claude (``FaultHost``, real wire shapes). The local answers are plain text on
a kind whose calibration reads low, so every call escalates.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from fakes import postgres
from fakes.fault_host import Fault, FaultHost
from fakes.served import free_port, wait_healthy
from mcp import Client
from mcp.types import TextContent

from caelum_mcp.engine.ledger import Ledger

postgres_server = postgres.postgres_server
postgres_url = postgres.postgres_url

pytestmark = pytest.mark.slow

SERVERS, CALLS = 4, 10  # 40 escalations
BUDGET = 0.02
PRICE = (2.0, 25.0)  # $ per million input, output tokens: about $0.001 a call, so room for ~20 of them
TIME_BUDGET_S, GRACE_S = 30.0, 2.0  # a reservation lives at most 32 s
VICTIM_EVERY_S = 2.0
PROMPT = "Name one prime number between {n} and {m}, in words."


@dataclass
class Server:
    name: str
    model: str  # its Claude model id: the ledger rows say which server made them
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def tail(self) -> str:
        return self.log.read_bytes()[-3000:].decode(errors="replace") if self.log.exists() else ""


def write_config(folder: Path, *, data: Path, ledger_url: str | None, local: str, claude: str, model: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ledger = f'url = "{ledger_url}"\n' if ledger_url else ""
    path = folder / "caelum.toml"
    path.write_text(
        f"""embedded = "off"
implicit_ollama = false
data_dir = "{data}"
allowed_roots = ["{folder}"]

[[hosts]]
name = "gpu-local"
kind = "openai"
url = "{local}"

[claude]
base_url = "{claude}"
model = "{model}"
daily_budget_usd = {BUDGET}
max_retries = 0
max_tokens = 32

[prices."{model}"]
input = {PRICE[0]}
output = {PRICE[1]}

[router]
agreement_samples = 0

[router.tasks.general]
time_budget_s = {TIME_BUDGET_S}

[ledger]
{ledger}reservation_grace_s = {GRACE_S}
""",
        encoding="utf-8",
    )
    return path


def start(name: str, config: Path, home: Path) -> Server:
    port = free_port()
    log = config.parent / "server.log"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "CAELUM_CONFIG": str(config),
        "ANTHROPIC_API_KEY": "sk-ant-test-shared-budget",
    }
    args = [sys.executable, "-m", "caelum_mcp", "serve", "--transport", "http", "--port", str(port)]
    with log.open("wb") as sink:
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, cwd=config.parent)
    model = f"claude-test-{name}"
    return Server(name, model, proc, f"http://127.0.0.1:{port}", log)


@pytest.fixture(params=["postgres", "sqlite"])
def ledger_url(request: pytest.FixtureRequest) -> str | None:
    """The shared ledger: a PostgreSQL database, or None for the SQLite file in a shared data folder."""
    return str(request.getfixturevalue("postgres_url")) if request.param == "postgres" else None


def usage(body: dict[str, Any]) -> tuple[int, int]:
    """What a Claude reply reports: about four bytes a token of what was sent, and the whole output
    allowance (a token is never shorter than a byte, which the reservation's bound relies on)."""
    sent = json.dumps([body.get("system"), body.get("messages")], ensure_ascii=False).encode()
    return len(sent) // 4, int(body["max_tokens"])


def claude_answer(body: dict[str, Any]) -> str:
    return json.dumps({"answer": "seventeen", "confidence": 0.95})


@pytest.fixture
def claude() -> Iterator[tuple[FaultHost, FaultHost]]:
    """Claude for the survivors, and one for the server that will be killed (so it can hang alone)."""
    with (
        FaultHost("anthropic", delay_s=0.3, usage=usage, answer=claude_answer) as shared,
        FaultHost(
            "anthropic", delay_s=0.3, usage=usage, answer=claude_answer, fault=Fault("hang", fraction=1 / 2)
        ) as victims,
    ):
        yield shared, victims


@pytest.fixture
def servers(
    tmp_path: Path, ledger_url: str | None, claude: tuple[FaultHost, FaultHost]
) -> Iterator[tuple[list[Server], FaultHost]]:
    shared, victims = claude
    home = tmp_path / "home"
    home.mkdir()
    with FaultHost("openai") as local:
        started: list[Server] = []
        try:
            for i in range(SERVERS):
                folder = tmp_path / f"server{i}"
                # SQLite: one data folder, so one ledger file; PostgreSQL: a data folder each.
                data = tmp_path / "data" if ledger_url is None else folder / "data"
                api = victims if i == 0 else shared
                config = write_config(
                    folder, data=data, ledger_url=ledger_url, local=local.url, claude=api.url, model=f"claude-test-s{i}"
                )
                started.append(start(f"s{i}", config, home))
            deadline = time.monotonic() + 60
            for server in started:
                wait_healthy(server.proc, server.url, server.log, deadline=deadline, name=server.name)
            yield started, local
        finally:
            for server in started:
                if server.proc.poll() is None:
                    server.proc.terminate()
                    try:
                        server.proc.wait(15)
                    except subprocess.TimeoutExpired:
                        server.proc.kill()
                        server.proc.wait(5)


def execution(result: Any) -> dict[str, Any]:
    assert not result.is_error, [c.text for c in result.content if isinstance(c, TextContent)]
    assert result.structured_content is not None
    ex: dict[str, Any] = result.structured_content["execution"]
    return ex


async def until(done: Callable[[], bool], timeout_s: float = 60) -> None:
    """Poll ``done``: what it reads changes in other threads (the fake's) and other tasks."""
    with anyio.fail_after(timeout_s):
        while not done():  # noqa: ASYNC110 - no event to wait on across the fake's thread
            await anyio.sleep(0.02)


async def escalate(url: str, n: int) -> dict[str, Any]:
    async with Client(f"{url}/mcp") as client:
        result = await client.call_tool(
            "delegate_task", {"prompt": PROMPT.format(n=n, m=n + 20), "max_tokens": 32}, read_timeout_seconds=None
        )
    return execution(result)


async def test_four_servers_share_one_budget_and_a_killed_one_leaks_nothing_past_its_deadline(
    servers: tuple[list[Server], FaultHost],
    claude: tuple[FaultHost, FaultHost],
    ledger_url: str | None,
    tmp_path: Path,
) -> None:
    started, local = servers
    victim, survivors = started[0], started[1:]
    shared_claude, victims_claude = claude
    answered: dict[str, list[dict[str, Any]]] = {s.name: [] for s in started}
    killed_at: list[float] = []
    go = anyio.Event()  # the survivors' calls start once the victim holds a hanging reservation

    async def call(server: Server, n: int, delay_s: float) -> None:
        await anyio.sleep(delay_s)
        if server is not victim:
            await go.wait()
        try:
            answered[server.name].append(await escalate(server.url, n))
        except Exception:
            if server is not victim:
                raise  # only the killed server's calls may end without a result

    async def kill_mid_call() -> None:
        # The victim's calls arrive one every VICTIM_EVERY_S. Once one has committed a Claude answer,
        # its Claude hangs from then on (a reservation is taken before the call is sent); once a call
        # hangs, the survivors' 30 start, and with their Claude calls under way the victim gets kill -9.
        try:
            await until(lambda: any(ex["path"] == "claude" for ex in answered[victim.name]))
            sent = len(victims_claude.bodies)
            victims_claude.fault = Fault("hang")
            await until(lambda: len(victims_claude.bodies) > sent)
        except TimeoutError:
            got = [(ex["path"], ex["reason"]) for ex in answered[victim.name]]
            pytest.fail(f"the victim never had a Claude answer and a hanging call in 60 s: {got}\n{victim.tail()}")
        before = len(shared_claude.bodies)
        go.set()
        await until(lambda: len(shared_claude.bodies) > before)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)
        killed_at.append(time.time())

    async with anyio.create_task_group() as tg:
        tg.start_soon(kill_mid_call)
        for index, server in enumerate(started):
            for i in range(CALLS):
                delay = i * VICTIM_EVERY_S if server is victim else 0.0
                tg.start_soon(call, server, 10 * (index * CALLS + i), delay)

    assert killed_at, "the victim was never killed"
    served = [ex for s in survivors for ex in answered[s.name]]
    assert len(served) == (SERVERS - 1) * CALLS  # every survivor call got an answer
    assert all(ex["path"] in ("claude", "local_low_confidence") for ex in served), served
    refused = [ex for ex in served if ex["path"] == "local_low_confidence"]
    assert any("daily Claude budget" in (ex["reason"] or "") for ex in refused), refused  # the budget stopped them
    assert any(ex["path"] == "claude" for ex in served)

    # The victim's reservation for its hanging call (and any other it held) still counts...
    with Ledger(ledger_url or tmp_path / "data" / "ledger.sqlite3") as ledger:
        rows = [r for r in ledger.recent(500) if r.provider == "anthropic" and r.path == "claude"]
        spent = ledger.claude_spend_today()
        assert spent <= BUDGET + 1e-9
        assert spent == pytest.approx(sum(r.cost_usd for r in rows))
        by_model = {s.name: [r for r in rows if r.model == s.model] for s in started}
        for server in started:  # each Claude answer a client received is a committed row
            got = sum(ex["path"] == "claude" for ex in answered[server.name])
            assert len(by_model[server.name]) >= got, (server.name, got, len(by_model[server.name]))
        figures = ledger.budget_figures()
        held = figures.reserved_usd
        assert held > 0, "the killed server's open reservation vanished before its deadline"
        assert figures.spent_usd + held <= BUDGET + 1e-9
        # ...until its deadline: at most the call's time budget plus the grace after it was taken.
        await anyio.sleep(max(0.0, killed_at[0] + TIME_BUDGET_S + GRACE_S + 0.5 - time.time()))
        after = ledger.budget_figures()
        assert after.reserved_usd == 0, "a reservation of the killed server still counts after its deadline"
        room = BUDGET - after.spent_usd

    # The money it held is free again: escalations on a survivor spend it, up to the budget and no more.
    more: list[dict[str, Any]] = []
    while len(more) < 40 and (not more or more[-1]["path"] == "claude"):
        more.append(await escalate(survivors[0].url, 1000 + len(more)))
    assert more[0]["path"] == "claude", (room, more[0])  # room was left: the lapsed money came back
    assert more[-1]["path"] == "local_low_confidence" and "budget" in more[-1]["reason"], more[-1]
    with Ledger(ledger_url or tmp_path / "data" / "ledger.sqlite3") as ledger:
        final = ledger.budget_figures()
    assert final.reserved_usd == 0 and final.spent_usd <= BUDGET + 1e-9
    assert final.spent_usd == pytest.approx(after.spent_usd + sum(m["cost_usd"] for m in more))
    assert BUDGET - final.spent_usd < 0.002  # spent to within one call's bound of the budget
    assert local.chats >= 1  # the local model answered first: these were escalations
