"""A host that accepts connections and never answers must not hold up the server's start.

``python -m caelum_mcp serve`` runs as a real stdio child (as Claude Code starts it) with two
hosts in its config: one that never answers any request (its health check included) and one that
works. Before: ``initialize`` waited for the hung host's health check, 303 s (the HTTP client's
``request_timeout_s``), past the 30-60 s a client gives a server. Now the first health checks run in
the background with their own limit; the benchmark row (``bench/faults.py --only startup``) shows
the real figure, this test only that it is nowhere near the old one.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import anyio
import pytest
from fakes.fault_host import Fault, FaultHost
from mcp import Client, StdioServerParameters
from mcp.types import TextContent

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def config_with(tmp_path: Path, hung: str, healthy: str) -> Path:
    path = tmp_path / "caelum.toml"
    path.write_text(
        f"""embedded = "off"
implicit_ollama = false

[[hosts]]
name = "hung"
kind = "openai"
url = "{hung}"

[[hosts]]
name = "works"
kind = "openai"
url = "{healthy}"
""",
        encoding="utf-8",
    )
    return path


async def test_a_hung_host_does_not_hold_up_initialize_and_calls_go_to_the_working_host(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with FaultHost(fault=Fault("silent")) as hung, FaultHost() as healthy:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(home),
            "CAELUM_CONFIG": str(config_with(tmp_path, hung.url, healthy.url)),
            "CAELUM_DATA_DIR": str(tmp_path / "data"),
        }
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "caelum_mcp", "serve"], env=env, cwd=str(ROOT)
        )
        started = time.monotonic()
        # Before the fix this waited 300 s; the margin covers a slow interpreter start on a loaded machine.
        with anyio.fail_after(30):
            async with Client(params) as client:
                initialized = time.monotonic() - started
                assert hung.by_path["/health"] >= 1, "the hung host's health check was sent"

                result = await client.call_tool("delegate_task", {"prompt": "Say hello.", "max_tokens": 16})
                assert not result.is_error, [c.text for c in result.content if isinstance(c, TextContent)]
                assert result.structured_content is not None
                assert result.structured_content["execution"]["host"] == "works"

                res = await client.read_resource("caelum://status")
                status = {h["name"]: h for h in json.loads(getattr(res.contents[0], "text", ""))["hosts"]}
                assert status["works"]["healthy"] is True
                assert status["hung"]["healthy"] is False and not status["hung"]["models"]
    print(f"initialize answered after {initialized:.2f} s")
    assert initialized < 20.0, initialized
    assert hung.chats == 0, "no model call went to a host that never answered its health check"


async def test_the_server_state_opens_without_waiting_for_a_hung_host_and_tool_calls_wait_for_ready(
    tmp_path: Path,
) -> None:
    """In process: ``open_app(start_in_background=True)`` (what the MCP server's lifespan enters
    before it answers ``initialize``) returns while the hung host's first health check is still
    running; with ``embedded = "auto"`` the healthy host's answer settles, behind the tool calls'
    gate, that no embedded model is needed. ``ready`` (what tool calls wait for) comes once the
    first health checks' wait is over, the hung host then unknown. Before: the open waited the whole
    ``STARTUP_PROBE_WAIT_S`` for the hung host."""
    from caelum_mcp.engine.config import load_config
    from caelum_mcp.serving.app import open_app

    with FaultHost(fault=Fault("silent")) as hung, FaultHost() as healthy:
        config = load_config(
            str(config_with(tmp_path, hung.url, healthy.url)),
            environ={},
            overrides={"data_dir": str(tmp_path / "data"), "embedded": "auto"},
        )
        async with open_app(config, start_in_background=True) as state:
            assert not state.ready.is_set(), "open_app waited for the hung host's health check"
            with anyio.fail_after(30):
                await state.ready.wait()
            assert [h.name for h in state.pool.healthy_hosts()] == ["works"]
            assert state.embedded is None and state.embedded_note == "not needed: another local host is healthy"
            assert hung.by_path["/health"] >= 1 and state.pool.hosts["hung"].last_health is None  # still unknown

        # without it (tests, bench): ready when open_app returns, as before
        async with open_app(config) as state:
            assert state.ready.is_set()


async def test_initialize_does_not_wait_for_the_embedded_model_and_tool_calls_do(tmp_path: Path) -> None:
    """``open_app(start_in_background=True)`` returns before the embedded model has started (1.7 s
    of a 4 s start here, and far longer on a loaded machine, once past a client's 15 s ``initialize``
    limit); ``ready``, which every tool call waits for, comes only once it serves. Before: the open
    waited for both embedded models."""
    from caelum_mcp.engine.config import load_config
    from caelum_mcp.serving.app import open_app

    config = load_config(
        environ={"CAELUM_IMPLICIT_OLLAMA": "false"}, overrides={"data_dir": str(tmp_path / "data"), "embedded": "on"}
    )
    async with open_app(config, start_in_background=True) as state:
        assert state.embedded is None and "embedded" not in state.pool.hosts, "open_app waited for the model"
        assert not state.ready.is_set()
        with anyio.fail_after(120):
            await state.ready.wait()
        assert state.embedded is not None and state.embedded.running, state.embedded_note
        assert state.embedded_note.startswith("running at"), state.embedded_note
        assert [h.name for h in state.pool.healthy_hosts() if h.name == "embedded"] == ["embedded"]
    assert not state.embedded.running  # and the exit stops it


async def test_an_embedded_model_that_fails_to_start_leaves_the_server_up_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start that fails in the background, for a reason the embedded server does not foresee
    (here a full disk, injected), must not take the running server down with it: tool calls go
    on to the other hosts, and ``pool_status`` says what happened."""
    import caelum_mcp.serving.app as app
    from caelum_mcp.engine.config import load_config

    async def full_disk(state: app.AppState) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(app, "start_embedded", full_disk)
    config = load_config(
        environ={"CAELUM_IMPLICIT_OLLAMA": "false"}, overrides={"data_dir": str(tmp_path / "data"), "embedded": "on"}
    )
    async with app.open_app(config, start_in_background=True) as state:
        with anyio.fail_after(30):
            await state.ready.wait()
        assert state.embedded is None
        assert state.embedded_note == "could not start: OSError: [Errno 28] No space left on device"
        report = state.pool_admin.status()  # what pool_status shows
        assert report.embedded == state.embedded_note
        await anyio.sleep(0.5)  # still up: a failed background task would end open_app with its error
        assert state.pool_admin.status().embedded.startswith("could not start")


async def test_a_call_made_while_the_model_loads_says_so_in_its_progress(tmp_path: Path) -> None:
    """The first tool call waits for the embedded model; its progress names that wait, not only
    the tool, so that a person watching knows what the seconds are spent on."""
    from caelum_mcp.engine.config import load_config
    from caelum_mcp.serving.server import create_server

    config = load_config(
        environ={"CAELUM_IMPLICIT_OLLAMA": "false"}, overrides={"data_dir": str(tmp_path / "data"), "embedded": "on"}
    )
    server, holder = create_server(config)
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async with Client(server) as client:
        assert not holder.require().ready.is_set()
        result = await client.call_tool("pool_status", {}, progress_callback=on_progress)
        assert not result.is_error
    assert messages and messages[0] == "waiting for the embedded model to load", messages
