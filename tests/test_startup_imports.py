"""Serving over stdio answers ``initialize`` and ``tools/list`` without loading what only tools use.

The server runs as a real stdio child (as Claude Code starts it: ``python -m caelum_mcp serve``)
with Python's import profiler on (``PYTHONPROFILEIMPORTTIME``), which writes one stderr line per
module as it is imported. Every module named there by the time ``tools/list`` has been answered is
one the client waited for. Before: the Anthropic SDK (2-4 s on the loaded 2-core machine), numpy,
duckdb and jsonschema were all imported at start, and ``initialize`` took over 4 s; the timing
itself is a benchmark row (``bench/faults.py --only startup``), this test checks what was loaded.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import anyio
import httpx2
import pytest
from fakes.fault_host import Fault, FaultHost
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

ROOT = Path(__file__).resolve().parents[1]

# Libraries that only some tool calls need; none may load before the client's first tool call.
LOADED_ON_FIRST_USE = (
    "anthropic",  # Claude's SDK: the first escalation (or the first tool call's background load)
    "numpy",  # knowledge search vectors, the embedding model conversion
    "duckdb",  # query_data, profile_data
    "jsonschema",  # schema checks of model answers, compare_models' json_schema
    "altair",
    "vl_convert",  # charts
    "bandit",
    "radon",
    "lizard",
    "vulture",
    "detect_secrets",  # analysers and secret scanning
)

IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$", re.MULTILINE)


def config_with(tmp_path: Path, hung: str, healthy: str) -> Path:
    path = tmp_path / "caelum.toml"
    path.write_text(
        f"""embedded = "off"
implicit_ollama = false

[claude]
base_url = "http://127.0.0.1:9/"

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


@pytest.mark.slow
async def test_initialize_and_tools_list_load_no_tool_only_library(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    errlog = tmp_path / "server-stderr.txt"
    with FaultHost(fault=Fault("silent")) as hung, FaultHost() as healthy, errlog.open("w") as err:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "CAELUM_CONFIG": str(config_with(tmp_path, hung.url, healthy.url)),
            "CAELUM_DATA_DIR": str(tmp_path / "data"),
            # Claude configured (never called): its backend must not be built to answer initialize
            "ANTHROPIC_API_KEY": "sk-ant-startup-test-not-a-key",
            "PYTHONPROFILEIMPORTTIME": "1",
        }
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "caelum_mcp", "serve"], env=env, cwd=str(ROOT)
        )
        with anyio.fail_after(60):
            async with Client(stdio_client(params, errlog=err)) as client:
                tools = await client.list_tools()
                # the profiler writes each line as the import ends: what is there now came first
                loaded = imported(errlog)
                early = sorted(set(LOADED_ON_FIRST_USE) & loaded)
                assert "caelum_mcp" in loaded and "mcp" in loaded, "the import profiler's lines were read"
                assert not early, f"imported before the first tool call: {early}"
                assert len(tools.tools) >= 16, [t.name for t in tools.tools]

                # the first tool call starts loading Claude's backend in the background
                status = await client.call_tool("pool_status", {})
                assert not status.is_error
                while "anthropic" not in imported(errlog):  # noqa: ASYNC110 - a file, not an event, to wait on
                    await anyio.sleep(0.1)


def imported(errlog: Path) -> set[str]:
    """The top-level packages the import profiler has named in ``errlog`` so far."""
    return {name.split(".")[0] for name in IMPORT_LINE.findall(errlog.read_text("utf-8"))}


async def test_a_deferred_claude_backend_is_built_at_its_first_call_and_answers(tmp_path: Path) -> None:
    from caelum_mcp.core.types import ChatMessage, ChatRequest
    from caelum_mcp.engine.backends.anthropic import AnthropicBackend
    from caelum_mcp.engine.config import load_config
    from caelum_mcp.serving.app import DeferredBackend, make_claude

    with FaultHost("anthropic", answer=lambda body: "hello from the fake API") as api:
        overrides = {"data_dir": str(tmp_path), "claude.api_key": "sk-ant-test", "claude.base_url": api.url}
        config = load_config(None, environ={}, overrides=overrides)
        async with httpx2.AsyncClient(trust_env=False) as http:
            claude = make_claude(config, http)
            assert isinstance(claude, DeferredBackend) and claude.kind == "anthropic"
            assert api.by_path == {}, "nothing is sent before the first call"
            request = ChatRequest(
                model=config.claude.model, messages=(ChatMessage(role="user", content="Hi"),), max_tokens=8
            )
            response = await claude.chat(request)
            built = await claude.prepare()
            await claude.aclose()
    assert response.content == "hello from the fake API"
    assert isinstance(built, AnthropicBackend) and built.name == "claude" and built.model == config.claude.model
    assert api.chats == 1


async def test_a_deferred_backend_never_used_is_never_built() -> None:
    from caelum_mcp.engine.backends.base import Backend
    from caelum_mcp.serving.app import DeferredBackend

    def build() -> Backend:
        raise AssertionError("built without a call")

    async with httpx2.AsyncClient(trust_env=False) as http:
        backend = DeferredBackend("caelum_mcp.no_such_module", build, "", http, name="claude")
        await backend.aclose()
