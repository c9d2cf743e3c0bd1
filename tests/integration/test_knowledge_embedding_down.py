"""When the embedding model is down, search and recall say which one, on which host, and why (they
used to advise `ollama pull nomic-embed-text` whatever had happened)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_development import write
from .test_knowledge import PROJECT, call, embedding_host
from .test_platform import session


@pytest.mark.slow
async def test_a_down_embedding_host_is_named_with_its_error(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "svc", PROJECT)
    host = embedding_host()
    async with session(tmp_path, [host]) as (client, _):
        host.breaker.record_failure(force_open=True)
        host.last_error = "embed: cannot connect: connection refused"
        out = await call(client, "search_knowledge", {"query": "refresh access token", "project": str(project)})
        assert out["signals"] == ["lexical"]
        assert "nomic-embed-text on host embed is down (circuit open): embed: cannot connect" in out["note"]
        assert "ollama pull" not in out["note"]  # the advice for a pool without any embedding model
        recalled = await call(client, "memory", {"action": "recall", "query": "staging"})
        assert "embed: cannot connect" in recalled["note"]
