"""The analysers (ruff, bandit, pip-audit ...) read hostile project files: they never see the
server's secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from caelum_mcp.tools.code.analysers import analyser_env, run_python_analyser
from caelum_mcp.tools.code.models import AnalyzerError

SECRETS = {
    "ANTHROPIC_API_KEY": "sk-ant-api03-" + "k" * 40,
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "GITHUB_TOKEN": "ghp_" + "a" * 36,
    "CAELUM_CLAUDE__API_KEY": "sk-ant-api03-" + "c" * 40,
}


async def test_an_analyser_runs_without_the_servers_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    # timeit's setup runs first: it fails the run when any secret is in the environment it was given
    check = f"import os; assert not set({sorted(SECRETS)!r}) & set(os.environ), 'a secret got through'"
    result = await run_python_analyser("env-check", "timeit", ["-n", "1", "-s", check, "pass"], cwd=tmp_path)
    assert not isinstance(result, AnalyzerError), result
    assert result.returncode == 0, result.stderr
    env = analyser_env(tmp_path)
    assert not set(SECRETS) & set(env)
    assert env["HTTPS_PROXY"] == "http://127.0.0.1:3128"  # pip-audit still reaches its index through a proxy
    assert "PATH" in env and "HOME" in env
