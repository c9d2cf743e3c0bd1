"""How ``caelum-mcp`` fails at start-up, run as a user runs it: one line on stderr that says what
went wrong and how to fix it, a non-zero exit, no traceback (unless ``--debug``).

Also the first-use details of the CLI: ``doctor`` on the Ollama nobody configured, and ``call``
keeping the data folder the user chose. No model is started: every server here has the embedded
model and the implicit Ollama off.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes.cli_runs import Run, cli_env, run_cli

pytestmark = pytest.mark.slow  # each case starts the CLI in a subprocess

TIMEOUT_S = 120


def env_for(tmp: Path, **extra: str) -> dict[str, str]:
    # the lines a failure adds, not the info lines of a start
    return cli_env(tmp, CAELUM_EMBEDDED="off", CAELUM_LOG_LEVEL="warning", **extra)


def caelum(tmp: Path, *args: str, env: dict[str, str], timeout_s: float = TIMEOUT_S) -> Run:
    work = tmp / "work"
    work.mkdir(exist_ok=True)
    return run_cli(args, env=env, cwd=work, timeout_s=timeout_s)


def assert_one_clear_line(run: Run, *fix: str) -> None:
    assert run.code != 0, run
    assert "Traceback" not in run.err, run
    assert len(run.err_lines) == 1, run
    for words in fix:
        assert words in run.err, run


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_http_serve_on_a_port_in_use_says_to_pick_another(tmp_path: Path, busy_port: int) -> None:
    run = caelum(tmp_path, "serve", "--transport", "http", "--port", str(busy_port), env=env_for(tmp_path))
    assert_one_clear_line(run, f"port {busy_port}", "already in use", "--port N")
    assert "serving MCP at" not in run.err  # no "serving" announcement before the failure


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_a_data_folder_that_cannot_be_made_is_named_with_the_fix(tmp_path: Path, transport: str) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the data folder should go")
    env = env_for(tmp_path, CAELUM_DATA_DIR=str(blocker / "caelum"))
    run = caelum(tmp_path, "serve", "--transport", transport, "--port", "0", env=env)
    assert_one_clear_line(run, str(blocker / "caelum"), "CAELUM_DATA_DIR")

    debug = caelum(tmp_path, "--debug", "serve", "--transport", transport, "--port", "0", env=env)
    assert debug.code != 0 and "Traceback" in debug.err, debug


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_a_corrupt_ledger_stops_the_start_with_one_line(tmp_path: Path, transport: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "ledger.sqlite3").write_bytes(b"not a database " * 400)
    run = caelum(tmp_path, "serve", "--transport", transport, "--port", "0", env=env_for(tmp_path))
    assert_one_clear_line(run, "ledger.sqlite3", "move the file aside")
    assert "serving MCP at" not in run.err and "startup failed" not in run.err


@pytest.mark.parametrize(
    ("setting", "fix"),
    [
        ({"CAELUM_HOSTS": json.dumps([{"name": "gpu", "url": "gpu-box:11434"}])}, "must be an http(s) URL"),
        ({"CAELUM_CONFIG": "missing.toml"}, "does not exist"),
    ],
)
def test_a_bad_host_url_or_config_file_is_one_line(tmp_path: Path, setting: dict[str, str], fix: str) -> None:
    run = caelum(tmp_path, "serve", env=env_for(tmp_path, **setting))
    assert_one_clear_line(run, fix)


def test_doctor_says_not_found_for_the_default_ollama_nobody_configured(tmp_path: Path) -> None:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 11434)) == 0:
            pytest.skip("something listens on the default Ollama port here")
    run = caelum(tmp_path, "doctor", env=env_for(tmp_path, CAELUM_IMPLICIT_OLLAMA="true"))
    assert run.code == 1, run  # nothing can serve: still a failed check overall
    assert "[FAIL] host ollama" not in run.out, run
    assert "[INFO] host ollama (ollama) http://127.0.0.1:11434: not found" in run.out, run
    assert "install and start Ollama" in run.out and "[[hosts]]" in run.out


def test_call_keeps_the_data_folder_of_xdg_data_home(tmp_path: Path) -> None:
    env = env_for(tmp_path, XDG_DATA_HOME=str(tmp_path / "xdg-data"))
    del env["CAELUM_DATA_DIR"]
    run = caelum(tmp_path, "call", "pool_status", env=env)
    assert run.code == 0, run
    assert (tmp_path / "xdg-data" / "caelum" / "ledger.sqlite3").is_file(), run
    assert not (tmp_path / "home" / ".local" / "share" / "caelum").exists(), "a second data folder was made"
