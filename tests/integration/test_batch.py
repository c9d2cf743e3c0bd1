"""run_batch and batch_status through a real MCP client (in-process), with scripted model hosts.

The pool, the router and its gate, the batch store and the results file are the real ones; the
hosts answer by echoing the item they were sent, so every result row can be checked against its
input. bench/batch.py measures throughput, a kill -9 and memory; here the behaviour.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import duckdb
import pytest
from fakes.calibration_tables import write_calibrated_as_raw
from fakes.fault_host import FaultHost
from mcp import Client

from caelum_mcp.core.types import ChatRequest
from caelum_mcp.engine.backends.scripted import ScriptedBackend, ScriptedReply
from caelum_mcp.engine.hosts import Host

from .test_development import make_server

ITEM = re.compile(r"ITEM<(.*?)>", re.DOTALL)
AWS_KEY_ID = "AKIA" + "QX7TLMZ4RW2NB5KD"  # a made-up key of the real format


class Echo:
    """A host's replies: the item between ITEM< and > echoed back, confident or not; every item
    seen is counted (how many times each was sent)."""

    def __init__(self, delay_s: float = 0.0, *, confident: bool = True) -> None:
        self.delay_s = delay_s
        self.confident = confident
        self.seen: Counter[str] = Counter()

    def __call__(self, request: ChatRequest) -> ScriptedReply:
        found = ITEM.search(request.messages[-1].content)
        item = found.group(1) if found else "?"
        self.seen[item] += 1
        if self.confident:
            return ScriptedReply(
                json.dumps({"answer": f"echo {item}", "confidence": 0.95}), self.delay_s, logprob=-0.01
            )
        return ScriptedReply(json.dumps({"answer": f"guess {item}", "confidence": 0.1}), self.delay_s, logprob=-4.0)


def echo_host(name: str, echo: Echo, slots: int = 2) -> Host:
    return Host(name=name, backend=ScriptedBackend([("m:8b", 8.0)], echo, name=name), max_concurrency=slots)


def server(tmp_path: Path, hosts: list[Host], **overrides: Any) -> Any:
    (tmp_path / "work").mkdir(exist_ok=True)
    write_calibrated_as_raw(tmp_path / "data")  # the echo model's raw score counts as calibrated
    return make_server(tmp_path, hosts, **overrides)[0]


async def call(client: Client, tool: str, args: dict[str, Any], notes: list[str] | None = None) -> Any:
    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        if notes is not None:
            notes.append(message or "")

    res = await client.call_tool(tool, args, progress_callback=on_progress)
    assert not res.is_error, res.content
    return res.structured_content


async def error_of(client: Client, tool: str, args: dict[str, Any]) -> str:
    res = await client.call_tool(tool, args)
    assert res.is_error, res.structured_content
    return " ".join(getattr(c, "text", "") for c in res.content)


def rows_of(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def stored_status(tmp_path: Path, batch_id: str) -> str:
    store = sqlite3.connect(tmp_path / "data" / "supervisors" / "ai" / "batches.sqlite3")
    try:
        return str(store.execute("SELECT status FROM batches WHERE id = ?", (batch_id,)).fetchone()[0])
    finally:
        store.close()


def tear(results: Path) -> None:
    """A results line cut short, as a kill -9 in the middle of an append leaves it."""
    with results.open("a") as out:
        out.write('{"index": 59, "id": "5')


async def wait_until_finished(client: Client, batch_id: str, limit_s: float = 60) -> Any:
    with anyio.fail_after(limit_s):
        while True:
            out = await call(client, "batch_status", {"batch_id": batch_id})
            if out["status"] != "running":
                return out
            await anyio.sleep(0.05)


@pytest.mark.slow  # a server start each: over a second
async def test_inline_batch_keeps_ids_and_order_and_duckdb_reads_the_results(tmp_path: Path) -> None:
    fast, slow = Echo(0.01), Echo(0.05)
    items = [{"name": f"n{i}", "id": f"k{i}"} for i in range(12)]
    items[5]["key"] = AWS_KEY_ID
    notes: list[str] = []
    async with Client(server(tmp_path, [echo_host("a", fast), echo_host("b", slow)])) as client:
        out = await call(
            client, "run_batch", {"template": "Say ITEM<{{ item.name }}>", "items": items, "id_field": "id"}, notes
        )
        (tmp_path / "work" / "results").mkdir()
        mine = await call(
            client, "run_batch", {"template": "ITEM<{{ item }}>", "items": [1, 2, 3], "output": "results/r.jsonl"}
        )
        asked = await call(
            client,
            "query_data",
            {"sources": [mine["results"]], "sql": "SELECT status, COUNT(*) AS n FROM r GROUP BY status"},
        )
        again = await error_of(
            client, "run_batch", {"template": "ITEM<{{ item }}>", "items": [1], "output": "results/r.jsonl"}
        )
    assert out["status"] == "done" and out["total"] == 12 and out["ok"] == 12 and out["errors"] == 0
    assert out["concurrency"] == 4  # both hosts' slots
    assert "12/12 items done" in notes
    rows = rows_of(out["results"])
    assert sorted(r["index"] for r in rows) == list(range(12))
    for row in rows:  # each result belongs to its own input
        assert row["id"] == f"k{row['index']}" and row["answer"] == f"echo n{row['index']}", row
        assert row["status"] == "ok" and row["host"] in ("a", "b") and row["model"] == "m:8b"
        assert row["input_tokens"] > 0 and row["cost_usd"] == 0
    assert sum(n for k, n in (fast.seen + slow.seen).items() if k.startswith("n")) == 12  # each item once
    assert fast.seen and slow.seen  # the work went to both hosts
    table = duckdb.sql(f"SELECT id, status, answer FROM read_json_auto('{out['results']}') ORDER BY index").fetchall()
    assert table[0] == ("k0", "ok", "echo n0") and len(table) == 12
    assert mine["results"] == str((tmp_path / "work" / "results" / "r.jsonl").resolve())
    assert asked["rows"] == [["ok", 3]]  # query_data reads an output under the roots
    assert "exists" in again  # results are never overwritten
    kept = [p for p in (tmp_path / "data").rglob("*") if p.is_file()] + [Path(mine["results"])]
    assert not [p for p in kept if AWS_KEY_ID.encode() in p.read_bytes()]  # the store and results hold no secret


@pytest.mark.slow  # a server start each: over a second
async def test_bad_inputs_each_get_a_clear_error_while_the_rest_runs(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    huge = "x" * (50 * 1024 * 1024)  # a 50 MB line: skipped in pieces, never held whole
    lines = [
        json.dumps({"name": "first"}),
        json.dumps({"name": huge}),
        "{not json",
        json.dumps({"title": "no name field"}),
        json.dumps("a bare string"),
        json.dumps({"name": "last"}),
    ]
    (work / "in.jsonl").write_text("\n".join(lines) + "\n")
    (work / "in.csv").write_text('name,size\nalpha,1\n"beta"x,2\ngamma,3,extra\ndelta,4\n')
    echo = Echo()
    async with Client(server(tmp_path, [echo_host("a", echo)])) as client:
        jsonl = await call(client, "run_batch", {"template": "ITEM<{{ item.name }}>", "file": "in.jsonl"})
        csv = await call(client, "run_batch", {"template": "ITEM<{{ item.name }}> {{ item.size }}", "file": "in.csv"})
    assert (jsonl["total"], jsonl["ok"], jsonl["errors"]) == (6, 2, 4)
    by_id = {r["id"]: r for r in rows_of(jsonl["results"])}
    assert by_id["line 1"]["answer"] == "echo first" and by_id["line 6"]["answer"] == "echo last"
    assert "over the 100,000-byte item limit" in by_id["line 2"]["error"]
    assert "line 3 is not JSON" in by_id["line 3"]["error"]
    assert "no field 'name'" in by_id["line 4"]["error"] and "title" in by_id["line 4"]["error"]
    assert "needs item to be an object" in by_id["line 5"]["error"]
    assert all(by_id[i]["status"] == "error" and by_id[i]["host"] is None for i in ("line 2", "line 3", "line 4"))
    assert (csv["total"], csv["ok"], csv["errors"]) == (4, 2, 2)
    rows = {r["id"]: r for r in rows_of(csv["results"])}
    assert rows["row 1"]["answer"] == "echo alpha" and rows["row 4"]["answer"] == "echo delta"
    assert "malformed CSV" in rows["row 2"]["error"]
    assert "3 fields where the header has 2" in rows["row 3"]["error"]
    assert set(echo.seen) == {"first", "last", "alpha", "delta"}  # no bad item reached a model
    assert any("line 2" in e for e in jsonl["first_errors"])


@pytest.mark.slow  # a server start each: over a second
async def test_inputs_and_outputs_outside_the_roots_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text('{"name": "x"}\n')
    async with Client(server(tmp_path, [echo_host("a", Echo())])) as client:
        for args in (
            {"file": str(outside)},
            {"file": "../elsewhere.jsonl"},
            {"glob": "*.jsonl", "project": str(tmp_path)},
            {"items": [1], "output": str(tmp_path / "out.jsonl")},
        ):
            message = await error_of(client, "run_batch", {"template": "ITEM<{{ item }}>", **args})
            assert "outside the allowed roots" in message, (args, message)
        template = await error_of(client, "run_batch", {"template": "{{ item.__class__ }} {{ 7*7 }}", "items": [1]})
        assert "is not known" in template and "plain substitution" in template


@pytest.mark.slow  # a server start each: over a second
async def test_a_glob_runs_each_file_text_with_its_path_as_id_and_a_schema_answer_is_data(tmp_path: Path) -> None:
    project = tmp_path / "work" / "proj"
    (project / "src").mkdir(parents=True)
    (project / ".venv").mkdir()
    (project / "src" / "a.py").write_text("alpha")
    (project / "src" / "b.py").write_text("beta {{ id }}")  # an item's braces are text, not fields
    (project / "src" / "big.py").write_text("y" * 2000)
    (project / ".venv" / "skip.py").write_text("never")
    echo = Echo()
    async with Client(server(tmp_path, [echo_host("a", echo)])) as client:
        out = await call(
            client,
            "run_batch",
            {
                "template": "{{ id }}: ITEM<{{ item }}>",
                "glob": "**/*.py",
                "project": str(project),
                "max_item_bytes": 1000,
            },
        )
        schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
        shaped = await call(
            client, "run_batch", {"template": "ITEM<{{ item }}>", "items": ["x"], "json_schema": schema}
        )
    rows = {r["id"]: r for r in rows_of(out["results"])}
    assert sorted(rows) == ["src/a.py", "src/b.py", "src/big.py"]
    (structured,) = rows_of(shaped["results"])
    assert structured["data"] == {"answer": "echo x"} and structured["answer"] is None
    assert rows["src/a.py"]["answer"] == "echo alpha" and rows["src/b.py"]["answer"] == "echo beta {{ id }}"
    assert "over the 1,000-byte item limit" in rows["src/big.py"]["error"]


@pytest.mark.slow  # a server start each: over a second
async def test_allow_claude_false_keeps_weak_answers_local_and_marked(tmp_path: Path) -> None:
    items = [{"name": f"n{i}"} for i in range(4)]
    with FaultHost("anthropic") as claude:
        weak = Echo(confident=False)
        claude_on = {"api_key": "sk-test-key", "base_url": claude.url, "max_retries": 0}
        async with Client(server(tmp_path, [echo_host("a", weak)], claude=claude_on)) as client:
            local = await call(
                client, "run_batch", {"template": "ITEM<{{ item.name }}>", "items": items, "allow_claude": False}
            )
            assert claude.chats == 0  # the gate held per item: nothing went to Claude
            escalated = await call(client, "run_batch", {"template": "ITEM<{{ item.name }}>", "items": items})
    assert (local["ok"], local["low_confidence"], local["errors"]) == (0, 4, 0)
    for row in rows_of(local["results"]):
        assert row["status"] == "low_confidence" and row["path"] == "local_low_confidence"
        assert row["answer"] == f"guess n{row['index']}" and row["confidence"] < 0.75 and row["cost_usd"] == 0
    assert claude.chats >= 4  # with Claude allowed, the same weak answers escalate
    assert {r["path"] for r in rows_of(escalated["results"])} == {"claude"}


@pytest.mark.slow  # a server start each: over a second
async def test_dry_run_estimates_without_calling_a_model(tmp_path: Path) -> None:
    echo = Echo(0.02)
    items = [{"name": "n" * 400} for _ in range(10)]
    with FaultHost("anthropic") as claude:
        claude_on = {"api_key": "sk-test-key", "base_url": claude.url, "daily_budget_usd": 5.0}
        async with Client(server(tmp_path, [echo_host("a", echo, slots=2)], claude=claude_on)) as client:
            before = await call(
                client, "run_batch", {"template": "ITEM<{{ item.name }}>", "items": items, "dry_run": True}
            )
            await call(client, "run_batch", {"template": "ITEM<{{ item.name }}>", "items": items[:4]})
            sent = sum(echo.seen.values())
            after = await call(
                client,
                "run_batch",
                {"template": "ITEM<{{ item.name }}>", "items": items, "dry_run": True, "max_tokens": 100},
            )
            assert sum(echo.seen.values()) == sent == 4  # the estimates sent nothing
    assert before["status"] == "estimate" and before["batch_id"] is None and before["total"] == 10
    assert before["input_tokens"] == 10 * len("ITEM<" + "n" * 400 + ">") // 4
    assert before["expected_local_s"] is None and before["hosts"] == [{"host": "a", "slots": 2, "s_per_item": None}]
    (host,) = after["hosts"]
    assert host["s_per_item"] is not None and host["s_per_item"] >= 0.02
    assert after["expected_local_s"] == pytest.approx(10 * host["s_per_item"] / 2, rel=0.05)
    # claude-sonnet-5-5: $2 / $10 a million input / output tokens, every item at its full allowance
    assert after["claude_ceiling_usd"] == pytest.approx((after["input_tokens"] * 2 + 10 * 100 * 10) / 1e6, rel=1e-3)
    assert "daily Claude budget" in (after["note"] or "")


@pytest.mark.slow  # a server start each: over a second
async def test_background_batch_reports_progress_and_cancel_keeps_what_finished(tmp_path: Path) -> None:
    echo = Echo(0.1)
    items = [{"name": f"n{i}"} for i in range(200)]
    async with Client(server(tmp_path, [echo_host("a", echo, slots=3)])) as client:
        started = await call(client, "run_batch", {"template": "ITEM<{{ item.name }}>", "items": items})
        assert started["status"] == "running" and started["batch_id"]  # too big to wait for
        assert "batch_status" in started["note"]
        with anyio.fail_after(30):
            while (await call(client, "batch_status", {}))["done"] < 6:  # noqa: ASYNC110 - polling a tool, as a client does
                await anyio.sleep(0.05)
        cancelled = await call(client, "batch_status", {"batch_id": started["batch_id"], "cancel": True})
        sent = sum(echo.seen.values())
        await anyio.sleep(0.5)
        assert sum(echo.seen.values()) == sent  # nothing new was sent after the cancel
    assert cancelled["status"] == "cancelled" and cancelled["in_flight"] == 0
    assert 6 <= cancelled["done"] < 200 and cancelled["done"] == sent
    rows = rows_of(cancelled["results"])
    assert len(rows) == cancelled["done"] and all(r["status"] == "ok" for r in rows)


@pytest.mark.slow  # a server start each: over a second
async def test_a_batch_stopped_mid_run_resumes_without_redoing_finished_items(tmp_path: Path) -> None:
    first, second = Echo(0.1), Echo(0.01)
    items = [{"name": f"n{i}"} for i in range(60)]
    async with Client(server(tmp_path, [echo_host("a", first, slots=4)])) as client:
        started = await call(client, "run_batch", {"template": "ITEM<{{ item.name }}>", "items": items, "wait": False})
        with anyio.fail_after(30):
            while (await call(client, "batch_status", {}))["done"] < 10:  # noqa: ASYNC110 - polling a tool
                await anyio.sleep(0.02)
    # The server stopped with items in flight; as after a kill -9, the store says 'running' for them
    # and the results file may end in a torn line.
    store = sqlite3.connect(tmp_path / "data" / "supervisors" / "ai" / "batches.sqlite3")
    in_flight = store.execute("SELECT COUNT(*) FROM items WHERE state = 'running'").fetchone()[0]
    finished = store.execute("SELECT COUNT(*) FROM items WHERE state = 'done'").fetchone()[0]
    store.close()
    assert in_flight > 0 and 10 <= finished < 60
    tear(Path(started["results"]))
    async with Client(server(tmp_path, [echo_host("a", second, slots=4)])) as client:
        with anyio.fail_after(60):  # resumed when the server started: no call asks about it meanwhile
            while stored_status(tmp_path, started["batch_id"]) == "running":  # noqa: ASYNC110 - another writer
                await anyio.sleep(0.05)
        out = await call(client, "batch_status", {"batch_id": started["batch_id"]})
    assert out["status"] == "done" and out["ok"] == 60
    assert out["repeated"] <= in_flight and out["repeated"] <= 4
    assert all(n == 1 for n in second.seen.values()) and sum(second.seen.values()) <= 60 - finished + in_flight
    twice = set(first.seen) & set(second.seen)
    assert len(twice) <= in_flight  # only what was in flight ran again; nothing finished was redone
    rows = rows_of(out["results"])
    assert sorted(r["index"] for r in rows) == list(range(60))  # each once, the torn line mended


@pytest.mark.slow
async def test_items_wait_while_no_model_can_take_them_instead_of_failing(tmp_path: Path) -> None:
    echo = Echo(0.05)
    items = [{"name": f"n{i}"} for i in range(40)]
    async with Client(server(tmp_path, [echo_host("a", echo, slots=2)])) as client:
        started = await call(client, "run_batch", {"template": "ITEM<{{ item.name }}>", "items": items, "wait": False})
        with anyio.fail_after(30):
            while (await call(client, "batch_status", {}))["done"] < 4:  # noqa: ASYNC110 - polling a tool
                await anyio.sleep(0.02)
        await call(client, "set_host_enabled", {"host": "a", "enabled": False})
        with anyio.fail_after(30):
            while "waiting for a model" not in ((paused := await call(client, "batch_status", {}))["note"] or ""):  # noqa: ASYNC110
                await anyio.sleep(0.05)
        assert paused["status"] == "running" and paused["errors"] == 0 and paused["done"] < 40
        await call(client, "set_host_enabled", {"host": "a", "enabled": True})
        out = await wait_until_finished(client, started["batch_id"])
    assert (out["status"], out["ok"], out["errors"]) == ("done", 40, 0)
    assert out["note"] is None  # the wait is over
    assert sorted(r["index"] for r in rows_of(out["results"])) == list(range(40))


@pytest.mark.slow
async def test_a_damaged_batch_store_is_moved_aside_and_the_server_serves(tmp_path: Path) -> None:
    store = tmp_path / "data" / "supervisors" / "ai" / "batches.sqlite3"
    store.parent.mkdir(parents=True)
    store.write_bytes(b"\x00garbage" * 2000)
    async with Client(server(tmp_path, [echo_host("a", Echo())])) as client:
        out = await call(client, "run_batch", {"template": "ITEM<{{ item }}>", "items": ["x", "y"]})
        assert (await call(client, "pool_status", {}))["hosts"]
    assert out["status"] == "done" and out["ok"] == 2
    (aside,) = store.parent.glob("batches.sqlite3.corrupt-*")
    assert aside.read_bytes().startswith(b"\x00garbage")
