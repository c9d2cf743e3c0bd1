"""How an external tool call runs, whoever asks: an MCP client, or another tool through ``call_tool``.

:class:`ToolRuntime` holds every supervisor and its tools (registered once, names unique) and, while
the server runs, the services they are handed. One call:

1. the arguments are validated against the tool's input model (:class:`ToolInputError` names each
   bad one, with a did-you-mean for unknown ones);
2. the call gets an id, and a row in the ledger's ``tool_calls`` (a child names its parent);
3. the handler runs with a :class:`~caelum_mcp.supervisors.base.ToolContext` of typed services: the
   LLM service bound to this call (so every model call it makes is recorded under it), the
   ``[tools]`` limits, the roots, the cache, the supervisor's state folder, progress, ``call_tool``,
   and ``pool_admin`` only for a supervisor that declares it;
4. for a client, every string of the result passes the secrets redaction (the scanner's own rules:
   a key in a patch's context lines, a password in a test's failure text, a token a model quoted)
   and the result is fitted to its token budget (:mod:`caelum_mcp.engine.budget`): the longest lists are
   cut from their end, and ``omitted`` and ``more`` say what was left out and how to get it. A
   child's result goes to its parent whole; the parent's own result is what gets redacted and fitted.
   Doing both here, where every result is built, means no tool can forget them.

Supervisors' lifespans (:meth:`~caelum_mcp.supervisors.base.Supervisor.lifespan`) are entered when
the server starts and left when it stops (:meth:`ToolRuntime.serving`).
"""

from __future__ import annotations

import difflib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import anyio
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from caelum_mcp.core.errors import CaelumError, ToolInputError
from caelum_mcp.core.llm import Availability, CallCost, Embeddings, LLMTask, ProgressFn, RoutedResult
from caelum_mcp.core.logs import request_scope
from caelum_mcp.core.redaction import redact_all
from caelum_mcp.core.types import Frozen, Tier
from caelum_mcp.engine.budget import fit_to_budget, round_floats
from caelum_mcp.engine.config import RESULT_TOKENS_CAP
from caelum_mcp.engine.embedding_service import EmbeddingService
from caelum_mcp.engine.router import Router
from caelum_mcp.serving.app import AppState
from caelum_mcp.supervisors.base import (
    ExternalTool,
    ProgressReporter,
    Supervisor,
    SupervisorEnv,
    ToolContext,
    ToolOutput,
    _no_progress,
)

log = logging.getLogger(__name__)

MAX_CALL_DEPTH = 4  # call_tool nesting: a workflow step calling a tool that calls a tool is plenty
# What the fields ``omitted`` and ``more`` add to a cut result, kept free in the budget.
_NOTE_TOKENS = 120


class BoundLLM:
    """The LLM service of one tool call: the router and the embedding service, with the call's id
    on every ledger row."""

    def __init__(
        self, router: Router, call_id: str | None = None, *, embeddings: EmbeddingService | None = None
    ) -> None:
        self.router = router
        # Embeddings are not the router's: they need only the pool and the ledger it runs on.
        self.embeddings = embeddings or EmbeddingService(router.pool, router.ledger)
        self.call_id = call_id

    async def run(self, task: LLMTask, *, progress: ProgressFn | None = None) -> RoutedResult:
        return await self.router.run(task, progress=progress, call_id=self.call_id)

    def tiers(self) -> frozenset[Tier]:
        return frozenset(self.router.pool.available_tiers())

    def availability(self, task: LLMTask) -> Availability:
        return self.router.availability(task)

    def embedding_models(self) -> list[str]:
        return self.embeddings.models()

    def embedding_problem(self) -> str:
        return self.embeddings.problem()

    async def embed(self, texts: Sequence[str], *, model: str | None = None) -> Embeddings:
        return await self.embeddings.embed(texts, model=model, call_id=self.call_id)

    async def call_cost(self) -> CallCost:
        if self.call_id is None:
            return CallCost(model_calls=0, input_tokens=0, output_tokens=0, cost_usd=0.0, counterfactual_cost_usd=0.0)
        return await anyio.to_thread.run_sync(self.router.ledger.call_cost, self.call_id)


