"""Issue 19 items 2 and 5: secrets found in a project never reach a model, a tool's answer or a store.

A project holds a planted secret of every family in the places the red team found them: ``.env``,
``config.py``, CSV cells, log lines and a failing test's output. Every tool that calls a model runs
over it, with a local model (a scripted host that echoes its prompt, so the router repairs and then
escalates) and Claude (the real anthropic SDK over HTTP to a loopback stand-in). Every request body
either received, every text embedded, every result and every file the server stored (the knowledge
index, the workflow store) is searched for each secret.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.fault_host import FaultHost
from mcp import Client
from mcp.types import TextContent

from caelum_mcp.core.types import ChatRequest
from caelum_mcp.engine.backends.scripted import ScriptedBackend, ScriptedReply
from caelum_mcp.engine.hosts import CircuitBreaker, Host

from .test_development import _git, make_server, write

ANTHROPIC = (
    "sk-ant-api03-" + "q7Zr2LmXc4VbN7pK1sTyW9eDh3Jf6Gk8Ls0Qw5Er2Ty7Ui4Op1As3Df6Gh9Jk2Lz5Xc8Vb1Nm4Qa7Ws0Ed" + "AA"
)
OPENAI = "sk-proj-" + "Zx9Cv8Bn7Mq6Wl5Ek4Rj3Th2Yg1Uf0Id9Os8Pa7Sd6Fg5Hj4Kl3Zx2Cv1Bn0Mq"
AWS_KEY_ID = "AKIA" + "QX7TLMZ4RW2NB5KD"
AWS_SECRET = "Tz8" + "kP2xQ7vR4mZ1sL6wB9cJ3nY5hG0fD2aE8uI4oK7q"
GITHUB = "ghp_" + "Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    + ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
    + ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
LOG_PASSWORD = "Hunter2" + "Hunter2"
SECRETS = {
    "anthropic": ANTHROPIC,
    "openai": OPENAI,
    "aws key id": AWS_KEY_ID,
    "aws secret": AWS_SECRET,
    "github": GITHUB,
    "jwt": JWT,
    "log password": LOG_PASSWORD,
}

PROJECT = {
    ".env": f"""
        ANTHROPIC_API_KEY={ANTHROPIC}
        AWS_ACCESS_KEY_ID={AWS_KEY_ID}
        AWS_SECRET_ACCESS_KEY={AWS_SECRET}
        GITHUB_TOKEN={GITHUB}
        """,
    "config.py": f'''
        """Settings of the billing service: the retry backoff and the keys it calls out with."""

        OPENAI_KEY = "{OPENAI}"
        HEADERS = {{"Authorization": "Bearer {JWT}"}}
        AWS = ("{AWS_KEY_ID}", "{AWS_SECRET}")


        def retry_backoff(attempt):
            """The retry backoff doubles the wait after each failed call."""
            return 2 ** attempt
        ''',
    "data/users.csv": f"""
        user,key_id,secret,token,spent
        alice,{AWS_KEY_ID},{AWS_SECRET},{JWT},120.5
        bob,AKIA0000EXAMPLE00000,none,none,80.0
        """,
    "logs/app.log": f"""
        2024-05-01 12:00:00 INFO service started on 127.0.0.1:8080
        2024-05-01 12:00:01 INFO auth: login user=bob password={LOG_PASSWORD} from 127.0.0.1 ok
        2024-05-01 12:00:02 ERROR upstream call failed: 401 for key {ANTHROPIC} (Authorization: Bearer {JWT})
        2024-05-01 12:00:03 ERROR upstream call failed: 401 for key {ANTHROPIC} (Authorization: Bearer {JWT})
        2024-05-01 12:00:04 ERROR connection to db refused, GITHUB_TOKEN={GITHUB}
        """,
    "tests/test_config.py": f'''
        TOKEN = "{GITHUB}"


        def test_token_is_rotated():
            assert TOKEN == "{OPENAI}"
        ''',
}


def echo_model(request: ChatRequest) -> ScriptedReply:
    """A local model that quotes its whole prompt back (not valid JSON: the router repairs, then
    asks Claude), so that whatever reached it would also show in the repair and in Claude's body."""
    return ScriptedReply("\n".join(m.content for m in request.messages)[-6000:], logprob=-2.0)


