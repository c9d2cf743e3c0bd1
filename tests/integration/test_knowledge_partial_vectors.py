"""``search_knowledge`` through a real MCP client and server while only some chunks have a vector:
the answer ranks by BM25 alone and its note says how far the vectors are."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from .test_development import write
from .test_knowledge import PROJECT, call, embedding_host, search_when_embedded
from .test_platform import session


@pytest.mark.slow  # a server with a background embedding task, ~5 s
async def test_a_search_over_a_partly_embedded_index_is_lexical_and_says_how_far_the_vectors_are(
    tmp_path: Path,
) -> None:
    project = write(tmp_path / "work" / "svc", PROJECT)
    args = {"query": "retry backoff", "project": str(project)}
    async with session(tmp_path, [embedding_host()]) as (client, _):
        full = await search_when_embedded(client, args)
        assert full["signals"] == ["lexical", "semantic"] and full["note"] is None
        lexical = await call(client, "search_knowledge", {**args, "mode": "lexical"})
        # the index as a build part-way through leaves it: one chunk of several has its vector
        (index,) = (tmp_path / "data").rglob("indexes/*.sqlite3")
        with sqlite3.connect(index) as db:
            first = db.execute("SELECT hash FROM chunks ORDER BY id LIMIT 1").fetchone()[0]
            db.execute("DELETE FROM vectors WHERE hash != ?", (first,))
        partial = await call(client, "search_knowledge", args)
        assert partial["signals"] == ["lexical"]
        assert "vectors cover" in partial["note"] and "lexical ranking until" in partial["note"]
        assert [r["chunk"] for r in partial["results"]] == [r["chunk"] for r in lexical["results"]]
