"""The dashboard's HTTP surface: the page, its static files, its JSON, its live stream, the host
switch, the sign-in form, and ``/metrics``.

=============================================  ====================================================
``GET /`` and ``/dashboard``                    the page (HTML; the JS and CSS come from the package)
``GET /dashboard/static/<file>``                ``app.js``, ``app.css`` (no CDN, no build step)
``GET /dashboard/api/snapshot``                 everything the page shows (:class:`.Snapshot`)
``GET /dashboard/api/calls/<id>``               one tool call's execution record (:class:`.CallDetail`)
``GET /dashboard/events``                       SSE: a ``snapshot`` event on every change, at least
                                                every :data:`HEARTBEAT_S` seconds
``POST /dashboard/api/hosts/<name>/enabled``    ``{"enabled": bool}`` with ``X-CSRF-Token``
``GET|POST /dashboard/login``, ``POST …/logout``  the session cookie, when a bearer token is set
``GET /metrics``                                Prometheus text format
=============================================  ====================================================

Who may reach them is :class:`~caelum_mcp.serving.dashboard.auth.AccessGate`'s business; the handlers only
check the CSRF token. Every page carries a strict Content-Security-Policy (scripts and styles from
this server only, no inline script).
"""

from __future__ import annotations

import html
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from caelum_mcp import __version__
from caelum_mcp.core.errors import CaelumError
from caelum_mcp.engine.config import Config
from caelum_mcp.serving.app import AppState
from caelum_mcp.serving.dashboard.auth import SESSION_COOKIE, SESSION_KEY, Sessions, client_address, token_matches
from caelum_mcp.serving.dashboard.snapshot import as_json, build_call_detail, build_snapshot
from caelum_mcp.serving.dashboard.telemetry import Telemetry
from caelum_mcp.serving.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0  # in-flight counts and breaker states change without a ledger row: refresh anyway
COALESCE_S = 0.15  # a burst of ledger rows becomes one update
SNAPSHOT_TTL_S = 1.0  # pages that ask together share one snapshot, unless the ledger changed
STREAM_LIFETIME_S = 600.0  # then the browser reconnects by itself (EventSource), and shutdowns never wait long
FAILED_LOGIN_DELAY_S = 0.5

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _static_text(name: str) -> str:
    return resources.files("caelum_mcp.serving.dashboard").joinpath("static", name).read_text(encoding="utf-8")


def login_page(message: str = "") -> str:
    """The sign-in form (static/login.html) with ``message`` shown above it."""
    note = f'<p class="login-error">{html.escape(message)}</p>' if message else ""
    return _static_text("login.html").replace("{{message}}", note).replace("{{version}}", __version__)


