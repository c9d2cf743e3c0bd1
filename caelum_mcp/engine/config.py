"""Configuration: one TOML file plus environment overrides, validated with pydantic.

Where the file comes from, first found wins: ``--config PATH``, ``$CAELUM_CONFIG``, then the user's
own ``$XDG_CONFIG_HOME/caelum/caelum.toml`` (``~/.config/caelum/caelum.toml``). Never the working
directory: a client starts the server in whatever project is open, and a config can run commands
(``kind = "command"`` probes, workflow steps), widen ``allowed_roots`` and send the Claude API key
to its ``[claude] base_url``, so a cloned repository's ``caelum.toml`` must not become the server's.
One there is named on stderr as ignored (``--config ./caelum.toml`` uses it on purpose). A file
that is group- or world-writable, or owned by another user (root excepted), is refused whichever
way it was named: whoever can write it could do all of the above.

No file at all is fine: Ollama at ``$OLLAMA_HOST`` (or ``http://127.0.0.1:11434``) if it answers,
else the embedded model; Claude if ``ANTHROPIC_API_KEY`` is set.

Environment overrides: ``CAELUM_<KEY>`` for top-level keys and ``CAELUM_<SECTION>__<KEY>`` for
nested ones (``CAELUM_ROUTER__CONFIDENCE_THRESHOLD=0.8``, ``CAELUM_CLAUDE__DAILY_BUDGET_USD=2``);
values are read as JSON when they parse, else as strings. ``ANTHROPIC_API_KEY`` and ``OLLAMA_HOST``
keep their usual meaning.

Every validation failure becomes one :class:`ConfigError` that names the key, the bad value and
what to write instead.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from caelum_mcp.core.errors import ConfigError
from caelum_mcp.core.llm import DEFAULT_NEEDS, TaskKind, TaskNeeds
from caelum_mcp.core.pricing import DEFAULT_PRICES, ModelPrice, price_for
from caelum_mcp.core.tokens import MAKE_TOKEN, token_weakness
from caelum_mcp.core.types import SIZE_TIERS, Tier
from caelum_mcp.engine.backends.base import HostConfigBase
from caelum_mcp.engine.backends.ollama import OllamaHostConfig
from caelum_mcp.engine.backends.registry import BACKENDS, DEFAULT_HOST_KIND, HostConfig, UnknownBackendError

M = TypeVar("M", bound=BaseModel)

DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"
# Claude Code rejects tool results over 25,000 tokens; no result may come near that.
RESULT_TOKENS_CAP = 20_000
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PoolConfig(Section):
    """``[pool]``: how requests reach the hosts. The time limits of a model call are
    ``call_deadline_s`` (the whole call) and ``first_byte_timeout_s`` (each attempt); the defaults
    are those of :class:`caelum_mcp.engine.pool.Pool`."""

    health_interval_s: float = Field(default=60.0, gt=0, description="seconds between background health checks")
    request_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="seconds any other HTTP exchange with a host may take (health checks, model lists)",
    )
    connect_timeout_s: float = Field(default=5.0, gt=0)
    call_deadline_s: float = Field(
        default=300.0,
        gt=0,
        le=3600,
        description="seconds one model call may take in all: waiting for a slot, attempts on several hosts and "
        "retries of a busy host (a task's time budget, when shorter, sets it instead)",
    )
    first_byte_timeout_s: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        description="seconds one attempt may wait for the host's first byte (a non-streamed answer arrives "
        "whole, so set it above your slowest host's longest answer); a host that passes it is taken out of "
        "rotation at once",
    )
    retry_after_cap_s: float = Field(
        default=30.0,
        ge=0,
        le=600,
        description="the longest wait honoured from a busy host's Retry-After before trying it again",
    )
    max_attempts: int = Field(
        default=3, ge=1, le=20, description="attempts for one request (other hosts, or a busy host again)"
    )
    breaker_failures: int = Field(default=3, ge=1, description="consecutive failures that open a host's breaker")
    breaker_cooldown_s: float = Field(default=30.0, gt=0, description="seconds before a half-open probe")
    ewma_alpha: float = Field(default=0.3, gt=0, le=1, description="weight of the newest latency sample")


class TaskNeedsConfig(Section):
    """``[router.tasks.<kind>]``: override what one kind of LLM task needs (unset keys keep the default)."""

    min_tier: Tier | None = Field(default=None, description="one of micro, small, full, large")
    max_output_tokens: int | None = Field(default=None, ge=16, le=32768)
    time_budget_s: float | None = Field(default=None, gt=0, le=3600)
    prefer_code: bool | None = None

    @field_validator("min_tier")
    @classmethod
    def _size_tier(cls, value: Tier | None) -> Tier | None:
        if value is not None and value not in SIZE_TIERS:
            raise ValueError("must be a size tier: micro, small, full or large")
        return value


class RouterConfig(Section):
    confidence_threshold: float = Field(
        default=0.75, ge=0, le=1, description="a number between 0 and 1 (answers below it escalate)"
    )
    escalate_local: bool = Field(default=True, description="try a larger local tier before Claude")
    default_tier: Tier = Field(default=Tier.SMALL, description="one of micro, small, full, large, code")
    max_tokens: int = Field(default=1024, ge=16, le=32768)
    temperature: float = Field(default=0.2, ge=0, le=2)
    calibration: bool = Field(
        default=True,
        description="report confidence as the calibrated probability that the answer is right (the shipped "
        "calibration, overridden by <data dir>/calibration.json); false = the raw fixed-weight score",
    )
    agreement_samples: int = Field(
        default=2,
        ge=0,
        le=8,
        description="extra samples of an answer whose calibrated confidence is in its uncertain band, compared "
        "with it (0 = never sample)",
    )
    agreement_temperature: float = Field(
        default=0.7, ge=0, le=2, description="sampling temperature of the agreement samples"
    )
    audit_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="share of locally served answers also sent to Claude, in the background and inside the daily "
        "budget, to label them for calibration (0 = off)",
    )
    competence_target: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="a task kind starts on the smallest local model whose measured accuracy at the threshold "
        "reaches this; measured models below it are skipped",
    )
    tasks: dict[TaskKind, TaskNeedsConfig] = Field(
        default_factory=dict,
        description="per task kind (general, classification, extraction, summary, qa, triage, sql, review, "
        "code_edit): min_tier, max_output_tokens, time_budget_s",
    )

    def needs_for(self, kind: TaskKind) -> TaskNeeds:
        """The needs of ``kind``: the built-in default with this config's overrides applied."""
        base = DEFAULT_NEEDS[kind]
        override = self.tasks.get(kind)
        if override is None:
            return base
        return base.model_copy(update=override.model_dump(exclude_none=True))