@dataclass(frozen=True)
class RegisteredTool:
    tool: ExternalTool[Any, Any]
    supervisor: Supervisor


class ToolInfo(Frozen):
    name: str
    title: str
    read_only: bool
    destructive: bool


class InternalToolInfo(Frozen):
    name: str
    description: str


class SupervisorInfo(Frozen):
    name: str
    description: str
    external_tools: list[ToolInfo]
    internal_tools: list[InternalToolInfo]


class ToolRuntime:
    """Every supervisor's tools, and how one call of any of them runs (see the module docstring)."""

    def __init__(self, supervisors: Sequence[Supervisor]) -> None:
        self.supervisors = tuple(supervisors)
        self.tools: dict[str, RegisteredTool] = {}
        for supervisor in self.supervisors:
            for tool in supervisor.external_tools():
                if tool.name in self.tools:
                    other = self.tools[tool.name].supervisor.name
                    raise ValueError(f"tool {tool.name!r} of {supervisor.name} is already registered by {other}")
                if not issubclass(tool.output_model, ToolOutput):
                    raise TypeError(f"tool {tool.name!r}: its output model must derive from ToolOutput")
                self.tools[tool.name] = RegisteredTool(tool, supervisor)
        self._state: AppState | None = None
        self._supervisor_states: dict[str, object | None] = {}  # what each lifespan yielded

    # lifecycle -------------------------------------------------------------------------------

    @asynccontextmanager
    async def serving(self, state: AppState) -> AsyncIterator[None]:
        """Hand the running app's services to the tools, with every supervisor's lifespan open."""
        async with AsyncExitStack() as stack:
            for supervisor in self.supervisors:
                env = SupervisorEnv(
                    state_dir=self.state_dir(state, supervisor),
                    limits=state.config.tools,
                    llm=BoundLLM(state.router, embeddings=state.embeddings),
                    cache=state.cache,
                    settings=self.settings_of(state, supervisor),
                )
                self._supervisor_states[supervisor.name] = await stack.enter_async_context(supervisor.lifespan(env))
            self._state = state
            try:
                yield
            finally:
                self._state = None
                self._supervisor_states.clear()

    def require_state(self) -> AppState:
        if self._state is None:
            raise CaelumError("the server is not running (no session is open)")
        return self._state

    @staticmethod
    def settings_of(state: AppState, supervisor: Supervisor) -> BaseModel | None:
        model = supervisor.settings_model
        if model is None:
            return None
        return state.config.section(supervisor.settings_section or supervisor.name, model)

    @staticmethod
    def state_dir(state: AppState, supervisor: Supervisor) -> Path:
        path = state.config.data_dir / "supervisors" / supervisor.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # calls -----------------------------------------------------------------------------------

    def get(self, name: str) -> RegisteredTool:
        registered = self.tools.get(name)
        if registered is None:
            close = difflib.get_close_matches(name, self.tools, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise CaelumError(f"no tool named {name[:80]!r}{hint}; tools: {', '.join(sorted(self.tools))}")
        return registered

    async def invoke(
        self,
        name: str,
        args: Mapping[str, Any] | BaseModel,
        *,
        roots: tuple[Path, ...],
        progress: ProgressReporter = _no_progress,
        parent: ToolContext | None = None,
        call_id: str | None = None,
    ) -> ToolOutput:
        """Run tool ``name`` with ``args`` (validated here unless already its input model).

        ``call_id`` (default: a new one) is the call's id in the ledger and its request id in the
        logs while the handler runs (:func:`~caelum_mcp.core.logs.request_scope`)."""
        registered = self.get(name)
        tool, supervisor = registered.tool, registered.supervisor
        if isinstance(args, tool.input_model):
            validated = args
        else:
            raw = args.model_dump(exclude_unset=True) if isinstance(args, BaseModel) else args
            validated = validate_arguments(tool.input_model, raw)
        depth = parent.depth + 1 if parent is not None else 0
        if depth > MAX_CALL_DEPTH:
            raise CaelumError(f"call_tool nested deeper than {MAX_CALL_DEPTH} levels (calling {name})")
        state = self.require_state()
        call_id = call_id or uuid.uuid4().hex[:16]
        ctx = ToolContext(
            llm=BoundLLM(state.router, call_id, embeddings=state.embeddings),
            limits=state.config.tools,
            roots=roots,
            state_dir=self.state_dir(state, supervisor),
            cache=state.cache,
            progress=progress,
            pool_admin=state.pool_admin if supervisor.pool_admin else None,
            settings=self.settings_of(state, supervisor),
            call_id=call_id,
            depth=depth,
            caller=self._call_child,
            state=self._supervisor_states.get(supervisor.name),
        )
        ledger = state.ledger
        ledger.start_tool_call(call_id, name, parent_id=parent.call_id if parent is not None else None)
        started = time.perf_counter()
        outcome, error = "error", None
        try:
            with request_scope(call_id):
                result: ToolOutput = await tool.handler(validated, ctx)
            outcome = "ok"
            return result
        except anyio.get_cancelled_exc_class():
            outcome = "cancelled"
            raise
        except CaelumError as exc:
            error = str(exc)
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            ledger.finish_tool_call(call_id, seconds=time.perf_counter() - started, outcome=outcome, error=error)

    async def _call_child(self, name: str, args: Mapping[str, Any] | BaseModel, parent: ToolContext) -> ToolOutput:
        async def forward(progress: float, total: float | None, message: str) -> None:
            await parent.note(f"{name}: {message}")

        return await self.invoke(name, args, roots=parent.roots, progress=forward, parent=parent)

    def budget_for(self, name: str, args: BaseModel | None = None) -> int:
        """The token budget of ``name`` 's result: the configured default, raised by the tool for
        this call if it asks, never above the hard cap."""
        tool = self.get(name).tool
        budget = self.require_state().config.server.result_tokens
        if tool.result_tokens is not None and args is not None:
            wanted = tool.result_tokens(args)
            if wanted:
                budget = max(budget, wanted)
        return min(budget, RESULT_TOKENS_CAP)

    def fit(self, name: str, result: ToolOutput, budget_tokens: int) -> dict[str, Any]:
        """``result`` as JSON data, secrets redacted, nested null fields and float noise dropped
        (:func:`without_optional_nulls`, :func:`~caelum_mcp.engine.budget.round_floats`), within
        ``budget_tokens``; what was cut is in ``omitted`` and ``more`` (both left out when nothing
        was cut)."""
        tool = self.get(name).tool
        data = round_floats(without_optional_nulls(result, redact_all(result.model_dump(mode="json"))))
        data.pop("omitted", None)
        data.pop("more", None)
        fitted = fit_to_budget(data, max(200, budget_tokens - _NOTE_TOKENS))
        if not fitted.omitted:
            return fitted.data
        more = tool.more_hint or "ask for less"
        note = f"result cut to its budget of about {budget_tokens} tokens; to see more, {more}"
        return {**fitted.data, "omitted": dict(fitted.omitted), "more": note}

    # catalog -----------------------------------------------------------------------------------

    def catalog(self) -> list[SupervisorInfo]:
        """Every supervisor with its external and internal tools (``caelum://supervisors``)."""
        return [
            SupervisorInfo(
                name=s.name,
                description=s.description,
                external_tools=[
                    ToolInfo(
                        name=r.tool.name, title=r.tool.title, read_only=r.tool.read_only, destructive=r.tool.destructive
                    )
                    for r in self.tools.values()
                    if r.supervisor is s
                ],
                internal_tools=[InternalToolInfo(name=t.name, description=t.summary) for t in s.internal_tools()],
            )
            for s in self.supervisors
        ]


def without_optional_nulls(value: Any, data: Any, *, top: bool = True) -> Any:
    """``data`` (``value`` dumped as JSON data) without the null fields the output schema lets it
    leave out below its top level: a field of a nested model that is None and has a default. Such
    nulls repeat in every item of a list (a 40-column profile carried 160); the top level keeps
    every field, so a client reads ``out["llm"]`` as before. A required null stays (the result
    would fail its schema), and so does a null item of a list (a row's empty cell) or of a plain
    dict. ``data`` is changed in place and returned."""
    if isinstance(value, BaseModel) and isinstance(data, dict):
        for name, info in type(value).model_fields.items():
            if name not in data:
                continue
            if data[name] is None and not top and not info.is_required():
                del data[name]
            else:
                without_optional_nulls(getattr(value, name, None), data[name], top=False)
    elif isinstance(value, list | tuple) and isinstance(data, list):
        for item, dumped in zip(value, data, strict=False):
            without_optional_nulls(item, dumped, top=False)
    elif isinstance(value, dict) and isinstance(data, dict):
        for key, item in value.items():
            if isinstance(key, str) and key in data:
                without_optional_nulls(item, data[key], top=False)
    return data


# arguments ----------------------------------------------------------------------------------------


def validate_arguments(input_model: type[BaseModel], raw: Mapping[str, Any]) -> BaseModel:
    """Validate a tool call's arguments against ``input_model``; a :class:`ToolInputError` names
    each bad one in one line (unknown ones with a did-you-mean)."""
    known = set(input_model.model_fields)
    unknown = sorted(set(raw) - known)
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1)
            hints.append(f"`{name[:80]}`" + (f" (did you mean `{close[0]}`?)" if close else ""))
        raise ToolInputError(
            f"unknown argument {', '.join(hints)}; this tool takes: {', '.join(input_model.model_fields)}"
        )
    data = {k: _pre_parse(input_model.model_fields[k], v) for k, v in raw.items()}
    for name, value in data.items():
        problem = _unusable_text(value)
        if problem:
            raise ToolInputError(f"invalid arguments: {name}: {problem}")
    try:
        return input_model.model_validate(data)
    except ValidationError as exc:
        raise ToolInputError(_validation_message(exc)) from None
    except RecursionError:
        raise ToolInputError("invalid arguments: nested too deeply") from None


