"""``caelum-mcp setup claude-code | claude-desktop``: add this server to a client's configuration.

What each client reads (checked against Claude Code 2.1 and Claude Desktop's documentation):

- **Claude Code** keeps user-wide and per-project-private servers in ``~/.claude.json``
  (``$CLAUDE_CONFIG_DIR/.claude.json`` when set): ``mcpServers`` (scope ``user``), or
  ``projects["<absolute project path>"].mcpServers`` (scope ``local``, Claude Code's own default);
  servers shared with a team live in the project's ``.mcp.json`` (scope ``project``; Claude Code asks
  each user to approve them). An entry is ``{"type": "stdio", "command", "args", "env"}`` or
  ``{"type": "http", "url", "headers"}``; header values may name environment variables as
  ``${VAR}``, which Claude Code expands when it connects.
- **Claude Desktop** reads ``claude_desktop_config.json`` (macOS ``~/Library/Application
  Support/Claude/``, Windows ``%APPDATA%\\Claude\\``, Linux ``~/.config/Claude/``): ``mcpServers``
  with ``command``, ``args`` and ``env``. It starts its servers itself, over stdio only.

The entry names this install by absolute path (the ``caelum-mcp`` script beside the running
interpreter, or the interpreter with ``-m caelum_mcp``) and the config file in use, so the client
starts the same server whatever its working directory (the server never reads a ``caelum.toml``
from there). ``--root FOLDER`` (repeatable) becomes ``serve --root`` in the entry: the folders the
tools may read. Claude Desktop needs it: it starts servers in ``/`` and offers no MCP roots, and
``/`` is never a root by default, so ``setup claude-desktop`` without ``--root`` refuses. Writing
merges: every other key of the file is kept; the file is backed up first (``<name>.bak-<UTC
time>``), replaced atomically with its permissions kept (new files are private, 0600: a client
config may hold credentials); a file that is a symbolic link (dotfiles kept elsewhere) is written
through: its target is replaced, the link stays. Running it again changes nothing; ``--dry-run``
prints the diff and writes nothing. The bearer token itself is never written: an HTTP entry sends
``Authorization: Bearer ${<token variable>}``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from caelum_mcp.core.errors import CaelumError
from caelum_mcp.engine.config import Config

ClientName = Literal["claude-code", "claude-desktop"]
Scope = Literal["user", "local", "project"]
CLIENTS: tuple[ClientName, ...] = ("claude-code", "claude-desktop")
SCOPES: tuple[Scope, ...] = ("user", "local", "project")
WILDCARD_BINDS = {"0.0.0.0", "::", ""}  # noqa: S104 - names, not a bind


@dataclass(frozen=True)
class SetupPlan:
    """What ``setup`` would change: one entry at ``key`` in the JSON file at ``path``."""

    client: ClientName
    scope: Scope
    path: Path
    key: tuple[str, ...]
    entry: dict[str, Any]
    before: dict[str, Any] | None  # the file's data now (None: no file)
    after: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def diff(self) -> str:
        """A unified diff of the file's JSON, before and after (as it will be written)."""
        old = render_json(self.before).splitlines(keepends=True) if self.before is not None else []
        new = render_json(self.after).splitlines(keepends=True)
        label = str(self.path)
        return "".join(difflib.unified_diff(old, new, f"{label} (now)", f"{label} (after setup)"))


def render_json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def install_command(python: str | None = None) -> list[str]:
    """This install's command line, absolute: the ``caelum-mcp`` script beside the interpreter,
    else the interpreter with ``-m caelum_mcp``."""
    interpreter = Path(python or sys.executable)
    script = interpreter.parent / ("caelum-mcp.exe" if os.name == "nt" else "caelum-mcp")
    if script.is_file():
        return [str(script.absolute())]
    return [str(interpreter.absolute()), "-m", "caelum_mcp"]


def server_entry(
    client: ClientName,
    transport: Literal["stdio", "http"],
    config: Config,
    *,
    url: str | None = None,
    dashboard_port: int | None = None,
    python: str | None = None,
    roots: Sequence[Path] = (),
    shared_from: Path | None = None,
) -> dict[str, Any]:
    """The client's entry for this server; ``roots`` (absolute folders) become ``serve --root``.

    ``shared_from`` (the project folder, for a ``.mcp.json`` the team shares): the entry must work on
    every member's machine, so it names ``caelum-mcp`` as found on PATH, roots and a config inside
    the project relative to it (Claude Code starts the server there), and no file of this machine."""
    if transport == "http":
        if client == "claude-desktop":
            raise CaelumError(
                "Claude Desktop starts its MCP servers itself, over stdio; use --transport stdio (the default), "
                "or add the URL as a custom connector in Claude Desktop's settings"
            )
        if roots:
            raise CaelumError(
                "--root is for --transport stdio, where the client starts the server; a running HTTP server "
                "takes its roots from its own `serve --root` or allowed_roots"
            )
        entry: dict[str, Any] = {"type": "http", "url": url or default_url(config)}
        token_env = config.server.bearer_token_env
        if token_env:
            entry["headers"] = {"Authorization": f"Bearer ${{{token_env}}}"}
        return entry
    command = install_command(python) if shared_from is None else [PORTABLE_COMMAND]
    args = command[1:]
    if config.source != "defaults":
        source = Path(config.source).expanduser().absolute()
        if shared_from is None:
            args += ["--config", str(source)]
        elif source.is_relative_to(shared_from):  # else each member's own config file is read
            args += ["--config", str(source.relative_to(shared_from))]
    args += ["serve", "--transport", "stdio"]
    if dashboard_port is not None:
        args += ["--dashboard-port", str(dashboard_port)]
    for root in roots:
        args += ["--root", str(root) if shared_from is None else _inside_project(root, shared_from, "--root")]
    entry = {"command": command[0], "args": args, "env": {}}
    return {"type": "stdio", **entry} if client == "claude-code" else entry


