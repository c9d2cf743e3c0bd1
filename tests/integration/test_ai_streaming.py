"""Streaming with the real embedded model (llama.cpp, SmolLM2-135M) through a real MCP client:
``delegate_task`` sends the text so far in progress notifications while the model writes, and the
ledger records the streamed call like any other; ``compare_models`` times the first token."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from .test_development import make_server

pytestmark = pytest.mark.model

PROMPT = "Write three sentences about the sea."


async def test_delegate_task_streams_partial_text_in_progress_notifications(tmp_path: Path) -> None:
    server, holder = make_server(tmp_path, embedded="on")
    seen: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        seen.append(message or "")

    async with Client(server) as client:
        res = await client.call_tool(
            "delegate_task", {"prompt": PROMPT, "tier": "micro", "max_tokens": 160}, progress_callback=on_progress
        )
        assert not res.is_error, res.content
        out = res.structured_content
        assert out is not None
        summary = holder.require().ledger.summary()
        compared = await client.call_tool(
            "compare_models", {"prompt": PROMPT, "models": ["smollm2:135m"], "max_tokens": 60}
        )
    partial = [m.removeprefix("writing: ") for m in seen if m.startswith("writing: ")]
    assert partial, seen
    assert not any(p.lstrip("…").startswith('{"') for p in partial)  # the answer's text, not its JSON
    ex = out["execution"]
    assert ex["host"] == "embedded" and ex["output_tokens"] > 0
    assert summary.local_calls == ex["attempts"] and summary.local_tokens >= ex["input_tokens"] + ex["output_tokens"]
    assert not compared.is_error, compared.content
    assert compared.structured_content is not None
    (run,) = compared.structured_content["runs"]
    assert run["status"] in ("ok", "low_confidence") and 0 < run["first_token_ms"] < run["latency_ms"]
