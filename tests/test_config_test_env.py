"""``[tools] test_env``: the extra variables test runs may see; names only, never a secret's."""

from __future__ import annotations

from pathlib import Path

import pytest

from caelum_mcp.core.errors import ConfigError
from caelum_mcp.engine.config import ToolsConfig, load_config


def load(tmp_path: Path, toml: str, environ: dict[str, str] | None = None) -> ToolsConfig:
    path = tmp_path / "caelum.toml"
    path.write_text(toml, encoding="utf-8")
    return load_config(path, environ=environ or {}).tools


def test_defaults_to_no_extras(tmp_path: Path) -> None:
    assert load(tmp_path, "").test_env == ()


def test_names_from_the_file_and_from_the_environment(tmp_path: Path) -> None:
    assert load(tmp_path, '[tools]\ntest_env = ["DATABASE_URL", "REDIS_URL"]\n').test_env == (
        "DATABASE_URL",
        "REDIS_URL",
    )
    from_env = load(tmp_path, "", {"CAELUM_TOOLS__TEST_ENV": '["DATABASE_URL"]'})
    assert from_env.test_env == ("DATABASE_URL",)


@pytest.mark.parametrize(
    ("names", "said"),
    [
        ('["ANTHROPIC_API_KEY"]', "remove ANTHROPIC_API_KEY from"),
        ('["DATABASE_URL", "CAELUM_CLAUDE__API_KEY"]', "remove CAELUM_CLAUDE__API_KEY from"),
        ('["anthropic_api_key"]', "secrets are never passed"),
        ('["DATABASE URL"]', "not environment variable names: 'DATABASE URL'"),
        ('["A=B"]', "not environment variable names"),
        ('["1ABC"]', "not environment variable names"),
    ],
)
def test_bad_or_secret_names_are_refused_naming_the_key(tmp_path: Path, names: str, said: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"[tools]\ntest_env = {names}\n")
    assert "tools.test_env" in str(info.value) and said in str(info.value), str(info.value)
