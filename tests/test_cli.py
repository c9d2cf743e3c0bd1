"""The ``caelum-mcp`` command as a user runs it: real subprocesses, controlled environment.

Each run gets its own HOME and CAELUM_DATA_DIR under tmp and runs in a tmp working directory,
so no config or ledger of the machine's user is read.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path

import pytest
from fakes.cli_runs import Run, cli_env, run_cli
from mcp import Client, StdioServerParameters

from caelum_mcp import __version__

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 150


def dead_host(name: str = "gpu-1") -> dict[str, str]:
    """CAELUM_HOSTS naming one host on a loopback port nothing listens on (just freed by the OS)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return {"CAELUM_HOSTS": json.dumps([{"name": name, "url": f"http://127.0.0.1:{port}"}])}


def caelum(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Run:
    return run_cli(
        args, env=env if env is not None else cli_env(tmp, CAELUM_EMBEDDED="on"), cwd=tmp, timeout_s=TIMEOUT_S
    )


@pytest.fixture(scope="module")
def delegated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Run]:
    """One real ``call delegate_task`` (stdio server + embedded model), shared by the tests below."""
    tmp = tmp_path_factory.mktemp("cli-call")
    run = caelum(tmp, "call", "delegate_task", "prompt=Name a fruit.", "tier=micro", "max_tokens=40")
    return tmp, run


def test_version(tmp_path: Path) -> None:
    run = caelum(tmp_path, "--version")
    assert run.code == 0, run
    assert run.out.strip() == f"caelum-mcp {__version__}"


def test_doctor_with_the_embedded_model_can_serve(tmp_path: Path) -> None:
    run = caelum(tmp_path, "doctor", env=cli_env(tmp_path, CAELUM_EMBEDDED="on", **dead_host()))
    assert run.code == 0, run
    assert "[OK  ] host embedded (openai) http://127.0.0.1:" in run.out
    assert "model smollm2:135m" in run.out and "tiers=micro" in run.out
    assert "[FAIL] host gpu-1" in run.out  # the configured host does not answer, and doctor says so
    assert "can serve: yes" in run.out


def test_doctor_with_nothing_to_serve_fails(tmp_path: Path) -> None:
    env = cli_env(tmp_path, CAELUM_EMBEDDED="off", **dead_host())
    run = caelum(tmp_path, "doctor", env=env)
    assert run.code == 1, run
    assert "can serve: NO" in run.out
    assert "embedded model: off by configuration" in run.out
    assert "start Ollama or enable the embedded model" in run.out

    as_json = caelum(tmp_path, "doctor", "--json", env=env)
    assert as_json.code == 1, as_json
    report = json.loads(as_json.out)
    assert report["can_serve"] is False
    assert [h["name"] for h in report["hosts"]] == ["gpu-1"]


def test_call_delegate_task_prints_the_result_and_progress(delegated: tuple[Path, Run]) -> None:
    _, run = delegated
    assert run.code == 0, run
    result = json.loads(run.out)
    execution = result["execution"]
    assert (execution["host"], execution["model"], execution["tier"]) == ("embedded", "smollm2:135m", "micro")
    assert execution["output_tokens"] > 0 and 0 <= execution["confidence"] <= 1
    assert result["answer"] is not None
    assert "asking the local pool (micro)" in run.err  # progress notifications, on stderr


def test_status_shows_the_calls_in_the_ledger(delegated: tuple[Path, Run]) -> None:
    tmp, call = delegated
    attempts = json.loads(call.out)["execution"]["attempts"]
    run = caelum(tmp, "status")
    assert run.code == 0, run
    assert f"calls: {attempts} (local {attempts}, Claude 0, failed 0)" in run.out
    assert "tool calls: 1" in run.out and "embedding (apart from the calls): 0 rows" in run.out
    assert "smollm2:135m" in run.out
    as_json = caelum(tmp, "status", "--json")
    assert json.loads(as_json.out)["calls"] == attempts


def test_status_without_a_ledger_says_so(tmp_path: Path) -> None:
    run = caelum(tmp_path, "status")
    assert run.code == 0, run
    assert "no ledger yet" in run.out


def test_call_with_a_bad_argument_shows_the_tool_message(tmp_path: Path) -> None:
    env = cli_env(tmp_path, CAELUM_EMBEDDED="off")  # rejected before any model is needed
    run = caelum(tmp_path, "call", "delegate_task", "prompt=hi", "tier=huge", env=env)
    assert run.code == 1, run
    assert "tier: Input should be 'micro'" in run.err
    assert run.out == ""

    malformed = caelum(tmp_path, "call", "delegate_task", "prompt", env=env)
    assert malformed.code == 2, malformed
    assert "not key=value" in malformed.err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[router]\nconfidence_threshold = \n", "not valid TOML"),
        ("[router]\nconfidence_threshold = 1.5\n", "router.confidence_threshold"),
        ("[router]\nconfidence_treshold = 0.5\n", "did you mean `confidence_threshold`"),
    ],
)
def test_broken_config_exits_2_with_one_clear_line(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "broken.toml"
    config.write_text(text)
    run = caelum(tmp_path, "--config", str(config), "doctor")
    assert run.code == 2, run
    assert expected in run.err and str(config) in run.err
    assert "Traceback" not in run.err
    assert len(run.err.strip().splitlines()) == 1, run
    assert run.out == ""


async def test_mcp_json_starts_a_server_that_answers(tmp_path: Path) -> None:
    entry = json.loads((ROOT / "mcp.json").read_text())["mcpServers"]["caelum"]
    assert entry["command"] == "caelum-mcp" and entry["args"][0] == "serve"
    # Clients look the command up on PATH; here it is the venv's console script.
    script = shutil.which(entry["command"], path=str(Path(sys.executable).parent))
    assert script is not None, "the caelum-mcp console script is not installed in this venv"
    params = StdioServerParameters(
        command=script,
        args=entry["args"],
        env={**cli_env(tmp_path, CAELUM_EMBEDDED="off"), **entry["env"]},
        cwd=str(tmp_path),
    )
    async with Client(params) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
    assert {"delegate_task", "pool_status"} <= tools
