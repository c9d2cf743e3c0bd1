"""The supervisor seam: a domain's external tools, declared once, registered generically.

A supervisor declares :class:`ExternalTool` s (a pydantic input model, a pydantic output model,
MCP annotations, a short description and an async handler). Handlers receive the validated input
and a :class:`ToolContext`: the router for LLM work, the config, progress reporting and a few
narrow services. They never see hosts, HTTP clients or MCP objects, so they are tested without
either. The server turns every declared tool into an MCP tool whose arguments are the input
model's fields (see :mod:`caelum_mcp.server`).

A new supervisor is one file with a :class:`Supervisor` subclass plus one line in
``SUPERVISORS`` (``caelum_mcp.supervisors.__init__``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import anyio
from mcp.types import ToolAnnotations
from pydantic import BaseModel

from caelum_mcp.cache import make_key

if TYPE_CHECKING:
    from caelum_mcp.app import AppState
    from caelum_mcp.cache import ResultCache
    from caelum_mcp.config import Config
    from caelum_mcp.router import Router

M = TypeVar("M", bound=BaseModel)
InT = TypeVar("InT", bound=BaseModel)
OutT = TypeVar("OutT", bound=BaseModel)

ProgressReporter = Callable[[float, float | None, str], Awaitable[None]]


async def _no_progress(progress: float, total: float | None, message: str) -> None:
    return None


@dataclass
class ToolContext:
    """What a tool handler may use."""

    router: Router
    config: Config
    roots: tuple[Path, ...]
    progress: ProgressReporter = _no_progress
    app: AppState | None = field(default=None, repr=False)  # for the ai supervisor's pool views only

    async def report(self, progress: float, total: float | None = None, message: str = "") -> None:
        await self.progress(progress, total, message)

    @property
    def cache(self) -> ResultCache | None:
        return self.app.cache if self.app is not None else None


@dataclass(frozen=True)
class ExternalTool(Generic[InT, OutT]):
    """One MCP tool: name, models, annotations and the handler that does the work."""

    name: str
    title: str
    description: str
    input_model: type[InT]
    output_model: type[OutT]
    handler: Callable[[InT, ToolContext], Awaitable[OutT]]
    read_only: bool = True
    destructive: bool = False
    idempotent: bool = True
    open_world: bool = False
    uses_roots: bool = False  # works on the user's files: the client's MCP roots are allowed too

    @property
    def annotations(self) -> ToolAnnotations:
        return ToolAnnotations(
            title=self.title,
            read_only_hint=self.read_only,
            destructive_hint=self.destructive,
            idempotent_hint=self.idempotent,
            open_world_hint=self.open_world,
        )


@dataclass(frozen=True)
class InternalTool:
    """A registry entry for an internal tool (linters, scanners, probes): plain typed function."""

    name: str
    description: str
    function: Callable[..., Any]


class Supervisor(ABC):
    """A domain: its external tools, and the internal tools they draw on."""

    name: ClassVar[str]
    description: ClassVar[str]

    @abstractmethod
    def external_tools(self) -> Sequence[ExternalTool[Any, Any]]:
        """The MCP tools this supervisor offers."""

    def internal_tools(self) -> Sequence[InternalTool]:
        return ()


async def run_stages(
    ctx: ToolContext,
    stages: Sequence[tuple[str, Callable[[], Awaitable[Any]]]],
    *,
    start: float = 0,
    total: float | None = None,
) -> list[Any]:
    """Run independent stages concurrently, reporting progress as each finishes; results in order."""
    results: list[Any] = [None] * len(stages)
    done = 0
    lock = anyio.Lock()

    async def one(i: int, label: str, fn: Callable[[], Awaitable[Any]]) -> None:
        nonlocal done
        results[i] = await fn()
        async with lock:
            done += 1
            await ctx.report(start + done, total, f"{label} done")

    async with anyio.create_task_group() as tg:
        for i, (label, fn) in enumerate(stages):
            tg.start_soon(one, i, label, fn)
    return results


async def cached(
    ctx: ToolContext,
    tool: str,
    params: dict[str, Any],
    content_key: str,
    compute: Callable[[], Awaitable[M]],
    model: type[M],
    reusable: Callable[[M], bool] | None = None,
) -> tuple[M, bool]:
    """``compute()``'s result, reused when the same tool ran with the same params on the same files.

    ``content_key`` is the fingerprint of the files the tool reads (see :mod:`caelum_mcp.cache`).
    A result for which ``reusable`` says False (a timeout, say) is returned but not kept.
    Returns the result and whether it came from the cache.
    """
    cache = ctx.cache
    if cache is None:
        return await compute(), False
    key = make_key(tool, params, content_key)
    hit = await anyio.to_thread.run_sync(cache.get, tool, key, model)
    if hit is not None:
        return hit, True
    value = await compute()
    if reusable is None or reusable(value):
        await anyio.to_thread.run_sync(cache.put, tool, key, value)
    return value, False
