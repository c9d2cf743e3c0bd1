"""Reading the config: where the file comes from, trusting it, environment overrides, and one
:class:`~caelum_mcp.core.errors.ConfigError` naming each bad key.

See :mod:`caelum_mcp.engine.config`.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ValidationError,
)

from caelum_mcp.core.errors import ConfigError
from caelum_mcp.core.tokens import MAKE_TOKEN, token_weakness
from caelum_mcp.engine.backends.base import HostConfigBase
from caelum_mcp.engine.backends.ollama import OllamaHostConfig
from caelum_mcp.engine.backends.registry import BACKENDS, DEFAULT_HOST_KIND, UnknownBackendError
from caelum_mcp.engine.config.sections import (
    LOOPBACK_NAMES,
    Config,
)


def user_config_file(environ: Mapping[str, str]) -> Path:
    """The user's own config file: ``$XDG_CONFIG_HOME/caelum/caelum.toml``, default ``~/.config/...``.

    A relative ``XDG_CONFIG_HOME`` is ignored, as the XDG specification says: it would name a
    file in whatever folder the server was started in.
    """
    base = environ.get("XDG_CONFIG_HOME", "")
    folder = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return folder / "caelum" / "caelum.toml"


def find_config_file(explicit: str | Path | None, environ: Mapping[str, str]) -> Path | None:
    """The config file to read: ``explicit``, ``$CAELUM_CONFIG``, then :func:`user_config_file`.

    A named file must exist. The working directory is never searched (see the module docstring);
    :func:`ignored_project_config` tells whether it held one.
    """
    if explicit:
        path = Path(explicit).expanduser()
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist; check the --config path")
        return path  # anything but a regular file is refused when it is read
    env = environ.get("CAELUM_CONFIG")
    if env:
        path = Path(env).expanduser()
        if not path.exists():
            raise ConfigError(f"CAELUM_CONFIG points to {path}, which does not exist")
        return path
    candidate = user_config_file(environ)
    return candidate if candidate.is_file() else None


def ignored_project_config(config: Config, cwd: Path | None = None) -> str | None:
    """A one-line notice when the working directory holds a ``caelum.toml`` that is not the
    config in use (None otherwise), for the CLI to log: a user who put one there must not be
    left wondering why it has no effect."""
    try:
        here = (cwd or Path.cwd()).resolve()
    except OSError:  # the working directory was removed
        return None
    local = here / "caelum.toml"
    if not local.is_file():
        return None
    if config.source != "defaults" and Path(config.source).expanduser().resolve() == local.resolve():
        return None
    return (
        f"{local} was ignored: a config is never read from the working directory (a project's file could run "
        "commands and redirect the Claude API key); to use it, pass --config ./caelum.toml (config in use: "
        f"{config.source})"
    )


def read_trusted_config(path: Path) -> str:
    """The text of config file ``path``, which must be a regular file only its owner can write.

    The checks are made on the open file itself (no window for a swap between check and read),
    and a FIFO is never waited on. Refusals say what to do.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path} is not a regular file; point --config at a TOML file")
        _check_owner_and_mode(path, info)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        data = handle.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc


