"""The project index on real SQLite FTS5 files: what is indexed, incremental syncs by content hash,
cached vectors, lexical and hybrid retrieval."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import numpy as np
import pytest

from caelum_mcp.core.errors import HostServerError, NoHostAvailableError
from caelum_mcp.tools.knowledge.indexer import embed_missing, paced_group_size, sync_index
from caelum_mcp.tools.knowledge.ranking import fuse
from caelum_mcp.tools.knowledge.retrieval import retrieve
from caelum_mcp.tools.knowledge.snippets import snippet
from caelum_mcp.tools.knowledge.sources import list_sources, skip_reason
from caelum_mcp.tools.knowledge.store import KnowledgeStore
from caelum_mcp.tools.knowledge.vectors import EMBED_GROUP, PACED_FIRST_GROUP, cosine_top, truncate_for_embedding, unit

from .conftest import WriteProject, git

FILES: dict[str, str | bytes] = {
    "app/auth.py": """
        def refreshAccessToken(session):
            '''Renew the OAuth token before it expires.'''
            return session.post("/token", grant="refresh_token")


        def logout(session):
            session.clear()
        """,
    "app/retry.py": """
        MAX_RETRY_COUNT = 5


        def backoff_delay(attempt):
            return min(2 ** attempt, 60)
        """,
    "docs/guide.md": "# Retries\n\nFailed calls are retried with exponential backoff.\n",
    ".gitignore": "build/\n",
    "build/out.py": "def refreshAccessToken(): pass\n",
    ".env": "API_TOKEN=abcdef0123456789abcdef\n",
    "deploy/server.pem": "-----BEGIN CERTIFICATE-----\n",
    "logo.bin": b"\x89PNG\x00\x00binary",
    "app/settings.py": 'AWS_KEY = "AKIAIOSFODNN7EXAMPLQ"\nREGION = "eu-west-1"\n',
}


class CountingEmbedder:
    """A stand-in for the pool: deterministic vectors from word counts, and a log of what it was sent."""

    def __init__(self, model: str = "test-embed", fail: bool = False) -> None:
        self.model = model
        self.fail = fail
        self.calls: list[list[str]] = []

    def vector(self, text: str) -> list[float]:
        out = [0.0] * 16
        for word in text.lower().split():
            out[hash(word) % 16] += 1.0
        return out

    async def __call__(self, texts: Sequence[str]) -> tuple[str, Sequence[Sequence[float]]]:
        if self.fail:
            raise NoHostAvailableError("no embedding model is up")
        self.calls.append(list(texts))
        return self.model, [self.vector(t) for t in texts]


async def quiet(message: str) -> None:
    pass


@pytest.fixture
def store(tmp_path: Path) -> KnowledgeStore:
    s = KnowledgeStore(tmp_path / "index" / "project.sqlite3")
    yield s
    s.close()


def test_sources_skip_secrets_files_lock_files_and_what_gitignore_names(write_project: WriteProject) -> None:
    assert skip_reason(".env") and skip_reason("config/.env.production") and skip_reason("id_ed25519")
    assert skip_reason("certs/site.key") and skip_reason("package-lock.json")
    assert skip_reason(".env.example") is None and skip_reason("app/keys.py") is None


async def test_first_sync_indexes_text_files_only_and_redacts_secrets(
    write_project: WriteProject, store: KnowledgeStore
) -> None:
    root = write_project(FILES)
    report = await sync_index(store, root)
    assert report.added == 5 and report.files == 5  # auth, retry, settings, guide, .gitignore
    assert report.skipped == {"environment file (.env)": 1, "key or credentials file": 1, "binary or not UTF-8": 1}
    assert report.embedding_note and "lexical only" in report.embedding_note
    listing = await list_sources(root)
    assert "build/out.py" not in listing.files
    hits = retrieve(store, "AWS_KEY", limit=5)
    (chunk,) = [hits.chunks[h.id] for h in hits.hits[:1]]
    assert chunk.path == "app/settings.py" and "AKIAIOSFODNN7EXAMPLQ" not in chunk.text and "AKIA" in chunk.text


async def test_camel_and_snake_identifiers_match_plain_words(
    write_project: WriteProject, store: KnowledgeStore
) -> None:
    root = write_project(FILES)
    await sync_index(store, root)
    for query in ("refresh access token", "refreshAccessToken", "refresh_access_token"):
        found = retrieve(store, query, limit=3)
        top = found.chunks[found.hits[0].id]
        assert (top.path, top.symbol, top.start_line, top.end_line) == ("app/auth.py", "refreshAccessToken", 1, 3)
        assert found.hits[0].found_by == ("lexical",)
    retry = retrieve(store, "how many retries at most", limit=3)
    assert {retry.chunks[h.id].path for h in retry.hits[:2]} == {"app/retry.py", "docs/guide.md"}


async def test_resync_reads_only_changed_files_and_drops_deleted_ones(
    write_project: WriteProject, store: KnowledgeStore
) -> None:
    root = write_project(FILES)
    embedder = CountingEmbedder()
    first = await sync_index(store, root, embedder=embedder, embedding_model="test-embed")
    assert first.embedded == first.chunks and first.embedding_note is None
    sent_first = sum(len(c) for c in embedder.calls)
    assert sent_first == first.chunks

    again = await sync_index(store, root, embedder=embedder, embedding_model="test-embed")
    assert (again.added, again.changed, again.removed, again.embedded) == (0, 0, 0, 0)
    assert again.unchanged == again.files

    auth = root / "app" / "auth.py"
    auth.write_text(auth.read_text().replace("session.clear()", "session.clear()\n    session.close()"))
    (root / "app" / "retry.py").unlink()
    os.utime(root / "docs" / "guide.md")  # touched, same bytes: not re-chunked
    embedder.calls.clear()
    third = await sync_index(store, root, embedder=embedder, embedding_model="test-embed")
    assert (third.changed, third.removed, third.added) == (1, 1, 0)
    assert third.embedded == 1  # only the changed function; refreshAccessToken's chunk kept its vector
    assert [len(c) for c in embedder.calls] == [1] and "logout" in embedder.calls[0][0]
    gone = retrieve(store, "backoff_delay", limit=5)
    assert gone.hits and all(gone.chunks[h.id].path != "app/retry.py" for h in gone.hits)


async def test_without_a_working_embedder_the_index_stays_lexical(
    write_project: WriteProject, store: KnowledgeStore
) -> None:
    root = write_project(FILES)
    report = await sync_index(store, root, embedder=CountingEmbedder(fail=True), embedding_model="test-embed")
    assert report.chunks > 0 and report.embedded == 0
    assert report.embedding_note is not None and "no embedding model is up" in report.embedding_note
    assert store.vector_models() == {}


async def test_hybrid_retrieval_says_which_signal_found_each_chunk(
    write_project: WriteProject, store: KnowledgeStore
) -> None:
    root = write_project(FILES)
    embedder = CountingEmbedder()
    await sync_index(store, root, embedder=embedder, embedding_model="test-embed")
    query = "exponential backoff"
    vector = unit(embedder.vector(query))
    found = retrieve(store, query, limit=10, query_vector=vector, model="test-embed")
    assert found.signals == ("lexical", "semantic")
    by_path = {found.chunks[h.id].path: h.found_by for h in found.hits if h.id in found.chunks}
    assert by_path["docs/guide.md"] == ("lexical", "semantic")
    assert any(f == ("semantic",) for f in by_path.values())
    only_docs = retrieve(store, query, limit=10, query_vector=vector, model="test-embed", paths=["docs"])
    assert {only_docs.chunks[h.id].path for h in only_docs.hits} == {"docs/guide.md"}


async def test_git_projects_index_what_git_lists(write_project: WriteProject, store: KnowledgeStore) -> None:
    root = write_project({**FILES, "notes/untracked.md": "# Untracked\n\nstill indexed\n"})
    git(root, "init", "-q")
    git(root, "add", "app", "docs", ".gitignore")
    report = await sync_index(store, root)
    listing = await list_sources(root)
    assert "notes/untracked.md" in listing.files and "build/out.py" not in listing.files
    assert report.files == len(listing.files) - 1  # every listed file but the binary one
    assert report.skipped["binary or not UTF-8"] == 1


async def test_a_project_its_outer_repository_ignores_is_indexed_all_the_same(
    write_project: WriteProject, store: KnowledgeStore
) -> None:
    """Pointing at a vendored library or a package under ``.venv`` names that folder as the project;
    git lists nothing there (the outer repository ignores it), so its files are walked instead,
    still minding the folder's own .gitignore."""
    root = write_project(
        {
            ".gitignore": "vendor/\n",
            "app.py": "def main():\n    return 0\n",
            "vendor/lib/.gitignore": "generated/\n",
            "vendor/lib/client.py": "def fetch_token(session):\n    return session.token\n",
            "vendor/lib/generated/stub.py": "def stub():\n    pass\n",
        }
    )
    git(root, "init", "-q")
    git(root, "add", ".")
    listing = await list_sources(root / "vendor" / "lib")
    assert listing.files == (".gitignore", "client.py")
    report = await sync_index(store, root / "vendor" / "lib")
    assert report.files == 2 and report.chunks >= 1
    assert (await list_sources(root)).files == (".gitignore", "app.py")  # the outer repository as before


