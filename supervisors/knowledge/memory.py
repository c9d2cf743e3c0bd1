"""``memory``: notes kept across sessions and restarts, per project or global.

- ``remember(text, tags?, scope?)``: scope ``project`` (needs ``project``; the default when one is
  given) or ``global``; the same text twice in one scope is one note.
- ``recall(query, tags?, scope?)``: hybrid search (BM25 + cosine when an embedding model is up)
  over the project's notes and the global ones, or one scope.
- ``forget(id | query)``: by id, or the notes holding every term of ``query`` (at most ``limit``);
  the text, its FTS row and its vector go in one transaction.
- ``list``: newest first, ``cursor`` pages on.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Sequence
from typing import Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator

from caelum_mcp.core.errors import CaelumError, ToolInputError
from caelum_mcp.core.redaction import redact_secrets
from caelum_mcp.supervisors.base import ToolContext, ToolOutput
from caelum_mcp.tools.knowledge.memory import GLOBAL_SCOPE, MAX_NOTE_CHARS, MemoryStore, Note
from caelum_mcp.tools.knowledge.store import is_damaged_store
from caelum_mcp.tools.paths import resolve_project

from .state import KnowledgeSettings, KnowledgeState, embedding_failed, embedding_model, no_embedding_model

Action = Literal["remember", "recall", "forget", "list"]
Scope = Literal["project", "global"]
_PROJECT_PREFIX = "project:"


class MemoryInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Action
    text: str | None = Field(default=None, max_length=MAX_NOTE_CHARS, description="remember: the note")
    query: str | None = Field(default=None, max_length=1000, description="recall/forget: what to look for")
    id: int | None = Field(default=None, ge=1, description="forget: the note's id")
    tags: list[str] | None = Field(default=None, max_length=10)
    scope: Scope | None = Field(default=None, description="default: project when given, plus global to read")
    project: str | None = Field(default=None, max_length=4096)
    limit: int = Field(default=5, ge=1, le=50)
    cursor: int = Field(default=0, ge=0, le=10_000)

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        cleaned = [t.strip().lower() for t in value if t.strip()]
        bad = [t for t in cleaned if len(t) > 40]
        if bad:
            raise ValueError("a tag has at most 40 characters")
        return list(dict.fromkeys(cleaned))


class NoteOut(BaseModel):
    id: int
    scope: Scope
    text: str
    tags: list[str]
    created: str
    score: float | None = Field(default=None, description="recall: fused rank score, within this answer")
    similarity: float | None = Field(default=None, description="recall: cosine to the query")
    found_by: list[str] | None = None


class MemoryOutput(ToolOutput):
    action: Action
    notes: list[NoteOut] = Field(default_factory=list)
    removed: list[int] = Field(default_factory=list, description="ids of the notes forgotten")
    total: int | None = Field(default=None, description="list: notes in the scopes read")
    next_cursor: int | None = None
    note: str | None = None


def _note_out(
    note: Note,
    score: float | None = None,
    found_by: Sequence[str] | None = None,
    similarity: float | None = None,
) -> NoteOut:
    return NoteOut(
        id=note.id,
        scope="global" if note.scope == GLOBAL_SCOPE else "project",
        text=note.text,
        tags=list(note.tags),
        created=dt.datetime.fromtimestamp(note.created, dt.UTC).isoformat(timespec="seconds"),
        score=score,
        similarity=similarity,
        found_by=list(found_by) if found_by is not None else None,
    )


def _scopes(args: MemoryInput, ctx: ToolContext, *, writing: bool) -> list[str]:
    project_scope = None
    if args.project is not None:
        project_scope = _PROJECT_PREFIX + str(resolve_project(args.project, ctx.roots))
    if args.scope == "project" and project_scope is None:
        raise ToolInputError("scope=project needs `project` (the project folder)")
    if args.scope == "global" or project_scope is None:
        return [GLOBAL_SCOPE]
    if args.scope == "project" or writing:
        return [project_scope]
    return [project_scope, GLOBAL_SCOPE]


async def _vector_of(ctx: ToolContext, model: str | None, text: str) -> tuple[str, Sequence[float]] | None:
    if model is None:
        return None
    try:
        return model, (await ctx.llm.embed([text], model=model)).vectors[0]
    except CaelumError:
        return None


async def memory(args: MemoryInput, ctx: ToolContext, state: KnowledgeState) -> MemoryOutput:
    try:
        out = await _memory(args, ctx, state)
    except sqlite3.DatabaseError as exc:
        if not is_damaged_store(exc):
            raise
        state.set_aside_memory(exc)  # and answer from a fresh note file
        out = await _memory(args, ctx, state)
    notice = state.take_memory_notice()
    if notice:
        out = out.model_copy(update={"note": "; ".join(filter(None, [notice, out.note]))})
    return out


async def _memory(args: MemoryInput, ctx: ToolContext, state: KnowledgeState) -> MemoryOutput:
    store = state.memory()
    settings = ctx.settings_as(KnowledgeSettings)
    model = embedding_model(ctx, settings)
    tags = args.tags or []
    if args.action == "remember":
        if not args.text or not args.text.strip():
            raise ToolInputError("remember needs `text`: the note to keep")
        scope = _scopes(args, ctx, writing=True)[0]
        text = redact_secrets(args.text.strip())  # a note is stored: a secret in it never is
        vector = await _vector_of(ctx, model, text)
        note, is_new = await anyio.to_thread.run_sync(lambda: store.remember(text, tags, scope, vector))
        said = None if is_new else "this note was already kept; its tags were merged"
        if vector is None:
            said = "; ".join(filter(None, [said, "kept without a vector: recall will use words only until one is up"]))
        return MemoryOutput(action="remember", notes=[_note_out(note)], note=said)
    scopes = _scopes(args, ctx, writing=False)
    if args.action == "recall":
        if not args.query or not args.query.strip():
            raise ToolInputError("recall needs `query`: what to look for")
        return await _recall(args, ctx, store, scopes, model)
    if args.action == "forget":
        if args.id is not None:
            ids = [args.id]
        elif args.query and args.query.strip():
            ids = await anyio.to_thread.run_sync(lambda: store.matching(args.query or "", scopes, limit=args.limit))
        else:
            raise ToolInputError("forget needs `id` (a note's id) or `query` (every note holding all its words)")
        if args.id is not None and not await anyio.to_thread.run_sync(lambda: _in_scopes(store, args.id or 0, scopes)):
            return MemoryOutput(action="forget", note=f"no note {args.id} in the scope read; nothing was removed")
        removed = await anyio.to_thread.run_sync(store.forget, ids)
        return MemoryOutput(action="forget", removed=removed, note=None if removed else "no note matched")
    notes = await anyio.to_thread.run_sync(lambda: store.recent(scopes, tags, limit=args.limit + 1, offset=args.cursor))
    total = await anyio.to_thread.run_sync(store.count, scopes)
    more = len(notes) > args.limit
    return MemoryOutput(
        action="list",
        notes=[_note_out(n) for n in notes[: args.limit]],
        total=total,
        next_cursor=args.cursor + args.limit if more else None,
    )


def _in_scopes(store: MemoryStore, note_id: int, scopes: list[str]) -> bool:
    return any(n.scope in scopes for n in store.get([note_id]))


async def _recall(
    args: MemoryInput, ctx: ToolContext, store: MemoryStore, scopes: list[str], model: str | None
) -> MemoryOutput:
    query = (args.query or "").strip()
    said = None
    vector = None
    if model is not None:
        missing = await anyio.to_thread.run_sync(store.missing_vectors, model, scopes)
        try:
            if missing:
                embedded = await ctx.llm.embed([n.text for n in missing], model=model)
                pairs = [(n.id, v) for n, v in zip(missing, embedded.vectors, strict=True)]
                await anyio.to_thread.run_sync(store.put_vectors, model, pairs)
            vector = (model, (await ctx.llm.embed([query], model=model)).vectors[0])
        except CaelumError as exc:
            said = f"recalled by words only: embedding failed: {embedding_failed(ctx.llm, exc)}"
    else:
        said = f"recalled by words only: {no_embedding_model(ctx.llm)}"
    recalled = await anyio.to_thread.run_sync(
        lambda: store.recall(query, scopes, args.tags or [], limit=args.limit, query_vector=vector)
    )
    return MemoryOutput(
        action="recall", notes=[_note_out(r.note, r.score, r.found_by, r.similarity) for r in recalled], note=said
    )
