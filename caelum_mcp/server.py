"""MCP wiring: one ``MCPServer`` whose lifespan owns every long-lived object.

Every supervisor's external tools are registered generically: the tool's MCP arguments are the
fields of its pydantic input model, its ``outputSchema`` is its output model, and a
:class:`~caelum_mcp.errors.CaelumError` becomes a tool error result with the message (never a
traceback). Resources ``caelum://status`` and ``caelum://ledger/summary`` give the same figures
as ``pool_status``.

Transports: stdio (``run_stdio``), and one Starlette app serving streamable HTTP at ``/mcp`` and
SSE at ``/sse`` (``http_app``), bound to loopback unless a bearer token is configured.
"""

from __future__ import annotations

import difflib
import hmac
import inspect
import json
import logging
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, TypeVar, Union, cast, get_args, get_origin
from urllib.parse import unquote, urlsplit

import anyio
from mcp import MCPDeprecationWarning
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resolve import ListRoots, Resolve
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ListRootsResult
from mcp_types.version import is_version_at_least
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from caelum_mcp import __version__
from caelum_mcp.app import AppState, open_app
from caelum_mcp.config import Config, _is_loopback
from caelum_mcp.errors import CaelumError
from caelum_mcp.status import build_status
from caelum_mcp.supervisors import SUPERVISORS
from caelum_mcp.supervisors.base import ExternalTool, ToolContext

log = logging.getLogger(__name__)
T = TypeVar("T")

INSTRUCTIONS = (
    "caelum-mcp runs LLM work on the user's own machines (Ollama / llama.cpp pool) first and falls back "
    "to Claude only when the local answer's confidence is low. Every result carries an `execution` "
    "record: where it ran, confidence, tokens and cost."
)