def test_fusion_convex_and_rrf() -> None:
    lexical = [(1, 10.0), (2, 5.0), (3, 1.0)]
    semantic = [(3, 0.9), (4, 0.8), (1, 0.1)]
    convex = fuse(lexical, semantic, lexical_weight=0.5)
    assert [h.id for h in convex][:2] == [1, 3]
    assert {h.id: h.found_by for h in convex}[4] == ("semantic",)
    only_lexical = fuse(lexical, [], lexical_weight=0.3, normalisation="minmax")
    assert [h.id for h in only_lexical] == [1, 2, 3] and only_lexical[0].score == 1.0
    # z-score: (10 - 16/3) / std; an id one signal did not return gets that signal's lowest value
    zscored = fuse(lexical, semantic, lexical_weight=0.5, normalisation="zscore")
    assert {h.id: h.score for h in zscored}[4] == pytest.approx(
        0.5 * (1 - 16 / 3) / np.std([10, 5, 1]) + 0.5 * (0.8 - 0.6) / np.std([0.9, 0.8, 0.1])
    )
    rrf = fuse(lexical, semantic, method="rrf", rrf_k=60)
    assert rrf[0].id in (1, 3) and rrf[0].score == pytest.approx(1 / 61 + 1 / 63)


def test_cosine_top_and_masks() -> None:
    matrix = np.array([unit([1, 0]), unit([0, 1]), unit([1, 1])], dtype=np.float32)
    assert [r for r, _ in cosine_top(matrix, unit([1, 0.1]), 2)] == [0, 2]
    assert [r for r, _ in cosine_top(matrix, unit([1, 0.1]), 2, np.array([False, True, True]))] == [2, 1]


