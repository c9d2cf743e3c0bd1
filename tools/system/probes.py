"""Configured service probes: ``http`` (status, latency, body contains), ``tcp`` and ``command``.

Each probe is a pydantic model (a ``[[infrastructure.probes]]`` entry, told apart by ``kind``);
:func:`run_probes` runs them all at once, each within its own ``timeout_s`` (default 1 s), and
:func:`probe_checks` judges the results: a failed probe is CRIT (or ``on_failure = "WARN"``), a
slow one WARN or CRIT by its ``latency_ms`` pair (default ``[infrastructure.thresholds]
probe_latency_ms``).

The HTTP probe is a small HTTP/1.1 client on anyio sockets (TLS for ``https``, certificates
verified; no redirects followed, no proxy, at most :data:`MAX_BODY_BYTES` of body read): the
internal tools do not use the server's HTTP stack, and a probe should measure the service, not a
client's connection pool. A ``command`` probe runs an argument list, never a shell, through
:func:`~caelum_mcp.tools.process.run_command`, with the environment a project's test run gets
(:func:`~caelum_mcp.tools.code.tests_runner.clean_test_env`: PATH, HOME, the locale and the like,
plus the probe's own ``pass_env``), never the server's: that holds the Claude API key and
``CAELUM_*`` settings, and a probe is a program the server did not write.
"""

from __future__ import annotations

import ssl
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import anyio
from anyio.abc import ByteStream
from pydantic import BaseModel, ConfigDict, Field, field_validator

from caelum_mcp.engine.config import ToolsConfig
from caelum_mcp.tools.code.tests_runner import clean_test_env
from caelum_mcp.tools.process import run_command

from .checks import Check, Pair, Thresholds, judge, reason

MAX_BODY_BYTES = 64 * 1024
_MAX_HEADER_BYTES = 32 * 1024


class _Probe(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=80)
    timeout_s: float = Field(default=1.0, gt=0, le=60)
    latency_ms: Pair | None = Field(default=None, description="[warn, crit] latency; default the thresholds'")
    on_failure: Literal["WARN", "CRIT"] = "CRIT"


class HttpProbe(_Probe):
    kind: Literal["http"] = "http"
    url: str = Field(description="http:// or https:// URL")
    method: Literal["GET", "HEAD"] = "GET"
    expect_status: tuple[int, ...] = Field(default=(), description="accepted statuses; default any 2xx or 3xx")
    body_contains: str | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value[:100]!r} is not an http:// or https:// URL with a host")
        return value


class TcpProbe(_Probe):
    kind: Literal["tcp"] = "tcp"
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(ge=1, le=65535)


class CommandProbe(_Probe):
    kind: Literal["command"] = "command"
    argv: tuple[str, ...] = Field(min_length=1, description='the program and its arguments, e.g. ["pg_isready"]')
    expect_exit: int = 0
    output_contains: str | None = None
    pass_env: tuple[str, ...] = Field(
        default=(),
        description="names of environment variables the command also gets, e.g. ['PGHOST'] (besides PATH, HOME, "
        "TZ, TMPDIR, CI and the locale); ANTHROPIC_API_KEY and CAELUM_* are refused",
    )

    @field_validator("pass_env")
    @classmethod
    def _env_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        bad = [n for n in names if not (n.isascii() and n.isidentifier())]
        if bad:
            raise ValueError(f"not environment variable names: {', '.join(repr(n[:60]) for n in bad)}")
        secret = [n for n in names if ToolsConfig.is_secret_env_name(n)]
        if secret:
            raise ValueError(f"secrets are never passed to probes; remove {', '.join(secret)} from the list")
        return names


Probe = Annotated[HttpProbe | TcpProbe | CommandProbe, Field(discriminator="kind")]


class ProbeResult(BaseModel):
    name: str
    kind: str
    ok: bool
    latency_ms: float
    detail: str = Field(description="status, exit code or the error")


_Done = Callable[[bool, str], ProbeResult]


async def run_probes(probes: Sequence[HttpProbe | TcpProbe | CommandProbe], *, workdir: Path) -> list[ProbeResult]:
    """Every probe at once; results in the order given."""
    results: list[ProbeResult | None] = [None] * len(probes)

    async def one(i: int, probe: HttpProbe | TcpProbe | CommandProbe) -> None:
        results[i] = await run_probe(probe, workdir=workdir)

    async with anyio.create_task_group() as tg:
        for i, probe in enumerate(probes):
            tg.start_soon(one, i, probe)
    return [r for r in results if r is not None]