class StateHolder:
    """The running app state, shared by every session of one server process."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.state: AppState | None = None
        self.users = 0

    def require(self) -> AppState:
        if self.state is None:
            raise CaelumError("the server is not running (no session is open)")
        return self.state

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AppState]:
        """Borrow the state if a transport already opened it, else open it for this session."""
        if self.state is not None:
            self.users += 1
            try:
                yield self.state
            finally:
                self.users -= 1
            return
        async with open_app(self.config) as state:
            self.state = state
            self.users += 1
            try:
                yield state
            finally:
                self.users -= 1
                self.state = None


def create_server(config: Config) -> tuple[MCPServer[AppState], StateHolder]:
    holder = StateHolder(config)

    @asynccontextmanager
    async def lifespan(_: MCPServer[AppState]) -> AsyncIterator[AppState]:
        async with holder.session() as state:
            yield state

    tools = [build_tool(tool) for supervisor_cls in SUPERVISORS for tool in supervisor_cls().external_tools()]
    server: MCPServer[AppState] = MCPServer(
        "caelum-mcp", version=__version__, instructions=INSTRUCTIONS, lifespan=lifespan, tools=tools
    )

    @server.resource(
        "caelum://status", name="status", title="Pool, Claude and ledger status", mime_type="application/json"
    )
    def status_resource() -> str:
        return build_status(holder.require()).model_dump_json(indent=2)

    @server.resource(
        "caelum://ledger/summary",
        name="ledger-summary",
        title="What every LLM call cost and what running locally saved",
        mime_type="application/json",
    )
    def ledger_resource() -> str:
        return holder.require().ledger.summary().model_dump_json(indent=2)

    return server, holder


class _RawArguments(ArgModelBase):
    """Takes the client's arguments as they are, unknown ones included.

    The SDK's own argument model would ignore unknown arguments silently and report bad values in
    pydantic's multi-line format (with documentation URLs); the tool's input model validates
    instead, so every mistake comes back as one clear line naming the argument.
    """

    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True)

    def model_dump_one_level(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


# The tool parameter a resolver fills with the client's roots (never part of the input schema).
ROOTS_PARAM = "client_roots_listed"


def ask_client_roots(ctx: Context) -> ListRoots | None:
    """Resolver: ask a client that declared roots for them, on protocol 2026-07-28 and later.

    Those sessions have no mid-call back channel: the framework answers the call with an
    ``input_required`` round and the client retries with its roots. Earlier sessions get None
    here and are asked from the handler instead (:func:`client_roots`), where a client without a
    back channel leaves the configured roots alone rather than failing the call.
    """
    caps = ctx.client_capabilities
    if caps is None or caps.roots is None or ctx.protocol_version is None:
        return None
    return ListRoots() if is_version_at_least(ctx.protocol_version, "2026-07-28") else None


async def client_roots(ctx: Context, listed: ListRootsResult | None = None) -> tuple[Path, ...]:
    """The folders the client offers as MCP roots (``file://`` URIs that exist), if it declared any.

    ``listed`` is what :func:`ask_client_roots` obtained; without it the client is asked here, on
    each call that works on files, so a client that changes its roots is followed.
    """
    if listed is None:
        caps = ctx.client_capabilities
        if caps is None or caps.roots is None:
            return ()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                listed = await ctx.session.list_roots()
        except Exception as exc:  # no back channel, or the client failed: configured roots only
            log.debug("client roots unavailable: %s", exc)
            return ()
    uris = [str(root.uri) for root in listed.roots]
    return await anyio.to_thread.run_sync(_existing_dirs, uris)


def _existing_dirs(uris: list[str]) -> tuple[Path, ...]:
    paths = (Path(unquote(urlsplit(uri).path)) for uri in uris if uri.startswith("file://"))
    return tuple(p.resolve() for p in paths if p.is_dir())


def build_tool(tool: ExternalTool[Any, Any]) -> Tool:
    """The MCP tool for ``tool``: its input model's fields are the arguments, its output model the schema."""
    input_model: type[BaseModel] = tool.input_model

    async def handler(ctx: Context, **kwargs: Any) -> Any:
        listed = kwargs.pop(ROOTS_PARAM, None)
        args = validate_arguments(input_model, kwargs)
        state = cast(AppState, ctx.request_context.lifespan_context)
        roots = state.config.resolved_roots()
        if tool.uses_roots:
            roots = roots + tuple(r for r in await client_roots(ctx, listed) if r not in roots)
        progress = ProgressChannel(ctx, state.config.server.heartbeat_s, label=tool.name)
        tctx = ToolContext(router=state.router, config=state.config, roots=roots, progress=progress.report, app=state)
        try:
            return await progress.run(lambda: tool.handler(args, tctx))
        except CaelumError as exc:
            raise ToolError(str(exc)) from None

    params = [
        inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context),
    ]
    annotations: dict[str, Any] = {"ctx": Context}
    if tool.uses_roots:
        roots_annotation: Any = Annotated[ListRootsResult | None, Resolve(ask_client_roots)]
        params.append(inspect.Parameter(ROOTS_PARAM, inspect.Parameter.KEYWORD_ONLY, annotation=roots_annotation))
        annotations[ROOTS_PARAM] = roots_annotation
    for name, field in input_model.model_fields.items():
        annotation: Any = Annotated.__class_getitem__((field.annotation, *field.metadata, _describe(field)))  # type: ignore[attr-defined]
        default = inspect.Parameter.empty if field.is_required() else field.get_default(call_default_factory=True)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))
        annotations[name] = annotation
    handler.__signature__ = inspect.Signature(params, return_annotation=tool.output_model)  # type: ignore[attr-defined]
    handler.__annotations__ = {**annotations, "return": tool.output_model}
    handler.__name__ = tool.name
    handler.__doc__ = tool.description
    # The tool-level title already names it; a second copy in the annotations only costs context.
    hints = tool.annotations.model_copy(update={"title": None})
    mcp_tool = Tool.from_function(
        handler, name=tool.name, title=tool.title, description=tool.description, annotations=hints
    )
    mcp_tool.fn_metadata.arg_model = _RawArguments
    # Every client reads tools/list into its model's context: keep the schemas lean (see compact_schema).
    mcp_tool.parameters = compact_schema(mcp_tool.parameters)
    if mcp_tool.fn_metadata.output_schema is not None:
        mcp_tool.fn_metadata.output_schema = compact_schema(mcp_tool.fn_metadata.output_schema, output=True)
    return mcp_tool


def validate_arguments(input_model: type[BaseModel], raw: dict[str, Any]) -> Any:
    """Validate a tool call's arguments against ``input_model``; a :class:`ToolError` names each bad one."""
    known = set(input_model.model_fields)
    unknown = sorted(set(raw) - known)
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1)
            hints.append(f"`{name}`" + (f" (did you mean `{close[0]}`?)" if close else ""))
        raise ToolError(f"unknown argument {', '.join(hints)}; this tool takes: {', '.join(input_model.model_fields)}")
    data = {k: _pre_parse(input_model.model_fields[k], v) for k, v in raw.items()}
    try:
        return input_model.model_validate(data)
    except ValidationError as exc:
        raise ToolError(_validation_message(exc)) from None


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


# JSON-schema keywords whose values are schemas (or maps/lists of schemas); everything else is data.
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SCHEMA_ONE = ("items", "additionalProperties", "not", "contains", "propertyNames")
_SCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")


def compact_schema(schema: Any, *, output: bool = False) -> Any:
    """Drop what a model does not need from a JSON schema: ``title`` s (pydantic repeats every field
    name as a title) and, in output schemas, ``default`` s (the server always sends every field),
    descriptions, ``additionalProperties: false``, and ``anyOf [X, null]`` spelled long-hand.
    Validation keywords stay (and input descriptions): the schema accepts the same documents."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if (key == "title" and isinstance(value, str)) or (output and key == "default"):
            continue
        if output and key == "description":  # names say enough; the tool description explains the rest
            continue
        if output and key == "additionalProperties" and value is False:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            value = {name: compact_schema(sub, output=output) for name, sub in value.items()}
        elif key in _SCHEMA_ONE:
            value = compact_schema(value, output=output)
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            value = [compact_schema(sub, output=output) for sub in value]
        out[key] = value
    if output:
        out = _collapse_nullable(out)
    return out


def _collapse_nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``{"anyOf": [{"type": "string"}, {"type": "null"}]}`` -> ``{"type": ["string", "null"]}``."""
    options = schema.get("anyOf")
    if not isinstance(options, list) or len(options) != 2:
        return schema
    simple = [o for o in options if isinstance(o, dict) and set(o) == {"type"} and isinstance(o["type"], str)]
    if len(simple) != 2 or not any(o["type"] == "null" for o in simple):
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    return {**rest, "type": [o["type"] for o in simple]}