@pytest.fixture
def claude() -> Iterator[FaultHost]:
    with FaultHost("anthropic") as host:
        yield host


def sent_texts(local: ScriptedBackend, claude: FaultHost) -> list[str]:
    texts = [m.content for r in local.requests for m in r.messages]
    texts += [t for r in local.embed_requests for t in r.inputs]
    texts += [json.dumps(body) for body in claude.bodies]
    return texts


def leaks(texts: list[str]) -> list[str]:
    return sorted({f"{family} in {text[:80]!r}…" for text in texts for family, s in SECRETS.items() if s in text})


@pytest.mark.slow
async def test_no_planted_secret_reaches_any_model_or_result(tmp_path: Path, claude: FaultHost) -> None:
    project = write(tmp_path / "work" / "proj", PROJECT)
    _git(project, "init", "-q")
    _git(project, "add", "-A")
    _git(project, "commit", "-q", "-m", "start")
    (project / "config.py").write_text((project / "config.py").read_text() + f'\nBACKUP_TOKEN = "{GITHUB}"\n')
    local = ScriptedBackend([("qwen3:8b", 8.0), ("nomic-embed-text", 0.137)], echo_model, name="gpu-1")
    host = Host(name="gpu-1", backend=local, breaker=CircuitBreaker(failure_threshold=50, cooldown_s=1))
    server, _ = make_server(
        tmp_path, [host], claude={"api_key": "sk-test-key", "base_url": claude.url, "max_retries": 0}
    )
    p = str(project)
    calls: list[tuple[str, dict[str, Any]]] = [
        ("analyze_and_improve_code", {"project": p, "task": "security_scan"}),
        ("analyze_and_improve_code", {"project": p, "task": "improve"}),
        ("review_changes", {"project": p}),
        ("run_project_tests", {"project": p, "timeout_s": 120}),
        ("query_data", {"sources": ["proj/data/users.csv"], "question": "Which user spent most, with their token?"}),
        ("profile_data", {"source": "proj/data/users.csv"}),
        ("diagnose_logs", {"paths": ["proj/logs"]}),
        ("search_knowledge", {"project": p, "query": "retry backoff keys"}),
        ("ask_knowledge", {"project": p, "question": "How does the retry backoff work and which keys are used?"}),
        ("memory", {"action": "recall", "query": f"the key {ANTHROPIC}", "project": p}),
        ("run_workflow", {"workflow": "pre-commit", "project": p}),
        ("delegate_task", {"prompt": f"Is this key still valid? {AWS_KEY_ID} {AWS_SECRET}", "max_tokens": 64}),
        ("compare_models", {"prompt": f"Summarise: password={LOG_PASSWORD} token {GITHUB}", "max_tokens": 32}),
    ]
    silent: list[str] = []
    async with Client(server) as client:
        for tool, args in calls:
            before = len(sent_texts(local, claude))
            res = await client.call_tool(tool, args)
            shown = " ".join(c.text for c in res.content if isinstance(c, TextContent))
            shown += json.dumps(res.structured_content)
            assert not leaks([shown]), f"{tool}'s result: {leaks([shown])}"
            # search_knowledge's index is embedded by a background task: its texts show up later
            if len(sent_texts(local, claude)) == before and tool != "search_knowledge":
                silent.append(tool)
    assert not silent, f"these tools asked no model here, so the test proves nothing for them: {silent}"
    assert local.requests and local.embed_requests and claude.bodies  # local chat, embeddings and Claude all ran
    assert not leaks(sent_texts(local, claude)), leaks(sent_texts(local, claude))
    # what the server keeps: the knowledge index, the workflow run store and its step outputs, the ledger
    stored = [path for path in (tmp_path / "data").rglob("*") if path.is_file()]
    assert any("knowledge" in str(path) for path in stored) and any("workflow" in str(path) for path in stored)
    found = [
        f"{family} in {path.relative_to(tmp_path)}"
        for path in stored
        for family, secret in SECRETS.items()
        if secret.encode() in path.read_bytes()
    ]
    assert not found, found
