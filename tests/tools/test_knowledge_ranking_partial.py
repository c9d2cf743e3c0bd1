"""Lexical ranking and hybrid ranking while the vectors are still being built: a query word said
twice weighs twice, a chunk without a vector is ranked by BM25 alone, hybrid search stays lexical
(and says so) until enough of the index has vectors, and user text never reaches FTS5 as syntax."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from caelum_mcp.tools.knowledge.indexer import sync_index
from caelum_mcp.tools.knowledge.ranking import fuse
from caelum_mcp.tools.knowledge.retrieval import (
    MIN_HYBRID_COVERAGE,
    retrieve,
    vector_coverage,
    without_vector,
)
from caelum_mcp.tools.knowledge.store import KnowledgeStore
from caelum_mcp.tools.knowledge.terms import fts_query, lexical_terms, query_terms
from caelum_mcp.tools.knowledge.vectors import unit

from .conftest import WriteProject

MODEL = "test-embed"
TOPICS = ("flow", "pressure", "heat", "shock", "wing", "boundary", "nozzle", "plate", "cone", "jet")


def vector(text: str) -> list[float]:
    """One dimension per topic word, and one for everything else."""
    words = text.lower().split()
    return [float(words.count(t)) for t in TOPICS] + [0.1]


async def embed(texts: Sequence[str]) -> tuple[str, Sequence[Sequence[float]]]:
    return MODEL, [vector(t) for t in texts]


@pytest.fixture
def store(tmp_path: Path) -> KnowledgeStore:
    s = KnowledgeStore(tmp_path / "index" / "project.sqlite3")
    yield s
    s.close()


def drop_vectors(store: KnowledgeStore, keep: int) -> None:
    """Leave vectors for the first ``keep`` chunks only, as a background build part-way through
    leaves them (it embeds in chunk order)."""
    with sqlite3.connect(store.path) as db:
        hashes = [h for (h,) in db.execute("SELECT hash FROM chunks ORDER BY id")]
        db.executemany("DELETE FROM vectors WHERE hash = ?", [(h,) for h in hashes[keep:]])


def test_a_query_word_said_twice_is_kept_twice_for_bm25_only() -> None:
    query = "laminar flow over a plate: the flow separates"
    assert lexical_terms(query) == ["laminar", "flow", "plate", "flow", "separates"]
    assert query_terms(query) == ["laminar", "flow", "plate", "separates"]  # snippets and ask: each once
    assert fts_query(["flow", "flow"]) == '"flow" OR "flow"'


async def test_a_document_about_the_word_the_query_repeats_ranks_first(
    write_project: WriteProject, store: KnowledgeStore
) -> None:
    """'pressure' is rarer than 'flow', so with each query word counted once the pressure document
    wins; the query says 'flow' twice, and Okapi BM25 (which rank_bm25 implements) counts it twice."""
    files = {f"docs/filler{i}.txt": f"unrelated note number {i} about testing\n" for i in range(8)}
    files |= {
        "docs/a.txt": "the flow was measured\n",
        "docs/b.txt": "the pressure was measured\n",
        "docs/c.txt": "a flow of words\n",
    }
    await sync_index(store, write_project(files))
    found = retrieve(store, "flow pressure, and how the flow behaves", limit=3)
    paths = [found.chunks[h.id].path for h in found.hits[:1]]
    assert paths == ["docs/a.txt"]


def test_a_candidate_without_a_vector_is_ranked_by_bm25_alone() -> None:
    lexical = [(1, 9.0), (2, 6.0), (3, 5.0), (4, 1.0)]
    semantic = [(2, 0.9), (3, 0.8), (5, 0.7), (4, 0.1)]  # 1 has no vector yet
    before = fuse(lexical, semantic)
    assert before[0].id != 1  # the lowest semantic value buried BM25's best match
    after = fuse(lexical, semantic, unembedded={1})
    assert after[0].id == 1
    lexical_only = {h.id: h.score for h in fuse(lexical, [])}
    assert after[0].score == pytest.approx(lexical_only[1])  # its lexical z-score, unchanged
    rrf = fuse(lexical, semantic, method="rrf", unembedded={1})
    assert rrf[0].id == 1 and rrf[0].score == pytest.approx(2 / (10 + 1))
    # with every vector there, nothing changes
    assert [h.id for h in fuse(lexical, semantic, unembedded=set())] == [h.id for h in before]


def test_coverage_and_the_chunks_without_a_vector() -> None:
    import numpy as np

    assert vector_coverage(0, 0) == 1.0 and vector_coverage(3, 4) == 0.75
    assert without_vector([5, 1, 9, 2], np.array([1, 2, 3, 4], dtype=np.int64)) == {5, 9}
    assert without_vector([5], np.array([], dtype=np.int64)) == {5}
    assert without_vector([], np.array([1], dtype=np.int64)) == set()


async def test_hybrid_search_is_lexical_and_says_so_until_enough_chunks_have_a_vector(
    write_project: WriteProject, store: KnowledgeStore
) -> None:
    # eight documents say "shock" and "cone" too, in one word more than the target: BM25 prefers the
    # target a little, and by meaning they are as close to the query as it is
    files = {f"docs/d{i:02d}.txt": f"{TOPICS[i % len(TOPICS)]} measurements in tunnel {i}\n" for i in range(12)}
    files |= {f"docs/e{i:02d}.txt": f"shock cone data, run {i}\n" for i in range(8)}
    files["docs/target.txt"] = "shock off the cone\n"  # the last chunk: embedded last
    root = write_project(files)
    await sync_index(store, root, embedder=embed, embedding_model=MODEL)
    query = "shock on a cone"
    q = unit(vector(query))
    lexical = retrieve(store, query, limit=5, signals=("lexical",))
    assert store.chunks([lexical.hits[0].id])[lexical.hits[0].id].path == "docs/target.txt"

    n_chunks = store.counts()[1]
    drop_vectors(store, keep=int(n_chunks * MIN_HYBRID_COVERAGE) - 1)
    early = retrieve(store, query, limit=5, query_vector=q, model=MODEL)
    assert early.signals == ("lexical",)
    assert early.note is not None and "lexical ranking until" in early.note and "vectors cover" in early.note
    assert early.coverage is not None and early.coverage < MIN_HYBRID_COVERAGE
    assert [h.id for h in early.hits] == [h.id for h in lexical.hits]

    await sync_index(store, root, embedder=embed, embedding_model=MODEL)
    drop_vectors(store, keep=n_chunks - 1)  # all but the target have a vector
    late = retrieve(store, query, limit=5, query_vector=q, model=MODEL)
    assert late.signals == ("lexical", "semantic") and late.note is None
    assert late.hits[0].id == lexical.hits[0].id  # BM25's best match, still without a vector, stays first
    assert late.hits[0].found_by == ("lexical",)

    await sync_index(store, root, embedder=embed, embedding_model=MODEL)  # the build completes
    done = retrieve(store, query, limit=5, query_vector=q, model=MODEL)
    assert done.coverage == 1.0 and done.note is None and done.signals == ("lexical", "semantic")
    semantic = retrieve(store, query, limit=5, query_vector=q, model=MODEL, signals=("semantic",))
    assert semantic.signals == ("semantic",)  # asked for meaning alone: no coverage gate


@pytest.mark.parametrize(
    ("query", "finds"),
    [
        ('shock" OR "wave', True),
        ("NEAR(shock wave, 2)", True),
        ("shock*", True),
        ("-shock ^wave", True),
        ("body:shock label:cone", True),  # column filters
        ("shock AND NOT wave", True),
        ("{body label}: cone", True),
        ('"""', False),
        ("(((((", False),
        ("shock\x00wave", True),
        ("cone " * 150, True),
        ("ünïcödé wave", True),
    ],
)
async def test_fts5_syntax_in_a_query_is_only_words(
    write_project: WriteProject, store: KnowledgeStore, query: str, finds: bool
) -> None:
    await sync_index(store, write_project({"docs/cone.txt": "the shock wave stands off the cone\n"}))
    found = retrieve(store, query, limit=5)
    assert [found.chunks[h.id].path for h in found.hits] == (["docs/cone.txt"] if finds else [])
