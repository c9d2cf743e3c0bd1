"""The supervisor seam: a domain's external tools, declared once, registered generically.

A supervisor declares :class:`ExternalTool` s (a pydantic input model, an output model derived from
:class:`ToolOutput`, behaviour hints, a short description and an async handler) and the
:class:`InternalTool` s they draw on. Handlers receive the validated input and a
:class:`ToolContext` holding only named, typed services:

- ``llm`` (:class:`LLMService`): run an :class:`~caelum_mcp.core.llm.LLMTask` local-first, ask which
  tiers exist and whether a task can run now;
- ``limits``: the ``[tools]`` settings (subprocess timeouts);
- ``roots``: the folders this call may read;
- ``cache``: the content-hash result cache (:func:`cached`);
- ``state_dir``: this supervisor's own data folder (indexes, run stores);
- ``state_as(Type)``: what this supervisor's :meth:`Supervisor.lifespan` yielded (a store, an
  index, a service that outlives the call), typed;
- ``settings_as(Model)``: its own config section (``[name]``), validated by ``settings_model``;
- ``report`` / ``note``: MCP progress;
- ``call_tool``: another registered external tool, with validated input, this call's progress and
  cancellation, and the child's model calls recorded under this call in the ledger;
- ``pool_admin`` (:class:`PoolAdmin`): only for a supervisor that declares ``pool_admin = True``
  (the ai supervisor).

Handlers never see hosts, HTTP clients, the router or MCP objects, so they are tested without
them. A supervisor that keeps something for the server's life opens it in :meth:`Supervisor.lifespan`
and yields it; every handler reads it as ``ctx.state_as(ItsStateType)`` (one way for every
stateful supervisor).

Adding a supervisor is one module (or package) with a :class:`Supervisor` subclass plus one line in
``SUPERVISORS`` (``caelum_mcp.supervisors``); the README has a worked example.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

import anyio
from pydantic import BaseModel, Field, PrivateAttr

from caelum_mcp.core.errors import CaelumError
from caelum_mcp.engine.cache import make_key

if TYPE_CHECKING:
    from caelum_mcp.core.llm import Availability, CallCost, Embeddings, LLMTask, ProgressFn, RoutedResult
    from caelum_mcp.core.types import Tier
    from caelum_mcp.engine.cache import ResultCache
    from caelum_mcp.engine.config import ToolsConfig
    from caelum_mcp.engine.status import HostStatus, StatusReport

M = TypeVar("M", bound=BaseModel)
S = TypeVar("S")
InT = TypeVar("InT", bound=BaseModel)
OutT = TypeVar("OutT", bound="ToolOutput")

ProgressReporter = Callable[[float, float | None, str], Awaitable[None]]


async def _no_progress(progress: float, total: float | None, message: str) -> None:
    return None


class LLMService(Protocol):
    """LLM work for one tool call: local first, Claude when local confidence is low."""

    async def run(self, task: LLMTask, *, progress: ProgressFn | None = None) -> RoutedResult:
        """Run ``task``. Raises :class:`~caelum_mcp.core.errors.TaskSkippedError` at once (no model call)
        when no model that can do it may be used, and other ``TaskFailedError`` s when none answered."""
        ...

    def tiers(self) -> frozenset[Tier]:
        """The tiers the local pool serves now."""
        ...

    def availability(self, task: LLMTask) -> Availability:
        """Whether ``task`` could run now (local, Claude), and if not why and what to configure."""
        ...

    def embedding_models(self) -> list[str]:
        """The embedding models up now (``model@host``); empty when there are none."""
        ...

    def embedding_problem(self) -> str:
        """When no embedding model is up, why: each host listing one, its state and last error;
        "" when no host lists one."""
        ...

    async def embed(self, texts: Sequence[str], *, model: str | None = None) -> Embeddings:
        """Vectors for ``texts`` from the pool's embedding tier, batched; recorded in the ledger.
        Raises :class:`~caelum_mcp.core.errors.NoHostAvailableError` when no embedding model is up."""
        ...

    async def call_cost(self) -> CallCost:
        """What this tool call's model calls have cost so far, its child tool calls included
        (from the ledger); zero outside a tool call."""
        ...


class PoolAdmin(Protocol):
    """The pool's views and its one switch; handed only to the ai supervisor."""

    def status(self) -> StatusReport: ...

    async def astatus(self) -> StatusReport: ...

    async def set_host_enabled(self, name: str, enabled: bool) -> HostStatus: ...


class ToolCaller(Protocol):
    """Runs a registered external tool for a parent call (the server's runtime provides it)."""

    async def __call__(self, name: str, args: Mapping[str, Any] | BaseModel, parent: ToolContext) -> ToolOutput: ...


@dataclass(frozen=True)
class Image:
    """A picture sent beside a result (MCP image content), e.g. a chart rendered to PNG."""

    data: bytes
    mime_type: str = "image/png"


class ToolOutput(BaseModel):
    """Base of every tool result. The server fits each result to a token budget by cutting the
    longest lists from their end; what it cut is counted in ``omitted`` and ``more`` says how to
    get it. A tool that cuts its own lists (``max_findings``) reports that in its own fields.

    :meth:`attach` adds an :class:`Image` that the server sends as MCP image content beside the
    structured result (it is not part of the structured data or its schema).
    """

    omitted: dict[str, int] = Field(
        default_factory=dict, description="items (or characters) left out to fit the result budget, by field"
    )
    more: str | None = Field(default=None, description="how to get what was left out")
    _images: list[Image] = PrivateAttr(default_factory=list)

    def attach(self, image: Image) -> None:
        self._images.append(image)

    @property
    def images(self) -> tuple[Image, ...]:
        return tuple(self._images)


