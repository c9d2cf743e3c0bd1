"""``query_data``: a question (or the caller's own SQL) over data files, run read-only by DuckDB.

With ``question`` the local model writes the SQL (:mod:`.sql_step`: schema linking, grounding by
running it, repair rounds, escalation); with ``sql`` the caller's statement runs under the same
guards with no model call. Either way the result carries the SQL that ran, the result's columns and
types, its first rows (capped by count and characters, with the rest counted), the tables the
sources became, and with ``chart`` (or a question that asks for one) a Vega-Lite spec plus a PNG
sent as MCP image content.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from caelum_mcp.core.errors import CaelumError
from caelum_mcp.supervisors.base import Image, ToolContext, ToolOutput
from caelum_mcp.supervisors.llm_steps import LLMStep
from caelum_mcp.tools.data.charts import Chart, asks_for_chart, chart_spec, render_png
from caelum_mcp.tools.data.models import ColumnInfo, QueryResult, TableInfo
from caelum_mcp.tools.data.schema_text import gather_facts, schema_text
from caelum_mcp.tools.data.session import AsyncDataSession, open_session
from caelum_mcp.tools.data.sources import resolve_sources

from .settings import DataSettings, session_limits
from .sql_step import SqlRound, question_to_sql, unavailable

DEFAULT_ROWS = 50
TABLES_SHOWN = 40


class QueryDataInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(
        min_length=1,
        max_length=16,
        description="files, folders or globs inside the allowed roots: CSV/TSV, Parquet, JSON/NDJSON, .xlsx, "
        "SQLite, DuckDB; a folder gives one table per file, a glob one table",
    )
    question: str | None = Field(default=None, max_length=2000, description="in words; a local model writes the SQL")
    sql: str | None = Field(default=None, max_length=20_000, description="your own SELECT instead (no model call)")
    chart: bool = Field(default=False, description="also draw the result (PNG image + Vega-Lite spec)")
    max_rows: int = Field(default=DEFAULT_ROWS, ge=1, le=1000)
    allow_claude: bool = True

    @model_validator(mode="after")
    def _one_of(self) -> QueryDataInput:
        if (self.question is None) == (self.sql is None):
            raise ValueError("give exactly one of `question` (in words) or `sql` (one SELECT)")
        return self


class QueryDataOutput(ToolOutput):
    sql: str | None = Field(description="the SQL that ran (or, when none ran, the last one tried)")
    explanation: str | None = None
    columns: list[ColumnInfo]
    rows: list[list[Any]]
    row_count: int = Field(description="rows the query returned; `rows` holds the first ones")
    row_count_exact: bool = Field(default=True, description="false: counting ran out of time; at least row_count")
    rows_omitted: int = 0
    error: str | None = Field(default=None, description="why no SQL could answer the question")
    tables: list[str] = Field(description="the tables the sources became: name(columns) <- source")
    chart: Chart | None = None
    rounds: list[SqlRound] = Field(default_factory=list, description="each SQL the model wrote, and its problem")
    notes: list[str] = Field(default_factory=list)
    llm: LLMStep | None = None
    seconds: float = 0.0


def rows_tokens(max_rows: int) -> int:
    """The token budget of the rows (counted as every result is): the default result budget's
    share, more for a bigger ask."""
    return 2_500 if max_rows <= DEFAULT_ROWS else min(15_000, max_rows * 50)


def result_tokens(args: QueryDataInput) -> int | None:
    return None if args.max_rows <= DEFAULT_ROWS else rows_tokens(args.max_rows) + 2_000


def table_line(table: TableInfo) -> str:
    columns = ", ".join(f"{c.name} {c.type}" for c in table.columns[:40])
    more = f", …+{len(table.columns) - 40}" if len(table.columns) > 40 else ""
    return f"{table.name}({columns}{more}) <- {table.source}"


async def query_data(args: QueryDataInput, ctx: ToolContext) -> QueryDataOutput:
    settings = ctx.settings_as(DataSettings)
    resolved = resolve_sources(args.sources, ctx.roots)
    # One budget for the whole call: the repair rounds' queries and the tables' description share
    # it, so a call that tries one runaway query after another still stops at query_timeout_s.
    limits = session_limits(
        settings, timeout_s=settings.query_timeout_s, max_rows=args.max_rows, rows_tokens=rows_tokens(args.max_rows)
    )
    limits = replace(limits, call_budget_s=settings.query_timeout_s)
    await ctx.report(0, 3, f"opening {len(resolved.files)} source(s)")
    async with open_session(resolved, ctx.state_dir / "sessions", limits) as session:
        tables = [table_line(t) for t in list(session.tables.values())[:TABLES_SHOWN]]
        notes = list(session.notes)
        if args.sql is not None:
            await ctx.report(1, 3, "running the SQL")
            result = await session.run(args.sql)  # a refused or failing statement is the caller's error
            out = _output(result, tables, notes)
        else:
            out = await _answer_question(args, ctx, session, settings, tables, notes)
    if out.rows and (args.chart or asks_for_chart(args.question)):
        await ctx.report(2, 3, "drawing the chart")
        _attach_chart(out, args.question or "")
    await ctx.report(3, 3, "done")
    return out


async def _answer_question(
    args: QueryDataInput,
    ctx: ToolContext,
    session: AsyncDataSession,
    settings: DataSettings,
    tables: list[str],
    notes: list[str],
) -> QueryDataOutput:
    question = args.question or ""
    skipped = unavailable(ctx, args.allow_claude)
    if skipped is not None:  # say so at once: describing the tables would be wasted
        notes.append("no model could write the SQL; send your own SELECT as `sql` (the tables are listed)")
        return QueryDataOutput(sql=None, columns=[], rows=[], row_count=0, tables=tables, notes=notes, llm=skipped)
    await ctx.report(1, 3, "describing the tables for the model")
    facts = await session.call(gather_facts)
    schema = schema_text(facts, question, settings.schema_chars)
    answer = await question_to_sql(
        ctx,
        session,
        question=question,
        schema=schema,
        allow_claude=args.allow_claude,
        repair_rounds=settings.repair_rounds,
        max_rows=args.max_rows,
    )
    if answer.doubt:
        notes.append(f"the result may not answer the question: {answer.doubt}")
    if answer.result is None:
        if answer.step.status == "skipped":
            notes.append("no model could write the SQL; send your own SELECT as `sql` (the tables are listed)")
        out = QueryDataOutput(
            sql=answer.sql, columns=[], rows=[], row_count=0, error=answer.error, tables=tables, notes=notes
        )
    else:
        out = _output(answer.result, tables, notes)
    out.explanation = answer.explanation if answer.result is not None else None
    out.rounds = answer.rounds
    out.llm = answer.step
    return out


def _output(result: QueryResult, tables: list[str], notes: list[str]) -> QueryDataOutput:
    if result.cells_cut:
        notes.append(f"{result.cells_cut} long value(s) cut; select fewer or shorter columns to see them whole")
    if result.rows_omitted:
        notes.append(
            f"{result.rows_omitted} more row(s) not shown: raise `max_rows` (at most 1,000), or page with "
            f"LIMIT … OFFSET {len(result.rows)} in `sql`"
        )
    if not result.row_count_exact:
        notes.append(
            f"more than {result.row_count - 1} rows: counting them all ran past the time limit, so row_count is "
            "a lower bound; add a count(*) query with a filter, or raise [data] query_timeout_s"
        )
    return QueryDataOutput(
        sql=result.sql,
        columns=result.columns,
        rows=result.rows,
        row_count=result.row_count,
        row_count_exact=result.row_count_exact,
        rows_omitted=result.rows_omitted,
        tables=tables,
        notes=notes,
        seconds=result.seconds,
    )


def _attach_chart(out: QueryDataOutput, title: str) -> None:
    result = QueryResult(sql=out.sql or "", columns=out.columns, rows=out.rows, row_count=out.row_count)
    try:
        made = chart_spec(result, title)
        if made is None:
            return
        chart, full = made
        out.attach(Image(render_png(full)))
    except (CaelumError, ValueError, RuntimeError) as exc:  # a chart is extra: the rows still stand
        out.notes.append(f"no chart: {type(exc).__name__}: {str(exc)[:200]}")
        return
    out.chart = chart