PORTABLE_COMMAND = "caelum-mcp"


def _inside_project(path: Path, project: Path, what: str) -> str:
    """``path`` relative to ``project`` for a shared entry, or an error: a path outside the project
    exists on this machine only."""
    try:
        return str(path.relative_to(project)) or "."
    except ValueError:
        raise CaelumError(
            f"{what} {path} is outside the project {project}, and --scope project writes .mcp.json for everyone "
            "who opens it: give a folder inside the project, or use --scope user or local for this machine's paths"
        ) from None


def default_url(config: Config) -> str:
    host = config.server.host
    host = "127.0.0.1" if host in WILDCARD_BINDS else host
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{config.server.port}/mcp"


def client_config_path(
    client: ClientName, scope: Scope, *, home: Path, cwd: Path, environ: Mapping[str, str], platform: str
) -> Path:
    """The file the client reads for ``scope``."""
    if client == "claude-code":
        if scope == "project":
            return cwd / ".mcp.json"
        base = environ.get("CLAUDE_CONFIG_DIR")
        return (Path(base).expanduser() if base else home) / ".claude.json"
    if scope != "user":
        raise CaelumError("Claude Desktop has one configuration per user: leave out --scope (or pass --scope user)")
    if platform == "darwin":
        folder = home / "Library" / "Application Support" / "Claude"
    elif platform.startswith("win"):
        folder = Path(environ.get("APPDATA") or home / "AppData" / "Roaming") / "Claude"
    else:
        folder = Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "Claude"
    return folder / "claude_desktop_config.json"


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path`` (None when there is no file); a clear error otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CaelumError(f"cannot read {path}: {exc.strerror}") from exc
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CaelumError(f"{path} is not valid JSON ({exc}); fix it or move it aside, then run setup again") from exc
    if not isinstance(data, dict):
        raise CaelumError(f"{path} does not hold a JSON object; fix it or move it aside, then run setup again")
    return data