async def run_probe(probe: HttpProbe | TcpProbe | CommandProbe, *, workdir: Path) -> ProbeResult:
    started = time.perf_counter()

    def done(ok: bool, detail: str) -> ProbeResult:
        elapsed = round((time.perf_counter() - started) * 1000, 1)
        return ProbeResult(name=probe.name, kind=probe.kind, ok=ok, latency_ms=elapsed, detail=detail[:200])

    if isinstance(probe, CommandProbe):
        return await _command(probe, workdir, done)
    try:
        with anyio.fail_after(probe.timeout_s):
            if isinstance(probe, TcpProbe):
                stream = await anyio.connect_tcp(probe.host, probe.port)
                await stream.aclose()
                return done(True, "connected")
            return await _http(probe, done)
    except TimeoutError:
        return done(False, f"no answer within {probe.timeout_s:g} s")
    except ssl.SSLError as exc:
        return done(False, f"TLS: {exc.reason or exc}")
    except OSError as exc:
        return done(False, exc.strerror or str(exc) or type(exc).__name__)
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        return done(False, "the connection closed before a whole response")
    except ValueError as exc:  # a malformed response
        return done(False, str(exc))


async def _command(probe: CommandProbe, workdir: Path, done: _Done) -> ProbeResult:
    try:
        result = await run_command(
            probe.argv,
            cwd=workdir,
            timeout_s=probe.timeout_s,
            max_output_bytes=MAX_BODY_BYTES,
            env=clean_test_env(workdir, sys.executable, probe.pass_env),
        )
    except OSError as exc:
        return done(False, f"cannot run {probe.argv[0]!r}: {exc.strerror or exc}")
    output = (result.stdout + result.stderr).strip()
    last = output.splitlines()[-1] if output else ""
    if result.timed_out:
        return done(False, f"no exit within {probe.timeout_s:g} s")
    if result.returncode != probe.expect_exit:
        return done(False, f"exit {result.returncode} (expected {probe.expect_exit}): {last}")
    if probe.output_contains is not None and probe.output_contains not in output:
        return done(False, f"output lacks {probe.output_contains[:60]!r}: {last}")
    return done(True, f"exit {result.returncode}: {last}")


async def _http(probe: HttpProbe, done: _Done) -> ProbeResult:
    parts = urlsplit(probe.url)
    host = parts.hostname or ""
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = host if parts.port is None else f"{host}:{parts.port}"
    if ":" in host and not host.startswith("["):
        host_header = f"[{host}]" + ("" if parts.port is None else f":{parts.port}")
    stream: ByteStream
    if tls:
        context = ssl.create_default_context()
        stream = await anyio.connect_tcp(host, port, ssl_context=context, tls_standard_compatible=False)
    else:
        stream = await anyio.connect_tcp(host, port)
    async with stream:
        request = (
            f"{probe.method} {target} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: caelum-mcp-probe\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n"
        )
        await stream.send(request.encode("latin-1"))
        status, _, body = await _read_response(stream, head_only=probe.method == "HEAD")
    accepted = status in probe.expect_status if probe.expect_status else 200 <= status < 400
    if not accepted:
        wanted = ", ".join(map(str, probe.expect_status)) or "2xx/3xx"
        return done(False, f"HTTP {status} (expected {wanted})")
    if probe.body_contains is not None and probe.body_contains.encode() not in body:
        return done(False, f"HTTP {status}, body lacks {probe.body_contains[:60]!r}")
    return done(True, f"HTTP {status}")


async def _read_response(stream: ByteStream, *, head_only: bool) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            raise ValueError("the server closed the connection before the response headers") from None
        data += chunk
        if len(data) > _MAX_HEADER_BYTES:
            raise ValueError("response headers over 32 KiB")
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status_parts = lines[0].split(" ", 2)
    if len(status_parts) < 2 or not status_parts[0].startswith("HTTP/") or not status_parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {lines[0][:60]!r}")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    if head_only:
        return int(status_parts[1]), headers, b""
    length = headers.get("content-length")
    want = int(length) if length and length.isdigit() else None
    body = rest
    while len(body) < MAX_BODY_BYTES and (want is None or len(body) < want):
        try:
            body += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            break
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    return int(status_parts[1]), headers, body[:MAX_BODY_BYTES]


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, sep, data = data.partition(b"\r\n")
        if not sep:
            break
        try:
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
        except ValueError:
            break
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


def probe_checks(
    probes: Sequence[HttpProbe | TcpProbe | CommandProbe], results: Sequence[ProbeResult], limits: Thresholds
) -> list[Check]:
    """One check per probe (``probe <name>``)."""
    checks = []
    for probe, result in zip(probes, results, strict=True):
        figures: dict[str, float | int | str | None] = {"latency_ms": result.latency_ms, "detail": result.detail}
        if not result.ok:
            checks.append(
                Check(
                    name=f"probe {probe.name}",
                    kind="probe",
                    verdict=probe.on_failure,
                    reasons=[result.detail],
                    figures=figures,
                )
            )
            continue
        pair = probe.latency_ms or limits.probe_latency_ms
        verdict = judge(result.latency_ms, pair)
        reasons = [reason("latency", result.latency_ms, pair, "ms")] if verdict != "OK" else []
        checks.append(
            Check(name=f"probe {probe.name}", kind="probe", verdict=verdict, reasons=reasons, figures=figures)
        )
    return checks