class DashboardSite:
    """The dashboard and metrics routes of one server, over its state and telemetry."""

    def __init__(
        self,
        state: Callable[[], AppState | None],
        telemetry: Telemetry,
        config: Config,
        *,
        token: str | None = None,
        sessions: Sessions | None = None,
    ) -> None:
        self.state = state
        self.telemetry = telemetry
        self.config = config
        self.token = token or None
        self.sessions = sessions or Sessions()
        self._page = _static_text("index.html")
        # (change version, monotonic time, data): every open page shares one snapshot a moment
        self._cached: tuple[int, float, dict[str, Any]] | None = None
        self._closing = False

    def close_streams(self) -> None:
        """End every open event stream now (the server is stopping): uvicorn waits for open
        responses before it shuts down, and a browser reconnects by itself to the next server.
        Safe to call from a signal handler."""
        self._closing = True
        self.telemetry.changes.notify()

    def routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = []
        if self.config.dashboard.enabled:
            routes += [
                Route("/", self.page, methods=["GET"]),
                Route("/dashboard", self.page, methods=["GET"]),
                Route("/dashboard/api/snapshot", self.snapshot, methods=["GET"]),
                Route("/dashboard/api/calls/{call_id}", self.call_detail, methods=["GET"]),
                Route("/dashboard/api/hosts/{name}/enabled", self.set_enabled, methods=["POST"]),
                Route("/dashboard/events", self.events, methods=["GET"]),
                Route("/dashboard/login", self.login, methods=["GET", "POST"]),
                Route("/dashboard/logout", self.logout, methods=["POST"]),
                Mount("/dashboard/static", app=StaticFiles(packages=[("caelum_mcp.serving.dashboard", "static")])),
            ]
        if self.config.metrics.enabled:
            routes.append(Route("/metrics", self.metrics, methods=["GET"]))
        return routes

    # pages ---------------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        session = request.scope.get(SESSION_KEY)
        body = (
            self._page.replace("{{csrf}}", self.sessions.csrf_token(session))
            .replace("{{version}}", html.escape(__version__))
            .replace("{{signed_in}}", "true" if session else "false")
        )
        return HTMLResponse(body, headers=SECURITY_HEADERS)

    async def login(self, request: Request) -> Response:
        if self.token is None:
            return RedirectResponse("/", status_code=303)  # nothing to sign in to
        if request.method == "GET":
            return HTMLResponse(login_page(), headers=SECURITY_HEADERS)
        form = await request.form()
        given = form.get("token")
        address = client_address(request.scope)
        throttle = self.sessions.throttle
        # No await between the check, the comparison and the count: parallel guesses count one by one.
        wait = throttle.retry_after(address)
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            page = login_page(f"Too many wrong tokens from this address; try again in {seconds} s.")
            return HTMLResponse(page, 429, headers={**SECURITY_HEADERS, "Retry-After": str(seconds)})
        if not isinstance(given, str) or not token_matches(self.token, given.strip()):
            throttle.failed(address)
            await anyio.sleep(FAILED_LOGIN_DELAY_S)  # guessing costs time
            return HTMLResponse(login_page("That token does not match this server's."), 401, headers=SECURITY_HEADERS)
        throttle.succeeded(address)
        session = self.sessions.create()
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session,
            max_age=int(self.sessions.ttl_s),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    async def logout(self, request: Request) -> Response:
        session = request.scope.get(SESSION_KEY)
        if not self.sessions.csrf_ok(session, request.headers.get("x-csrf-token")):
            return _csrf_refusal()
        self.sessions.end(session)
        response = JSONResponse({"signed_out": True})
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # data ----------------------------------------------------------------------------------------

    def _running(self) -> AppState:
        state = self.state()
        if state is None or self.telemetry.history is None:
            raise CaelumError("the server is starting or stopping")
        return state

    def _snapshot_json(self) -> dict[str, Any]:
        """The snapshot, shared by the pages that ask within :data:`SNAPSHOT_TTL_S` of each other
        while nothing was recorded in between."""
        state = self._running()
        history = self.telemetry.history
        assert history is not None
        version, now = self.telemetry.changes.version, time.monotonic()
        cached = self._cached
        if cached is not None and cached[0] == version and now - cached[1] < SNAPSHOT_TTL_S:
            return cached[2]
        data = as_json(build_snapshot(state, self.telemetry, history, self.config.dashboard.recent_calls))
        self._cached = (version, now, data)
        return data

    async def snapshot(self, request: Request) -> Response:
        try:
            data = await anyio.to_thread.run_sync(self._snapshot_json)
        except CaelumError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        return JSONResponse(data, headers={"Cache-Control": "no-store"})

    async def call_detail(self, request: Request) -> Response:
        call_id = request.path_params["call_id"]
        if not (0 < len(call_id) <= 64 and call_id.isalnum()):
            return JSONResponse({"error": "a call id is up to 64 letters and digits"}, status_code=400)
        try:
            self._running()
        except CaelumError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        history = self.telemetry.history
        assert history is not None
        detail = await anyio.to_thread.run_sync(build_call_detail, self.telemetry, history, call_id)
        if detail is None:
            return JSONResponse({"error": f"no tool call {call_id} in the ledger"}, status_code=404)
        return JSONResponse(as_json(detail), headers={"Cache-Control": "no-store"})

    async def set_enabled(self, request: Request) -> Response:
        if request.scope.get("caelum.auth") != "bearer" and not self.sessions.csrf_ok(
            request.scope.get(SESSION_KEY), request.headers.get("x-csrf-token")
        ):
            return _csrf_refusal()
        if not request.headers.get("content-type", "").startswith("application/json"):
            return JSONResponse({"error": 'send JSON: {"enabled": true|false}'}, status_code=415)
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
            return JSONResponse({"error": 'send JSON: {"enabled": true|false}'}, status_code=400)
        try:
            state = self._running()
            status = await state.pool_admin.set_host_enabled(request.path_params["name"], body["enabled"])
        except CaelumError as exc:
            return JSONResponse({"error": str(exc)[:300]}, status_code=404)
        self.telemetry.changes.notify()
        return JSONResponse(status.model_dump(mode="json"))

    async def events(self, request: Request) -> Response:
        return StreamingResponse(
            self._stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def _stream(self) -> AsyncIterator[str]:
        changes = self.telemetry.changes
        yield f"retry: {int(HEARTBEAT_S * 1000)}\n\n"
        with anyio.move_on_after(STREAM_LIFETIME_S):
            while not self._closing:
                seen = changes.version
                try:
                    data = await anyio.to_thread.run_sync(self._snapshot_json)
                except CaelumError:
                    return  # the server is stopping: the browser reconnects to the next one
                yield f"event: snapshot\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
                if await changes.wait(seen, HEARTBEAT_S):
                    await anyio.sleep(COALESCE_S)

    async def metrics(self, request: Request) -> Response:
        body = await anyio.to_thread.run_sync(self.telemetry.metrics.render)
        return Response(body, media_type=CONTENT_TYPE)


def _csrf_refusal() -> Response:
    return JSONResponse({"error": "missing or wrong X-CSRF-Token: reload the dashboard and try again"}, status_code=403)
