"""query_data and profile_data over a real stdio child and over streamable HTTP, as Claude Code
runs them (no model host: the caller's own SQL, and the profile without its summary)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.types import ImageContent
from tools.test_data_sources import digest, write_shop

from .test_mcp_http import Served, start_server
from .test_mcp_stdio import server_env

pytestmark = pytest.mark.slow


async def call(client: Client, tool: str, args: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    res = await client.call_tool(tool, args)
    assert not res.is_error, res.content
    assert res.structured_content is not None
    return res.structured_content, res


async def exercise(client: Client) -> None:
    names = {t.name for t in (await client.list_tools()).tools}
    assert {"query_data", "profile_data"} <= names
    out, res = await call(
        client,
        "query_data",
        {
            "sources": ["shop"],
            "sql": "SELECT region, sum(amount) AS total FROM sales GROUP BY 1 ORDER BY 2 DESC",
            "chart": True,
        },
    )
    assert out["rows"][0] == ["east", 550.0] and out["chart"]["mark"] == "bar"
    assert any(isinstance(c, ImageContent) for c in res.content)
    refused = await client.call_tool("query_data", {"sources": ["shop"], "sql": "COPY sales TO 'x.csv'"})
    assert refused.is_error and "COPY statement" in refused.content[0].text
    profiled, _ = await call(client, "profile_data", {"source": "shop/sales.csv", "summary": False})
    assert profiled["profile"]["rows"] == 7 and profiled["profile"]["candidate_keys"][0] == ["order_id"]
    asked, _ = await call(client, "query_data", {"sources": ["shop/sales.csv"], "question": "How many orders?"})
    assert asked["llm"]["status"] == "skipped"


async def test_data_tools_over_stdio(tmp_path: Path) -> None:
    work = tmp_path / "work"
    write_shop(work)
    before = digest(work)
    env = {**server_env(tmp_path), "CAELUM_EMBEDDED": "off", "CAELUM_ALLOWED_ROOTS": f'["{work}"]'}
    params = StdioServerParameters(command=sys.executable, args=["-m", "caelum_mcp", "serve"], env=env, cwd=str(work))
    async with Client(params) as client:
        await exercise(client)
    assert digest(work) == before


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Path]]:
    tmp = tmp_path_factory.mktemp("data-http")
    work = tmp / "work"
    write_shop(work)
    env = {"CAELUM_EMBEDDED": "off", "CAELUM_ALLOWED_ROOTS": f'["{work}"]'}
    for served in start_server(tmp, env):
        yield served, work


async def test_data_tools_over_streamable_http(http_server: tuple[Served, Path]) -> None:
    served, work = http_server
    before = digest(work)
    async with Client(served.mcp) as client:
        await exercise(client)
    assert digest(work) == before
