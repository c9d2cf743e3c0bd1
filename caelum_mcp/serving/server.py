"""MCP wiring: one ``MCPServer`` whose lifespan owns every long-lived object.

Every supervisor's external tools are registered generically: a tool's MCP arguments are the
fields of its pydantic input model and its ``outputSchema`` is its output model, both compacted
to portable JSON schema (:mod:`caelum_mcp.core.schemas`). A call goes to the
:class:`~caelum_mcp.serving.runtime.ToolRuntime` (validation, the typed services, the ledger's call record),
its result is fitted to the token budget and sent once as compact JSON text plus the same data as
``structuredContent``; a :class:`~caelum_mcp.core.errors.CaelumError` becomes a tool error result with
the message (never a traceback). Resources: ``caelum://status``, ``caelum://ledger/summary`` and
``caelum://supervisors``.

Transports: stdio (``run_stdio``), and one Starlette app serving streamable HTTP at ``/mcp`` and
SSE at ``/sse`` (``http_app``), bound to loopback unless a bearer token is configured. The same app
serves the dashboard at ``/`` and Prometheus metrics at ``/metrics`` (:mod:`caelum_mcp.serving.dashboard`),
behind one gate (:class:`~caelum_mcp.serving.dashboard.auth.AccessGate`): the bearer token when one is set,
and the DNS-rebinding check for every path. Every tool call is counted by tool and outcome, and its
execution records kept for the dashboard (:class:`~caelum_mcp.serving.dashboard.telemetry.Telemetry`).
"""

from __future__ import annotations

import base64
import inspect
import logging
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast
from urllib.parse import unquote, urlsplit

import anyio
import pydantic_core
from mcp import MCPDeprecationWarning
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resolve import ListRoots, Resolve
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import CallToolResult, ContentBlock, ImageContent, ListRootsResult, TextContent, ToolAnnotations
from mcp_types.version import is_version_at_least
from pydantic import ConfigDict, Field
from pydantic.fields import FieldInfo
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from caelum_mcp import __version__
from caelum_mcp.core.errors import CaelumError
from caelum_mcp.core.logs import new_request_id
from caelum_mcp.core.redaction import redact_secrets
from caelum_mcp.core.schemas import compact_schema
from caelum_mcp.engine.config import Config
from caelum_mcp.engine.hosts import Host
from caelum_mcp.serving.app import AppState, open_app
from caelum_mcp.serving.dashboard.auth import AccessGate
from caelum_mcp.serving.dashboard.routes import DashboardSite, login_page
from caelum_mcp.serving.dashboard.telemetry import Telemetry
from caelum_mcp.serving.metrics import metrics_port
from caelum_mcp.serving.runtime import ToolRuntime, validate_arguments
from caelum_mcp.supervisors import SUPERVISORS
from caelum_mcp.supervisors.base import ExternalTool, ToolOutput

log = logging.getLogger(__name__)
T = TypeVar("T")

INSTRUCTIONS = (
    "caelum-mcp runs LLM work on the user's own machines (Ollama / llama.cpp pool) first and falls back "
    "to Claude only when the local answer's confidence is low. Every result carries an `execution` "
    "record: where it ran, confidence, tokens and cost."
)


class StateHolder:
    """The running app state and tool runtime, shared by every session of one server process."""

    def __init__(self, config: Config, runtime: ToolRuntime, extra_hosts: Sequence[Host] = ()) -> None:
        self.config = config
        self.runtime = runtime
        self.extra_hosts = tuple(extra_hosts)
        self.state: AppState | None = None
        self.users = 0
        self.telemetry = Telemetry()

    def require(self) -> AppState:
        if self.state is None:
            raise CaelumError("the server is not running (no session is open)")
        return self.state

    @asynccontextmanager
    async def open(self) -> AsyncIterator[AppState]:
        """Open the app and hand its services to the tools; close both on exit. The client's
        ``initialize`` is answered at once: the first health checks go on in the background, and
        tool calls wait for them (:func:`~caelum_mcp.serving.app.open_app`'s ``start_in_background``)."""
        opened = open_app(self.config, extra_hosts=self.extra_hosts, start_in_background=True)
        async with opened as state, self.runtime.serving(state):
            self.state = state
            try:
                with self.telemetry.watching(state):
                    yield state
            finally:
                self.state = None

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
        async with self.open() as state:
            self.users += 1
            try:
                yield state
            finally:
                self.users -= 1


