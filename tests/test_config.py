"""Configuration: where the file comes from, environment overrides, and errors a user can act on."""

from __future__ import annotations

from pathlib import Path

import pytest

from caelum_mcp.core.errors import ConfigError
from caelum_mcp.core.types import Tier
from caelum_mcp.engine.backends.ollama import OllamaHostConfig
from caelum_mcp.engine.backends.openai import OpenAIHostConfig
from caelum_mcp.engine.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-ant-api03-test-SECRET-0123456789"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No ~/.config/caelum/caelum.toml or ./caelum.toml of the user's can leak into a test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def config_error(text: str, tmp_path: Path, environ: dict[str, str] | None = None) -> str:
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ or {})
    return str(info.value)


def test_defaults_without_any_file(tmp_path: Path) -> None:
    config = load_config(environ={})
    assert config.source == "defaults"
    assert config.hosts == ()  # the app then tries Ollama at 127.0.0.1:11434
    assert config.router.confidence_threshold == 0.75
    assert config.router.default_tier is Tier.SMALL
    assert config.claude.api_key is None and not config.claude.configured
    assert (config.server.transport, config.server.host, config.server.port) == ("stdio", "127.0.0.1", 8765)
    assert config.embedded == "auto"
    assert config.data_dir == tmp_path / "home" / ".local" / "share" / "caelum"


def test_file_precedence_explicit_then_env_then_the_users_own_never_the_working_directory(
    tmp_path: Path, isolated: Path
) -> None:
    home_file = write(tmp_path / "home" / ".config" / "caelum" / "caelum.toml", "[router]\nmax_tokens = 100\n")
    assert load_config(environ={}).source == str(home_file)

    xdg_file = write(tmp_path / "xdg" / "caelum" / "caelum.toml", "[router]\nmax_tokens = 150\n")
    config = load_config(environ={"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert config.source == str(xdg_file) and config.router.max_tokens == 150

    write(isolated / "caelum.toml", "[router]\nmax_tokens = 200\n")  # a project's file: never read
    config = load_config(environ={})
    assert config.source == str(home_file) and config.router.max_tokens == 100

    env_file = write(tmp_path / "env.toml", "[router]\nmax_tokens = 300\n")
    config = load_config(environ={"CAELUM_CONFIG": str(env_file)})
    assert config.source == str(env_file) and config.router.max_tokens == 300

    explicit = write(tmp_path / "explicit.toml", "[router]\nmax_tokens = 400\n")
    config = load_config(explicit, environ={"CAELUM_CONFIG": str(env_file)})
    assert config.source == str(explicit) and config.router.max_tokens == 400


def test_environment_overrides_file_and_nested_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "embedded = 'on'\n[router]\nconfidence_threshold = 0.6\n")
    env = {
        "CAELUM_ROUTER__CONFIDENCE_THRESHOLD": "0.9",
        "CAELUM_EMBEDDED": "off",
        "CAELUM_DATA_DIR": str(tmp_path / "data"),
        "CAELUM_CLAUDE__DAILY_BUDGET_USD": "2.5",
        "CAELUM_SERVER__PORT": "9000",
    }
    config = load_config(path, environ=env)
    assert config.router.confidence_threshold == 0.9
    assert config.embedded == "off"
    assert config.data_dir == tmp_path / "data"
    assert config.claude.daily_budget_usd == 2.5
    assert config.server.port == 9000
    # Explicit overrides (the CLI's --transport/--port) beat the environment.
    assert load_config(path, environ=env, overrides={"server.port": 9100}).server.port == 9100


def test_anthropic_api_key_is_used_and_never_shown() -> None:
    config = load_config(environ={"ANTHROPIC_API_KEY": SECRET})
    assert config.claude.api_key is not None
    assert config.claude.api_key.get_secret_value() == SECRET
    assert config.claude.configured
    assert SECRET not in repr(config) and SECRET not in config.model_dump_json()


@pytest.mark.parametrize(
    "text",
    [
        "[router]\nconfidence_threshold = 1.5\n",
        "[claude]\nmodle = 'x'\n",
        "[claude]\nmax_retries = 'many'\n",
        # [claude] first: an error about the whole file must not dump the section holding the key.
        "[claude]\nenabled = true\n[[hosts]]\nname = 'a'\nurl = 'http://127.0.0.1:1'\n"
        "[[hosts]]\nname = 'a'\nurl = 'http://127.0.0.1:2'\n",
    ],
)
def test_api_key_never_appears_in_errors(tmp_path: Path, text: str) -> None:
    # The key sits in the claude section of the merged data; no error may echo any of it.
    message = config_error(text, tmp_path, environ={"ANTHROPIC_API_KEY": SECRET})
    assert "sk-ant" not in message
    with pytest.raises(ConfigError) as info:
        load_config(environ={"ANTHROPIC_API_KEY": SECRET, "CAELUM_CLAUDE__TIMEOUT_S": "-1"})
    assert "claude.timeout_s" in str(info.value) and SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:11434"),
        ("127.0.0.1:11500", "http://127.0.0.1:11500"),
        ("http://127.0.0.1:11500", "http://127.0.0.1:11500"),
        ("0.0.0.0", "http://127.0.0.1:11434"),  # the server's bind-all address, reached on loopback
        ("0.0.0.0:11500", "http://127.0.0.1:11500"),
        ("https://127.0.0.1", "https://127.0.0.1:443"),
    ],
)
def test_ollama_host_forms(value: str, url: str) -> None:
    config = load_config(environ={"OLLAMA_HOST": value})
    assert [(h.name, h.kind, h.url) for h in config.hosts] == [("ollama", "ollama", url)]


