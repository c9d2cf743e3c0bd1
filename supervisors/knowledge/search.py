"""``search_knowledge``: ranked passages of a project's code and docs, each with its span and symbol.

The project's index is brought up to date first (:func:`.state.ensure_synced`); the query is then
embedded when an embedding model is up and the index has vectors for it, and the lexical (FTS5,
BM25) and semantic (cosine) rankings are fused. Each passage says which signals found it. Without
an embedding model, or while too few chunks have a vector yet
(:data:`caelum_mcp.tools.knowledge.retrieval.MIN_HYBRID_COVERAGE`), the search is lexical only and
``note`` says so. Snippets are trimmed around the
lines that match (``lines_cut`` counts the rest of the chunk) and ``next_cursor`` pages on.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field

from caelum_mcp.core.errors import CaelumError
from caelum_mcp.supervisors.base import ToolContext, ToolOutput
from caelum_mcp.tools.knowledge.indexer import IndexReport
from caelum_mcp.tools.knowledge.ranking import FusedHit, Signal
from caelum_mcp.tools.knowledge.retrieval import Retrieved, retrieve
from caelum_mcp.tools.knowledge.snippets import snippet
from caelum_mcp.tools.knowledge.store import StoredChunk, is_damaged_store
from caelum_mcp.tools.knowledge.vectors import unit
from caelum_mcp.tools.paths import resolve_project

from .state import (
    KnowledgeSettings,
    KnowledgeState,
    ProjectIndex,
    embedding_failed,
    embedding_model,
    ensure_synced,
    no_embedding_model,
)

Mode = Literal["hybrid", "lexical", "semantic"]


class SearchInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=1000, description="words, identifiers or a question")
    project: str = Field(max_length=4096, description="the project folder (inside the allowed roots)")
    limit: int = Field(default=8, ge=1, le=50)
    cursor: int = Field(default=0, ge=0, le=1000, description="next_cursor of a previous call")
    paths: list[str] | None = Field(default=None, max_length=20, description="only files under these")
    mode: Mode = "hybrid"
    reindex: bool = Field(default=False, description="re-check every file first")


class Passage(BaseModel):
    """A ranked chunk: ``span`` is ``path:start-end``; the snippet shows ``snippet_lines`` of it."""

    chunk: int = Field(description="chunk id (ask_knowledge cites these)")
    span: str
    symbol: str | None = None
    score: float = Field(description="fused rank score: compares results of this search only")
    similarity: float | None = Field(default=None, description="cosine to the query, when it was embedded")
    found_by: list[Signal]
    snippet: str
    snippet_lines: str
    lines_cut: int = Field(default=0, description="lines of the chunk the snippet leaves out")


class IndexSummary(BaseModel):
    files: int
    chunks: int
    changed: int = Field(description="files added or re-chunked by this call's sync")
    removed: int
    seconds: float
    skipped: dict[str, int] = Field(default_factory=dict)
    embedding_model: str | None = None


class SearchOutput(ToolOutput):
    query: str
    results: list[Passage]
    signals: list[Signal] = Field(description="the signals that ran")
    note: str | None = None
    next_cursor: int | None = Field(default=None, description="pass as cursor for the next results")
    index: IndexSummary


def index_summary(report: IndexReport, model: str | None) -> IndexSummary:
    return IndexSummary(
        files=report.files,
        chunks=report.chunks,
        changed=report.added + report.changed,
        removed=report.removed,
        seconds=report.seconds,
        skipped=report.skipped,
        embedding_model=model,
    )


def passage(hit: FusedHit, chunk: StoredChunk, terms: list[str], *, max_lines: int = 12) -> Passage:
    cut = snippet(chunk.text, chunk.start_line, terms, max_lines=max_lines)
    return Passage(
        chunk=chunk.id,
        span=f"{chunk.path}:{chunk.start_line}-{chunk.end_line}",
        symbol=chunk.symbol or None,
        score=round(hit.score, 4),
        similarity=None if hit.semantic is None else round(hit.semantic, 3),
        found_by=list(hit.found_by),
        snippet=cut.text,
        snippet_lines=f"{cut.start_line}-{cut.end_line}",
        lines_cut=cut.lines_cut,
    )


async def run_retrieval(
    ctx: ToolContext,
    index: ProjectIndex,
    settings: KnowledgeSettings,
    query: str,
    *,
    limit: int,
    offset: int = 0,
    mode: Mode = "hybrid",
    paths: list[str] | None = None,
) -> tuple[Retrieved, str | None, str | None]:
    """Embed the query when it can be, and retrieve. Returns the result, the embedding model used
    (None: lexical only) and a note saying why a signal did not run."""
    stored = await anyio.to_thread.run_sync(index.store.vector_models)
    model = embedding_model(ctx, settings, list(stored)) if mode != "lexical" else None
    note: str | None = None
    vector = None
    if mode != "lexical":
        if model is None:
            note = f"lexical search only: {no_embedding_model(ctx.llm)}"
        elif not stored.get(model):
            note = f"lexical search only: the index has no vectors from {model} yet"
            model = None
        else:
            try:
                vector = unit((await ctx.llm.embed([query], model=model)).vectors[0])
            except CaelumError as exc:
                note, model = f"lexical search only: embedding the query failed: {embedding_failed(ctx.llm, exc)}", None
    if mode == "semantic" and vector is None:
        raise CaelumError(f"semantic search is not possible now ({note}); use mode=hybrid or lexical")
    signals: tuple[Signal, ...] = ("semantic",) if mode == "semantic" else ("lexical", "semantic")
    result = await anyio.to_thread.run_sync(
        lambda: retrieve(
            index.store,
            query,
            limit=limit,
            offset=offset,
            query_vector=vector,
            model=model,
            signals=signals,
            paths=paths or (),
            params=settings.retrieval(),
        )
    )
    if result.note:  # the vectors are still being built: the ranking is lexical so far
        note = "; ".join(filter(None, [note, result.note]))
    return result, model, note


async def search_knowledge(args: SearchInput, ctx: ToolContext, state: KnowledgeState) -> SearchOutput:
    root = resolve_project(args.project, ctx.roots)
    try:
        out = await _search(args, ctx, state, root)
    except sqlite3.DatabaseError as exc:
        if not is_damaged_store(exc):
            raise
        state.set_aside_project(root, exc)  # and search the fresh index, built from the files
        out = await _search(args, ctx, state, root)
    notice = state.take_notice(root)
    if notice:
        out = out.model_copy(update={"note": "; ".join(filter(None, [notice, out.note]))})
    return out


async def _search(args: SearchInput, ctx: ToolContext, state: KnowledgeState, root: Path) -> SearchOutput:
    settings = ctx.settings_as(KnowledgeSettings)
    index = state.project(root)
    await ctx.report(0, 2, "bringing the index up to date")
    report = await ensure_synced(ctx, index, settings, force=args.reindex)
    await ctx.report(1, 2, f"searching {report.chunks} chunks")
    paths = [p.strip("/") for p in args.paths or [] if p.strip("/")]
    found, model, note = await run_retrieval(
        ctx, index, settings, args.query, limit=args.limit, offset=args.cursor, mode=args.mode, paths=paths
    )
    page = found.hits[args.cursor : args.cursor + args.limit]
    results = [passage(h, found.chunks[h.id], found.terms) for h in page if h.id in found.chunks]
    more = len(found.hits) > args.cursor + args.limit
    if report.embedding_note and not note:
        note = report.embedding_note
    await ctx.report(2, 2, f"{len(results)} passages")
    return SearchOutput(
        query=args.query,
        results=results,
        signals=list(found.signals),
        note=note,
        next_cursor=args.cursor + args.limit if more else None,
        index=index_summary(report, model),
    )
