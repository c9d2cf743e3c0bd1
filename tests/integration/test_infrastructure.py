"""The infrastructure supervisor's tools through a real MCP client session (in-process): real
psutil readings, real probes against loopback servers started here, real log files (rotated and
gzipped), and scripted model hosts where a model would answer."""

from __future__ import annotations

import gzip
import json
import os
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from caelum_mcp.core.types import ChatRequest, ModelInfo
from caelum_mcp.engine.backends.scripted import ScriptedBackend, ScriptedReply
from caelum_mcp.engine.budget import result_size
from caelum_mcp.engine.hosts import CircuitBreaker, Host
from caelum_mcp.tools.system.snapshots import SnapshotStore

from .test_development import make_server

CALM = {"cpu_pct": [1000, 1000], "load_per_cpu": [1000, 1000], "memory_pct": [1000, 1000], "disk_pct": [1000, 1000],
        "inodes_pct": [1000, 1000], "swap_pct": [1000, 1000], "temperature_c": [1000, 1000]}  # fmt: skip
SIGNATURE = re.compile(r"^(S\d+) \[", re.MULTILINE)
EXAMPLE = re.compile(r"^    (\S+):(\d+): ", re.MULTILINE)
CHECK = re.compile(r"^- (.+?) \[(?:WARN|CRIT)\]", re.MULTILINE)


def capable_model(request: ChatRequest) -> ScriptedReply:
    """What a capable model would answer to each of the supervisor's prompts, plus invented items."""
    system, user = request.messages[0].content, request.messages[-1].content
    if "health report" in system:
        first = CHECK.findall(user)[0]
        body: dict[str, Any] = {
            "summary": f"{first} is failing.",
            "actions": [{"check": first, "action": "restart it"}, {"check": "gpu 7", "action": "invented"}],
        }
    elif "log templates" in system:
        decisions = []
        for number, template in re.findall(r"^Template (\d+) \(\d+ lines\): (.*)$", user, re.MULTILINE):
            slots = [0] if template.endswith("startup succeeded") else []
            decisions.append({"template": int(number), "split_slots": slots, "same_as": -1})
        body = {"decisions": decisions}
    elif "diagnosing an incident" in system:
        blocks = re.split(r"^(?=S\d+ \[)", user, flags=re.MULTILINE)
        cited = [(SIGNATURE.match(b).group(1), EXAMPLE.findall(b)) for b in blocks if SIGNATURE.match(b)]  # type: ignore[union-attr]
        (s1, ex1), (s2, ex2) = cited[0], cited[1]
        body = {
            "summary": "The database stopped answering.",
            "hypotheses": [
                {"cause": "database outage", "signatures": [s1], "next_step": "check the db",
                 "evidence": [{"file": ex1[0][0], "line": int(ex1[0][1]), "signature": s1}]},
                {"cause": "invented line", "signatures": [s1], "next_step": "-",
                 "evidence": [{"file": ex1[0][0], "line": 99999, "signature": s1}]},
                {"cause": "wrong signature", "signatures": [s1], "next_step": "-",
                 "evidence": [{"file": ex2[0][0], "line": int(ex2[0][1]), "signature": s1}]},
            ],
        }  # fmt: skip
        assert s2 != s1
    else:
        body = {"answer": "ok"}
    return ScriptedReply(json.dumps({**body, "confidence": 0.9}), logprob=-0.05)


def gpu_host(backend: ScriptedBackend) -> Host:
    return Host(name=backend.name, backend=backend, breaker=CircuitBreaker(failure_threshold=3, cooldown_s=30))


@asynccontextmanager
async def session(tmp_path: Path, hosts: list[Host] | None = None, **overrides: Any) -> AsyncIterator[Client]:
    (tmp_path / "work").mkdir(exist_ok=True)
    server, _ = make_server(tmp_path, hosts or [], **overrides)
    async with Client(server) as client:
        yield client