async def test_the_implicit_ollama_host_can_be_switched_off(tmp_path: Path) -> None:
    import httpx2

    from caelum_mcp.serving.app import build_pool

    async with httpx2.AsyncClient() as http:
        on = load_config(environ={})
        assert on.implicit_ollama is True
        assert [h.backend.base_url for h in build_pool(on, http, {}).hosts.values()] == ["http://127.0.0.1:11434"]
        off = load_config(environ={"CAELUM_IMPLICIT_OLLAMA": "false", "OLLAMA_HOST": "127.0.0.1:11500"})
        assert off.implicit_ollama is False and off.hosts == ()  # OLLAMA_HOST names the implicit host only
        assert build_pool(off, http, {}).hosts == {}
        path = write(
            tmp_path / "c.toml", "implicit_ollama = false\n[[hosts]]\nname = 'gpu-1'\nurl = 'http://127.0.0.1:11435'\n"
        )
        assert list(build_pool(load_config(path, environ={}), http, {}).hosts) == ["gpu-1"]  # configured ones stay


def test_ollama_host_does_not_replace_configured_hosts(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[[hosts]]\nname = 'gpu-1'\nurl = 'http://127.0.0.1:11435'\n")
    config = load_config(path, environ={"OLLAMA_HOST": "127.0.0.1:11500"})
    assert [h.name for h in config.hosts] == ["gpu-1"]


def test_threshold_out_of_range_names_key_value_and_fix(tmp_path: Path) -> None:
    message = config_error("[router]\nconfidence_threshold = 1.5\n", tmp_path)
    assert "router.confidence_threshold" in message
    assert "1.5" in message
    assert "between 0 and 1" in message
    assert "bad.toml" in message


def test_negative_embedded_threads_names_key_value_and_fix(tmp_path: Path) -> None:
    message = config_error("embedded_threads = -2\n", tmp_path)
    assert "embedded_threads" in message and "-2" in message
    assert "greater than or equal to 0" in message


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    message = config_error("[router]\nconfidence_treshold = 0.8\n", tmp_path)
    assert "unknown key `router.confidence_treshold`" in message
    assert "did you mean `confidence_threshold`" in message
    nested = config_error("[[hosts]]\nname = 'gpu-1'\nurl = 'http://127.0.0.1:1'\nmax_concurency = 2\n", tmp_path)
    assert "gpu-1" in nested and "did you mean `max_concurrency`" in nested


def test_host_with_a_bad_url(tmp_path: Path) -> None:
    message = config_error("[[hosts]]\nname = 'gpu-1'\nurl = '127.0.0.1:11434'\n", tmp_path)
    assert "hosts[0](name='gpu-1').url" in message
    assert '"127.0.0.1:11434"' in message
    assert "http://127.0.0.1:11434" in message  # what to write instead


def test_host_entries_load_as_their_kinds_own_model(tmp_path: Path) -> None:
    # The file format is what it was: no kind means Ollama, and an OpenAI-compatible host with the
    # keep_alive older files could set still loads (the key never reached its wire).
    path = write(
        tmp_path / "c.toml",
        "[[hosts]]\nname = 'gpu'\nurl = 'http://127.0.0.1:11434/'\nkeep_alive = -1\n"
        "[[hosts]]\nname = 'cpp'\nkind = 'openai'\nurl = 'http://127.0.0.1:8080'\nkeep_alive = '5m'\n",
    )
    gpu, cpp = load_config(path, environ={}).hosts
    assert isinstance(gpu, OllamaHostConfig) and (gpu.kind, gpu.url, gpu.keep_alive) == (
        "ollama",
        "http://127.0.0.1:11434",
        -1,
    )
    assert isinstance(cpp, OpenAIHostConfig) and cpp.kind == "openai"
    (implicit,) = load_config(environ={"OLLAMA_HOST": "127.0.0.1:11500"}).hosts
    assert isinstance(implicit, OllamaHostConfig) and implicit.url == "http://127.0.0.1:11500"


def test_unknown_host_kind_names_the_kinds_there_are(tmp_path: Path) -> None:
    message = config_error("[[hosts]]\nname = 'gpu'\nkind = 'vllm'\nurl = 'http://127.0.0.1:8000'\n", tmp_path)
    assert "`hosts[0](name='gpu').kind` = \"vllm\": unknown host kind" in message
    assert "'ollama' (Ollama's native API, the default)" in message
    assert "'openai' (llama.cpp, vLLM, LM Studio, Ollama's /v1)" in message


def test_duplicate_host_names(tmp_path: Path) -> None:
    text = (
        "[[hosts]]\nname = 'gpu'\nurl = 'http://127.0.0.1:11434'\n"
        "[[hosts]]\nname = 'gpu'\nurl = 'http://127.0.0.1:11435'\n"
    )
    message = config_error(text, tmp_path)
    assert "`hosts`" in message and "unique" in message and "gpu" in message
    assert "11435" not in message  # names the problem, does not dump the whole section


def test_toml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    message = config_error("[router]\nconfidence_threshold = \n", tmp_path)
    assert "not valid TOML" in message and "line 2" in message


def test_missing_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; check the --config path"):
        load_config(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="CAELUM_CONFIG points to"):
        load_config(environ={"CAELUM_CONFIG": str(tmp_path / "nope.toml")})


def test_non_loopback_bind_needs_a_bearer_token(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[server]\nhost = '0.0.0.0'\nbearer_token_env = 'MY_TOKEN'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "bearer token" in str(info.value) and "server.bearer_token_env" in str(info.value)
    with pytest.raises(ConfigError):
        load_config(environ={"CAELUM_SERVER__HOST": "gpu-1.lan"})
    config = load_config(path, environ={"MY_TOKEN": "test-only-token-0123456789abcdefghijklmnopqrstuvwxyz"})
    assert config.server.host == "0.0.0.0"
    assert load_config(environ={"CAELUM_SERVER__HOST": "::1"}).server.host == "::1"


def test_secret_variables_named_caelum_are_not_read_as_settings(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[server]\nbearer_token_env = 'CAELUM_TOKEN'\n")
    config = load_config(path, environ={"CAELUM_TOKEN": "s3cret"})
    assert config.server.bearer_token_env == "CAELUM_TOKEN"
    # A CAELUM_ variable that is not a secret's name is still checked.
    with pytest.raises(ConfigError, match="unknown key `tokn`"):
        load_config(path, environ={"CAELUM_TOKN": "x"})


def test_example_config_loads_and_validates() -> None:
    config = load_config(ROOT / "caelum.example.toml", environ={})
    assert isinstance(config, Config)
    hosts = {h.name: h for h in config.hosts}
    assert set(hosts) == {"gpu-1", "gpu-2", "llamacpp"}
    assert hosts["gpu-1"].models == ("qwen3:30b", "qwen3-coder:30b")
    assert hosts["gpu-1"].tiers == {"qwen3-coder:30b": Tier.CODE}
    assert hosts["gpu-2"].max_concurrency == 4 and "nomic-embed-text" in hosts["gpu-2"].models
    assert hosts["llamacpp"].kind == "openai"
    assert all(h.url.startswith("http://127.0.0.1:") for h in config.hosts)
    assert config.tiers == {"nomic-embed-text": Tier.EMBEDDING}
    assert config.claude.daily_budget_usd == 2.0
    assert config.claude.model == "claude-sonnet-5-5"
    price = config.price_for(config.claude.model + "-20261001")  # dated ids match their family
    assert price is not None and (price.input, price.output) == (2.0, 10.0)


def test_public_names_must_be_host_names() -> None:
    config = load_config(environ={"CAELUM_SERVER__PUBLIC_NAMES": '["Caelum.Example.org", "[::2]"]'})
    assert config.server.public_names == ("caelum.example.org", "[::2]")
    with pytest.raises(ConfigError, match=r"public_names.*not a host name"):
        load_config(environ={"CAELUM_SERVER__PUBLIC_NAMES": '["http://caelum.example.org/"]'})
