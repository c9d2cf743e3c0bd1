"""Who may reach the dashboard and the metrics: the bearer token, the sign-in cookie, CSRF on the
host switch, and the DNS-rebinding check, against the real HTTP app on loopback.

An off-loopback bind is refused at config load without a token (so "off loopback" means "a token
is configured"); these servers bind 127.0.0.1 with and without one, as tests talk only to 127.0.0.1.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from caelum_mcp.core.errors import ConfigError
from caelum_mcp.engine.config import load_config
from caelum_mcp.serving.dashboard.auth import FREE_FAILURES, SESSION_COOKIE, FailedAuthThrottle

from .dashboard_server import serving, two_hosts

TOKEN = "dashboard-token-0b7e5f3c9d2a4e61"
PATHS = ("/", "/dashboard", "/dashboard/api/snapshot", "/dashboard/events", "/metrics")


def csrf_of(page: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', page)
    assert match, "the page carries its CSRF token"
    return match.group(1)


def test_an_off_loopback_bind_without_a_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="requires a bearer token"):
        load_config(None, environ={}, overrides={"server.host": "0.0.0.0", "implicit_ollama": False})


async def test_without_the_token_everything_but_the_sign_in_form_is_401(tmp_path: Path) -> None:
    async with serving(tmp_path, two_hosts(), token=TOKEN) as served, httpx2.AsyncClient(base_url=served.base) as http:
        for path in PATHS:
            refused = await http.get(path)
            assert refused.status_code == 401, path
            assert TOKEN not in refused.text
        page = await http.get("/", headers={"accept": "text/html"})
        assert '<form class="card login-form" method="post" action="/dashboard/login">' in page.text  # how to sign in
        wrong = await http.get("/metrics", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert (await http.get("/dashboard/static/app.css")).status_code == 200  # no data in there
        assert (await http.get("/dashboard/login")).status_code == 200
        assert (await http.get("/health")).status_code == 200

        bearer = {"authorization": f"Bearer {TOKEN}"}
        for path in ("/", "/dashboard/api/snapshot", "/metrics"):
            assert (await http.get(path, headers=bearer)).status_code == 200, path
        metrics = await http.get("/metrics", headers=bearer)
        assert "caelum_host_up" in metrics.text


@pytest.mark.slow  # over a second: kept out of make test-fast
async def test_signing_in_sets_a_same_site_cookie_that_opens_the_dashboard_not_mcp(tmp_path: Path) -> None:
    async with serving(tmp_path, two_hosts(), token=TOKEN) as served, httpx2.AsyncClient(base_url=served.base) as http:
        bad = await http.post("/dashboard/login", data={"token": "guess"})
        assert bad.status_code == 401 and "does not match" in bad.text
        assert SESSION_COOKIE not in bad.headers.get("set-cookie", "")

        good = await http.post("/dashboard/login", data={"token": TOKEN})
        assert good.status_code == 303 and good.headers["location"] == "/"
        cookie = good.headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}=") and TOKEN not in cookie
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie

        page = await http.get("/")  # the client keeps the cookie
        assert page.status_code == 200 and 'content="true"' in page.text  # signed in: a sign-out button
        assert (await http.get("/metrics")).status_code == 200
        assert (await http.get("/dashboard/api/snapshot")).json()["hosts"][0]["status"]["name"] == "gpu-a"
        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        }
        mcp_headers = {"accept": "application/json, text/event-stream"}
        assert (await http.post("/mcp", json=initialize, headers=mcp_headers)).status_code == 401  # cookie != token

        # the session's CSRF token works for its own POSTs, and signing out ends the session
        csrf = csrf_of(page.text)
        off = await http.post(
            "/dashboard/api/hosts/gpu-b/enabled", json={"enabled": False}, headers={"x-csrf-token": csrf}
        )
        assert off.status_code == 200 and off.json()["enabled"] is False
        assert (await http.post("/dashboard/logout", headers={"x-csrf-token": csrf})).status_code == 200
        assert (await http.get("/dashboard/api/snapshot")).status_code == 401

    # and MCP with the token still works alongside
    async with serving(tmp_path / "again", two_hosts(), token=TOKEN) as served:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as http,
            Client(streamable_http_client(served.mcp, http_client=http)) as client,
        ):
            assert "delegate_task" in {t.name for t in (await client.list_tools()).tools}


async def test_the_host_switch_needs_the_pages_csrf_token(tmp_path: Path) -> None:
    async with serving(tmp_path, two_hosts()) as served, httpx2.AsyncClient(base_url=served.base) as http:
        url = "/dashboard/api/hosts/gpu-b/enabled"
        missing = await http.post(url, json={"enabled": False})
        assert missing.status_code == 403 and "CSRF" in missing.text
        wrong = await http.post(url, json={"enabled": False}, headers={"x-csrf-token": "0" * 64})
        assert wrong.status_code == 403
        snapshot = (await http.get("/dashboard/api/snapshot")).json()
        assert all(h["status"]["enabled"] for h in snapshot["hosts"])  # nothing changed

        csrf = csrf_of((await http.get("/")).text)
        as_form = await http.post(url, data={"enabled": "false"}, headers={"x-csrf-token": csrf})
        assert as_form.status_code == 415  # a cross-site form cannot send JSON
        done = await http.post(url, json={"enabled": False}, headers={"x-csrf-token": csrf})
        assert done.status_code == 200 and done.json()["name"] == "gpu-b" and done.json()["enabled"] is False
        unknown = await http.post(
            "/dashboard/api/hosts/nope/enabled", json={"enabled": True}, headers={"x-csrf-token": csrf}
        )
        assert unknown.status_code == 404 and "no host named" in unknown.text


async def test_a_foreign_host_or_origin_is_refused_on_every_dashboard_path(tmp_path: Path) -> None:
    async with serving(tmp_path, two_hosts()) as served, httpx2.AsyncClient(base_url=served.base) as http:
        port = served.base.rsplit(":", 1)[1]
        for path in PATHS:
            assert (await http.get(path, headers={"host": f"evil.example:{port}"})).status_code == 421, path
            assert (await http.get(path, headers={"origin": "http://evil.example"})).status_code == 403, path
        csrf = csrf_of((await http.get("/")).text)
        rebound = await http.post(
            "/dashboard/api/hosts/gpu-b/enabled",
            json={"enabled": False},
            headers={"x-csrf-token": csrf, "origin": "http://evil.example"},
        )
        assert rebound.status_code == 403
        page = await http.get("/", headers={"host": f"localhost:{port}"})
        assert page.status_code == 200
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("abc", "it has 3 characters, under 32"),
        ("a" * 64, "repeat too much"),
        ("passwordpasswordpasswordpassword", "repeat too much"),
        ("16 random bytes as hex", "repeat too much"),  # 128 bits at most: not 32 bytes
    ],
    ids=["3 chars", "one letter", "a word repeated", "token_hex(16)"],
)
def test_an_off_loopback_bind_with_a_weak_token_is_refused_saying_how_to_make_one(token: str, why: str) -> None:
    if token == "16 random bytes as hex":
        token = secrets.token_hex(16)
    with pytest.raises(ConfigError) as info:
        load_config(
            None,
            environ={"DASHBOARD_TEST_TOKEN": token},
            overrides={
                "server.host": "0.0.0.0",
                "server.bearer_token_env": "DASHBOARD_TEST_TOKEN",
                "implicit_ollama": False,
            },
        )
    message = str(info.value)
    assert why in message and "too weak" in message and "$DASHBOARD_TEST_TOKEN" in message
    assert "secrets.token_urlsafe(32)" in message and "\n" not in message
    assert token not in message


@pytest.mark.parametrize("make", [secrets.token_urlsafe, secrets.token_hex])
def test_an_off_loopback_bind_with_32_random_bytes_starts(make: Callable[[int], str]) -> None:
    token = make(32)
    config = load_config(
        None,
        environ={"DASHBOARD_TEST_TOKEN": token},
        overrides={
            "server.host": "0.0.0.0",
            "server.bearer_token_env": "DASHBOARD_TEST_TOKEN",
            "implicit_ollama": False,
        },
    )
    assert config.server.host == "0.0.0.0"


def test_the_throttle_doubles_the_wait_per_address_and_forgets_after_success() -> None:
    now = [1000.0]
    throttle = FailedAuthThrottle(free_failures=2, first_wait_s=1.0, max_wait_s=4.0, clock=lambda: now[0])
    for _ in range(2):
        assert throttle.retry_after("client-a") is None
        throttle.failed("client-a")
    assert throttle.retry_after("client-a") is None  # the free ones cost nothing
    waits = []
    for _ in range(4):
        throttle.failed("client-a")
        waits.append(throttle.retry_after("client-a"))
    assert waits == [1.0, 2.0, 4.0, 4.0]  # doubling, capped
    assert throttle.retry_after("client-b") is None  # another address is not held up
    now[0] += 4.0
    assert throttle.retry_after("client-a") is None
    throttle.succeeded("client-a")
    throttle.failed("client-a")
    assert throttle.retry_after("client-a") is None  # a success started it over


@pytest.mark.slow  # waits out a one-second Retry-After
async def test_parallel_wrong_tokens_are_throttled_with_429_and_retry_after(tmp_path: Path) -> None:
    async with serving(tmp_path, two_hosts(), token=TOKEN) as served, httpx2.AsyncClient(base_url=served.base) as http:
        statuses: list[httpx2.Response] = []

        async def guess(n: int) -> None:
            statuses.append(await http.get("/metrics", headers={"authorization": f"Bearer guess-{n}"}))

        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(guess, n)
        codes = sorted(r.status_code for r in statuses)
        # the free failures and the one that started the wait were compared; the rest were not
        assert codes == [401] * (FREE_FAILURES + 1) + [429] * (19 - FREE_FAILURES), codes
        limited = next(r for r in statuses if r.status_code == 429)
        wait = int(limited.headers["retry-after"])
        assert wait >= 1 and "try again in" in limited.text

        bearer = {"authorization": f"Bearer {TOKEN}"}
        assert (await http.get("/metrics", headers=bearer)).status_code == 429  # not even compared while waiting
        mcp = await http.post("/mcp", json={}, headers={**bearer, "accept": "application/json, text/event-stream"})
        assert mcp.status_code == 429 and mcp.headers["retry-after"]  # one gate for every path
        assert (await http.get("/health", headers=bearer)).status_code == 200  # the open paths stay open
        signing_in = await http.post("/dashboard/login", data={"token": TOKEN})
        assert signing_in.status_code == 429 and signing_in.headers["retry-after"]

        await anyio.sleep(wait)
        assert (await http.get("/metrics", headers=bearer)).status_code == 200  # and that starts it over
        assert (await http.get("/metrics", headers={"authorization": "Bearer nope"})).status_code == 401


@pytest.mark.slow  # every wrong sign-in still costs half a second
async def test_parallel_wrong_sign_ins_are_throttled(tmp_path: Path) -> None:
    async with serving(tmp_path, two_hosts(), token=TOKEN) as served, httpx2.AsyncClient(base_url=served.base) as http:
        statuses: list[int] = []

        async def guess(n: int) -> None:
            statuses.append((await http.post("/dashboard/login", data={"token": f"guess-{n}"})).status_code)

        async with anyio.create_task_group() as tg:
            for n in range(15):
                tg.start_soon(guess, n)
        assert sorted(statuses) == [401] * (FREE_FAILURES + 1) + [429] * (14 - FREE_FAILURES), statuses
