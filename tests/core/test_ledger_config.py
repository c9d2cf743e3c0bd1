"""``[ledger] url``: PostgreSQL only, and never shown back (it may hold a password)."""

from __future__ import annotations

from pathlib import Path

import pytest

from caelum_mcp.core.errors import ConfigError
from caelum_mcp.engine.config import load_config


def test_no_url_means_the_sqlite_file_in_the_data_folder() -> None:
    assert load_config(environ={}).ledger.url is None


def test_a_postgresql_url_is_kept_and_hidden_from_reprs(tmp_path: Path) -> None:
    file = tmp_path / "caelum.toml"
    file.write_text('[ledger]\nurl = "postgresql://caelum:hunter2@127.0.0.1:5432/caelum"\n')
    file.chmod(0o600)
    config = load_config(file, environ={})
    assert config.ledger.url is not None
    assert config.ledger.url.get_secret_value() == "postgresql://caelum:hunter2@127.0.0.1:5432/caelum"
    assert "hunter2" not in repr(config) and "hunter2" not in str(config.model_dump())


@pytest.mark.parametrize("url", ["mysql://caelum:hunter2@127.0.0.1/caelum", "/var/lib/ledger.sqlite3", "hunter2"])
def test_another_scheme_is_refused_without_repeating_the_value(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={"CAELUM_LEDGER__URL": url})
    message = str(info.value)
    assert "postgresql://" in message and "ledger.url" in message
    assert "hunter2" not in message and url not in message
