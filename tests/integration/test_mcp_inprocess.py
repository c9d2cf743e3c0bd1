"""The real MCP server through the SDK's in-process client, with the real embedded model.

Each test opens its own ``Client`` inside the test body (an async yield fixture would tear the
client down in another task). The embedded llama.cpp child starts in about a second. The implicit
Ollama host is switched off, so nothing listening on 127.0.0.1:11434 changes an outcome.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.types import CallToolResult, TextContent

from caelum_mcp.core.schemas import lint_portability, model_visible_size
from caelum_mcp.embedded.server import default_threads
from caelum_mcp.engine.config import Config, load_config
from caelum_mcp.serving.server import create_server

pytestmark = pytest.mark.model

TOOLS = {"delegate_task", "pool_status", "set_host_enabled"}
# What a model sees of a tool (name, description, input schema), on average over every tool.
VISIBLE_TOKENS_PER_TOOL = 400
# The whole tools/list as sent, output schemas included (clients keep those, models do not see them).
PER_TOOL_BUDGET_CHARS = 5_000
ASK = {"prompt": "Name one colour.", "tier": "micro", "max_tokens": 40}


def make_config(tmp_path: Path, embedded: str = "on") -> Config:
    return load_config(
        environ={}, overrides={"data_dir": str(tmp_path), "embedded": embedded, "implicit_ollama": False}
    )


def text_of(result: CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, TextContent))


async def read_json(client: Client, uri: str) -> Any:
    res = await client.read_resource(uri)
    (content,) = res.contents
    assert content.mime_type == "application/json"
    return json.loads(getattr(content, "text", ""))


async def test_tools_list_has_schemas_annotations_and_stays_small(tmp_path: Path) -> None:
    server, _ = create_server(make_config(tmp_path, embedded="off"))
    async with Client(server) as client:
        listed = await client.list_tools()
    tools = {t.name: t for t in listed.tools}
    assert TOOLS <= set(tools)
    for name in TOOLS:
        tool = tools[name]
        assert tool.output_schema is not None and tool.output_schema["type"] == "object", name
        assert tool.annotations is not None, name
        assert tool.title, name
    assert tools["pool_status"].annotations is not None
    assert tools["pool_status"].annotations.read_only_hint is True
    assert tools["set_host_enabled"].annotations is not None
    assert tools["set_host_enabled"].annotations.read_only_hint is False
    assert "execution" in tools["delegate_task"].output_schema["properties"]  # type: ignore[index]
    assert tools["delegate_task"].input_schema["required"] == ["prompt"]

    wire = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in listed.tools]
    # measured as sent: compact JSON, as the server serialises it
    total = len(json.dumps({"tools": wire}, separators=(",", ":")))
    visible = [model_visible_size(w)[1] for w in wire]
    average = sum(visible) / len(visible)
    print(f"\ntools/list: {len(wire)} tools, {total} chars; model-visible ~{average:.0f} tokens per tool")
    assert average <= VISIBLE_TOKENS_PER_TOOL
    assert total < PER_TOOL_BUDGET_CHARS * len(wire)
    for w in wire:  # the Inspector's --strict portability rules, checked without npm
        for kind in ("inputSchema", "outputSchema"):
            assert lint_portability(w.get(kind, {})) == [], (w["name"], kind)


async def test_delegate_task_reports_execution_progress_and_ledger(tmp_path: Path) -> None:
    server, _ = create_server(make_config(tmp_path))
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with Client(server) as client:
        status = await client.call_tool("pool_status", {})
        assert not status.is_error, text_of(status)
        assert status.structured_content is not None
        hosts = {h["name"]: h for h in status.structured_content["hosts"]}
        assert hosts["embedded"]["healthy"] is True
        assert hosts["embedded"]["embedded"] is True
        assert [m["tiers"] for m in hosts["embedded"]["models"]] == [["micro"]]

        result = await client.call_tool("delegate_task", ASK, progress_callback=on_progress)
        assert not result.is_error, text_of(result)
        assert result.structured_content is not None
        ex = result.structured_content["execution"]
        assert ex["path"] in ("local", "local_low_confidence")
        assert (ex["host"], ex["model"], ex["tier"]) == ("embedded", "smollm2:135m", "micro")
        assert ex["input_tokens"] > 0 and ex["output_tokens"] > 0
        assert 0.0 <= ex["confidence"] <= 1.0
        assert {"score", "validity", "token_probability"} <= set(ex["confidence_parts"])
        assert ex["cost_usd"] == 0.0  # nothing went to Claude
        assert seen, "delegate_task sent no progress notification"
        assert any("micro" in (message or "") for _, _, message in seen)
        values = [value for value, _, _ in seen]
        assert values == sorted(values)  # MCP progress must not go backwards

        summary = await read_json(client, "caelum://ledger/summary")
        assert summary["calls"] == ex["attempts"]  # every model call of the task is in the ledger
        assert summary["local_calls"] == ex["attempts"]
        assert summary["claude_calls"] == 0 and summary["failed_calls"] == 0
        assert summary["local_tokens"] >= ex["input_tokens"] + ex["output_tokens"]

        report = await read_json(client, "caelum://status")
        assert report["ledger"]["calls"] == summary["calls"]
        assert "micro" in report["tiers_available"]
        # the implicit Ollama host is switched off; the embedded embedding model runs beside the chat one
        assert {h["name"] for h in report["hosts"]} - {"embedded-embeddings"} == {"embedded"}


async def test_disabled_host_fails_clearly_and_reenabling_restores_it(tmp_path: Path) -> None:
    server, _ = create_server(make_config(tmp_path))
    async with Client(server) as client:
        off = await client.call_tool("set_host_enabled", {"host": "embedded", "enabled": False})
        assert not off.is_error, text_of(off)
        assert off.structured_content is not None
        assert off.structured_content["enabled"] is False and off.structured_content["healthy"] is False

        failed = await client.call_tool("delegate_task", ASK)
        assert failed.is_error is True
        message = text_of(failed)
        assert "no enabled, healthy host" in message
        assert "embedded[disabled]" in message  # says which host is out and why
        assert "Traceback" not in message

        on = await client.call_tool("set_host_enabled", {"host": "embedded", "enabled": True})
        assert not on.is_error, text_of(on)
        assert on.structured_content is not None and on.structured_content["healthy"] is True

        again = await client.call_tool("delegate_task", ASK)
        assert not again.is_error, text_of(again)
        assert again.structured_content is not None
        assert again.structured_content["execution"]["host"] == "embedded"

        summary = await read_json(client, "caelum://ledger/summary")
        assert summary["failed_calls"] == 0  # refused before any model call: nothing was spent or tried
        assert summary["local_calls"] == again.structured_content["execution"]["attempts"]

        unknown = await client.call_tool("set_host_enabled", {"host": "gpu-9", "enabled": False})
        assert unknown.is_error is True
        assert "gpu-9" in text_of(unknown) and "embedded" in text_of(unknown)


async def test_embedded_model_keeps_its_name_after_a_refresh(tmp_path: Path) -> None:
    server, _ = create_server(make_config(tmp_path))
    async with Client(server) as client:
        await client.call_tool("set_host_enabled", {"host": "embedded", "enabled": False})
        on = await client.call_tool("set_host_enabled", {"host": "embedded", "enabled": True})
    assert on.structured_content is not None
    assert [m["name"] for m in on.structured_content["models"]] == ["smollm2:135m"]


async def test_embedded_model_runs_with_the_configured_threads(tmp_path: Path) -> None:
    wanted = 2 if default_threads() != 2 else 1  # differs from the default, so the setting must be used
    environ = {"CAELUM_EMBEDDED_THREADS": str(wanted), "CAELUM_IMPLICIT_OLLAMA": "false"}
    config = load_config(environ=environ, overrides={"data_dir": str(tmp_path)})
    config = config.model_copy(update={"embedded": "on"})
    server, _ = create_server(config)
    async with Client(server) as client:
        # A tool call waits for the embedded model to start, and llama.cpp logs its thread count as
        # it loads the model. No answer is asked for: with 2 threads on a loaded 2-core machine the
        # threads wait on each other and 16 tokens took 20-90 s (answers are tested elsewhere).
        res = await client.call_tool("pool_status", {})
        assert not res.is_error, text_of(res)
        assert res.structured_content is not None
        (embedded,) = [h for h in res.structured_content["hosts"] if h["name"] == "embedded"]
        assert embedded["healthy"] is True and [m["name"] for m in embedded["models"]] == ["smollm2:135m"]
    log = (tmp_path / "embedded.log").read_text(errors="replace")  # llama.cpp logs its thread count
    assert f"n_threads = {wanted}" in log and f"n_threads = {default_threads()}" not in log


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"prompt": "hi", "tier": "huge"}, ["tier", "'micro'"]),
        ({"prompt": ""}, ["prompt", "at least 1 character"]),
        ({"prompt": "hi", "json_schema": {"type": "string"}}, ["json_schema", "must describe an object"]),
        ({"prompt": "hi", "json_schema": "[1, 2]"}, ["json_schema", "dictionary"]),
        ({"prompt": "hi", "max_tokens": 5}, ["max_tokens", "16"]),
        ({"prompt": "hi", "temprature": 0.1}, ["unknown argument `temprature`", "prompt"]),
        ({"tier": "micro"}, ["prompt", "Field required"]),
    ],
)
async def test_bad_arguments_are_tool_errors_naming_the_argument(
    tmp_path: Path, arguments: dict[str, Any], expected: list[str]
) -> None:
    server, _ = create_server(make_config(tmp_path, embedded="off"))
    async with Client(server) as client:
        result = await client.call_tool("delegate_task", arguments)
    message = text_of(result)
    assert result.is_error is True
    for part in expected:
        assert part in message
    assert "errors.pydantic.dev" not in message and "\n" not in message  # one clear line for the model


async def test_object_arguments_sent_as_json_text_are_accepted(tmp_path: Path) -> None:
    # Claude Desktop sends object arguments as JSON strings; the schema must still be checked.
    server, _ = create_server(make_config(tmp_path, embedded="off"))
    schema = json.dumps({"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]})
    async with Client(server) as client:
        result = await client.call_tool("delegate_task", {"prompt": "hi", "json_schema": schema})
    # It passed validation and reached the pool, which has no healthy host with embedded off.
    assert result.is_error is True
    assert "no enabled, healthy host" in text_of(result)


async def test_a_crash_of_the_embedded_model_does_not_take_the_server_down(tmp_path: Path) -> None:
    import os
    import signal

    import anyio

    server, holder = create_server(make_config(tmp_path))
    async with Client(server) as client:
        state = holder.require()
        with anyio.fail_after(120):
            await state.ready.wait()  # the model loads after initialize, and tool calls wait for it
        assert state.embedded is not None and state.embedded.running
        proc = state.embedded._proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        # the server itself keeps answering while the model is gone
        assert {t.name for t in (await client.list_tools()).tools} >= {"pool_status"}
        # ... and restarts the model on the same port; the next calls are served again
        for _ in range(600):  # 60 s: the watchdog looks every 2 s, then the model loads (slow under load)
            if state.embedded.running and "restarted" in state.embedded_note:
                break
            await anyio.sleep(0.1)
        assert state.embedded.running, state.embedded_note
        await anyio.sleep(0.6)  # past the breaker's half-open cooldown in the test config, if opened
        res = await client.call_tool("delegate_task", {"prompt": "Say hi.", "tier": "micro", "max_tokens": 24})
        assert not res.is_error, text_of(res)
        assert res.structured_content is not None
        assert res.structured_content["execution"]["host"] == "embedded"
