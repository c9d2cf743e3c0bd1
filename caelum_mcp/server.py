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

import hmac
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Annotated, Any, cast

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import BaseModel, Field, ValidationError
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

    server: MCPServer[AppState] = MCPServer(
        "caelum-mcp", version=__version__, instructions=INSTRUCTIONS, lifespan=lifespan
    )
    for supervisor_cls in SUPERVISORS:
        for tool in supervisor_cls().external_tools():
            register_tool(server, tool, holder)

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


def register_tool(server: MCPServer[AppState], tool: ExternalTool[Any, Any], holder: StateHolder) -> None:
    """Expose ``tool`` with its input model's fields as the MCP arguments."""
    input_model: type[BaseModel] = tool.input_model

    async def handler(ctx: Context, **kwargs: Any) -> Any:
        try:
            args = input_model.model_validate(kwargs)
        except ValidationError as exc:
            raise ToolError(_validation_message(exc)) from None
        state = cast(AppState, ctx.request_context.lifespan_context)
        tctx = ToolContext(
            router=state.router,
            config=state.config,
            roots=state.config.resolved_roots(),
            progress=_progress_reporter(ctx),
            app=state,
        )
        try:
            return await tool.handler(args, tctx)
        except CaelumError as exc:
            raise ToolError(str(exc)) from None

    params = [
        inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context),
    ]
    annotations: dict[str, Any] = {"ctx": Context}
    for name, field in input_model.model_fields.items():
        annotation: Any = Annotated.__class_getitem__((field.annotation, *field.metadata, _describe(field)))  # type: ignore[attr-defined]
        default = inspect.Parameter.empty if field.is_required() else field.get_default(call_default_factory=True)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))
        annotations[name] = annotation
    handler.__signature__ = inspect.Signature(params, return_annotation=tool.output_model)  # type: ignore[attr-defined]
    handler.__annotations__ = {**annotations, "return": tool.output_model}
    handler.__name__ = tool.name
    handler.__doc__ = tool.description
    server.add_tool(
        handler, name=tool.name, title=tool.title, description=tool.description, annotations=tool.annotations
    )


def _describe(field: FieldInfo) -> FieldInfo:
    info: FieldInfo = Field(description=field.description, examples=field.examples)
    return info


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "invalid arguments: " + "; ".join(parts)


def _progress_reporter(ctx: Context) -> Callable[[float, float | None, str], Awaitable[None]]:
    """MCP progress must increase; stages that do not count steps still move it forward."""
    last = 0.0

    async def report(progress: float, total: float | None, message: str) -> None:
        nonlocal last
        value = max(progress, last + 1) if total is None else min(total, max(progress, last))
        last = value
        try:
            await ctx.report_progress(value, total, message)
        except Exception:  # a client that went away must not fail the work
            log.debug("progress notification failed", exc_info=True)

    return report


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