def _check_owner_and_mode(path: Path, info: os.stat_result) -> None:
    if os.name == "nt":  # no POSIX owner or mode bits to judge; access lists are the user's affair
        return
    uid = os.getuid()
    if info.st_uid not in (uid, 0):
        raise ConfigError(
            f"config file {path} belongs to another user (uid {info.st_uid}), who could make this server run "
            f"commands; use a copy you own (cp {path} ~/.config/caelum/caelum.toml) or have it owned by you"
        )
    writable = [who for who, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if info.st_mode & bit]
    if writable:
        raise ConfigError(
            f"config file {path} is writable by {' and '.join(writable)}, who could make this server run commands; "
            f"run `chmod go-w {path}` and start again"
        )


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read, merge and validate the configuration (file < environment < ``overrides``)."""
    env = os.environ if environ is None else environ
    file = find_config_file(path, env)
    data: dict[str, Any] = {}
    source = "defaults"
    if file is not None:
        source = str(file)
        text = read_trusted_config(file)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}. Fix the syntax at that line.") from exc
    _apply_env(data, env)
    for key, value in (overrides or {}).items():
        _set_path(data, key.split("."), value)
    sections = _validate_sections(data, source)
    try:
        config = Config.model_validate({**data, "source": source, "sections": sections})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source, data)) from exc
    if not config.hosts and config.implicit_ollama and "OLLAMA_HOST" in env:
        default_host = OllamaHostConfig(name="ollama", url=normalize_ollama_host(env["OLLAMA_HOST"]))
        config = config.model_copy(update={"hosts": (default_host,)})
    _check_bind(config, env)
    return config


def supervisor_sections() -> dict[str, type[BaseModel]]:
    """Top-level config sections the registered supervisors own, with the model validating each.

    Read from the registry when a config is loaded (not at import: supervisors import this module).
    """
    from caelum_mcp.supervisors import SUPERVISORS

    return {
        cls.settings_section or cls.name: cls.settings_model for cls in SUPERVISORS if cls.settings_model is not None
    }


def _validate_sections(data: dict[str, Any], source: str) -> dict[str, BaseModel]:
    """Take the supervisors' sections out of ``data`` and validate each with its model."""
    validated: dict[str, BaseModel] = {}
    for name, model in supervisor_sections().items():
        if name not in data:
            continue
        raw = data.pop(name)
        try:
            validated[name] = model.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, source, {name: raw}, prefix=(name,), root=model)) from exc
    return validated


def normalize_ollama_host(value: str) -> str:
    """``OLLAMA_HOST`` as Ollama reads it: scheme optional, port 11434 when missing."""
    value = value.strip()
    had_scheme = "://" in value
    parts = urlsplit(value if had_scheme else "http://" + value)
    host = parts.hostname or "127.0.0.1"
    if host == "0.0.0.0":  # noqa: S104 - the bind-all address means "this machine" to a client
        host = "127.0.0.1"
    port = parts.port or (11434 if not had_scheme else 443 if parts.scheme == "https" else 80)
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{shown}:{port}{parts.path.rstrip('/')}"


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    # Variables the config names as holding secrets (server.bearer_token_env, hosts' api_key_env)
    # may well be called CAELUM_...: they are values, not settings, and must not be read as keys.
    secret_names = set(_secret_env_names(data))
    secret_names.add(env.get("CAELUM_SERVER__BEARER_TOKEN_ENV", ""))
    for name, raw in env.items():
        if not name.startswith("CAELUM_") or name == "CAELUM_CONFIG" or name in secret_names:
            continue
        keys = [k.lower() for k in name[len("CAELUM_") :].split("__")]
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        _set_path(data, keys, value)
    if env.get("ANTHROPIC_API_KEY"):
        claude = data.setdefault("claude", {})
        if isinstance(claude, dict):
            claude.setdefault("api_key", env["ANTHROPIC_API_KEY"])


def _secret_env_names(node: Any) -> list[str]:
    if isinstance(node, dict):
        names = [v for k, v in node.items() if k.endswith("_env") and isinstance(v, str)]
        return names + [n for v in node.values() for n in _secret_env_names(v)]
    if isinstance(node, list):
        return [n for v in node for n in _secret_env_names(v)]
    return []


def _set_path(data: dict[str, Any], keys: list[str], value: Any) -> None:
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