class ToolsConfig(Section):
    analyser_timeout_s: float = Field(
        default=120.0, gt=0, le=3600, description="seconds before ruff, bandit, radon, lizard or vulture is stopped"
    )
    audit_timeout_s: float = Field(
        default=60.0, gt=0, le=3600, description="seconds before the pip-audit vulnerability lookup is stopped"
    )
    test_env: tuple[str, ...] = Field(
        default=(),
        description="names of environment variables test runs also get, e.g. ['DATABASE_URL'] (besides PATH, "
        "HOME, TZ, TMPDIR, CI, the locale and the project's VIRTUAL_ENV); ANTHROPIC_API_KEY and CAELUM_* "
        "are refused",
    )

    @staticmethod
    def is_secret_env_name(name: str) -> bool:
        """Whether ``name`` is an environment variable that no test run may see, listed or not.

        A project's tests are code we did not write. ``CAELUM_*`` covers the settings that hold
        secrets (``CAELUM_CLAUDE__API_KEY``); case is ignored to be safe on every platform.
        """
        upper = name.upper()
        return upper == "ANTHROPIC_API_KEY" or upper.startswith("CAELUM_")

    @field_validator("test_env")
    @classmethod
    def _env_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        bad = [n for n in names if not (n.isascii() and n.isidentifier())]  # [A-Za-z_][A-Za-z0-9_]*
        if bad:
            raise ValueError(f"not environment variable names: {', '.join(repr(n[:60]) for n in bad)}")
        secret = [n for n in names if cls.is_secret_env_name(n)]
        if secret:
            raise ValueError(f"secrets are never passed to test runs; remove {', '.join(secret)} from the list")
        return names


