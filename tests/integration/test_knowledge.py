"""The knowledge tools through a real MCP client and server: real indexes (SQLite FTS5), scripted
model hosts (an embedding model and a 4B chat model that answers from the prompt it is given)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

from caelum_mcp.core.types import ChatRequest, EmbedRequest, EmbedResponse
from caelum_mcp.engine.backends.scripted import ScriptedBackend, ScriptedReply
from caelum_mcp.engine.hosts import Host

from .test_development import write
from .test_platform import gpu_host, session

PROJECT = {
    "service/retry.py": '''
        """Retry policy for outgoing calls."""

        MAX_ATTEMPTS = 4


        def backoff_seconds(attempt):
            """Exponential backoff: 1, 2, 4, 8 seconds, never more than 30."""
            return min(2 ** attempt, 30)


        class RetryPolicy:
            def should_retry(self, status):
                return status in (429, 502, 503) and self.attempts < MAX_ATTEMPTS
        ''',
    "service/oauth.py": """
        def refreshAccessToken(client, refresh_token):
            # The token endpoint renews an expired access token.
            return client.post("/oauth/token", grant_type="refresh_token", token=refresh_token)
        """,
    "service/config.py": 'AWS_SECRET_ACCESS_KEY = "wJalrXUtnFEMIK7MDENGbPxRfiCYzq81kd9sl20xZ"\n',
    "docs/operations.md": "# Operations\n\n## Retries\n\nFailed calls (503) are retried with exponential backoff.\n",
    ".env": "DATABASE_URL=postgres://admin:hunter2hunter2@db/prod\n",
}
PASSAGE = re.compile(r"^\[(\d+)\] (\S+)", re.MULTILINE)


def answering_model(request: ChatRequest) -> ScriptedReply:
    """A 4B model that answers from the passages shown: one real quote, one invented citation."""
    user = request.messages[-1].content
    body: dict[str, Any] = {"found": False, "answer": "not found in the indexed sources", "citations": []}
    if PASSAGE.search(user):
        first_passage = user[user.index("[1]") :].split("\n")[1:]
        quote = next(line.strip() for line in first_passage if line.strip())
        body = {
            "found": True,
            "answer": "Failed calls are retried with exponential backoff (1, 2, 4, 8 s, at most 30).",
            "citations": [{"passage": 1, "quote": quote}, {"passage": 1, "quote": "retries forever"}],
        }
    return ScriptedReply(json.dumps({**body, "confidence": 0.9}), logprob=-0.05)


def embedding_host(batch_delay_s: float = 0.0) -> Host:
    return Host(name="embed", backend=SlowBatches([("nomic-embed-text", 0.137)], name="embed", delay_s=batch_delay_s))


class SlowBatches(ScriptedBackend):
    """Scripted vectors; a batch of chunks (more than one input) takes ``delay_s``, a query does not."""

    def __init__(self, *args: Any, delay_s: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delay_s = delay_s

    async def embed(self, request: EmbedRequest, *, limit_s: float | None = None) -> EmbedResponse:
        if len(request.inputs) > 1:
            await anyio.sleep(self.delay_s)
        return await super().embed(request, limit_s=limit_s)


async def call(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    res = await client.call_tool(tool, args)
    assert not res.is_error, res.content
    assert res.structured_content is not None
    return res.structured_content


async def search_when_embedded(client: Client, args: dict[str, Any], *, within_s: float = 60) -> dict[str, Any]:
    """``search_knowledge`` once the background task has given every chunk a vector (the first
    search of a project answers from the lexical index at once and says the rest is coming)."""
    first = await call(client, "search_knowledge", args)
    out = first
    with anyio.fail_after(within_s):
        while out["note"] is not None or "semantic" not in out["signals"]:
            await anyio.sleep(0.1)
            out = await call(client, "search_knowledge", args)
    return out


def error_text(res: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in res.content)


async def test_search_without_an_embedding_model_is_lexical_and_says_so(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "svc", PROJECT)
    async with session(tmp_path, []) as (client, _):
        out = await call(client, "search_knowledge", {"query": "refresh access token", "project": str(project)})
        assert out["signals"] == ["lexical"] and "no embedding model is up" in out["note"]
        top = out["results"][0]
        assert (top["span"], top["symbol"], top["found_by"]) == (
            "service/oauth.py:1-3",
            "refreshAccessToken",
            ["lexical"],
        )
        assert out["index"]["skipped"] == {"environment file (.env)": 1}
        assert out["index"]["files"] == 4 and out["index"]["changed"] == 4

        secret = await call(client, "search_knowledge", {"query": "AWS_SECRET_ACCESS_KEY", "project": str(project)})
        assert "wJalrXUtnFEMI" not in json.dumps(secret)
        assert not any("hunter2" in r["snippet"] for r in secret["results"])

        outside = await client.call_tool("search_knowledge", {"query": "x", "project": str(tmp_path)})
        assert outside.is_error and "outside the allowed roots" in error_text(outside)


async def test_the_index_follows_edits_and_deletions(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "svc", PROJECT)
    async with session(tmp_path, [], knowledge={"refresh_s": 0}) as (client, _):
        first = await call(client, "search_knowledge", {"query": "backoff", "project": str(project)})
        assert any(r["span"].startswith("service/retry.py") for r in first["results"])
        (project / "service" / "retry.py").unlink()
        (project / "service" / "jitter.py").write_text("def jittered_backoff(attempt):\n    return attempt\n")
        second = await call(client, "search_knowledge", {"query": "backoff", "project": str(project)})
        assert second["index"]["changed"] == 1 and second["index"]["removed"] == 1
        spans = [r["span"] for r in second["results"]]
        assert "service/jitter.py:1-2" in spans and not any(s.startswith("service/retry.py") for s in spans)


async def test_hybrid_search_pages_with_a_cursor_and_says_which_signal_found_each(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "svc", PROJECT)
    async with session(tmp_path, [embedding_host(batch_delay_s=0.5)]) as (client, holder):
        first = await call(client, "search_knowledge", {"query": "retry backoff", "project": str(project)})
        # the chunks' batch takes 0.5 s in the background; the first search does not wait for it
        assert first["signals"] == ["lexical"] and first["results"]  # no wait for the vectors
        assert first["note"] and "no vectors" in first["note"]
        out = await search_when_embedded(client, {"query": "retry backoff", "project": str(project), "limit": 2})
        assert out["signals"] == ["lexical", "semantic"] and out["note"] is None
        assert out["index"]["embedding_model"] == "nomic-embed-text"
        assert out["next_cursor"] == 2
        nxt = await call(
            client, "search_knowledge", {"query": "retry backoff", "project": str(project), "limit": 2, "cursor": 2}
        )
        assert {r["chunk"] for r in nxt["results"]}.isdisjoint({r["chunk"] for r in out["results"]})
        signals = {s for r in out["results"] + nxt["results"] for s in r["found_by"]}
        assert signals == {"lexical", "semantic"}
        docs = await call(
            client,
            "search_knowledge",
            {"query": "retry", "project": str(project), "paths": ["docs"], "mode": "lexical"},
        )
        assert {r["span"].split(":")[0] for r in docs["results"]} == {"docs/operations.md"}
        rows = holder.require().ledger.summary()
        assert rows.embedding.rows >= 2  # the chunk batch and the queries were embedded through the pool


async def test_a_background_sync_that_embeds_in_many_groups_writes_one_ledger_row(tmp_path: Path) -> None:
    files = {f"pkg/handler_{i:03}.py": f"def handle_{i}(request):\n    return request.scale({i})\n" for i in range(90)}
    project = write(tmp_path / "work" / "many", files)
    async with session(tmp_path, [embedding_host()]) as (client, holder):
        await search_when_embedded(client, {"query": "handle request", "project": str(project)})
        ledger = holder.require().ledger
        with anyio.fail_after(10):  # the row is written as the background task ends, just after the last group
            while True:
                syncs = [r for r in ledger.recent(500) if r.task == "embed (index sync)"]
                if syncs:
                    break
                await anyio.sleep(0.05)
        (sync,) = syncs  # paced groups of 3, 6, 12 ... chunks: many requests, one row
        assert sync.attempts >= 4 and sync.input_tokens > 0 and sync.tier == "embedding"
        rows = [r for r in ledger.recent(500) if r.tier == "embedding"]
        assert len(rows) < sync.attempts  # the queries' embeddings are a row each, the sync's groups are not
        status = await call(client, "pool_status", {})
        figures = status["ledger"]
        # no model call was made: embedding work and tool calls are counted apart from model calls
        assert (figures["calls"], figures["local_calls"]) == (0, 0)
        assert figures["embedding"]["rows"] == len(rows) and figures["embedding"]["input_tokens"] > 0
        assert figures["tool_calls"] >= 2


async def test_ask_cites_only_retrieved_passages_and_quotes_that_are_in_them(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "svc", PROJECT)
    model = ScriptedBackend([("qwen3:4b", 4.0)], answering_model, name="gpu-1")
    # No embedding host: scripted vectors are random, and would make any question look close to something.
    async with session(tmp_path, [gpu_host(model)]) as (client, _):
        out = await call(
            client, "ask_knowledge", {"question": "How does the retry backoff work?", "project": str(project)}
        )
        assert out["found"] is True and "exponential backoff" in out["answer"]
        (citation,) = out["citations"]  # the invented quote was dropped
        assert citation["span"] in [p["span"] for p in out["passages"]]
        step = out["llm"]
        # half its citations were invented: grounding 0.5 keeps it under the threshold
        assert (step["status"], step["kept"], step["dropped"]) == ("low_confidence", 1, 1)
        assert "retries forever" in step["note"]
        (request,) = model.requests
        prompt = request.messages[-1].content
        assert "How does the retry backoff work?" in prompt
        assert "hunter2" not in prompt and "wJalrXUtnFEMI" not in prompt  # only retrieved, redacted passages

        model.requests.clear()
        weak = await call(
            client, "ask_knowledge", {"question": "Which kubernetes helm chart values?", "project": str(project)}
        )
        assert (weak["answer"], weak["found"], weak["llm"]) == ("not found in the indexed sources", False, None)
        assert model.requests == []  # abstained without asking a model


async def test_ask_without_a_model_that_can_answer_returns_the_passages_and_says_why(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "svc", PROJECT)
    tiny = ScriptedBackend([("smollm2:135m", 0.135)], name="tiny")
    async with session(tmp_path, [gpu_host(tiny)]) as (client, _):
        out = await call(client, "ask_knowledge", {"question": "How does backoff work?", "project": str(project)})
        assert out["answer"] is None and out["found"] is None and out["passages"]
        assert out["llm"]["status"] == "skipped" and "tier small" in out["llm"]["note"]
        assert tiny.requests == []


async def test_memory_remembers_recalls_forgets_and_survives_a_restart(tmp_path: Path) -> None:
    project = write(tmp_path / "work" / "svc", PROJECT)
    p = str(project)
    async with session(tmp_path, [embedding_host()]) as (client, _):
        kept = await call(
            client, "memory", {"action": "remember", "text": "Staging DB listens on 5433", "tags": ["DB"], "project": p}
        )
        assert kept["notes"][0]["scope"] == "project" and kept["notes"][0]["tags"] == ["db"]
        await call(client, "memory", {"action": "remember", "text": "Release on Tuesdays", "scope": "global"})
        bad = await client.call_tool("memory", {"action": "remember", "scope": "project"})
        assert bad.is_error and "text" in error_text(bad)
    async with session(tmp_path, [embedding_host()]) as (client, _):
        recalled = await call(client, "memory", {"action": "recall", "query": "staging database", "project": p})
        # scripted vectors are random, so only membership is certain here (the real model's ranking
        # is checked over stdio and measured by bench/knowledge.py)
        (staging,) = [n for n in recalled["notes"] if n["text"] == "Staging DB listens on 5433"]
        assert "lexical" in staging["found_by"]
        assert {n["scope"] for n in recalled["notes"]} <= {"project", "global"}
        listed = await call(client, "memory", {"action": "list", "project": p, "limit": 1})
        assert listed["total"] == 2 and listed["next_cursor"] == 1
        only_global = await call(client, "memory", {"action": "list", "scope": "global"})
        assert [n["text"] for n in only_global["notes"]] == ["Release on Tuesdays"]

        note_id = staging["id"]
        forgot = await call(client, "memory", {"action": "forget", "id": note_id, "project": p})
        assert forgot["removed"] == [note_id]
        by_query = await call(client, "memory", {"action": "forget", "query": "release tuesdays", "scope": "global"})
        assert len(by_query["removed"]) == 1
        after = await call(client, "memory", {"action": "recall", "query": "staging database tuesdays", "project": p})
        assert after["notes"] == []


async def test_a_secret_in_a_note_is_never_stored(tmp_path: Path) -> None:
    """The note's output and its embedding were redacted, but the notes database kept it verbatim."""
    secret = "ghp_" + "Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6"
    async with session(tmp_path, [embedding_host()]) as (client, _):
        kept = await call(client, "memory", {"action": "remember", "text": f"CI token is {secret}", "scope": "global"})
        assert secret not in json.dumps(kept) and "CI token is" in kept["notes"][0]["text"]
    assert files_holding(tmp_path, secret.encode()) == []


