"""Probes against real loopback servers started here (HTTP, chunked HTTP, a server that never
answers, a closed port), command probes as real subprocesses, and the snapshot store's trends."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from caelum_mcp.tools.process import RUN_MARKER_VAR
from caelum_mcp.tools.system.checks import Thresholds
from caelum_mcp.tools.system.probes import CommandProbe, HttpProbe, TcpProbe, probe_checks, run_probes
from caelum_mcp.tools.system.snapshots import SnapshotStore, describe_trend

RESPONSES = {
    b"/ok": b'HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{"status":"ok"}',
    b"/down": b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown",
    b"/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    b"/redirect": b"HTTP/1.1 302 Found\r\nLocation: /ok\r\nContent-Length: 0\r\n\r\n",
    b"/garbage": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
}


@pytest.fixture
def http_port() -> Iterator[int]:
    """A tiny HTTP/1.1 server on an ephemeral loopback port; /slow accepts and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    server.listen(32)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            request = conn.recv(4096)
            path = request.split(b" ")[1] if b" " in request else b"/"
            if path == b"/slow":
                held.append(conn)  # keep it open, say nothing
                continue
            conn.sendall(RESPONSES.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# The probes that answer get 10 s, the 1 s default being near what a loaded machine takes to start a
# Python command or to have the one server thread reply; "slow" and "cmd-hangs" keep 0.5 s.
ANSWERS_S = 10.0


async def test_http_tcp_and_command_probes_in_parallel(http_port: int, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{http_port}"
    probes = [
        HttpProbe(name="ok", url=f"{base}/ok", body_contains='"ok"', timeout_s=ANSWERS_S),
        HttpProbe(name="down", url=f"{base}/down", timeout_s=ANSWERS_S),
        HttpProbe(name="down-expected", url=f"{base}/down", expect_status=(503,), timeout_s=ANSWERS_S),
        HttpProbe(name="chunked", url=f"{base}/chunked", body_contains="hello world", timeout_s=ANSWERS_S),
        HttpProbe(name="wrong-body", url=f"{base}/ok", body_contains="healthy", timeout_s=ANSWERS_S),
        HttpProbe(name="redirect", url=f"{base}/redirect", timeout_s=ANSWERS_S),
        HttpProbe(name="not-http", url=f"{base}/garbage", timeout_s=ANSWERS_S),
        HttpProbe(name="slow", url=f"{base}/slow", timeout_s=0.5),
        HttpProbe(name="refused", url=f"http://127.0.0.1:{closed_port()}/", on_failure="WARN"),
        TcpProbe(name="tcp", host="127.0.0.1", port=http_port, timeout_s=ANSWERS_S),
        TcpProbe(name="tcp-closed", host="127.0.0.1", port=closed_port()),
        CommandProbe(
            name="cmd", argv=(sys.executable, "-c", "print('all good')"), output_contains="good", timeout_s=ANSWERS_S
        ),
        CommandProbe(
            name="cmd-fails", argv=(sys.executable, "-c", "import sys; print('bad'); sys.exit(3)"), timeout_s=ANSWERS_S
        ),
        CommandProbe(name="cmd-missing", argv=("/nonexistent/caelum-probe",)),
        CommandProbe(name="cmd-hangs", argv=(sys.executable, "-c", "import time; time.sleep(30)"), timeout_s=0.5),
    ]
    started = time.perf_counter()
    results = await run_probes(probes, workdir=tmp_path)
    elapsed = time.perf_counter() - started
    assert elapsed < 20.0, "each probe within its own timeout: not the 30 s the hanging command sleeps"
    by_name = {r.name: r for r in results}
    assert [r.name for r in results] == [p.name for p in probes]
    assert by_name["ok"].ok and by_name["ok"].detail == "HTTP 200"
    assert not by_name["down"].ok and "HTTP 503" in by_name["down"].detail
    assert by_name["down-expected"].ok and by_name["chunked"].ok and by_name["redirect"].ok
    assert not by_name["wrong-body"].ok and "lacks 'healthy'" in by_name["wrong-body"].detail
    assert not by_name["not-http"].ok
    assert not by_name["slow"].ok and "no answer within 0.5 s" in by_name["slow"].detail
    assert by_name["slow"].latency_ms > 400  # it waited for its 0.5 s limit
    assert not by_name["refused"].ok and by_name["tcp"].ok and not by_name["tcp-closed"].ok
    assert by_name["cmd"].ok and by_name["cmd"].detail == "exit 0: all good"
    assert not by_name["cmd-fails"].ok and "exit 3 (expected 0): bad" in by_name["cmd-fails"].detail
    assert not by_name["cmd-missing"].ok and "cannot run" in by_name["cmd-missing"].detail
    assert not by_name["cmd-hangs"].ok and "no exit within" in by_name["cmd-hangs"].detail

    checks = {c.name: c for c in probe_checks(probes, results, Thresholds())}
    assert checks["probe ok"].verdict == "OK" and checks["probe down"].verdict == "CRIT"
    assert checks["probe refused"].verdict == "WARN"  # on_failure
    assert checks["probe down"].reasons == [by_name["down"].detail]
    slow_ok = probe_checks([probes[0]], [by_name["ok"]], Thresholds(probe_latency_ms=(0.0, 10_000.0)))
    assert slow_ok[0].verdict == "WARN" and "latency" in slow_ok[0].reasons[0]


SECRETS = {
    "ANTHROPIC_API_KEY": "sk-ant-api03-probe-test-0123456789",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "GITHUB_TOKEN": "ghp_probetest0123456789abcdefghijklmnopq",
    "CAELUM_CLAUDE__API_KEY": "sk-ant-api03-caelum-setting-0123456789",
    "CAELUM_SERVER__BEARER_TOKEN": "caelum-token-0123456789",
}


async def test_a_command_probe_never_gets_the_servers_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe comes from a config and runs a program the server did not write: it gets the allowlist
    a project's test run gets, plus its own pass_env, never API keys or CAELUM_* settings."""
    for name, value in {**SECRETS, "PGHOST": "127.0.0.1", "UNLISTED": "x"}.items():
        monkeypatch.setenv(name, value)
    seen = tmp_path / "env.json"
    dump = f"import json, os; json.dump(dict(os.environ), open({str(seen)!r}, 'w'))"
    probe = CommandProbe(name="env", argv=(sys.executable, "-c", dump), pass_env=("PGHOST",), timeout_s=10)
    (result,) = await run_probes([probe], workdir=tmp_path)
    assert result.ok, result.detail
    env = json.loads(seen.read_text())
    assert not set(SECRETS) & set(env)
    # the one CAELUM_ name: run_command's own marker, which finds the command's descendants to kill them
    assert [n for n in env if n.upper().startswith("CAELUM_")] == [RUN_MARKER_VAR]
    assert env["PGHOST"] == "127.0.0.1" and "UNLISTED" not in env
    assert env["PATH"] == os.environ["PATH"]
    assert not any(value in json.dumps(env) for value in SECRETS.values())


def test_a_probe_may_not_ask_for_a_secret() -> None:
    with pytest.raises(ValueError, match="secrets are never passed to probes; remove ANTHROPIC_API_KEY"):
        CommandProbe(name="x", argv=("true",), pass_env=("ANTHROPIC_API_KEY",))
    with pytest.raises(ValueError, match="CAELUM_CLAUDE__API_KEY"):
        CommandProbe(name="x", argv=("true",), pass_env=("CAELUM_CLAUDE__API_KEY",))
    with pytest.raises(ValueError, match="not environment variable names"):
        CommandProbe(name="x", argv=("true",), pass_env=("A=B",))


def test_probe_config_is_validated() -> None:
    with pytest.raises(ValueError, match="not an http"):
        HttpProbe(name="x", url="ftp://example.org/")
    with pytest.raises(ValueError):
        CommandProbe(name="x", argv=())
    with pytest.raises(ValueError):
        TcpProbe(name="x", host="127.0.0.1", port=70000)


def test_snapshots_give_trends_against_yesterday(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "health.sqlite3")
    now = time.time()
    assert store.baseline(now) is None
    assert store.save({"disk /.used_pct": 71.0, "probe api.latency_ms": 40.0}, now - 86_000)
    assert not store.save({"disk /.used_pct": 72.0}, now - 85_990)  # within a minute of the last: skipped
    assert store.save({"disk /.used_pct": 80.0}, now - 7200)
    base = store.baseline(now)
    assert base is not None and base.figures["disk /.used_pct"] == 71.0
    words = base.age_words(now)
    assert words == "since yesterday"
    assert describe_trend("disk /.used_pct", 71.0, 83.0, words) == "disk / 71% → 83% since yesterday"
    assert describe_trend("disk /.used_pct", 71.0, 73.0, words) is None
    assert describe_trend("probe api.latency_ms", 40.0, 400.0, words) == "probe api 40 ms → 400 ms since yesterday"
    assert describe_trend("network.errors", 3, 10, words) == "network errors +7 since yesterday"
    # nothing from yesterday: the oldest snapshot at least an hour old
    other = SnapshotStore(tmp_path / "other.sqlite3")
    other.save({"memory.used_pct": 20.0}, now - 3 * 3600)
    base = other.baseline(now)
    assert base is not None and base.age_words(now) == "since 3 h ago"
    # old snapshots are dropped
    other.save({"memory.used_pct": 20.0}, now + 40 * 86_400)
    assert other.baseline(now + 40 * 86_400) is None