MAX_NESTING = 64


def _unusable_text(value: Any, depth: int = 0) -> str | None:
    """Why ``value`` (a tool argument, as JSON data) cannot be used as text, or None.

    No tool takes a NUL byte or a lone surrogate (half of a UTF-16 pair, which JSON can carry):
    paths, revisions and subprocess arguments cannot hold them, so they are refused up front with
    the argument's name rather than failing deep inside.
    """
    if depth > MAX_NESTING:
        return f"nested more than {MAX_NESTING} levels deep"
    if isinstance(value, str):
        if "\x00" in value:
            return "contains a NUL byte"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "contains an invalid character (a lone UTF-16 surrogate)"
        return None
    if isinstance(value, dict):
        items: list[Any] = [*value.keys(), *value.values()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        return None
    for item in items:
        problem = _unusable_text(item, depth + 1)
        if problem:
            return problem
    return None


def _pre_parse(field: FieldInfo, value: Any) -> Any:
    """Some clients (Claude Desktop) send objects and arrays as JSON text: decode those, nothing else."""
    ann = field.annotation
    members = get_args(ann) if get_origin(ann) in (Union, UnionType) else (ann,)
    if not isinstance(value, str) or str in members:
        return value
    try:
        decoded = json.loads(value)
    except (ValueError, RecursionError):
        return value
    return decoded if isinstance(decoded, dict | list) else value


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "invalid arguments: " + "; ".join(parts)


__all__ = ["BoundLLM", "SupervisorInfo", "ToolRuntime", "validate_arguments"]