def create_server(config: Config, *, extra_hosts: Sequence[Host] = ()) -> tuple[MCPServer[AppState], StateHolder]:
    """The MCP server and its state holder. ``extra_hosts`` join the configured pool hosts (an
    in-process host, e.g. a :class:`~caelum_mcp.engine.backends.scripted.ScriptedBackend` in tests)."""
    runtime = ToolRuntime([cls() for cls in SUPERVISORS])
    holder = StateHolder(config, runtime, extra_hosts)

    @asynccontextmanager
    async def lifespan(_: MCPServer[AppState]) -> AsyncIterator[AppState]:
        async with holder.session() as state:
            yield state

    tools = [build_tool(registered.tool, runtime, holder.telemetry) for registered in runtime.tools.values()]
    server: MCPServer[AppState] = MCPServer(
        "caelum-mcp", version=__version__, instructions=INSTRUCTIONS, lifespan=lifespan, tools=tools
    )

    @server.resource(
        "caelum://status", name="status", title="Pool, Claude and ledger status", mime_type="application/json"
    )
    def status_resource() -> str:
        return holder.require().pool_admin.status().model_dump_json(indent=2)

    @server.resource(
        "caelum://ledger/summary",
        name="ledger-summary",
        title="What every LLM call cost and what running locally saved",
        mime_type="application/json",
    )
    def ledger_resource() -> str:
        return holder.require().ledger.summary().model_dump_json(indent=2)

    @server.resource(
        "caelum://supervisors",
        name="supervisors",
        title="Every supervisor with its external and internal tools",
        mime_type="application/json",
    )
    def supervisors_resource() -> str:
        catalog = [info.model_dump(mode="json") for info in runtime.catalog()]
        return pydantic_core.to_json({"supervisors": catalog}, indent=2).decode()

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


def build_tool(tool: ExternalTool[Any, Any], runtime: ToolRuntime, telemetry: Telemetry | None = None) -> Tool:
    """The MCP tool for ``tool``: its input model's fields are the arguments, its output model the schema.

    ``telemetry`` hears how each call ended (``ok``, ``error``, ``internal_error``, ``cancelled``),
    under the call's request id."""
    input_model = tool.input_model

    async def handler(ctx: Context, **kwargs: Any) -> CallToolResult:
        listed = kwargs.pop(ROOTS_PARAM, None)
        state = cast(AppState, ctx.request_context.lifespan_context)
        state.first_call.set()
        roots = state.config.resolved_roots()
        if tool.uses_roots:
            roots = roots + tuple(r for r in await client_roots(ctx, listed) if r not in roots)
        progress = ProgressChannel(ctx, state.config.server.heartbeat_s, label=tool.name)
        call_id, started, outcome, result = new_request_id(), time.perf_counter(), "cancelled", None
        try:
            args = validate_arguments(input_model, kwargs)

            async def work() -> ToolOutput:
                if not state.ready.is_set():  # the first health checks (STARTUP_PROBE_WAIT_S at most), the model
                    waiting = "the embedded model to load" if state.loading_models else "the hosts' first health checks"
                    await progress.report(0, None, f"waiting for {waiting}")
                    await state.ready.wait()
                return await runtime.invoke(tool.name, args, roots=roots, progress=progress.report, call_id=call_id)

            result = await progress.run(work)
            data = runtime.fit(tool.name, result, runtime.budget_for(tool.name, args))
            outcome = "ok"
        except CaelumError as exc:
            outcome = "error"
            raise ToolError(error_text(str(exc))) from None
        except Exception as exc:  # a bug, not bad input: the log gets the traceback, the client a reason
            outcome = "internal_error"
            log.exception("tool %s failed unexpectedly", tool.name, extra={"request_id": call_id})
            raise ToolError(
                f"{tool.name} failed with an internal error ({type(exc).__name__}); the server log has the "
                "details. Please report it."
            ) from None
        finally:  # "cancelled" stays when neither branch ran: the call was cancelled
            if telemetry is not None:
                telemetry.tool_call_finished(tool.name, call_id, outcome, time.perf_counter() - started, result)
        text = pydantic_core.to_json(data).decode()
        content: list[ContentBlock] = [TextContent(type="text", text=text)]
        content += [
            ImageContent(type="image", data=base64.b64encode(image.data).decode(), mime_type=image.mime_type)
            for image in result.images
        ]
        return CallToolResult(content=content, structured_content=data)

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
    hints = ToolAnnotations(
        read_only_hint=tool.read_only,
        destructive_hint=tool.destructive,
        idempotent_hint=tool.idempotent,
        open_world_hint=tool.open_world,
    )
    mcp_tool = Tool.from_function(
        handler, name=tool.name, title=tool.title, description=tool.description, annotations=hints
    )
    mcp_tool.fn_metadata.arg_model = _RawArguments
    # Every client reads tools/list into its model's context: keep the schemas lean and portable.
    mcp_tool.parameters = compact_schema(mcp_tool.parameters)
    if mcp_tool.fn_metadata.output_schema is not None:
        mcp_tool.fn_metadata.output_schema = compact_schema(mcp_tool.fn_metadata.output_schema, output=True)
    return mcp_tool