def test_embedding_inputs_are_cut_and_snippets_trimmed_around_the_match() -> None:
    long = "x = call(a, b)\n" * 400
    assert len(truncate_for_embedding(long)) < len(long) / 4
    text = "\n".join(f"line {i}" for i in range(40)) + "\nthe retry budget\n" + "\n".join("tail" for _ in range(10))
    cut = snippet(text, 100, ["retry", "budget"], max_lines=5)
    assert "retry budget" in cut.text and cut.start_line <= 140 <= cut.end_line
    assert cut.lines_cut == 51 - 5


async def test_a_chunk_the_model_refuses_costs_only_its_own_vector(
    write_project: WriteProject, store: KnowledgeStore
) -> None:
    root = write_project(FILES)
    embedder = CountingEmbedder()

    async def picky(texts: Sequence[str]) -> tuple[str, Sequence[Sequence[float]]]:
        if any("logout" in t for t in texts):  # as llama.cpp answers an input longer than its batch
            raise HostServerError("input (522 tokens) is too large to process", host="embed", status=500)
        return await embedder(texts)

    report = await sync_index(store, root, embedder=picky, embedding_model="test-embed")
    assert report.embedded == report.chunks - 1 and report.embedding_note is None
    assert store.vector_models() == {"test-embed": report.chunks - 1}

    async def down(texts: Sequence[str]) -> tuple[str, Sequence[Sequence[float]]]:
        raise HostServerError("connection refused", host="embed", status=503)

    other = KnowledgeStore(store.path.with_name("other.sqlite3"))
    try:
        failed = await sync_index(other, root, embedder=down, embedding_model="test-embed")
        assert failed.embedded == 0 and failed.embedding_note and "connection refused" in failed.embedding_note
    finally:
        other.close()


