"""An index written before the chunking changed: opened by this version, its files are re-chunked at
the next sync, search keeps working throughout, and only the chunks that came out different are
embedded again."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from caelum_mcp.tools.knowledge import chunking
from caelum_mcp.tools.knowledge.chunking import CHUNKING_VERSION
from caelum_mcp.tools.knowledge.indexer import sync_index
from caelum_mcp.tools.knowledge.retrieval import retrieve
from caelum_mcp.tools.knowledge.store import KnowledgeStore

from .conftest import WriteProject

MODEL = "test-embed"


class Embedder:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def __call__(self, texts: Sequence[str]) -> tuple[str, Sequence[Sequence[float]]]:
        self.sent += texts
        return MODEL, [[float(len(t)), 1.0] for t in texts]


async def test_an_index_chunked_by_the_previous_version_is_rechunked_and_keeps_its_vectors(
    write_project: WriteProject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    words = " ".join(f"w{n:04d}" for n in range(1500)) + " transonic"  # ~9,000 characters on one line
    root = write_project(
        {
            "docs/long.md": f"# Long\n\n{words}\n",
            "app/retry.py": "def backoff_delay(attempt):\n    return min(2 ** attempt, 60)\n",
        }
    )
    path = tmp_path / "index" / "project.sqlite3"
    with monkeypatch.context() as m:  # the previous version cut such a line to its first piece
        m.setattr(chunking, "MAX_LINE_PIECES", 1)
        old = KnowledgeStore(path)
        await sync_index(old, root, embedder=Embedder(), embedding_model=MODEL)
        assert not retrieve(old, "transonic", limit=5).hits
        old.close()
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM meta WHERE key = 'chunking'")  # what the previous version wrote

    store = KnowledgeStore(path)
    assert store.meta("chunking") == CHUNKING_VERSION
    assert retrieve(store, "backoff_delay", limit=5).hits  # searchable before any sync
    embedder = Embedder()
    report = await sync_index(store, root, embedder=embedder, embedding_model=MODEL)
    assert report.changed == 2 and report.files == 2
    found = retrieve(store, "transonic", limit=5)
    assert [found.chunks[h.id].path for h in found.hits] == ["docs/long.md"]
    # the heading, the long line's first piece and the function were embedded before: only the rest is new
    assert len(embedder.sent) == report.embedded == report.chunks - 3 == 2
    assert all("backoff_delay" not in t for t in embedder.sent)
    store.close()

    again = KnowledgeStore(path)  # the same version: nothing to re-chunk
    second = await sync_index(again, root, embedder=Embedder(), embedding_model=MODEL)
    assert second.changed == 0 and second.unchanged == 2 and second.embedded == 0
    again.close()