def _check_bind(config: Config, env: Mapping[str, str]) -> None:
    host = config.server.host
    if _is_loopback(host):
        return
    token_env = config.server.bearer_token_env
    if not token_env or not env.get(token_env):
        raise ConfigError(
            f"server.host = {host!r} is not a loopback address: binding there requires a bearer token. "
            "Set server.bearer_token_env to the name of an environment variable holding a long random "
            "token (and export it), or bind 127.0.0.1."
        )
    weakness = token_weakness(env[token_env])
    if weakness is not None:
        raise ConfigError(
            f"server.host = {host!r} is not a loopback address, and the bearer token in ${token_env} is too weak "
            f"to guard it ({weakness}); make one with `{MAKE_TOKEN}`, export it as {token_env}, or bind 127.0.0.1."
        )


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def describe_validation_error(
    exc: ValidationError,
    source: str,
    data: Mapping[str, Any],
    *,
    prefix: tuple[str, ...] = (),
    root: type[BaseModel] | None = None,
) -> str:
    """One readable message per problem: the key, the bad value, what is expected.

    ``prefix`` and ``root`` describe a section validated on its own (a supervisor's): the keys are
    shown under ``prefix`` and looked up in ``root``.
    """
    lines = []
    for err in exc.errors(include_url=False):
        inner = [str(p) for p in err["loc"] if p != "source"]
        loc = [*prefix, *inner]
        key = _dotted(loc, data)
        if err["type"] == "extra_forbidden":
            parent = _lookup_model_fields(inner[:-1], root) if root else _lookup_model_fields(loc[:-1], data=data)
            if not loc[:-1]:
                parent = [*parent, *supervisor_sections()]
            hint = difflib.get_close_matches(loc[-1], parent, n=1)
            fix = f"did you mean `{hint[0]}`?" if hint else f"known keys here: {', '.join(sorted(parent))}"
            lines.append(f"unknown key `{key}`: {fix}")
            continue
        value = err.get("input")
        msg = err["msg"].removeprefix("Value error, ")
        expected = _field_description(inner, root) if root else _field_description(loc, data=data)
        fix = f" Expected: {expected}." if expected else ""
        if isinstance(value, dict | list):
            # A whole section or list: showing it could show a secret, and the message names the key.
            lines.append(f"`{key}`: {msg}.{fix}")
            continue
        shown = "***" if "api_key" in key or key == "ledger.url" else json.dumps(value, default=str)[:80]
        lines.append(f"`{key}` = {shown}: {msg}.{fix}")
    if len(lines) == 1:
        return f"{source}: invalid configuration: {lines[0]}"
    return f"{source}: invalid configuration:\n  " + "\n  ".join(lines)


def _dotted(loc: list[str], data: Mapping[str, Any]) -> str:
    out: list[str] = []
    node: Any = data
    for part in loc:
        if part.isdigit() and isinstance(node, list):
            item = node[int(part)] if int(part) < len(node) else {}
            name = item.get("name") if isinstance(item, dict) else None
            out[-1] = f"{out[-1]}[{part}]" + (f"(name={name!r})" if name else "")
            node = item
            continue
        out.append(part)
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return ".".join(out)


def _resolve_model(
    loc: list[str], root: type[BaseModel] | None = None, data: Mapping[str, Any] | None = None
) -> type[BaseModel] | None:
    """The model that holds the key at ``loc``; with ``data`` (the file), a ``[[hosts]]`` entry
    resolves to its own kind's model, so its own keys are known too."""
    model: type[BaseModel] = root or Config
    node: Any = data
    for part in loc:
        if part.isdigit():
            node = node[int(part)] if isinstance(node, list) and int(part) < len(node) else None
            if model is HostConfigBase and isinstance(node, dict):
                try:
                    model = BACKENDS.host_config_model(str(node.get("kind", DEFAULT_HOST_KIND)))
                except UnknownBackendError:
                    pass  # an unknown kind: the keys every kind has
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        node = node.get(part) if isinstance(node, dict) else None
        ann = field.annotation
        inner = getattr(ann, "__args__", None)
        candidates = [ann, *(inner or ())]
        # An Annotated item (a [[hosts]] entry) is its first argument.
        candidates = [get_args(c)[0] if get_origin(c) is Annotated else c for c in candidates]
        nxt = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nxt is None:
            return None
        model = nxt
    return model


def _lookup_model_fields(
    loc: list[str], root: type[BaseModel] | None = None, data: Mapping[str, Any] | None = None
) -> list[str]:
    model = _resolve_model(loc, root, data)
    return list(model.model_fields) if model else []


def _field_description(
    loc: list[str], root: type[BaseModel] | None = None, data: Mapping[str, Any] | None = None
) -> str | None:
    names = [p for p in loc if not p.isdigit()]
    if not names:
        return None
    model = _resolve_model(loc[: len(loc) - 1 - loc[::-1].index(names[-1])], root, data)
    if model is None:
        return None
    field = model.model_fields.get(names[-1])
    return field.description if field else None
