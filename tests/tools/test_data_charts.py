"""Charts from results, the schema text a model reads, and the result-shape check."""

from __future__ import annotations

from pathlib import Path

import pytest

from caelum_mcp.tools.data.charts import asks_for_chart, chart_spec, render_png
from caelum_mcp.tools.data.models import ColumnInfo, QueryResult
from caelum_mcp.tools.data.schema_text import gather_facts, schema_text
from caelum_mcp.tools.data.session import DataSession, SessionLimits
from caelum_mcp.tools.data.sources import resolve_sources
from caelum_mcp.tools.data.sql_checks import SHAPE_SCORE, expected_shape, judge

from .test_data_sources import write_shop

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def result(columns: list[tuple[str, str]], rows: list[list[object]]) -> QueryResult:
    return QueryResult(
        sql="SELECT …", columns=[ColumnInfo(name=n, type=t) for n, t in columns], rows=rows, row_count=len(rows)
    )


@pytest.mark.parametrize(
    ("columns", "rows", "mark", "x", "y"),
    [
        ([("customer", "VARCHAR"), ("total", "DOUBLE")], [["ann", 3.5], ["bob", 1.0]], "bar", "customer", "total"),
        (
            [("day", "DATE"), ("sum(amount)", "HUGEINT")],
            [["2024-01-01", 3], ["2024-01-02", 5]],
            "line",
            "day",
            "sum(amount)",
        ),
        ([("a", "DOUBLE"), ("b", "BIGINT")], [[1.0, 2], [2.0, 3]], "point", "a", "b"),
        ([("amount", "DECIMAL(10,2)")], [[1.5], [2.0], [9.0]], "histogram", "amount", None),
        ([("region", "VARCHAR")], [["north"], ["south"], ["north"]], "bar", "region", None),
    ],
)
def test_the_mark_follows_the_columns_and_renders_to_png(
    columns: list[tuple[str, str]], rows: list[list[object]], mark: str, x: str, y: str | None
) -> None:
    made = chart_spec(result(columns, rows), "a title")
    assert made is not None
    chart, full = made
    assert (chart.mark, chart.x, chart.y) == (mark, x, y)
    assert chart.vega_lite["data"] == {"name": "rows"}  # the rows are not sent twice
    assert full["data"]["values"][0] == {"c0": rows[0][0], **({"c1": rows[0][1]} if len(rows[0]) > 1 else {})}
    png = render_png(full)
    assert png.startswith(PNG_MAGIC) and len(png) > 2_000


def test_nothing_to_draw_gives_no_chart_and_questions_can_ask_for_one() -> None:
    assert chart_spec(result([("a", "BIGINT")], []), "") is None
    assert asks_for_chart("Plot monthly revenue") and asks_for_chart("show a bar chart of sales by region")
    assert not asks_for_chart("which customers spent most?") and not asks_for_chart(None)


def test_the_schema_text_shows_types_ranges_and_example_values_within_budget(tmp_path: Path) -> None:
    write_shop(tmp_path)
    session = DataSession(resolve_sources(["shop"], [tmp_path]), tmp_path / "work", SessionLimits())
    try:
        facts = gather_facts(session)
    finally:
        session.close()
    full = schema_text(facts, "sales by region")
    assert "TABLE sales (7 rows; from shop/sales.csv)" in full
    assert "region VARCHAR" in full and "'north'" in full  # example values, as literals
    assert "amount DOUBLE  -- 15.0 .. 300.0" in full
    lean = schema_text(facts, "sales by region", budget_chars=1_500)
    assert len(lean) <= 1_500 and "e.g." not in lean and "region VARCHAR" in lean
    tiny = schema_text(facts, "what is in stock by sku", budget_chars=300)
    assert tiny.startswith("TABLE stock") and "(also:" in tiny


@pytest.mark.parametrize(
    ("question", "max_rows", "exact_rows"),
    [
        ("Which five customers spent most last quarter?", 5, None),
        ("top 3 regions by revenue", 3, None),
        ("the 10 largest orders", 10, None),
        ("How many orders were placed?", None, 1),
        ("What is the total revenue?", None, 1),
        ("How many orders per region?", None, None),
        ("list the customers", None, None),
    ],
)
def test_the_question_sets_the_expected_shape(question: str, max_rows: int | None, exact_rows: int | None) -> None:
    shape = expected_shape(question)
    assert (shape.max_rows if shape else None, shape.exact_rows if shape else None) == (max_rows, exact_rows)


def test_judge_scores_a_result_against_the_question() -> None:
    five = result([("c", "VARCHAR")], [[str(i)] for i in range(5)])
    tables = frozenset({"sales"})
    assert judge("top 5 customers", five, tables).score == 1.0
    wrong = judge("top 3 customers", five, tables)
    assert wrong.score == SHAPE_SCORE and "at most 3" in wrong.problems[0]
    assert judge("how many customers", five, tables).score == SHAPE_SCORE
    assert judge("top 5 customers", five, frozenset()).problems == ("the query reads none of the tables",)
    empty = judge("customers in Mars", result([("c", "VARCHAR")], []), tables)
    assert 0.5 < empty.score < 1.0 and "no rows" in empty.problems[0]
