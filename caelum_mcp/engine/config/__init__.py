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

from caelum_mcp.core.pricing import DEFAULT_PRICES
from caelum_mcp.engine.backends.registry import HostConfig
from caelum_mcp.engine.config.loading import (
    describe_validation_error,
    find_config_file,
    ignored_project_config,
    load_config,
    normalize_ollama_host,
    read_trusted_config,
    supervisor_sections,
    user_config_file,
)
from caelum_mcp.engine.config.sections import (
    DEFAULT_OLLAMA_URL,
    LOOPBACK_NAMES,
    RESULT_TOKENS_CAP,
    ClaudeConfig,
    Config,
    DashboardConfig,
    LedgerConfig,
    MetricsConfig,
    PoolConfig,
    RouterConfig,
    Section,
    ServerConfig,
    TaskNeedsConfig,
    ToolsConfig,
    default_data_dir,
    too_broad_for_default_root,
)

__all__ = [
    "DEFAULT_OLLAMA_URL",
    "DEFAULT_PRICES",
    "LOOPBACK_NAMES",
    "RESULT_TOKENS_CAP",
    "ClaudeConfig",
    "Config",
    "DashboardConfig",
    "HostConfig",
    "LedgerConfig",
    "MetricsConfig",
    "PoolConfig",
    "RouterConfig",
    "Section",
    "ServerConfig",
    "TaskNeedsConfig",
    "ToolsConfig",
    "default_data_dir",
    "describe_validation_error",
    "find_config_file",
    "ignored_project_config",
    "load_config",
    "normalize_ollama_host",
    "read_trusted_config",
    "supervisor_sections",
    "too_broad_for_default_root",
    "user_config_file",
]
