"""Serving the dashboard beside the stdio transport, and metrics on a port of their own.

``caelum-mcp serve --transport stdio --dashboard-port N``: the MCP client owns the process and
talks over stdin/stdout; :func:`run_stdio` serves the same state's dashboard (and ``/metrics``) on
``127.0.0.1:N`` until the client closes the session. ``[metrics] port`` serves ``/metrics`` alone,
without auth, on ``127.0.0.1`` (:func:`caelum_mcp.serving.metrics.metrics_port`), for a local scraper.
"""

from __future__ import annotations

import logging
import socket
import sys

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from caelum_mcp import __version__
from caelum_mcp.core.errors import ConfigError
from caelum_mcp.engine.config import Config
from caelum_mcp.serving.dashboard.auth import AccessGate
from caelum_mcp.serving.dashboard.routes import DashboardSite, login_page
from caelum_mcp.serving.metrics import metrics_port
from caelum_mcp.serving.server import create_server, transport_security

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def dashboard_app(site: DashboardSite) -> Starlette:
    """The dashboard and ``/metrics`` of ``site`` alone (no MCP transport), bound to loopback."""

    async def health(_: Request) -> Response:
        state = site.state()
        ok = state is not None and bool(state.pool.healthy_hosts())
        return JSONResponse({"ok": ok, "version": __version__}, status_code=200 if ok else 503)

    app = Starlette(routes=[Route("/health", health), *site.routes()])
    app.add_middleware(
        AccessGate,
        token=site.token,
        sessions=site.sessions,
        security=transport_security(LOOPBACK, site.config.server.public_names),
        login_page=login_page(),
    )
    return app


def bind_loopback(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:``port`` (0: any free port); a clear error when taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((LOOPBACK, port))
    except OSError as exc:
        sock.close()
        where = f"{LOOPBACK}:{port}"
        raise ConfigError(f"cannot serve the dashboard on {where}: {exc.strerror}; pick another port") from exc
    sock.listen(128)
    return sock


async def run_stdio(config: Config, *, dashboard_port: int | None, token: str | None = None) -> None:
    """The MCP server over stdio, with the dashboard on 127.0.0.1:``dashboard_port`` when given.

    The state opens before the session so that the dashboard and the MCP client share it; the
    dashboard stops when the client ends the session.
    """
    server, holder = create_server(config)
    if dashboard_port is None:
        with metrics_port(holder.telemetry.metrics, config.metrics.port):
            await server.run_stdio_async()
        return
    sock = bind_loopback(dashboard_port)
    async with holder.open():
        site = DashboardSite(lambda: holder.state, holder.telemetry, config, token=token)
        web = uvicorn.Server(
            uvicorn.Config(
                dashboard_app(site), log_level="warning", log_config=None, lifespan="off", timeout_graceful_shutdown=2
            )
        )
        port = sock.getsockname()[1]
        # stderr: on stdio, stdout belongs to the protocol
        print(f"caelum-mcp {__version__}: dashboard at http://{LOOPBACK}:{port}/", file=sys.stderr, flush=True)
        with metrics_port(holder.telemetry.metrics, config.metrics.port):
            async with anyio.create_task_group() as tg:
                tg.start_soon(web.serve, [sock])
                try:
                    await server.run_stdio_async()
                finally:
                    site.close_streams()  # open dashboard pages would hold the dashboard's shutdown
                    web.should_exit = True