async def call(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    res = await client.call_tool(tool, args)
    assert not res.is_error, res.content
    assert res.structured_content is not None
    return res.structured_content


@pytest.fixture
def http_port() -> Iterator[int]:
    """A loopback HTTP server: /ok answers, /fail answers 500."""
    server = socket.create_server(("127.0.0.1", 0))
    server.listen(64)
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                request = conn.recv(4096)
                if b" /fail" in request:
                    conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nboom")
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    server.close()


def probes(port: int, count: int, failing: int = 0) -> list[dict[str, Any]]:
    """``count`` HTTP probes of :func:`http_port`, the first ``failing`` of them on /fail. Each gets
    10 s: the default 1 s ran out on a loaded machine (one server thread answers them in turn), and
    the verdict then said "no answer" where the test expects the HTTP status."""
    found: list[dict[str, Any]] = []
    for i in range(count):
        path = "fail" if i < failing else "ok"
        url = f"http://127.0.0.1:{port}/{path}"
        found.append({"name": f"svc{i}", "kind": "http", "url": url, "body_contains": "ok", "timeout_s": 10})
    return found


# check_system_health ------------------------------------------------------------------------


async def test_all_ok_calls_no_model_and_fits_two_thousand_tokens(tmp_path: Path, http_port: int) -> None:
    backend = ScriptedBackend(
        [ModelInfo(name="qwen3:8b", parameters_b=8.0, loaded=True, size_bytes=5_200_000_000)],
        capable_model,
        name="gpu-1",
    )
    infra = {"probes": probes(http_port, 10), "thresholds": CALM}
    async with session(tmp_path, [gpu_host(backend)], infrastructure=infra) as client:
        out = await call(client, "check_system_health", {})
    checks = {c["name"]: c for c in out["checks"]}
    assert all(checks[f"probe svc{i}"]["verdict"] == "OK" for i in range(10))
    assert {"cpu", "memory", "disk /", "network", "temperature", "gpu", "pool gpu-1", "claude"} <= set(checks)
    assert checks["gpu"]["verdict"] == "n/a" and checks["claude"]["verdict"] == "n/a"  # no GPU here, no key
    pool = checks["pool gpu-1"]
    assert pool["verdict"] == "OK" and pool["figures"]["loaded"] == "qwen3:8b (5.2 GB)"
    if out["verdict"] == "OK":
        assert backend.requests == [] and out["llm"] is None  # all well: no model call
    assert result_size(out) <= 2000
    assert out["seconds"] < 30  # a margin for a loaded machine: ten probes at once, no model call


async def test_a_failing_probe_is_crit_and_the_summary_names_only_real_checks(tmp_path: Path, http_port: int) -> None:
    backend = ScriptedBackend([("qwen3:8b", 8.0)], capable_model, name="gpu-1")
    down = ScriptedBackend([("llama3.1:8b", 8.0)], name="gpu-2", healthy=False)
    infra = {"probes": probes(http_port, 3, failing=1), "thresholds": CALM}
    async with session(tmp_path, [gpu_host(backend), gpu_host(down)], infrastructure=infra) as client:
        out = await call(client, "check_system_health", {})
    assert out["verdict"] == "CRIT"
    first = out["checks"][0]
    assert first["verdict"] == "CRIT"
    checks = {c["name"]: c for c in out["checks"]}
    assert checks["probe svc0"]["verdict"] == "CRIT" and "HTTP 500" in checks["probe svc0"]["reasons"][0]
    assert checks["pool gpu-2"]["verdict"] == "CRIT"
    step = out["llm"]
    # half the answer cites a check that does not exist: kept 1, dropped 1, and the grounding
    # score (0.5) keeps the answer below the confidence threshold
    assert (step["status"], step["kept"], step["dropped"]) == ("low_confidence", 1, 1), step
    assert "gpu 7" in step["note"]
    assert out["actions"][0]["check"] in {"probe svc0", "pool gpu-2"} and out["summary"]
    (request,) = backend.requests
    assert "probe svc0 [CRIT]" in request.messages[-1].content


async def test_without_a_capable_model_the_summary_is_skipped_at_once(tmp_path: Path, http_port: int) -> None:
    infra = {"probes": probes(http_port, 1, failing=1)}
    async with session(tmp_path, infrastructure=infra) as client:
        out = await call(client, "check_system_health", {})
    assert out["llm"]["status"] == "skipped" and "tier small" in out["llm"]["note"]
    assert out["summary"] is None and out["verdict"] == "CRIT"


async def test_trends_against_yesterday(tmp_path: Path) -> None:
    state = tmp_path / "data" / "supervisors" / "infrastructure"
    state.mkdir(parents=True)
    async with session(tmp_path) as client:
        first = await call(client, "check_system_health", {"summarize": False})
        disk = next(c for c in first["checks"] if c["name"] == "disk /")
        used = disk["figures"]["used_pct"]
        (state / "health.sqlite3").unlink()
        SnapshotStore(state / "health.sqlite3").save({"disk /.used_pct": max(0.0, used - 12)}, time.time() - 86_400)
        second = await call(client, "check_system_health", {"summarize": False})
    trend = next(c for c in second["checks"] if c["name"] == "disk /")["trend"]
    assert trend is not None and trend.startswith("disk / ") and trend.endswith("since yesterday")


async def test_probe_settings_are_validated_when_the_config_loads(tmp_path: Path) -> None:
    from caelum_mcp.core.errors import ConfigError

    bad = {"probes": [{"name": "a", "kind": "tcp", "host": "127.0.0.1", "port": 1}] * 2}
    with pytest.raises(ConfigError, match="unique"):
        make_server(tmp_path, [], infrastructure=bad)
    with pytest.raises(ConfigError, match="infrastructure"):
        make_server(tmp_path, [], infrastructure={"probes": [{"name": "a", "kind": "smtp"}]})


# diagnose_logs ------------------------------------------------------------------------------

START = datetime(2024, 5, 1, 9, 0)


def write_incident(folder: Path) -> None:
    """app.log and its rotations (app.log.1, app.log.2.gz): steady traffic, then a database outage."""
    lines = []
    for i in range(600):
        when = START + timedelta(seconds=12 * i)
        stamp = f"{when:%Y-%m-%d %H:%M:%S},000"
        lines.append(f"{stamp} INFO [http-{i % 3}] com.shop.Api: GET /orders/{i} 200 in {i % 40} ms")
        if i % 100 == 0:
            daemon = ("cupsd", "sdpd", "klogd", "hcid", "named", "ntpd")[i // 100]
            lines.append(f"{stamp} INFO [main] com.shop.Boot: {daemon} startup succeeded")
        if 450 <= i < 480:
            lines.append(f"{stamp} ERROR [http-{i % 3}] com.shop.Db: query timed out after 5000 ms")
            lines.append(f"{stamp} WARN [http-{i % 3}] com.shop.Pool: connection pool exhausted")
            lines.append("java.sql.SQLTransientConnectionException: timeout")
            lines.append("\tat com.zaxxer.hikari.pool.HikariPool.createTimeoutException(HikariPool.java:696)")
    # cut into thirds at entry boundaries (a stack trace stays with its entry)
    starts = [i for i, line in enumerate(lines) if line.startswith("2024-")]
    one, two = starts[len(starts) // 3], starts[2 * len(starts) // 3]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.log.2.gz").write_bytes(gzip.compress(("\n".join(lines[:one]) + "\n").encode()))
    (folder / "app.log.1").write_text("\n".join(lines[one:two]) + "\n")
    (folder / "app.log").write_text("\n".join(lines[two:]) + "\n")


async def test_diagnose_rotated_logs_without_a_model(tmp_path: Path) -> None:
    write_incident(tmp_path / "work" / "logs")
    async with session(tmp_path) as client:
        out = await call(client, "diagnose_logs", {"paths": ["logs/app.log"]})
    assert [f["file"] for f in out["files"]] == ["logs/app.log.2.gz", "logs/app.log.1", "logs/app.log"]
    assert all(f["format"] == "java" for f in out["files"])
    assert out["entries"] == 600 + 6 + 60 and out["levels"] == {"info": 606, "error": 30, "warning": 30}
    top = out["signatures"][:2]
    assert {s["template"] for s in top} == {"query timed out after <*>", "connection pool exhausted"}
    assert any({top[0]["id"], top[1]["id"]} <= set(g["signatures"]) for g in out["together"])
    assert out["timeline"]["series"][0]["signature"] == top[0]["id"]
    assert out["llm"]["status"] == "skipped" and "tier full" in out["llm"]["note"]
    assert out["cluster_pass"]["status"] == "skipped" and out["hypotheses"] == []
    startup = [s for s in out["signatures"] if s["template"].endswith("startup succeeded")]
    assert [s["template"] for s in startup] == ["<*> startup succeeded"]  # statistics alone merge them


async def test_diagnose_with_a_capable_model_keeps_only_grounded_hypotheses(tmp_path: Path) -> None:
    write_incident(tmp_path / "work" / "logs")
    backend = ScriptedBackend([("qwen3:8b", 8.0)], capable_model, name="gpu-1")
    args = {"paths": ["logs/app.log"], "focus": "database", "max_signatures": 100}
    async with session(tmp_path, [gpu_host(backend)]) as client:
        out = await call(client, "diagnose_logs", args)
        step = out["llm"]
        # one hypothesis cites a real line of its signature; one a line that does not exist, one a line
        # of another signature: both dropped, and the grounding score keeps the answer low-confidence
        assert (step["status"], step["kept"], step["dropped"]) == ("low_confidence", 1, 2), step
        assert "99999" in step["note"]
        (kept,) = out["hypotheses"]
        assert kept["cause"] == "database outage" and out["summary"] == "The database stopped answering."
        ev = kept["evidence"][0]
        assert ev["file"].startswith("logs/app.log") and ev["signature"] == kept["signatures"][0]
        # the model pass split "<*> startup succeeded" by daemon name: six events
        assert out["cluster_pass"]["status"] == "ran"
        startup = {s["template"] for s in out["signatures"] if s["template"].endswith("startup succeeded")}
        assert startup == {f"{d} startup succeeded" for d in ("cupsd", "sdpd", "klogd", "hcid", "named", "ntpd")}
        asked = sum("log templates" in r.messages[0].content for r in backend.requests)
        assert asked >= 1
        again = await call(client, "diagnose_logs", {**args, "hypotheses": False})
    # every decision is cached by template: the second call asks nothing and still splits
    assert sum("log templates" in r.messages[0].content for r in backend.requests) == asked
    assert again["cluster_pass"] is None and again["llm"] is None
    assert {s["template"] for s in again["signatures"] if "startup" in s["template"]} == startup


async def test_since_until_and_bad_arguments(tmp_path: Path) -> None:
    write_incident(tmp_path / "work" / "logs")
    outside = tmp_path / "elsewhere.log"
    outside.write_text("2024-05-01 10:00:00,000 ERROR [x] a.B: secret\n")
    async with session(tmp_path) as client:
        window = await call(
            client,
            "diagnose_logs",
            {
                "paths": ["logs/app.log"],
                "since": "2024-05-01T10:30:00",
                "until": "2024-05-01 10:36:00",
                "hypotheses": False,
            },
        )
        assert window["entries"] < 100 and window["filtered_out"] > 500
        assert {s["template"] for s in window["signatures"][:2]} == {
            "query timed out after <*>",
            "connection pool exhausted",
        }
        recent = await call(client, "diagnose_logs", {"paths": ["logs"], "since": "2h", "hypotheses": False})
        assert recent["entries"] == 0 and recent["filtered_out"] == 666  # 2024 is long ago
        for args, message in (
            ({"paths": [str(outside)]}, "outside the allowed roots"),
            ({"paths": ["../elsewhere.log"]}, "outside"),
            ({"paths": ["logs/missing.log"]}, "'logs/missing.log' does not exist"),
            ({"paths": ["logs/*.none"]}, "no log files found"),
            ({"paths": ["logs/app.log"], "since": "yesterday-ish"}, "since"),
            ({"paths": ["logs/app.log"], "since": "2h", "until": "3h"}, "since is after until"),
        ):
            res = await client.call_tool("diagnose_logs", args)
            assert res.is_error, args
            text = " ".join(getattr(c, "text", "") for c in res.content)
            assert message in text, (args, text)
            assert "secret" not in text


async def test_links_out_of_the_roots_are_never_read(tmp_path: Path) -> None:
    write_incident(tmp_path / "work" / "logs")
    secret = tmp_path / "secret.log"
    secret.write_text("2024-05-01 10:00:00,000 ERROR [x] a.B: the password is hunter2\n")
    (tmp_path / "work" / "logs" / "leak.log").symlink_to(secret)
    async with session(tmp_path) as client:
        out = await call(client, "diagnose_logs", {"paths": ["logs"], "hypotheses": False})
        assert "leak.log" not in {f["file"] for f in out["files"]}
        assert any("outside the allowed roots" in n for n in out["notes"])
        assert "hunter2" not in json.dumps(out)
        res = await client.call_tool("diagnose_logs", {"paths": ["logs/leak.log"]})
        assert res.is_error and "hunter2" not in str(res.content)


# the shared samples beside the checkout, or wherever LOGHUB_2K_DIR says (a clone elsewhere)
LOGHUB = Path(os.environ.get("LOGHUB_2K_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data" / "loghub-2k")


@pytest.mark.skipif(not LOGHUB.is_dir(), reason="the shared Loghub samples are not here (set LOGHUB_2K_DIR)")
async def test_a_large_log_stays_inside_the_result_budget(tmp_path: Path) -> None:
    loghub = LOGHUB
    for name in ("Linux", "Hadoop", "Zookeeper"):
        (tmp_path / "work" / f"{name}.log").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "work" / f"{name}.log").write_bytes((loghub / name / f"{name}_2k.log").read_bytes())
    async with session(tmp_path) as client:
        out = await call(client, "diagnose_logs", {"paths": ["*.log"], "max_signatures": 100})
    # every line of the three samples is an entry of its own (Linux's "combo  -- root[2421]: ROOT
    # LOGIN ON tty2" too, which the list of formats once took for a continuation)
    assert result_size(out) <= 4000 and out["entries"] == 6000
    assert out["signatures_total"] > 100 and out["omitted"]
