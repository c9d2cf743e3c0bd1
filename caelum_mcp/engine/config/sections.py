"""The config's sections: one pydantic model each, and :class:`Config` holding them.

See :mod:`caelum_mcp.engine.config` for where the file comes from and how it is read.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
)

from caelum_mcp.core.llm import DEFAULT_NEEDS, TaskKind, TaskNeeds
from caelum_mcp.core.pricing import DEFAULT_PRICES, ModelPrice, price_for
from caelum_mcp.core.types import SIZE_TIERS, Tier
from caelum_mcp.engine.backends.registry import HostConfig

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
    reservation_grace_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="seconds a Claude budget reservation outlives its call's deadline: what a server that dies "
        "mid-call (kill -9, power loss) keeps holding of the shared budget until then",
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