def test_paced_groups_fit_the_time_at_the_rate_seen_and_grow_at_most_twofold() -> None:
    assert paced_group_size(2, 2, 0.5, 0.2) == 1  # 0.25 s an input: one fits (never zero)
    assert paced_group_size(2, 2, 0.02, 0.2) == 4  # 10 ms an input: 20 would fit, the group doubles
    assert paced_group_size(64, 64, 0.001, 0.2) == EMBED_GROUP  # a fast host: the unpaced group
    assert paced_group_size(8, 8, 0.0, 0.2) == 16


async def test_background_embedding_holds_the_model_about_as_long_as_it_is_told(
    write_project: WriteProject, store: KnowledgeStore
) -> None:
    """Paced groups (the background task's) are what a query embedding waits behind: 50 ms an
    input and 0.2 s a group is at most 4 inputs a request, where an unpaced sync sends them all."""
    root = write_project({f"pkg/mod{n}.py": f"def handler_{n}(event):\n    return event + {n}\n" for n in range(30)})
    await sync_index(store, root, embed=False)
    embedder = CountingEmbedder()

    async def slow(texts: Sequence[str]) -> tuple[str, Sequence[Sequence[float]]]:
        await anyio.sleep(0.05 * len(texts))
        return await embedder(texts)

    done = await embed_missing(store, slow, "test-embed", quiet, group_seconds=0.2)
    sizes = [len(c) for c in embedder.calls]
    assert done == 30 and sum(sizes) == 30 and store.vector_models() == {"test-embed": 30}
    assert sizes[0] == PACED_FIRST_GROUP and max(sizes) <= 4
    assert all(b <= 2 * a for a, b in itertools.pairwise(sizes))

    other = KnowledgeStore(store.path.with_name("unpaced.sqlite3"))
    try:
        await sync_index(other, root, embed=False)
        embedder.calls.clear()
        assert await embed_missing(other, embedder, "test-embed", quiet) == 30
        assert [len(c) for c in embedder.calls] == [30]
    finally:
        other.close()


async def test_a_file_that_grew_or_became_a_fifo_after_the_listing_is_not_read(
    write_project: WriteProject, store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing checks sizes and kinds; the sync reads later. A file swapped in between is
    neither read whole nor waited on."""
    root = write_project({"small.md": "# Notes\nthe build uses make\n", "later.md": "# Later\nshort\n"})
    listed = await list_sources(root, max_bytes=1_000, max_files=100)
    assert set(listed.files) == {"small.md", "later.md"}

    async def listing_then_swap(*args: object, **kwargs: object) -> object:
        (root / "small.md").write_text("# Notes\n" + "grown " * 1_000)  # now over the 1,000-byte limit
        (root / "later.md").unlink()
        os.mkfifo(root / "later.md")  # opened for reading, a FIFO blocks until a writer comes
        return listed

    def free_a_blocked_reader() -> None:  # on code that waits on the FIFO, fail instead of hanging
        time.sleep(20)
        with contextlib.suppress(OSError):
            os.close(os.open(root / "later.md", os.O_WRONLY | os.O_NONBLOCK))

    threading.Thread(target=free_a_blocked_reader, daemon=True).start()
    monkeypatch.setattr("caelum_mcp.tools.knowledge.indexer.list_sources", listing_then_swap)
    started = time.monotonic()
    report = await sync_index(store, root, max_bytes=1_000)
    assert time.monotonic() - started < 20, "waited on the FIFO"
    assert report.added == 0 and report.skipped.get("over the size limit") == 1
    assert not retrieve(store, "grown", limit=5).hits