def _describe(field: FieldInfo) -> FieldInfo:
    info: FieldInfo = Field(description=field.description, examples=field.examples)
    return info


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "invalid arguments: " + "; ".join(parts)


class ProgressChannel:
    """A tool call's MCP progress: strictly increasing values, and a heartbeat while work is quiet.

    A stage that takes long (a local 30B model writing a review, a slow test suite) would otherwise
    send nothing for minutes; clients that time out on silence, and people watching, need to see
    that the call is alive. After ``heartbeat_s`` without a notification the last message is
    repeated with the time the call has been running.
    """

    def __init__(self, ctx: Context, heartbeat_s: float, label: str = "working") -> None:
        self.ctx = ctx
        self.heartbeat_s = heartbeat_s
        self.started = anyio.current_time()
        self.sent_at = self.started
        self.value = 0.0
        self.total: float | None = None
        self.message = label

    async def report(self, progress: float, total: float | None, message: str) -> None:
        """What the tool says: the message the heartbeat will repeat."""
        self.message = message or self.message
        await self._send(progress, total, message, creep=0.05)

    async def heartbeat(self) -> None:
        while True:
            await anyio.sleep(max(0.0, self.sent_at + self.heartbeat_s - anyio.current_time()))
            if anyio.current_time() - self.sent_at >= self.heartbeat_s:
                elapsed = anyio.current_time() - self.started
                # a hair forward only, so that even an hour of beats stays short of the next real step
                await self._send(
                    self.value, self.total, f"{self.message} (still working, {elapsed:.0f} s)", creep=0.001
                )

    async def _send(self, progress: float, total: float | None, message: str, *, creep: float) -> None:
        if total is None:
            value = max(progress, self.value + 1)
        else:
            value = min(total, progress)
            if value <= self.value:  # MCP progress must strictly increase: creep towards the total
                value = self.value + max((total - self.value) * creep, 1e-6)
        self.value, self.total, self.sent_at = value, total, anyio.current_time()
        try:
            await self.ctx.report_progress(value, total, message)
        except Exception:  # a client that went away must not fail the work
            log.debug("progress notification failed", exc_info=True)

    async def run(self, work: Callable[[], Awaitable[T]]) -> T:
        """``work()``'s result (or its exception, unwrapped), with the heartbeat running beside it."""
        outcome: list[T] = []
        failure: list[Exception] = []

        async def run_work(scope: anyio.CancelScope) -> None:
            try:
                outcome.append(await work())
            except Exception as exc:
                failure.append(exc)
            finally:
                scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_work, tg.cancel_scope)
            tg.start_soon(self.heartbeat)
        if failure:
            raise failure[0]
        return outcome[0]


# HTTP transports ------------------------------------------------------------------------------


class BearerAuth:
    """Reject HTTP requests without ``Authorization: Bearer <token>`` (constant-time compare)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") != "/health":
            got = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(got, self.expected):
                response = JSONResponse(
                    {"error": "unauthorized: send Authorization: Bearer <token>"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def http_app(config: Config, *, host: str, port: int, token: str | None = None) -> Starlette:
    """One app: streamable HTTP at ``/mcp``, SSE at ``/sse`` (+ ``/messages/``), ``/health``."""
    server, holder = create_server(config)
    if _is_loopback(host):
        patterns = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=patterns,
            allowed_origins=[f"http://{p}" for p in patterns],
        )
    else:
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    mcp_app = server.streamable_http_app(streamable_http_path="/mcp", transport_security=security, host=host)
    sse = server.sse_app(transport_security=security, host=host)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            holder.state = await stack.enter_async_context(open_app(config))
            await stack.enter_async_context(server.session_manager.run())
            try:
                yield
            finally:
                holder.state = None

    async def health(_: Request) -> Response:
        state = holder.state
        ok = state is not None and bool(state.pool.healthy_hosts())
        return JSONResponse({"ok": ok, "version": __version__}, status_code=200 if ok else 503)

    app = Starlette(
        routes=[
            Route("/health", health),
            *sse.routes,
            Mount("/", app=mcp_app),
        ],
        lifespan=lifespan,
    )
    if token:
        app.add_middleware(BearerAuth, token=token)
    log.info("serving MCP at http://%s:%d/mcp (SSE at /sse)", host, port)
    return app