MAX_ERROR_CHARS = 2000


def error_text(message: str) -> str:
    """A tool error as the client sees it: secrets redacted, and never longer than a screenful
    (inputs echoed inside are cut where they are raised; this bounds the whole)."""
    message = redact_secrets(message)
    return message if len(message) <= MAX_ERROR_CHARS else message[:MAX_ERROR_CHARS] + " …[cut]"


def _describe(field: FieldInfo) -> FieldInfo:
    info: FieldInfo = Field(description=field.description, examples=field.examples)
    return info


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


WILDCARD_BINDS = {"0.0.0.0", "::", ""}  # noqa: S104 - names, not a bind


def transport_security(bind: str, public_names: Sequence[str] = ()) -> TransportSecuritySettings:
    """DNS-rebinding protection: requests must name this server in ``Host`` (and ``Origin``): a
    loopback name, the bind address, or one of ``public_names``. A wildcard bind with no public
    names cannot know its own names, so it accepts any (it needs a bearer token anyway)."""
    if bind in WILDCARD_BINDS and not public_names:
        log.warning("bound to %r with no [server] public_names: any Host header is accepted", bind)
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    names = ["127.0.0.1", "localhost", "[::1]"]
    if bind not in WILDCARD_BINDS:
        names.append(f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind)
    names += [n for n in public_names if n not in names]
    hosts = [pattern for name in dict.fromkeys(names) for pattern in (name, f"{name}:*")]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=[f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")],
    )


def http_app(
    config: Config, *, host: str, port: int, token: str | None = None, extra_hosts: Sequence[Host] = ()
) -> Starlette:
    """One app: streamable HTTP at ``/mcp``, SSE at ``/sse`` (+ ``/messages/``), ``/health``, the
    dashboard at ``/`` and ``/dashboard``, metrics at ``/metrics``; every path but ``/health`` (and
    the dashboard's sign-in form and static files) needs ``token`` when one is given.
    ``extra_hosts`` join the pool (see :func:`create_server`)."""
    server, holder = create_server(config, extra_hosts=extra_hosts)
    security = transport_security(host, config.server.public_names)
    mcp_app = server.streamable_http_app(streamable_http_path="/mcp", transport_security=security, host=host)
    sse = server.sse_app(transport_security=security, host=host)
    site = DashboardSite(lambda: holder.state, holder.telemetry, config, token=token)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(holder.open())
            await stack.enter_async_context(server.session_manager.run())
            stack.enter_context(metrics_port(holder.telemetry.metrics, config.metrics.port))
            yield

    async def health(_: Request) -> Response:
        state = holder.state
        ok = state is not None and bool(state.pool.healthy_hosts())
        return JSONResponse({"ok": ok, "version": __version__}, status_code=200 if ok else 503)

    app = Starlette(
        routes=[
            Route("/health", health),
            *site.routes(),
            *sse.routes,
            Mount("/", app=mcp_app),
        ],
        lifespan=lifespan,
    )
    login = login_page() if token and config.dashboard.enabled else ""
    app.add_middleware(AccessGate, token=token, sessions=site.sessions, security=security, login_page=login)
    app.state.dashboard = site  # the runner ends its event streams when a shutdown begins
    log.info("serving MCP at http://%s:%d/mcp (SSE at /sse)", host, port)
    return app
