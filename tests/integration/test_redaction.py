"""Secrets never leave in a tool result, wherever they turn up: patch diffs, review comments, test
failure text. The scanner's own fixture secrets are planted in each place; the server redacts every
string of every result where results are built (``ToolRuntime.fit``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mcp import Client
from mcp.types import CallToolResult, TextContent

from caelum_mcp.core.types import ChatRequest
from caelum_mcp.engine.backends.scripted import ScriptedBackend, ScriptedReply
from caelum_mcp.engine.hosts import Host
from caelum_mcp.tools.code.secrets import redact

from .test_development import _git, make_server, write

FAKE_AWS = "AKIA" + "QX7TLMZ4RW2NB5KD"
FAKE_GITHUB = "ghp_" + "Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6"
FAKE_PASSWORD = "hunter2" + "hunter2"
SECRETS = (FAKE_AWS, FAKE_GITHUB, FAKE_PASSWORD)

SETTINGS = f"""import os
import sys

AWS_KEY = "{FAKE_AWS}"
password = "{FAKE_PASSWORD}"
"""


def everything_sent(result: CallToolResult) -> str:
    text = " ".join(c.text for c in result.content if isinstance(c, TextContent))
    return text + json.dumps(result.structured_content)


def assert_no_secret(result: CallToolResult) -> None:
    sent = everything_sent(result)
    for secret in SECRETS:
        assert secret not in sent, f"{secret[:6]}… leaked"


def quoting_reviewer(request: ChatRequest) -> ScriptedReply:
    """A model that quotes the secret it saw in the diff (models do)."""
    comment = {"file": "settings.py", "line": 4, "severity": "high", "comment": f"{FAKE_AWS} is hard-coded here"}
    body = {"summary": f"Leaks {FAKE_GITHUB}", "comments": [comment], "confidence": 0.9}
    return ScriptedReply(json.dumps(body), logprob=-0.05)


async def test_patch_diffs_show_context_secrets_redacted(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "p", {"settings.py": SETTINGS})
    server, _ = make_server(tmp_path)
    async with Client(server) as client:
        res = await client.call_tool(
            "analyze_and_improve_code", {"project": str(project), "task": "improve", "llm_review": False}
        )
    assert not res.is_error, res.content
    diffs = [p["patch"]["diff"] for p in res.structured_content["patches"]]
    assert any("-import os" in d for d in diffs), diffs  # ruff's fix, with the secrets as context lines
    assert any(redact(FAKE_AWS) in d and redact(FAKE_PASSWORD) in d for d in diffs), diffs
    assert_no_secret(res)


async def test_review_comments_that_quote_a_secret_are_redacted(tmp_path: Path) -> None:
    repo = write(tmp_path / "work" / "repo", {"settings.py": "import os\n"})
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "start")
    (repo / "settings.py").write_text(SETTINGS)
    model = ScriptedBackend([("qwen3:8b", 8.0)], quoting_reviewer, name="gpu-1")
    server, _ = make_server(tmp_path, [Host(name="gpu-1", backend=model)])
    async with Client(server) as client:
        res = await client.call_tool("review_changes", {"project": str(repo)})
    assert not res.is_error, res.content
    out: dict[str, Any] = res.structured_content
    llm = [c for c in out["comments"] if c["source"] == "llm"]
    assert llm and redact(FAKE_AWS) in llm[0]["comment"]  # the comment is kept, the key is not
    assert FAKE_AWS not in model.requests[0].messages[-1].content  # the model sees the diff redacted too
    assert redact(FAKE_AWS) in model.requests[0].messages[-1].content
    assert_no_secret(res)


async def test_test_failure_text_is_redacted(tmp_path: Path) -> None:
    project = write(
        tmp_path / "work" / "t",
        {
            "conftest.py": "",
            "tests/test_token.py": f'API_TOKEN = "{FAKE_GITHUB}"\n\n\ndef test_token():\n    assert API_TOKEN == "x"\n',
        },
    )
    server, _ = make_server(tmp_path)
    async with Client(server) as client:
        res = await client.call_tool("run_project_tests", {"project": str(project), "triage": False})
    assert not res.is_error, res.content
    assert res.structured_content["totals"]["failed"] == 1
    assert redact(FAKE_GITHUB) in everything_sent(res)  # the failure is shown, redacted
    assert_no_secret(res)