_HOST_NAME = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
)


def _check_host_name(name: str) -> str:
    bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    try:
        ipaddress.ip_address(bare)
        return name
    except ValueError:
        pass
    if not _HOST_NAME.match(name):
        raise ValueError(f"{name[:100]!r} is not a host name; write a bare name such as 'caelum.example.org'")
    return name.lower()


class ClaudeConfig(Section):
    enabled: bool = Field(default=True, description="true or false: allow escalation to Claude at all")
    model: str = Field(default="claude-sonnet-5-5", description="the Claude model used for escalation")
    api_key: SecretStr | None = Field(default=None, description="normally taken from ANTHROPIC_API_KEY")
    base_url: str | None = Field(
        default=None,
        description="override the Anthropic API URL (tests, proxies); read only from your own config or the "
        "environment, since the API key is sent there",
    )
    daily_budget_usd: float | None = Field(
        default=5.0,
        ge=0,
        description="a dollar amount per UTC day, or remove the key for no cap (a call in flight holds the most "
        "it may cost against it, so concurrent calls cannot overspend)",
    )
    max_retries: int = Field(default=2, ge=0, le=10)
    timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="seconds one HTTP request to Claude may take (a task's time left, if less, wins)",
    )
    max_tokens: int = Field(default=2048, ge=16)
    structured_output: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="send the output schema as the API's structured-output parameter: 'auto' (models that "
        "support it), 'on' or 'off' (in the system prompt instead)",
    )

    @property
    def configured(self) -> bool:
        return self.enabled and self.api_key is not None and bool(self.api_key.get_secret_value())


class ServerConfig(Section):
    transport: Literal["stdio", "http", "sse"] = "stdio"
    host: str = Field(default="127.0.0.1", description="bind address; loopback unless a bearer token is set")
    port: int = Field(default=8765, ge=0, le=65535)
    bearer_token_env: str | None = Field(
        default=None, description="environment variable holding the bearer token HTTP clients must send"
    )
    heartbeat_s: float = Field(
        default=10.0,
        ge=0.05,
        le=600,
        description="seconds without progress after which a running tool call says it is still working",
    )
    public_names: tuple[str, ...] = Field(
        default=(),
        description="host names clients use to reach an HTTP server (e.g. behind a proxy), besides its bind "
        "address and loopback; requests naming any other host are refused (DNS-rebinding protection)",
    )
    result_tokens: int = Field(
        default=4000,
        ge=500,
        le=RESULT_TOKENS_CAP,
        description=f"token budget of one tool result (lists are cut, with counts); at most {RESULT_TOKENS_CAP}",
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="'text', or 'json': one object a line with the tool call's request_id"
    )

    @field_validator("public_names")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_host_name(n) for n in value)


class DashboardConfig(Section):
    """``[dashboard]``: the web page at ``/`` of the HTTP server (same auth as ``/mcp``)."""

    enabled: bool = Field(default=True, description="serve the dashboard at / and /dashboard over HTTP")
    port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="with the stdio transport, also serve the dashboard on 127.0.0.1 at this port (0: any free "
        "port, printed to stderr); the same as `serve --dashboard-port`",
    )
    recent_calls: int = Field(default=50, ge=1, le=500, description="how many of the latest tool calls it lists")


class MetricsConfig(Section):
    """``[metrics]``: Prometheus metrics at ``/metrics`` (same auth as ``/mcp``)."""

    enabled: bool = Field(default=True, description="serve /metrics on the HTTP server (and the dashboard port)")
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="also serve /metrics WITHOUT auth on 127.0.0.1 at this port, for a local scraper",
    )


