"""The knowledge supervisor: search a project's code and docs, answer from them, and remember notes.

One module per external tool (:mod:`.search`, :mod:`.ask`, :mod:`.memory`); :mod:`.state` holds
what lives as long as the server (one index per project, the note store) and the settings
(``[knowledge]``). The internal tools are ``caelum_mcp.tools.knowledge``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio

from caelum_mcp.supervisors.base import ExternalTool, InternalTool, Supervisor, SupervisorEnv, ToolContext
from caelum_mcp.tools.knowledge.chunking import chunk_file
from caelum_mcp.tools.knowledge.indexer import sync_index
from caelum_mcp.tools.knowledge.memory import MemoryStore
from caelum_mcp.tools.knowledge.ranking import fuse
from caelum_mcp.tools.knowledge.retrieval import retrieve
from caelum_mcp.tools.knowledge.sources import list_sources

from .ask import AskInput, AskOutput, ask_knowledge
from .memory import MemoryInput, MemoryOutput, memory
from .search import SearchInput, SearchOutput, search_knowledge
from .state import Background, KnowledgeSettings, KnowledgeState

__all__ = ["KnowledgeSettings", "KnowledgeSupervisor"]


class KnowledgeSupervisor(Supervisor):
    name = "knowledge"
    description = "Search and cite a project's code and docs; keep notes across sessions."
    settings_model = KnowledgeSettings

    @asynccontextmanager
    async def lifespan(self, env: SupervisorEnv) -> AsyncIterator[KnowledgeState]:
        state = None
        try:
            async with anyio.create_task_group() as tg:  # the indexes' background embedding
                state = KnowledgeState(env.state_dir, Background(tg, env.llm))
                try:
                    yield state
                finally:
                    tg.cancel_scope.cancel()
        finally:  # after the background tasks have ended: they write to the stores
            if state is not None:
                state.close()

    async def _search(self, args: SearchInput, ctx: ToolContext) -> SearchOutput:
        return await search_knowledge(args, ctx, ctx.state_as(KnowledgeState))

    async def _ask(self, args: AskInput, ctx: ToolContext) -> AskOutput:
        return await ask_knowledge(args, ctx, ctx.state_as(KnowledgeState))

    async def _memory(self, args: MemoryInput, ctx: ToolContext) -> MemoryOutput:
        return await memory(args, ctx, ctx.state_as(KnowledgeState))

    def external_tools(self) -> Sequence[ExternalTool[Any, Any]]:
        return (
            ExternalTool(
                name="search_knowledge",
                title="Search a project's code and docs",
                description=(
                    "Ranked passages (path:start-end, symbol, snippet) for words, identifiers or a question, "
                    "from a hybrid BM25 + embedding index of the project, updated incrementally; each result "
                    "says which signal found it."
                ),
                input_model=SearchInput,
                output_model=SearchOutput,
                handler=self._search,
                uses_roots=True,
                more_hint="pass `cursor`=next_cursor, or narrow with `paths`",
            ),
            ExternalTool(
                name="ask_knowledge",
                title="Answer from a project's sources",
                description=(
                    "Answer a question from the project's indexed code and docs, citing the passages used "
                    "(every quote checked); says 'not found in the indexed sources' rather than guessing."
                ),
                input_model=AskInput,
                output_model=AskOutput,
                handler=self._ask,
                uses_roots=True,
                idempotent=False,
                open_world=True,
                more_hint="ask with fewer `passages`, or narrow with `paths`",
            ),
            ExternalTool(
                name="memory",
                title="Remember, recall and forget notes",
                description=(
                    "Notes kept across sessions, per project or global: remember(text, tags), "
                    "recall(query) by words and meaning, forget(id or query), list."
                ),
                input_model=MemoryInput,
                output_model=MemoryOutput,
                handler=self._memory,
                uses_roots=True,
                read_only=False,
                destructive=True,
                idempotent=False,
                more_hint="pass `cursor`=next_cursor, or lower `limit`",
            ),
        )

    def internal_tools(self) -> Sequence[InternalTool]:
        return (
            InternalTool("list_sources", list_sources),
            InternalTool("chunk_file", chunk_file),
            InternalTool("sync_index", sync_index),
            InternalTool("retrieve", retrieve),
            InternalTool("fuse", fuse),
            InternalTool("memory_store", MemoryStore, "notes with FTS5 rows and vectors in one SQLite file"),
        )
