"""The ``caelum-mcp`` command: serve, doctor, status, call, setup, calibrate.

Logs go to stderr (``--log-format json``: one object a line, with the tool call's request id); on
stdio, stdout belongs to the MCP protocol.

The config is ``--config``, ``$CAELUM_CONFIG`` or the user's own ``~/.config/caelum/caelum.toml``,
never a ``caelum.toml`` in the working directory (a client starts the server inside whatever project
is open); one there is named on stderr as ignored. ``serve --root`` names the folders tools may read.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import httpx2

from caelum_mcp import __version__
from caelum_mcp.core.errors import CaelumError
from caelum_mcp.core.logs import LogFormat, setup_logging
from caelum_mcp.engine.config import (
    DEFAULT_OLLAMA_URL,
    Config,
    ignored_project_config,
    load_config,
    too_broad_for_default_root,
)

log = logging.getLogger("caelum_mcp")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="caelum-mcp", description="Local-first LLM MCP server with a Claude fallback.")
    p.add_argument("--version", action="version", version=f"caelum-mcp {__version__}")
    p.add_argument(
        "--config",
        help="TOML config file (default: $CAELUM_CONFIG, else $XDG_CONFIG_HOME/caelum/caelum.toml, i.e. "
        "~/.config/caelum/caelum.toml; a ./caelum.toml is read only when named here)",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)
    p.add_argument(
        "--debug",
        action="store_true",
        help="log at debug level and show the full traceback of an error (also: CAELUM_LOG_LEVEL=debug)",
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=None,
        help="json: one object a line with the tool call's request_id (default: [server] log_format, text)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the MCP server")
    s.add_argument("--transport", choices=["stdio", "http", "sse"], default=None)
    s.add_argument("--host", default=None, help="bind address for http/sse (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="port for http/sse (default 8765)")
    s.add_argument(
        "--dashboard-port",
        type=int,
        default=None,
        help="with --transport stdio: also serve the dashboard on 127.0.0.1 at this port (0: any free port)",
    )
    s.add_argument(
        "--root",
        action="append",
        default=None,
        metavar="FOLDER",
        help="a folder the tools may read (repeatable; replaces allowed_roots). Default: the working directory, "
        "unless that is / or the home folder",
    )

    d = sub.add_parser("doctor", help="check hosts, models, Claude and the embedded model")
    d.add_argument("--json", action="store_true", help="print the report as JSON")

    st = sub.add_parser("status", help="pool and ledger summary")
    st.add_argument("--url", help="read the status of a running HTTP server (e.g. http://127.0.0.1:8765/mcp)")
    st.add_argument("--json", action="store_true")

    c = sub.add_parser("call", help="call a tool through a real MCP client session")
    c.add_argument("tool", help="tool name, e.g. delegate_task (or 'list' to list the tools)")
    c.add_argument("args", nargs="*", help="key=value arguments; values are read as JSON when they parse")
    c.add_argument("--url", help="a running server's streamable HTTP URL (default: start one over stdio)")

    cal = sub.add_parser(
        "calibrate", help="refit the calibrated confidence per model and task kind from labelled answers"
    )
    cal.add_argument(
        "--recordings",
        action="append",
        default=[],
        metavar="FILE.jsonl",
        help="also fit on benchmark recordings (bench/data/gate/recordings/<model>.jsonl; repeatable)",
    )
    cal.add_argument("--dry-run", action="store_true", help="print the refit without writing calibration.json")

    from caelum_mcp.serving.client_setup import add_setup_arguments

    add_setup_arguments(sub.add_parser("setup", help="add this server to Claude Code or Claude Desktop"))
    return p


def _setup_logging(level: str, log_format: LogFormat = "text") -> None:
    setup_logging(level, log_format)


def main(argv: Sequence[str] | None = None) -> None:
    """Run one command; an error that stops it is one line on stderr (what and how to fix) and a
    non-zero exit, its traceback only with ``--debug`` or ``CAELUM_LOG_LEVEL=debug``."""
    args = _parser().parse_args(argv)
    debug = args.debug or args.log_level == "debug" or os.environ.get("CAELUM_LOG_LEVEL", "").lower() == "debug"
    if args.debug:
        args.log_level = "debug"
    try:
        overrides: dict[str, Any] = {}
        if args.command == "serve":
            for key in ("transport", "host", "port"):
                if getattr(args, key) is not None:
                    overrides[f"server.{key}"] = getattr(args, key)
            if args.dashboard_port is not None:
                overrides["dashboard.port"] = args.dashboard_port
            if args.root:
                overrides["allowed_roots"] = root_folders(args.root)
        if args.log_format is not None:
            overrides["server.log_format"] = args.log_format
        config = load_config(args.config, overrides=overrides)
        debug = debug or config.log_level == "debug"
        _setup_logging(args.log_level or config.log_level, config.server.log_format)
        if not debug:
            logging.getLogger("uvicorn.error").addFilter(OneLineErrors())
        if args.command in ("serve", "doctor"):
            check_data_dir(config)
        ignored = ignored_project_config(config)
        if ignored:
            log.warning("%s", ignored)
        commands = {
            "serve": _serve,
            "doctor": _doctor,
            "status": _status,
            "call": _call,
            "setup": _setup,
            "calibrate": _calibrate,
        }
        code = commands[args.command](config, args)
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # an exception group too: anyio wraps what a task raised
        if debug:
            raise
        print(f"caelum-mcp: {startup_problem(exc)}", file=sys.stderr)
        raise SystemExit(2 if isinstance(_leaf(exc), CaelumError) else 1) from None
    raise SystemExit(code)


def _leaf(exc: BaseException) -> BaseException:
    """The first innermost exception of a group (anyio wraps a task's error in one or more)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def startup_problem(exc: BaseException) -> str:
    """One line for an error that stopped a command: our own errors say what to do already;
    anything else is named with where to see more."""
    leaf = _leaf(exc)
    if isinstance(leaf, CaelumError):
        return str(leaf)
    what = " ".join(str(leaf).split()) or "no message"
    return f"{type(leaf).__name__}: {what} (run again with --debug for the traceback, and report it if unclear)"


class OneLineErrors(logging.Filter):
    """Shortens uvicorn's error records (a failed start logs whole tracebacks) to one line each;
    left off with ``--debug``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Application startup failed"):
            return False  # the record before it said why; that line is the one to read
        if record.exc_info and record.exc_info[1] is not None:
            message = f"{message.strip().splitlines()[0] if message.strip() else 'error'}: " + startup_problem(
                record.exc_info[1]
            )
        elif "Traceback (most recent call last)" in message:
            message = [line for line in message.splitlines() if line.strip()][-1].strip()
            # "caelum_mcp.core.errors.ConfigError: ..." : our errors' text already says what to do
            if message.startswith("caelum_mcp.") and ": " in message:
                message = message.split(": ", 1)[1]
        record.msg, record.args, record.exc_info, record.exc_text = message, (), None, None
        return True


def check_data_dir(config: Config) -> None:
    """A clear error when the data folder (ledger, caches, model logs) cannot be made or written."""
    folder = config.data_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise CaelumError(
            f"the data folder {folder} cannot be used ({exc.strerror or exc}); point data_dir in the config, "
            "CAELUM_DATA_DIR or XDG_DATA_HOME at a folder you can write, or fix its permissions"
        ) from exc


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` for the HTTP server, or a clear error saying how to free or
    choose another address (bound here, before anything is printed, so the failure comes first)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            fix = (
                f"port {port} on {host} is already in use (another caelum-mcp or program listens there); stop it, "
                "or choose a free port: --port N (make run PORT=N), or [server] port in the config"
            )
        elif exc.errno == errno.EACCES:
            fix = f"port {port} needs privileges on this system; choose one above 1023 with --port N"
        else:
            fix = (
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); give an address of this machine "
                "with --host (the default 127.0.0.1 works everywhere)"
            )
        raise CaelumError(fix) from None
    return sock


# serve ----------------------------------------------------------------------------------------


def root_folders(names: Sequence[str], option: str = "--root") -> list[str]:
    """``names`` as absolute, resolved folders; a clear error for one that is not a folder."""
    folders = []
    for name in names:
        path = Path(name).expanduser()
        if not path.is_dir():
            raise CaelumError(f"{option} {name}: not a folder; give an existing folder the tools may read")
        folders.append(str(path.resolve()))
    return folders


def warn_without_roots(config: Config) -> None:
    """Say at start-up, once, when the working directory is too broad to be the default root."""
    if config.allowed_roots:
        return
    here = Path.cwd().resolve()
    if too_broad_for_default_root(here):
        log.warning(
            "the working directory %s is / or the home folder, so it is no root: tools that read files refuse "
            "until allowed_roots is set or the server is started with --root FOLDER (roots the client offers "
            "count too)",
            here,
        )


def connection_help(config: Config, url: str) -> str:
    beside = Path(sys.executable).parent / "caelum-mcp"  # the venv's console script, activated or not
    exe = str(beside) if beside.exists() else shutil.which("caelum-mcp") or f"{sys.executable} -m caelum_mcp"
    # Desktop starts servers in / and offers no roots: the entry must name the folders itself.
    serve = [*exe.split()[1:], "serve", "--root", "/path/to/your/project"]
    desktop = {"mcpServers": {"caelum": {"command": exe.split()[0], "args": serve}}}
    root = url.rsplit("/", 1)[0]
    lines = [
        f"caelum-mcp {__version__} serving MCP at {url}",
        f"  Claude Code:    claude mcp add --transport http caelum {url}   (or: caelum-mcp setup claude-code)",
        f"  Claude Desktop: add to claude_desktop_config.json: {json.dumps(desktop)}   (or: caelum-mcp setup "
        "claude-desktop --root FOLDER)",
        f"  MCP Inspector:  npx @modelcontextprotocol/inspector --cli {url} --method tools/list",
    ]
    if config.dashboard.enabled:
        lines.append(f"  Dashboard:      {root}/")
    if config.metrics.enabled:
        lines.append(
            f"  Metrics:        {root}/metrics"
            + (f" (and http://127.0.0.1:{config.metrics.port}/metrics without auth)" if config.metrics.port else "")
        )
    lines.append(f"  config: {config.source}; data: {config.data_dir}")
    return "\n".join(lines)


def _serve(config: Config, args: argparse.Namespace) -> int:
    from caelum_mcp.serving.server import http_app

    transport = config.server.transport
    warn_without_roots(config)
    token = os.environ.get(config.server.bearer_token_env) if config.server.bearer_token_env else None
    if transport == "stdio":
        from caelum_mcp.serving.dashboard.serve import run_stdio
        from caelum_mcp.serving.shutdown import install_signal_handlers

        install_signal_handlers()  # SIGTERM/SIGHUP stop the running commands too
        anyio.run(partial(run_stdio, config, dashboard_port=config.dashboard.port, token=token))
        return 0
    if args.dashboard_port is not None:
        raise CaelumError(
            "--dashboard-port is for --transport stdio; the HTTP server serves the dashboard at / on its own port"
        )
    import uvicorn

    host = config.server.host
    sock = listen_socket(host, config.server.port)
    port = sock.getsockname()[1]  # the real one when --port 0 asked for any free port
    app = http_app(config, host=host, port=port, token=token)
    shown = f"[{host}]" if ":" in host else host
    path = "/mcp" if transport == "http" else "/sse"
    # log_config=None: uvicorn's lines go through our handler, so a JSON log stays JSON
    settings = uvicorn.Config(
        app, host=host, port=port, log_level="warning", log_config=None, lifespan="on", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(settings)
    stop = server.handle_exit
    start = server.startup

    async def startup(sockets: list[socket.socket] | None = None) -> None:
        await start(sockets)
        # only once the app has started: a failed start must not be preceded by "serving at"
        print(connection_help(config, f"http://{shown}:{port}{path}"), file=sys.stderr, flush=True)

    server.startup = startup  # type: ignore[method-assign]

    def handle_exit(sig: int, frame: FrameType | None) -> None:
        # uvicorn waits for open responses before it stops: end the dashboard's event streams first
        app.state.dashboard.close_streams()
        stop(sig, frame)

    server.handle_exit = handle_exit  # type: ignore[method-assign]
    with sock:
        server.run(sockets=[sock])  # a failed start exits with uvicorn's code 3, after logging why
    return 0


# doctor ---------------------------------------------------------------------------------------


def _doctor(config: Config, args: argparse.Namespace) -> int:
    from caelum_mcp.embedded.server import embedded_status
    from caelum_mcp.serving.app import open_app

    async def run() -> int:
        async with open_app(config, health_loop=False) as state:
            report = state.pool_admin.status()
            can_serve = any(h.healthy and h.models for h in report.hosts)
            if args.json:
                print(json.dumps({"can_serve": can_serve, **report.model_dump(mode="json")}, indent=2))
                return 0 if can_serve else 1
            ok, detail = embedded_status()
            print(f"config: {report.config_source}")
            print(f"data dir: {config.data_dir}")
            for h in report.hosts:
                if not h.healthy and _is_implicit_ollama(config, h.name, h.url):
                    # Nobody asked for this host: its absence is news, not a failure.
                    print(
                        f"[INFO] host {h.name} ({h.kind}) {h.url}: not found (no Ollama answers at the default "
                        "address); install and start Ollama (https://ollama.com), or configure your hosts "
                        "([[hosts]] in the config, or OLLAMA_HOST)"
                    )
                    continue
                mark = "OK  " if h.healthy else "FAIL"
                print(f"[{mark}] host {h.name} ({h.kind}) {h.url} version={h.version or '-'} breaker={h.breaker}")
                if h.last_error:
                    print(f"       error: {h.last_error}")
                for m in h.models:
                    size = f"{m.parameters_b:.2f}B" if m.parameters_b else "?"
                    print(f"       model {m.name} {size} tiers={','.join(m.tiers)}{' loaded' if m.loaded else ''}")
            claude = report.claude
            print(
                f"[{'OK  ' if claude.configured else 'INFO'}] Claude: "
                + (
                    f"configured, model {claude.model}"
                    if claude.configured
                    else "not configured (set ANTHROPIC_API_KEY)"
                )
                + ("" if claude.enabled else " (disabled)")
            )
            if config.embedded == "off":  # installed or not, it is not part of this pool
                print(f"[INFO] embedded model: off by configuration ({'installed' if ok else detail})")
            else:
                print(f"[{'OK  ' if ok else 'INFO'}] embedded model: {'available' if ok else 'unavailable'} ({detail})")
            print(f"       {report.embedded}")
            print(f"tiers available: {', '.join(report.tiers_available) or 'none'}")
            print(
                "can serve: "
                + (
                    "yes"
                    if can_serve
                    else "NO: no healthy host with a model; start Ollama or enable the embedded model"
                )
            )
            return 0 if can_serve else 1

    return anyio.run(run)


def _is_implicit_ollama(config: Config, name: str, url: str) -> bool:
    """Whether host ``name`` is the Ollama tried at the default address because no host is configured."""
    return not config.hosts and config.implicit_ollama and name == "ollama" and url.rstrip("/") == DEFAULT_OLLAMA_URL


# status ---------------------------------------------------------------------------------------


@asynccontextmanager
async def remote_client(url: str, config: Config) -> AsyncIterator[Any]:
    """An MCP client session with a running HTTP server, sending the configured bearer token if any.

    Failures to connect or to authenticate become one :class:`CaelumError` line, not a traceback
    of exception groups.
    """
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    token_env = config.server.bearer_token_env
    token = os.environ.get(token_env) if token_env else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    statuses: set[int] = set()

    async def note_status(response: httpx2.Response) -> None:
        # The SDK reports an HTTP 401 only as "Server returned an error response".
        statuses.add(response.status_code)

    try:
        async with (
            httpx2.AsyncClient(
                headers=headers,
                timeout=httpx2.Timeout(30.0, read=None),
                event_hooks={"response": [note_status]},
            ) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            yield client
    except Exception as exc:
        if isinstance(exc, CaelumError):
            raise
        reason = _leaf_message(exc)
        if 401 in statuses:
            where = f"${token_env}" if token_env else "server.bearer_token_env (and export that variable)"
            reason = f"HTTP 401: the server wants a bearer token; set {where} to it"
        raise CaelumError(f"cannot talk to the MCP server at {url}: {reason}") from None


def _leaf_message(exc: BaseException) -> str:
    """The innermost meaningful message of an exception group (anyio wraps transport errors)."""
    exc = _leaf(exc)
    return f"{type(exc).__name__}: {exc}"


def _calibrate(config: Config, args: argparse.Namespace) -> int:
    """Refit the calibration table from the ledger's labels and the recordings named
    (:mod:`caelum_mcp.engine.refit`); print the table, and write ``<data dir>/calibration.json`` unless
    ``--dry-run``."""
    from caelum_mcp.engine.calibration import DEFAULT_PATH, USER_FILE, CalibrationError, CalibrationTable
    from caelum_mcp.engine.ledger import Ledger
    from caelum_mcp.engine.refit import format_table, ledger_labels, recorded_labels, refit_all, updated_table

    ledger_path = config.data_dir / "ledger.sqlite3"
    labelled = []
    where = str(ledger_path)
    if config.ledger.url is not None or ledger_path.is_file():
        with Ledger.from_config(config) as ledger:
            labelled += ledger_labels(ledger)
            where = ledger.location  # the PostgreSQL URL without its password, or the SQLite file
    from_ledger = len(labelled)
    for name in args.recordings:
        labelled += recorded_labels(Path(name).expanduser())
    if not labelled:
        raise CaelumError(
            f"no labelled answers to calibrate from: the ledger {where} holds none"
            + (" and the recordings none" if args.recordings else "")
            + "; with Claude configured set [router] audit_rate (e.g. 0.05) so local answers get labelled, "
            "or pass --recordings FILE.jsonl (bench/gate.py --record)"
        )
    user_path = config.data_dir / USER_FILE
    threshold = config.router.confidence_threshold
    known: dict[tuple[str, str], Any] = {}
    prior, mine = None, []
    for path in (DEFAULT_PATH, user_path):
        if not path.is_file():
            continue
        try:
            table_prior, entries = CalibrationTable.read(path)
        except CalibrationError as exc:
            print(f"note: {exc}; {'it is replaced' if path == user_path else 'its entries are not reused'}")
            continue
        known.update((e.key, e) for e in entries)
        if path == user_path:
            prior, mine = table_prior, entries
    refits = refit_all(labelled, threshold=threshold, existing=known)
    print(format_table(refits, threshold))
    print(f"labelled answers: {from_ledger} from the ledger, {len(labelled) - from_ledger} from recordings")
    fitted = [r for r in refits if r.entry is not None]
    if not fitted:
        raise CaelumError(
            "nothing refitted: no model and task kind has enough labelled answers yet (see 'not refitted' above)"
        )
    if args.dry_run:
        print(f"dry run: {user_path} not written ({len(fitted)} entries would be refitted)")
        return 0
    updated_table(mine, prior, refits, threshold).save(user_path)
    print(f"wrote {user_path}: {len(fitted)} entries refitted; restart the server to use them")
    return 0


def _status(config: Config, args: argparse.Namespace) -> int:
    if args.url:

        async def remote() -> str:
            async with remote_client(args.url, config) as client:
                res = await client.read_resource("caelum://status")
                return "".join(getattr(c, "text", "") for c in res.contents)

        text = anyio.run(remote)
        print(text)
        return 0
    from caelum_mcp.engine.ledger import Ledger

    ledger_path = config.data_dir / "ledger.sqlite3"
    if config.ledger.url is None and not ledger_path.exists():
        print(f"no ledger yet at {ledger_path}: no LLM call has been made with this data dir")
        return 0
    with Ledger.from_config(config) as ledger:  # [ledger] url, else the file in the data dir
        summary = ledger.summary()
    if args.json:
        print(summary.model_dump_json(indent=2))
        return 0
    print(f"ledger: {ledger.location}")  # a URL without its password
    print(
        f"calls: {summary.calls} (local {summary.local_calls}, Claude {summary.claude_calls}, "
        f"failed {summary.failed_calls}); local share {summary.local_share:.0%}"
    )
    print(f"tokens: local {summary.local_tokens}, Claude {summary.claude_tokens}")
    print(f"tool calls: {summary.tool_calls}")
    e = summary.embedding
    print(
        f"embedding (apart from the calls): {e.rows} rows, {e.failed} failed, "
        f"{e.input_tokens} tokens, {e.seconds:.1f} s"
    )
    print(
        f"Claude cost ${summary.claude_cost_usd:.4f} (today ${summary.claude_spend_today_usd:.4f}); "
        f"saved by running locally ${summary.savings_usd:.4f}"
    )
    for m in summary.by_model:
        print(
            f"  {m.model} ({m.provider}): {m.calls} calls, {m.input_tokens}+{m.output_tokens} tokens, ${m.cost_usd:.4f}"
        )
    return 0


# call -----------------------------------------------------------------------------------------


def parse_tool_args(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CaelumError(f"argument {pair!r} is not key=value (e.g. prompt='Say hi' tier=micro)")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _call(config: Config, args: argparse.Namespace) -> int:
    from mcp import Client, StdioServerParameters

    tool_args = parse_tool_args(args.args)
    config_path = os.path.abspath(config.source) if config.source != "defaults" else None

    async def progress(progress: float, total: float | None, message: str | None) -> None:
        of = f"/{total:g}" if total else ""
        print(f"... {progress:g}{of} {message or ''}", file=sys.stderr, flush=True)

    def session() -> AbstractAsyncContextManager[Any]:
        if args.url:
            return remote_client(args.url, config)
        env = {k: v for k, v in os.environ.items() if k.startswith(("CAELUM_", "ANTHROPIC_", "OLLAMA_"))}
        env.update({"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "")})
        # The server must read the same config and write the same ledger as this command would:
        # without these it falls back to ~/.config and ~/.local/share, a second ledger.
        env.update({k: os.environ[k] for k in ("XDG_CONFIG_HOME", "XDG_DATA_HOME") if k in os.environ})
        env["CAELUM_DATA_DIR"] = os.path.abspath(config.data_dir)
        if config_path:
            env["CAELUM_CONFIG"] = config_path
        return Client(StdioServerParameters(command=sys.executable, args=["-m", "caelum_mcp", "serve"], env=env))

    async def run() -> int:
        async with session() as client:
            if args.tool == "list":
                tools = await client.list_tools()
                for t in tools.tools:
                    print(f"{t.name}: {t.description}")
                return 0
            result = await client.call_tool(args.tool, tool_args, progress_callback=progress)
        if result.is_error:
            text = " ".join(getattr(c, "text", "") for c in result.content)
            print(f"error: {text}", file=sys.stderr)
            return 1
        if result.structured_content is not None:
            print(json.dumps(result.structured_content, indent=2))
        else:
            print("\n".join(getattr(c, "text", "") for c in result.content))
        return 0

    return anyio.run(run)


# setup ----------------------------------------------------------------------------------------


def _setup(config: Config, args: argparse.Namespace) -> int:
    from caelum_mcp.serving.client_setup import run_setup

    return run_setup(config, args)
