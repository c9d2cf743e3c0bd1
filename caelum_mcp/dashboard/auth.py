"""Who may reach the HTTP server: one gate for ``/mcp``, ``/sse``, the dashboard and ``/metrics``.

The rules (the same for every path but ``/health``):

- **DNS rebinding**: a dashboard or metrics request must name this server in ``Host`` (and
  ``Origin``, when sent), exactly as the MCP transports check it
  (:func:`caelum_mcp.server.transport_security`); otherwise 421 or 403.
- **No token configured** (a loopback bind: the config refuses any other without one): open.
- **Token configured**: ``Authorization: Bearer <token>`` on every request; a browser instead signs
  in once at ``/dashboard/login`` and gets a session cookie (``HttpOnly``, ``SameSite=Strict``)
  that opens the dashboard and ``/metrics`` (never ``/mcp``). Without either: 401, and a page
  request gets the sign-in form with it.
- **CSRF**: a dashboard POST that changes something carries ``X-CSRF-Token``: an HMAC of the
  session (or of nothing, when open) under a key made at startup, shown only inside the page.
  Requests authenticated by the bearer header need none (a browser never adds that header itself).

The gate records how a request got in under ``scope["caelum.auth"]`` (``open``, ``bearer``,
``session`` or ``public``) and the session id under ``scope["caelum.session"]``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time

from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

SESSION_COOKIE = "caelum_session"
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 1000
LOGIN_PATH = "/dashboard/login"
STATIC_PREFIX = "/dashboard/static/"
AUTH_KEY = "caelum.auth"
SESSION_KEY = "caelum.session"


def is_dashboard_path(path: str) -> bool:
    """The paths the dashboard and metrics serve (the MCP transports check their own headers)."""
    return path in ("/", "/metrics") or path == "/dashboard" or path.startswith("/dashboard/")


def is_public_path(path: str) -> bool:
    """Paths open without a token: the health probe, the sign-in form and the page's static files."""
    return path == "/health" or path == LOGIN_PATH or path.startswith(STATIC_PREFIX)


class Sessions:
    """Browser sessions of the dashboard (in memory: a restart signs everyone out) and CSRF tokens."""

    def __init__(self, ttl_s: float = SESSION_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._key = secrets.token_bytes(32)
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def create(self) -> str:
        session = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._expiry = {s: t for s, t in self._expiry.items() if t > now}
            if len(self._expiry) >= MAX_SESSIONS:  # drop the oldest rather than grow without end
                oldest = min(self._expiry, key=self._expiry.__getitem__)
                del self._expiry[oldest]
            self._expiry[session] = now + self.ttl_s
        return session

    def valid(self, session: str | None) -> bool:
        if not session:
            return False
        with self._lock:
            expiry = self._expiry.get(session)
        return expiry is not None and expiry > time.monotonic()

    def end(self, session: str | None) -> None:
        if session:
            with self._lock:
                self._expiry.pop(session, None)

    def csrf_token(self, session: str | None) -> str:
        """The token a page of ``session`` (None: an open server) must send back on POSTs."""
        return hmac.new(self._key, f"csrf:{session or '-'}".encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: str | None, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(session), token or "")


def token_matches(expected: str, given: str) -> bool:
    """Constant-time comparison of a presented token with the configured one."""
    return hmac.compare_digest(given.encode(), expected.encode())


class AccessGate:
    """ASGI middleware applying the module's rules in front of the whole HTTP app."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        sessions: Sessions,
        security: TransportSecuritySettings,
        login_page: str = "",
    ) -> None:
        self.app = app
        self.token = token or None
        self.sessions = sessions
        self.security = TransportSecurityMiddleware(security)
        self.login_page = login_page
        self._expected_header = f"Bearer {self.token}".encode() if self.token else b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        request = Request(scope)
        if is_dashboard_path(path):
            refused = await self.security.validate_request(request, is_post=False)
            if refused is not None:
                await refused(scope, receive, send)
                return
        session = request.cookies.get(SESSION_COOKIE)
        how = self._admit(path, request.headers.get("authorization", ""), session)
        if how is None:
            await self._refuse(request, scope, receive, send)
            return
        scope[AUTH_KEY] = how
        scope[SESSION_KEY] = session if how == "session" else None
        await self.app(scope, receive, send)

    def _admit(self, path: str, authorization: str, session: str | None) -> str | None:
        if self.token is None:
            return "open"
        if hmac.compare_digest(authorization.encode(), self._expected_header):
            return "bearer"
        if is_public_path(path):
            return "public"
        if is_dashboard_path(path) and self.sessions.valid(session):
            return "session"
        return None

    async def _refuse(self, request: Request, scope: Scope, receive: Receive, send: Send) -> None:
        path = request.url.path
        wants_page = request.method == "GET" and path in ("/", "/dashboard")
        if wants_page and self.login_page:
            page = HTMLResponse(self.login_page, status_code=401, headers={"WWW-Authenticate": "Bearer"})
            await page(scope, receive, send)
            return
        response = JSONResponse(
            {"error": "unauthorized: send Authorization: Bearer <token>"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)
