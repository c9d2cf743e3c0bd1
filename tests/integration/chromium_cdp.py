"""A headless Chromium for tests, driven over the Chrome DevTools Protocol (no browser download).

The browser is the operating system's (Debian's ``chromium`` package: ``apt-get install -y
chromium``; ``.ci/run`` installs it). It is started with a fresh profile and
``--remote-debugging-port=0``; the port it picked is read from ``DevToolsActivePort`` in the
profile, and one page is attached over the browser's websocket in flattened-session mode. The page
records what a test wants to assert on: uncaught exceptions, console errors (CSP violations
included) and every URL the page requested.

    async with open_page(tmp_path / "profile") as page:
        await page.goto("http://127.0.0.1:8765/")
        await page.wait_for("document.querySelectorAll('tr').length > 2")
        await page.screenshot(tmp_path / "page.png")
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from websockets.asyncio.client import ClientConnection, connect

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
)


def find_chromium() -> str:
    """The browser's path, or a skip saying what to install."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        "no Chromium on this machine: install the OS package (Debian: apt-get install -y chromium; .ci/run does); "
        "browser downloads do not work offline"
    )


class CDPError(RuntimeError):
    pass


class Page:
    """One browser page: commands, the events it sent, and what the tests check."""

    def __init__(self, ws: ClientConnection, session: str) -> None:
        self.ws = ws
        self.session = session
        self._ids = itertools.count(1)
        self._pending: dict[int, anyio.Event] = {}
        self._results: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.exceptions: list[str] = []
        self.console_errors: list[str] = []
        self.requested: list[str] = []
        self._loaded = anyio.Event()

    async def read_messages(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            if "id" in message:
                self._results[message["id"]] = message
                event = self._pending.pop(message["id"], None)
                if event is not None:
                    event.set()
                continue
            self._on_event(message.get("method", ""), message.get("params", {}))

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        self.events.append({"method": method, "params": params})
        if method == "Page.loadEventFired":
            self._loaded.set()
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.exceptions.append(details.get("exception", {}).get("description") or details.get("text", "?"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.console_errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.console_errors.append(f"{entry.get('source')}: {entry.get('text')} ({entry.get('url', '')})")
        elif method == "Network.requestWillBeSent":
            self.requested.append(params["request"]["url"])

    async def send(self, method: str, params: dict[str, Any] | None = None, *, timeout_s: float = 30) -> Any:
        call_id = next(self._ids)
        done = self._pending[call_id] = anyio.Event()
        message = {"id": call_id, "method": method, "params": params or {}, "sessionId": self.session}
        await self.ws.send(json.dumps(message))
        with anyio.fail_after(timeout_s):
            await done.wait()
        reply = self._results.pop(call_id)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def goto(self, url: str, *, timeout_s: float = 30) -> None:
        self._loaded = anyio.Event()
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CDPError(f"cannot open {url}: {result['errorText']}")
        with anyio.fail_after(timeout_s):
            await self._loaded.wait()

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in result:
            raise CDPError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, *, timeout_s: float = 15, what: str = "") -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what or expression}")
            await anyio.sleep(0.1)

    async def screenshot(self, path: Path) -> Path:
        result = await self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False})
        await anyio.Path(path).write_bytes(base64.b64decode(result["data"]))
        return path


def start_browser(args: list[str], profile: Path, log: Path) -> subprocess.Popen[bytes]:
    profile.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink)


@asynccontextmanager
async def open_page(profile: Path, *, width: int = 1360, height: int = 1000) -> AsyncIterator[Page]:
    """A page of a fresh headless Chromium, closed (with the browser) on exit."""
    executable = find_chromium()
    args = [executable, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"]
    log = profile.parent / "chromium.log"
    proc = await anyio.to_thread.run_sync(start_browser, args, profile, log)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_bytes()[-2000:].decode(errors="replace")
                raise AssertionError(f"Chromium did not start (exit {proc.poll()}):\n{tail}")
            await anyio.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        async with connect(f"ws://127.0.0.1:{port}{path}", max_size=None) as ws:
            await ws.send(json.dumps({"id": 1, "method": "Target.createTarget", "params": {"url": "about:blank"}}))
            target = json.loads(await ws.recv())["result"]["targetId"]
            attach = {"targetId": target, "flatten": True}
            await ws.send(json.dumps({"id": 2, "method": "Target.attachToTarget", "params": attach}))
            session = None
            while session is None:  # an attachedToTarget event may come first
                message = json.loads(await ws.recv())
                if message.get("id") == 2:
                    session = message["result"]["sessionId"]
            page = Page(ws, session)
            async with anyio.create_task_group() as tg:
                tg.start_soon(page.read_messages)
                for domain in ("Page", "Runtime", "Log", "Network"):
                    await page.send(f"{domain}.enable")
                metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
                await page.send("Emulation.setDeviceMetricsOverride", metrics)
                try:
                    yield page
                finally:
                    tg.cancel_scope.cancel()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
