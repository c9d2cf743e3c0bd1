"""query_data and profile_data through a real MCP client session (in-process), on real files.

The "7B" host is a :class:`ScriptedBackend` that answers the SQL prompt from a table of
questions, as a model would (sometimes wrongly at first, to exercise the repair loop); DuckDB,
the files and the guards are real.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from fakes.fault_host import FaultHost
from mcp.types import ImageContent
from tools.test_data_sources import digest, write_shop

from caelum_mcp.core.types import ChatRequest
from caelum_mcp.engine.backends.scripted import ScriptedBackend, ScriptedReply
from caelum_mcp.engine.hosts import Host

from .test_platform import gpu_host, session

QUESTION = re.compile(r"^Question: (?P<q>.+)$", re.MULTILINE)
# question -> (first answer, answer after a repair round)
ANSWERS: dict[str, tuple[str, str]] = {
    "Which two customers spent most?": (
        "SELECT customer, sum(amount) AS total FROM sales GROUP BY customer ORDER BY total DESC LIMIT 2",
        "",
    ),
    "What is the total amount per region?": (
        # a column that does not exist: DuckDB's error goes back to the model, which fixes it
        "SELECT region, sum(amount_usd) AS total FROM sales GROUP BY region ORDER BY region",
        "SELECT region, sum(amount) AS total FROM sales GROUP BY region ORDER BY region",
    ),
    "top 3 orders by amount": (
        # runs, but gives 7 rows for a top 3: the shape check sends it back
        "SELECT order_id, amount FROM sales ORDER BY amount DESC",
        "SELECT order_id, amount FROM sales ORDER BY amount DESC LIMIT 3",
    ),
    "Plot the amount per day": ("SELECT day, sum(amount) AS amount FROM sales GROUP BY day ORDER BY day", ""),
    "Which column is always wrong?": ("SELECT nothing FROM nowhere", "SELECT still_nothing FROM nowhere"),
    "How many orders are there, roughly?": ("SELECT count(*) AS orders FROM sales", ""),
    "How many orders, after some thought?": ("SELECT count(*) AS orders FROM sales", ""),
}
# questions the model takes its time over (a CPU host, a long schema): longer than [data] query_timeout_s
SLOW = {"How many orders, after some thought?": 1.5}
# questions the model answers with SQL that runs, but unsure of it (low token probabilities)
UNSURE = {"How many orders are there, roughly?"}


def sql_model(request: ChatRequest) -> ScriptedReply:
    """Answers the SQL prompt from ANSWERS; the profile prompt with one real and one invented anomaly."""
    system, user = request.messages[0].content, request.messages[-1].content
    if "data set's profile" in system:
        anomalies = [
            {"column": "code", "finding": "4 values do not parse as numbers", "figure": 4},
            {"column": "ghost", "finding": "made up", "figure": 1},
            {"column": "amount", "finding": "2 far outliers up to 10000", "figure": 10000},
        ]
        body: dict[str, Any] = {"summary": "Mostly clean; one mixed column.", "anomalies": anomalies}
    else:
        match = QUESTION.search(user)
        question = match.group("q").strip() if match else ""
        first, repaired = ANSWERS.get(question, ("SELECT 1", ""))
        sql = repaired if "Earlier answers did not work" in user and repaired else first
        body = {"sql": sql, "explanation": f"answers: {question}"}
        if question in UNSURE:
            return ScriptedReply(json.dumps({**body, "confidence": 0.2}), logprob=-2.0)
        if question in SLOW:
            return ScriptedReply(json.dumps({**body, "confidence": 0.9}), logprob=-0.05, delay_s=SLOW[question])
    return ScriptedReply(json.dumps({**body, "confidence": 0.9}), logprob=-0.05)


def sql_host() -> tuple[Host, ScriptedBackend]:
    backend = ScriptedBackend([("qwen2.5-coder:7b", 7.0)], sql_model, name="gpu-1")
    return gpu_host(backend), backend


def work(tmp_path: Path) -> Path:
    root = tmp_path / "work"
    write_shop(root)
    return root


async def call(client: Any, tool: str, args: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    res = await client.call_tool(tool, args)
    assert not res.is_error, res.content
    assert res.structured_content is not None
    return res.structured_content, res


async def test_a_question_becomes_sql_that_runs_with_columns_rows_and_execution(tmp_path: Path) -> None:
    root = work(tmp_path)
    before = digest(root)
    host, backend = sql_host()
    async with session(tmp_path, [host]) as (client, holder):
        out, _ = await call(
            client, "query_data", {"sources": ["shop/sales.csv"], "question": "Which two customers spent most?"}
        )
        assert out["sql"].startswith("SELECT customer, sum(amount)")
        assert out["columns"] == [{"name": "customer", "type": "VARCHAR"}, {"name": "total", "type": "DOUBLE"}]
        assert out["rows"] == [["cy", 300.0], ["eve", 250.0]] and out["row_count"] == 2
        assert out["explanation"] == "answers: Which two customers spent most?"
        step = out["llm"]
        assert step["status"] == "ran" and step["execution"]["path"] == "local"
        assert step["execution"]["confidence_parts"]["grounding"] == 1.0  # the SQL ran and the shape fits
        assert len(out["rounds"]) == 1 and out["tables"][0].startswith("sales(order_id BIGINT")
        (request,) = backend.requests
        prompt = request.messages[-1].content
        assert "TABLE sales (7 rows" in prompt and "'north'" in prompt  # schema linking with example values
        assert holder.require().ledger.summary().local_calls == 1
    assert digest(root) == before


async def test_duckdbs_error_is_fed_back_and_the_repair_round_fixes_the_query(tmp_path: Path) -> None:
    work(tmp_path)
    host, backend = sql_host()
    async with session(tmp_path, [host]) as (client, _):
        question = "What is the total amount per region?"
        out, _ = await call(client, "query_data", {"sources": ["shop"], "question": question})
        assert [r.get("problem") is None for r in out["rounds"]] == [False, True]  # a null field is left out
        assert "amount_usd" in out["rounds"][0]["problem"]  # DuckDB's binder error, as the model saw it
        assert out["rows"] == [["east", 550.0], ["north", 162.75], ["south", 179.9], ["west", 15.0]]
        assert "1 repair round" in out["llm"]["note"]
        repair_prompt = backend.requests[-1].messages[-1].content
        assert "amount_usd" in repair_prompt and "not found" in repair_prompt
        assert all(not r.json_schema or "sql" in json.dumps(r.json_schema) for r in backend.requests)


async def test_a_result_that_contradicts_the_question_is_sent_back(tmp_path: Path) -> None:
    work(tmp_path)
    host, _ = sql_host()
    async with session(tmp_path, [host]) as (client, _):
        out, _ = await call(client, "query_data", {"sources": ["shop/sales.csv"], "question": "top 3 orders by amount"})
        assert "at most 3" in out["rounds"][0]["problem"]
        assert out["row_count"] == 3 and [r[0] for r in out["rows"]] == [4, 7, 1]


@pytest.mark.slow  # the model's 1.5 s
async def test_a_model_slower_than_the_query_time_limit_still_gets_its_query_run(tmp_path: Path) -> None:
    # [data] query_timeout_s bounds DuckDB's time; the model's time writing the query is not DuckDB's
    work(tmp_path)
    host, _ = sql_host()
    async with session(tmp_path, [host], data={"query_timeout_s": 1.0}) as (client, _):
        question = "How many orders, after some thought?"
        out, _ = await call(client, "query_data", {"sources": ["shop/sales.csv"], "question": question})
    assert out.get("error") is None and out["rows"] == [[7]] and out["llm"]["status"] == "ran"


UNSURE_QUESTION = "How many orders are there, roughly?"


async def ask_unsure(
    tmp_path: Path, claude_answer: Any = None, *, with_claude: bool = True
) -> tuple[dict[str, Any], ScriptedBackend, FaultHost | None]:
    """query_data on the question the local model answers unsure of, with a fake Claude on loopback
    (answering ``claude_answer``, else an example of the schema) unless ``with_claude`` is False."""
    work(tmp_path)
    host, backend = sql_host()
    args = {"sources": ["shop/sales.csv"], "question": UNSURE_QUESTION}
    if not with_claude:
        async with session(tmp_path, [host]) as (client, _):
            out, _ = await call(client, "query_data", args)
        return out, backend, None
    with FaultHost("anthropic", answer=claude_answer) as claude:
        claude_on = {"api_key": "sk-test-key", "base_url": claude.url, "max_retries": 0}
        async with session(tmp_path, [host], claude=claude_on) as (client, _):
            out, _ = await call(client, "query_data", args)
    return out, backend, claude


async def test_an_unsure_answer_that_runs_is_not_asked_again_when_claude_cannot_take_it(tmp_path: Path) -> None:
    # No Claude here: another round would show the local model the same prompt and, at temperature
    # 0, get the same SQL back; the answer comes back once, marked for what it is.
    out, backend, _ = await ask_unsure(tmp_path, with_claude=False)
    assert out["llm"]["status"] == "low_confidence" and out["rows"] == [[7]]
    assert len(out["rounds"]) == 1 and len(backend.requests) == 1


@pytest.mark.slow  # a fake Claude on loopback and a server start
async def test_an_unsure_answer_that_runs_goes_to_claude_alone_for_the_last_round(tmp_path: Path) -> None:
    out, backend, claude = await ask_unsure(tmp_path)
    assert claude is not None and claude.chats == 1  # the last round went to Claude
    assert len(backend.requests) == 1  # and not to the local model a second time
    assert len(out["rounds"]) == 2 and out["llm"]["execution"]["path"] == "claude"
    # the fake Claude's SQL does not run: the local answer, which did, is the one returned
    assert out["rows"] == [[7]] and out["rounds"][1]["problem"]


@pytest.mark.slow  # a fake Claude on loopback and a server start
async def test_claudes_answer_that_runs_as_well_is_the_one_returned(tmp_path: Path) -> None:
    claude_sql = "SELECT count(order_id) AS orders FROM sales"

    def claude_answer(_: dict[str, Any]) -> str:
        return json.dumps({"sql": claude_sql, "explanation": "counts the orders", "confidence": 0.9})

    out, backend, claude = await ask_unsure(tmp_path, claude_answer)
    assert claude is not None and claude.chats == 1 and len(backend.requests) == 1
    # grounded as well as the unsure local answer: the answer paid for is the one returned
    assert out["sql"] == claude_sql and out["explanation"] == "counts the orders" and out["rows"] == [[7]]
    assert out["llm"]["execution"]["path"] == "claude"


async def test_sql_that_never_works_is_reported_with_its_error_not_rows(tmp_path: Path) -> None:
    work(tmp_path)
    host, backend = sql_host()
    async with session(tmp_path, [host]) as (client, _):
        out, _ = await call(
            client, "query_data", {"sources": ["shop/sales.csv"], "question": "Which column is always wrong?"}
        )
        assert out["rows"] == [] and out["row_count"] == 0
        assert "no table named 'nowhere'" in out["error"]
        assert len(out["rounds"]) == 3  # the first answer and two repair rounds, no more
        assert out["llm"]["status"] == "low_confidence"
        # one call per round: the only model is asked as the code tier and not again as its size tier
        assert len(backend.requests) == 3


async def test_own_sql_runs_under_the_same_guards_with_no_model_call(tmp_path: Path) -> None:
    work(tmp_path)
    host, backend = sql_host()
    async with session(tmp_path, [host]) as (client, _):
        out, _ = await call(
            client,
            "query_data",
            {
                "sources": ["shop/monthly/*.parquet", "shop/crm.sqlite"],
                "sql": "SELECT count(*) AS n FROM monthly",
                "max_rows": 5,
            },
        )
        assert out["rows"] == [[7]] and out["llm"] is None and out["rounds"] == []
        assert {t.split("(")[0] for t in out["tables"]} == {"monthly", "customers", "good_customers"}
        res = await client.call_tool("query_data", {"sources": ["shop/sales.csv"], "sql": "SELECT nope FROM sales"})
        assert res.is_error and "not found" in res.content[0].text
        res = await client.call_tool("query_data", {"sources": ["shop/sales.csv"], "question": "x", "sql": "SELECT 1"})
        assert res.is_error and "exactly one of" in res.content[0].text
    assert backend.requests == []


async def test_numbers_come_back_with_every_digit_they_had(tmp_path: Path) -> None:
    """A DuckDB SUM of money is a DECIMAL(38, 2); the result's floats lose their binary noise, never a
    digit of the data (at 10 significant digits 1035681023.49 came back as 1035681023.0)."""
    work(tmp_path)
    host, _ = sql_host()
    sql = (
        "SELECT CAST(1035681023.49 AS DECIMAL(15, 2)) AS total, CAST(9999999999999.99 AS DECIMAL(15, 2)) AS big, "
        "0.1 + 0.2 AS noisy, sum(amount) / 3 AS third FROM sales"
    )
    async with session(tmp_path, [host]) as (client, _):
        out, _ = await call(client, "query_data", {"sources": ["shop/sales.csv"], "sql": sql})
    total, big, noisy, third = out["rows"][0]
    assert (total, big) == (1035681023.49, 9999999999999.99)
    assert noisy == 0.3 and len(repr(third).replace(".", "").lstrip("0")) <= 15


async def test_rows_are_capped_with_an_omitted_count(tmp_path: Path) -> None:
    work(tmp_path)
    async with session(tmp_path, []) as (client, _):
        out, _ = await call(
            client,
            "query_data",
            {"sources": ["shop/sales.csv"], "sql": "SELECT * FROM range(5000) t(i)", "max_rows": 10},
        )
        assert (len(out["rows"]), out["row_count"], out["rows_omitted"]) == (10, 5000, 4990)
        big, _ = await call(
            client,
            "query_data",
            {
                "sources": ["shop/sales.csv"],
                "sql": "SELECT i, repeat('x', 200) AS pad FROM range(5000) t(i)",
                "max_rows": 1000,
            },
        )
        assert 10 < len(big["rows"]) < 1000 and big["rows_omitted"] == 5000 - len(big["rows"])


@pytest.mark.slow  # over a second: kept out of make test-fast
async def test_rows_come_back_when_only_counting_them_runs_out_of_time(tmp_path: Path) -> None:
    work(tmp_path)
    async with session(tmp_path, [], data={"query_timeout_s": 1.0}) as (client, _):
        sql = "SELECT a.range AS x, b.range AS y FROM range(100000) a, range(100000) b"
        out, _ = await call(client, "query_data", {"sources": ["shop/sales.csv"], "sql": sql, "max_rows": 10})
        assert len(out["rows"]) == 10 and out["row_count_exact"] is False and out["row_count"] == 11
        assert any("more than 10 rows" in n and "lower bound" in n for n in out["notes"])


@pytest.mark.slow  # over a second: kept out of make test-fast
async def test_a_chart_comes_as_png_image_content_beside_the_vega_lite_spec(tmp_path: Path) -> None:
    work(tmp_path)
    host, _ = sql_host()
    async with session(tmp_path, [host]) as (client, _):
        out, res = await call(
            client, "query_data", {"sources": ["shop/sales.csv"], "question": "Plot the amount per day"}
        )
        images = [c for c in res.content if isinstance(c, ImageContent)]
        assert len(images) == 1 and images[0].mime_type == "image/png"
        assert out["chart"]["mark"] == "line" and out["chart"]["vega_lite"]["data"] == {"name": "rows"}
        plain, res = await call(
            client,
            "query_data",
            {"sources": ["shop/sales.csv"], "sql": "SELECT region, count(*) FROM sales GROUP BY 1", "chart": True},
        )
        assert plain["chart"]["mark"] == "bar" and any(isinstance(c, ImageContent) for c in res.content)


async def test_with_no_model_able_to_write_sql_the_step_is_skipped_and_says_what_to_do(tmp_path: Path) -> None:
    work(tmp_path)
    async with session(tmp_path, []) as (client, holder):
        out, _ = await call(client, "query_data", {"sources": ["shop/sales.csv"], "question": "How many orders?"})
        assert out["llm"]["status"] == "skipped" and "tier small" in out["llm"]["note"]
        assert out["rows"] == [] and any("send your own SELECT" in n for n in out["notes"])
        assert out["tables"] and holder.require().ledger.summary().calls == 0


async def test_profile_data_with_a_grounded_summary(tmp_path: Path) -> None:
    root = tmp_path / "work"
    root.mkdir()
    from tools.test_data_profile import planted_csv

    planted_csv(root / "orders.csv")
    before = digest(root)
    host, _ = sql_host()
    async with session(tmp_path, [host]) as (client, _):
        out, _ = await call(client, "profile_data", {"source": "orders.csv"})
        profile = out["profile"]
        assert profile["rows"] == 201 and profile["duplicate_rows"] == 1
        cols = {c["name"]: c for c in profile["columns"]}
        assert cols["code"]["unparseable"] == 4 and cols["amount"]["outliers"] == 2
        assert [a["column"] for a in out["anomalies"]] == ["code", "amount"]  # the invented column is dropped
        assert (out["llm"]["kept"], out["llm"]["dropped"]) == (2, 1) and "ghost" in out["llm"]["note"]
        assert out["summary"] == "Mostly clean; one mixed column."
    assert digest(root) == before


async def test_profile_data_picks_a_table_of_a_database_and_skips_the_summary_without_a_model(tmp_path: Path) -> None:
    work(tmp_path)
    async with session(tmp_path, []) as (client, _):
        res = await client.call_tool("profile_data", {"source": "shop/crm.sqlite"})
        assert res.is_error and "name one with `table`" in res.content[0].text
        out, _ = await call(client, "profile_data", {"source": "shop/crm.sqlite", "table": "CUSTOMERS"})
        assert out["profile"]["table"] == "customers" and out["other_tables"] == ["good_customers"]
        assert out["profile"]["candidate_keys"][0] == ["id"]
        assert out["llm"]["status"] == "skipped" and out["anomalies"] == []
        res = await client.call_tool("profile_data", {"source": "../outside.csv"})
        assert res.is_error and "outside the allowed roots" in res.content[0].text