def files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_a_failed_embedding_says_which_host_is_down_and_why() -> None:
    # The pool refuses a host whose circuit is open with its name and state only; the note must
    # also carry the host's last error (here a restart of the embedded model that failed).
    from caelum_mcp.core.errors import NoHostAvailableError
    from caelum_mcp.supervisors.knowledge.state import embedding_failed

    class Pool:
        def __init__(self, problem: str) -> None:
            self.problem = problem

        def embedding_problem(self) -> str:
            return self.problem

    refused = NoHostAvailableError("no enabled, healthy host serves model 'all-minilm:l6-v2'")
    down = "all-minilm:l6-v2 on host embedded-embeddings is down (circuit open): could not be restarted: bad file"
    said = embedding_failed(Pool(down), refused)  # type: ignore[arg-type]
    assert said.startswith("no enabled, healthy host") and "could not be restarted: bad file" in said
    assert embedding_failed(Pool(""), refused) == str(refused)  # nothing known: the error as it was
    assert embedding_failed(Pool("bad file"), NoHostAvailableError("bad file")).count("bad file") == 1
    long = embedding_failed(Pool("x" * 50_000), refused)  # a server's error text does not grow the note
    assert len(long) == 1000 and long.startswith("no enabled, healthy host") and long.endswith("…")
