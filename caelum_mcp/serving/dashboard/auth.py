"""Who may reach the HTTP server: one gate for ``/mcp``, ``/sse``, the dashboard and ``/metrics``.

The rules (the same for every path but ``/health``):

- **DNS rebinding**: a dashboard or metrics request must name this server in ``Host`` (and
  ``Origin``, when sent), exactly as the MCP transports check it
  (:func:`caelum_mcp.serving.server.transport_security`); otherwise 421 or 403.
- **No token configured** (a loopback bind: the config refuses any other without one): open.
- **Token configured**: ``Authorization: Bearer <token>`` on every request; a browser instead signs
  in once at ``/dashboard/login`` and gets a session cookie (``HttpOnly``, ``SameSite=Strict``)
  that opens the dashboard and ``/metrics`` (never ``/mcp``). Without either: 401, and a page
  request gets the sign-in form with it.
- **CSRF**: a dashboard POST that changes something carries ``X-CSRF-Token``: an HMAC of the
  session (or of nothing, when open) under a key made at startup, shown only inside the page.
  Requests authenticated by the bearer header need none (a browser never adds that header itself).
- **Guessing**: a wrong token (bearer header or sign-in form) counts against the client's address
  (:class:`FailedAuthThrottle`): after a few, that address waits a doubling time before its next
  try is even compared, answered 429 with ``Retry-After``. The check, the comparison and the count
  happen with no await between them, so parallel guesses are counted one by one.
- **Token strength**: a bind off loopback needs a token of at least 32 random bytes' worth
  (:func:`caelum_mcp.core.tokens.token_weakness`, which the config checks at load).

The gate records how a request got in under ``scope["caelum.auth"]`` (``open``, ``bearer``,
``session`` or ``public``) and the session id under ``scope["caelum.session"]``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections.abc import Callable

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


FREE_FAILURES = 5  # wrong tokens an address may send before it has to wait
FIRST_WAIT_S = 1.0  # the wait after the next one, doubling with each further failure
MAX_WAIT_S = 300.0
FORGET_AFTER_S = 900.0  # an address with no failure for this long starts over
MAX_ADDRESSES = 10_000


class FailedAuthThrottle:
    """Wrong tokens per client address, and how long that address must wait before its next try.

    The first FREE_FAILURES failures cost nothing (a typo, a stale token); each one after them
    makes the address wait FIRST_WAIT_S, doubling up to MAX_WAIT_S. A success starts the address
    over; so does FORGET_AFTER_S without a failure. At most MAX_ADDRESSES are remembered.
    """

    def __init__(
        self,
        *,
        free_failures: int = FREE_FAILURES,
        first_wait_s: float = FIRST_WAIT_S,
        max_wait_s: float = MAX_WAIT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.first_wait_s = first_wait_s
        self.max_wait_s = max_wait_s
        self._clock = clock
        # address -> (failures, time of the last one, waiting until)
        self._failures: dict[str, tuple[int, float, float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> float | None:
        """Seconds ``address`` must still wait before a token it sends is compared; None: it may try."""
        now = self._clock()
        with self._lock:
            entry = self._failures.get(address)
            if entry is None:
                return None
            if now - entry[1] > FORGET_AFTER_S:
                del self._failures[address]
                return None
            return entry[2] - now if entry[2] > now else None

    def failed(self, address: str) -> None:
        """Count a wrong token from ``address``."""
        now = self._clock()
        with self._lock:
            count, _, until = self._failures.pop(address, (0, now, now))
            count += 1
            if count > self.free_failures:
                until = now + min(self.first_wait_s * 2 ** (count - self.free_failures - 1), self.max_wait_s)
            if len(self._failures) >= MAX_ADDRESSES:  # forget the longest quiet rather than grow without end
                oldest = min(self._failures, key=lambda a: self._failures[a][1])
                del self._failures[oldest]
            self._failures[address] = (count, now, until)

    def succeeded(self, address: str) -> None:
        """The right token from ``address``: it starts over."""
        with self._lock:
            self._failures.pop(address, None)


def client_address(scope: Scope) -> str:
    """The peer's address as the server sees it ("" when the transport gives none)."""
    client = scope.get("client")
    return str(client[0]) if client else ""


def too_many_attempts(wait_s: float) -> JSONResponse:
    """429 for an address that must wait ``wait_s`` before its next try."""
    seconds = max(1, math.ceil(wait_s))
    return JSONResponse(
        {"error": f"too many wrong tokens from this address; try again in {seconds} s"},
        status_code=429,
        headers={"Retry-After": str(seconds)},
    )


def is_dashboard_path(path: str) -> bool:
    """The paths the dashboard and metrics serve (the MCP transports check their own headers)."""
    return path in ("/", "/metrics") or path == "/dashboard" or path.startswith("/dashboard/")


def is_public_path(path: str) -> bool:
    """Paths open without a token: the health probe, the sign-in form and the page's static files."""
    return path == "/health" or path == LOGIN_PATH or path.startswith(STATIC_PREFIX)


class Sessions:
    """Browser sessions of the dashboard (in memory: a restart signs everyone out), CSRF tokens, and
    the count of wrong tokens per address that the gate and the sign-in form share."""

    def __init__(self, ttl_s: float = SESSION_TTL_S, throttle: FailedAuthThrottle | None = None) -> None:
        self.ttl_s = ttl_s
        self.throttle = throttle or FailedAuthThrottle()
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
        authorization = request.headers.get("authorization", "")
        address = client_address(scope)
        throttle = self.sessions.throttle
        # From here to the count below nothing awaits: parallel guesses are checked one at a time.
        wait = throttle.retry_after(address) if self.token and authorization else None
        if wait is not None:
            if not is_public_path(path):
                await too_many_attempts(wait)(scope, receive, send)
                return
            authorization = ""  # a waiting address's token is not compared, even on an open path
        how = self._admit(path, authorization, session)
        if how is None:
            if authorization:
                throttle.failed(address)
            await self._refuse(request, scope, receive, send)
            return
        if how == "bearer":
            throttle.succeeded(address)
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