class LedgerConfig(Section):
    """``[ledger]``: where the cost ledger lives; one PostgreSQL ledger can be shared by several servers."""

    url: SecretStr | None = Field(
        default=None,
        description="postgresql://user:password@host:5432/dbname to share one ledger (and one Claude budget) "
        "between servers; leave it out for the SQLite file in the data folder",
    )

    @field_validator("url")
    @classmethod
    def _postgres_only(cls, value: SecretStr | None) -> SecretStr | None:
        # The value may hold a password: the message never repeats it.
        if value is not None and urlsplit(value.get_secret_value().strip()).scheme not in ("postgresql", "postgres"):
            raise ValueError(
                "the ledger URL must start with postgresql:// (e.g. postgresql://caelum@db.internal/caelum); "
                "leave it out for the SQLite ledger in the data folder"
            )
        return value


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "caelum"


class Config(Section):
    data_dir: Path = Field(default_factory=default_data_dir, description="where the ledger and caches live")
    embedded: Literal["auto", "on", "off"] = Field(
        default="auto", description="'auto' (only if no other local host is healthy), 'on' or 'off'"
    )
    implicit_ollama: bool = Field(
        default=True,
        description="with no [[hosts]]: use an Ollama at $OLLAMA_HOST or http://127.0.0.1:11434 if it answers",
    )
    embedded_threads: int = Field(
        default=0,
        ge=0,
        description="CPU threads for the embedded chat model (0 = half the cores, at least 1); the embedding model "
        "runs this many single-thread instances (0 = one per core, the extra ones at low priority)",
    )
    allowed_roots: tuple[Path, ...] = Field(
        default=(),
        description="folders tools may read (default: the server's working directory, unless that is / or the "
        "home folder: then none until you set this or pass serve --root)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    hosts: tuple[HostConfig, ...] = ()
    tiers: dict[str, Tier] = Field(default_factory=dict, description="model name -> tier, for every host")
    pool: PoolConfig = PoolConfig()
    router: RouterConfig = RouterConfig()
    tools: ToolsConfig = ToolsConfig()
    claude: ClaudeConfig = ClaudeConfig()
    server: ServerConfig = ServerConfig()
    dashboard: DashboardConfig = DashboardConfig()
    metrics: MetricsConfig = MetricsConfig()
    ledger: LedgerConfig = LedgerConfig()
    prices: dict[str, ModelPrice] = Field(default_factory=dict)
    source: str = Field(default="defaults", exclude=True, description="where this config came from")
    sections: dict[str, Any] = Field(
        default_factory=dict,
        exclude=True,
        description="supervisors' own sections (e.g. [infrastructure]), each validated by the supervisor's "
        "settings model; see supervisor_sections()",
    )

    def section(self, name: str, model: type[M]) -> M:
        """The supervisor section ``name`` as ``model`` (its defaults when the file has none)."""
        value = self.sections.get(name)
        return value if isinstance(value, model) else model()

    @field_validator("hosts")
    @classmethod
    def _unique_names(cls, hosts: tuple[HostConfig, ...]) -> tuple[HostConfig, ...]:
        # A field validator (not a model validator) so the error names `hosts`, not the whole file.
        names = [h.name for h in hosts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"host names must be unique; repeated: {', '.join(dupes)}; rename one of them")
        return hosts

    def price_for(self, model: str) -> ModelPrice | None:
        """The price of a Claude model; dated ids (claude-sonnet-4-5-20250929) match their family."""
        return price_for(model, {**DEFAULT_PRICES, **self.prices})

    def resolved_roots(self, cwd: Path | None = None) -> tuple[Path, ...]:
        """The folders tools may read: ``allowed_roots``, else the working directory (``cwd``).

        The working directory is no root when it is ``/``, the home folder or a folder above it:
        Claude Desktop starts its servers in ``/``, and the whole disk must never become readable by
        default. Then this is empty and the tools that read files refuse, saying to set
        ``allowed_roots`` or pass ``--root`` (roots the client offers still count).
        """
        if self.allowed_roots:
            return tuple(Path(os.path.expanduser(r)).resolve() for r in self.allowed_roots)
        here = (cwd or Path.cwd()).resolve()
        return () if too_broad_for_default_root(here) else (here,)


def too_broad_for_default_root(folder: Path) -> bool:
    """Whether ``folder`` (resolved) is ``/``, the home folder or above it: never a root by default."""
    home = Path.home().resolve()
    return folder == Path(folder.anchor) or folder == home or folder in home.parents


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