def with_entry(data: dict[str, Any] | None, key: Sequence[str], entry: dict[str, Any], path: Path) -> dict[str, Any]:
    """A copy of ``data`` with ``entry`` at ``key`` (objects created on the way)."""
    out: dict[str, Any] = json.loads(json.dumps(data or {}))
    node = out
    for i, part in enumerate(key[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(key[: i + 1])
            raise CaelumError(f"{path}: `{where}` is not a JSON object; fix it by hand, then run setup again")
        node = child
    node[key[-1]] = entry
    return out


def plan_setup(
    client: ClientName,
    config: Config,
    *,
    transport: Literal["stdio", "http"] = "stdio",
    scope: Scope | None = None,
    name: str = "caelum",
    url: str | None = None,
    dashboard_port: int | None = None,
    home: Path | None = None,
    cwd: Path | None = None,
    environ: Mapping[str, str] | None = None,
    platform: str | None = None,
    python: str | None = None,
    roots: Sequence[str | Path] = (),
) -> SetupPlan:
    """What setting up ``client`` would write (nothing is written here).

    ``roots`` are the folders the tools may read (``--root``); Claude Desktop must be given at
    least one, since the folder it starts servers in is ``/``."""
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise CaelumError(f"--name {name[:60]!r}: use letters, digits, '-' and '_'")
    environ = os.environ if environ is None else environ
    home = home or Path.home()
    cwd = (cwd or Path.cwd()).absolute()
    scope = scope or "user"
    if client == "claude-desktop" and transport == "stdio" and not roots:
        raise CaelumError(
            "Claude Desktop starts servers in / and offers no MCP roots, so the tools would have no folder to read: "
            "pass --root FOLDER (repeatable) for each folder they may read, e.g. --root ~/src/my-project"
        )
    folders = [_root_folder(r, cwd) for r in roots]
    path = client_config_path(client, scope, home=home, cwd=cwd, environ=environ, platform=platform or sys.platform)
    shared = client == "claude-code" and scope == "project"
    entry = server_entry(
        client,
        transport,
        config,
        url=url,
        dashboard_port=dashboard_port,
        python=python,
        roots=folders,
        shared_from=cwd if shared else None,
    )
    key: tuple[str, ...] = ("mcpServers", name)
    if client == "claude-code" and scope == "local":
        key = ("projects", str(cwd), "mcpServers", name)
    before = read_json_object(path)
    plan = SetupPlan(client, scope, path, key, entry, before, with_entry(before, key, entry, path))
    if shared:
        plan.notes.append("Claude Code asks each user to approve servers from .mcp.json before it connects")
        if transport == "stdio":
            plan.notes.append(
                f"the entry runs `{PORTABLE_COMMAND}` from PATH so that it works on every machine: each user installs "
                "it (e.g. `uv tool install caelum-mcp`, `pipx install .`) or starts Claude Code with the venv active"
            )
            source = Path(config.source).expanduser().absolute() if config.source != "defaults" else None
            if source is not None and not source.is_relative_to(cwd):
                plan.notes.append(
                    f"the config {source} is outside the project, so the entry leaves it out: each user's server "
                    "reads their own (~/.config/caelum/caelum.toml or $CAELUM_CONFIG)"
                )
    if transport == "http":
        plan.notes.append(f"the server must be running for the client to connect ({entry['url']}; `make run`)")
        if "headers" in entry:
            plan.notes.append(f"export {config.server.bearer_token_env} where the client runs: its value is sent")
    if client == "claude-desktop":
        plan.notes.append("restart Claude Desktop to load it")
    return plan


def _root_folder(name: str | Path, cwd: Path) -> Path:
    """``name`` as an absolute, resolved folder (relative to ``cwd``); a clear error if it is none."""
    path = Path(name).expanduser()
    path = path if path.is_absolute() else cwd / path
    if not path.is_dir():
        raise CaelumError(f"--root {name}: not a folder; give an existing folder the tools may read")
    return path.resolve()


def write_target(path: Path) -> Path:
    """The file to replace when writing ``path``: ``path`` itself, or, when it is a symbolic link,
    the file it leads to (so the link survives). A link whose target is missing is refused."""
    if not path.is_symlink():
        return path
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing target, or a loop of links
        target = Path(os.path.realpath(path))
    if not target.is_file():
        raise CaelumError(
            f"{path} is a symbolic link to {target}, which is not a file; create that file or remove the link, "
            "then run setup again"
        )
    return target


def apply_plan(plan: SetupPlan, *, now: datetime | None = None) -> Path | None:
    """Write ``plan``'s file (when it changes anything): back it up first, then replace it
    atomically, keeping its permissions. When the file is a symbolic link, its target is replaced,
    in the target's folder, and the link is kept. Returns the backup's path (None: there was no file)."""
    if not plan.changed:
        return None
    path = plan.path
    target = write_target(path)
    backup = None
    mode = 0o600
    if target.exists():
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
        backup = path.with_name(f"{path.name}.bak-{stamp}")
        shutil.copy2(target, backup)
        mode = target.stat().st_mode & 0o777
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as sink:
            sink.write(render_json(plan.after))
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return backup


def add_setup_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("client", choices=CLIENTS, help="the client to configure")
    parser.add_argument(
        "--transport",
        choices=["stdio", "http"],
        default="stdio",
        help="stdio: the client starts this install (default); http: it connects to a running server",
    )
    parser.add_argument(
        "--scope",
        choices=SCOPES,
        default=None,
        help="Claude Code: user (every project, default), local (this folder, private) or project (.mcp.json here)",
    )
    parser.add_argument("--name", default="caelum", help="the server's name in the client (default caelum)")
    parser.add_argument("--url", default=None, help="with --transport http: the server's /mcp URL")
    parser.add_argument(
        "--dashboard-port", type=int, default=None, help="stdio: serve the dashboard on 127.0.0.1 at this port too"
    )
    parser.add_argument(
        "--root",
        action="append",
        default=None,
        metavar="FOLDER",
        help="stdio: a folder the tools may read (repeatable), written as `serve --root`; required for "
        "claude-desktop, which starts servers in / and offers no roots",
    )
    parser.add_argument("--dry-run", action="store_true", help="show the change as a diff; write nothing")


def run_setup(config: Config, args: argparse.Namespace) -> int:
    """The ``setup`` command: plan, then show the diff or write it."""
    plan = plan_setup(
        args.client,
        config,
        transport=args.transport,
        scope=args.scope,
        name=args.name,
        url=args.url,
        dashboard_port=args.dashboard_port,
        roots=args.root or (),
    )
    label = {"claude-code": "Claude Code", "claude-desktop": "Claude Desktop"}[plan.client]
    where = f"{label} ({plan.scope} scope)" if plan.client == "claude-code" else label
    if not plan.changed:
        print(f"{where}: {args.name} is already set up in {plan.path}; nothing to change")
        return 0
    if args.dry_run:
        print(plan.diff(), end="")
        print(f"(dry run: {plan.path} not written)")
        return 0
    backup = apply_plan(plan)
    print(f"{where}: {args.name} added to {plan.path}" + (f" (backup: {backup})" if backup else ""))
    for note in plan.notes:
        print(f"  note: {note}")
    if plan.client == "claude-code":
        print("  check it: claude mcp list")
    return 0
