"""Both infrastructure tools over a real stdio child and over streamable HTTP, configured from a
caelum.toml with ``[[infrastructure.probes]]`` (a loopback HTTP server started here)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from .test_infrastructure import call, http_port, write_incident  # noqa: F401 (http_port is a fixture)
from .test_mcp_http import Served, start_server
from .test_mcp_stdio import server_env

pytestmark = pytest.mark.slow
# the shared samples beside the checkout, or wherever LOGHUB_2K_DIR says (a clone elsewhere)
LOGHUB = Path(os.environ.get("LOGHUB_2K_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data" / "loghub-2k")
LOGHUB_HERE = LOGHUB.is_dir()


def write_config(tmp: Path, port: int) -> Path:
    config = tmp / "caelum.toml"
    config.write_text(
        f"""
allowed_roots = ["{tmp / "work"}"]

[infrastructure.thresholds]
disk_pct = [99.5, 99.9]

[[infrastructure.probes]]
name = "web"
kind = "http"
url = "http://127.0.0.1:{port}/ok"
body_contains = "ok"

[[infrastructure.probes]]
name = "broken"
kind = "http"
url = "http://127.0.0.1:{port}/fail"
on_failure = "WARN"

[[infrastructure.probes]]
name = "python"
kind = "command"
argv = ["{sys.executable}", "-c", "print('up')"]
output_contains = "up"
"""
    )
    return config


def prepare(tmp: Path) -> None:
    write_incident(tmp / "work" / "logs")
    if LOGHUB_HERE:
        shutil.copy(LOGHUB / "OpenSSH" / "OpenSSH_2k.log", tmp / "work" / "logs" / "auth.log")


async def exercise(client: Client) -> None:
    names = {t.name for t in (await client.list_tools()).tools}
    assert {"check_system_health", "diagnose_logs"} <= names
    health = await call(client, "check_system_health", {})
    checks = {c["name"]: c for c in health["checks"]}
    assert checks["probe web"]["verdict"] == "OK" and checks["probe python"]["verdict"] == "OK"
    assert checks["probe broken"]["verdict"] == "WARN" and "HTTP 500" in checks["probe broken"]["reasons"][0]
    assert health["verdict"] in ("WARN", "CRIT")
    logs = await call(client, "diagnose_logs", {"paths": ["logs/app.log"], "max_signatures": 5})
    assert logs["signatures"][0]["level"] in ("error", "warning") and logs["timeline"] is not None
    if LOGHUB_HERE:
        auth: dict[str, Any] = await call(client, "diagnose_logs", {"paths": ["logs/auth.log"]})
        assert auth["files"][0]["format"] == "syslog" and auth["entries"] == 2000


async def test_both_tools_over_stdio(tmp_path: Path, http_port: int) -> None:  # noqa: F811
    prepare(tmp_path)
    config = write_config(tmp_path, http_port)
    env = {**server_env(tmp_path), "CAELUM_EMBEDDED": "off", "CAELUM_CONFIG": str(config)}
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "caelum_mcp", "serve"], env=env, cwd=str(tmp_path)
    )
    async with Client(params) as client:
        await exercise(client)


@pytest.fixture
def http_served(tmp_path: Path, http_port: int) -> Iterator[Served]:  # noqa: F811
    prepare(tmp_path)
    config = write_config(tmp_path, http_port)
    yield from start_server(tmp_path, {"CAELUM_EMBEDDED": "off", "CAELUM_CONFIG": str(config)})


async def test_both_tools_over_streamable_http(http_served: Served) -> None:
    async with Client(http_served.mcp) as client:
        await exercise(client)