@dataclass
class _Progress:
    value: float = 0.0
    total: float | None = None


@dataclass(frozen=True)
class ToolContext:
    """What a tool handler may use; see the module docstring."""

    llm: LLMService
    limits: ToolsConfig
    roots: tuple[Path, ...]
    state_dir: Path
    cache: ResultCache | None = None
    progress: ProgressReporter = _no_progress
    pool_admin: PoolAdmin | None = None
    settings: BaseModel | None = None
    call_id: str = ""
    depth: int = 0
    caller: ToolCaller | None = field(default=None, repr=False)
    state: object | None = field(default=None, repr=False)  # what the supervisor's lifespan yielded
    _last: _Progress = field(default_factory=_Progress, repr=False, compare=False)

    async def report(self, progress: float, total: float | None = None, message: str = "") -> None:
        """MCP progress: ``progress`` of ``total`` steps, with a message people read."""
        self._last.value, self._last.total = progress, total
        await self.progress(progress, total, message)

    async def note(self, message: str) -> None:
        """A progress message that does not move the step count (e.g. from a child tool call)."""
        await self.progress(self._last.value, self._last.total, message)

    async def call_tool(self, name: str, args: Mapping[str, Any] | BaseModel) -> ToolOutput:
        """Run another registered external tool as part of this call and return its result.

        The arguments are validated against the tool's input model (a
        :class:`~caelum_mcp.core.errors.ToolInputError` names each bad one); the child reports progress
        through this call, is cancelled with it, and its model calls are recorded under it.
        """
        if self.caller is None:
            raise CaelumError(f"call_tool({name!r}) needs the running server")
        return await self.caller(name, args, self)

    def settings_as(self, model: type[M]) -> M:
        """This supervisor's config section (``Supervisor.settings_model``), typed."""
        return _settings_as(self.settings, model)

    def state_as(self, kind: type[S]) -> S:
        """What this supervisor's lifespan yielded, as ``kind``; a clear error when the call runs
        without the server's lifespan (nothing was opened) or the state is of another type."""
        if isinstance(self.state, kind):
            return self.state
        if self.state is None:
            raise CaelumError(
                f"this tool needs its supervisor's {kind.__name__}, which the running server opens; "
                "call it through the server (no state was opened for this call)"
            )
        raise TypeError(f"the supervisor's state is a {type(self.state).__name__}, not a {kind.__name__}")

    def require_pool_admin(self) -> PoolAdmin:
        if self.pool_admin is None:
            raise CaelumError("pool administration is only available to the ai supervisor's tools")
        return self.pool_admin


@dataclass(frozen=True)
class SupervisorEnv:
    """What a supervisor's lifespan gets: its data folder and the services that outlive a call."""

    state_dir: Path
    limits: ToolsConfig
    llm: LLMService
    cache: ResultCache | None = None
    settings: BaseModel | None = None

    def settings_as(self, model: type[M]) -> M:
        """The supervisor's config section (``Supervisor.settings_model``), typed."""
        return _settings_as(self.settings, model)


def _settings_as(settings: BaseModel | None, model: type[M]) -> M:
    if settings is None:
        return model()
    if not isinstance(settings, model):
        raise TypeError(f"settings are a {type(settings).__name__}, not a {model.__name__}")
    return settings


@dataclass(frozen=True)
class ExternalTool(Generic[InT, OutT]):
    """One MCP tool: name, models, hints (read-only, destructive, idempotent, open world) and the
    handler that does the work. The server turns the hints into MCP tool annotations.

    ``more_hint`` tells the caller how to get what a cut result left out (e.g. "narrow with
    `paths`"). ``result_tokens`` may raise the result budget for one call from its arguments (e.g.
    when the caller asked for many findings); the server's hard cap still applies.
    """

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
    more_hint: str = ""
    result_tokens: Callable[[InT], int | None] | None = None


@dataclass(frozen=True)
class InternalTool:
    """A registry entry for an internal tool (linter, scanner, probe): a plain typed function."""

    name: str
    function: Callable[..., Any]
    description: str = ""

    @property
    def summary(self) -> str:
        """The description, else the first line of the function's docstring."""
        if self.description:
            return self.description
        doc = (self.function.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


class Supervisor(ABC):
    """A domain: its external tools, the internal tools they draw on, and an optional lifespan."""

    name: ClassVar[str]
    description: ClassVar[str]
    pool_admin: ClassVar[bool] = False  # whether its handlers get ctx.pool_admin (the ai supervisor)
    # Its own top-level config section (``[<settings_section or name>]``), validated by this model
    # when the config is loaded; handlers get it as ``ctx.settings_as(Model)``.
    settings_model: ClassVar[type[BaseModel] | None] = None
    settings_section: ClassVar[str | None] = None

    @abstractmethod
    def external_tools(self) -> Sequence[ExternalTool[Any, Any]]:
        """The MCP tools this supervisor offers."""

    def internal_tools(self) -> Sequence[InternalTool]:
        """The internal tools its external tools use (listed by ``caelum://supervisors``)."""
        return ()

    def lifespan(self, env: SupervisorEnv) -> AbstractAsyncContextManager[object | None]:
        """Open what the supervisor keeps for the server's life (an index, a run store), yield it,
        and close it on exit; handlers get what was yielded as ``ctx.state_as(Type)``. The default
        keeps nothing (yields None); override with an ``@asynccontextmanager`` method."""
        return _nothing()


@asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield None


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

    ``content_key`` is the fingerprint of the files the tool reads (see :mod:`caelum_mcp.engine.cache`).
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
