"""A chart of a query result: a Vega-Lite spec chosen from the result's columns, rendered to PNG
locally (altair builds and validates the spec, vl-convert renders it; no browser, no network).

The mark follows the columns: a date or time column and a number make a line (one line per
category when a short text column is there too), a text column and a number a bar chart sorted by
the number, two numbers a scatter plot, one number alone a histogram, text alone bars of counts.
Field names in the spec are ``c0``, ``c1``… (Vega-Lite reads dots and brackets in a field name as
paths); each axis is titled with the real column name.

The spec given back refers to its data by name (``{"name": "rows"}``: the result's rows), so the
rows are not sent twice; the PNG is drawn with the rows themselves.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from .models import ColumnInfo, QueryResult
from .profile import is_numeric, is_temporal

CHART_ROWS = 500  # the most rows drawn
MAX_SERIES = 10  # a text column splits a line chart into series only up to this many values
WIDTH, HEIGHT = 480, 300
_ASKS_FOR_CHART = re.compile(r"\b(chart|plot|graph|visuali[sz]e|histogram|bar chart|line chart|scatter)\b", re.I)


class Chart(BaseModel):
    mark: str = Field(description="bar, line, point or histogram")
    x: str
    y: str | None = None
    vega_lite: dict[str, Any] = Field(description='Vega-Lite spec; its data is named "rows": the result rows')


def asks_for_chart(question: str | None) -> bool:
    """Whether a question asks for a chart in words ("plot", "chart", "histogram"…)."""
    return bool(question and _ASKS_FOR_CHART.search(question))


def _kind(column: ColumnInfo) -> str:
    if is_temporal(column.type):
        return "T"
    if is_numeric(column.type):
        return "Q"
    return "N"


def chart_spec(result: QueryResult, title: str = "") -> tuple[Chart, dict[str, Any]] | None:
    """The chart for ``result`` and its full spec with data (to render), or None when nothing in
    the result can be drawn (no rows, or no columns)."""
    import altair as alt  # imported here: only calls that draw pay for it

    if not result.rows or not result.columns:
        return None
    kinds = [_kind(c) for c in result.columns]
    field = {i: f"c{i}" for i in range(len(result.columns))}
    names = [c.name for c in result.columns]

    def first(kind: str, skip: int = -1) -> int | None:
        return next((i for i, k in enumerate(kinds) if k == kind and i != skip), None)

    temporal, number, text = first("T"), first("Q"), first("N")
    data = alt.Data(values=_records(result.rows[:CHART_ROWS], field))  # type: ignore[no-untyped-call]
    chart = alt.Chart(data).properties(width=WIDTH, height=HEIGHT, title=title[:120])

    def enc(i: int, kind: str, **extra: Any) -> Any:
        return alt.X(f"{field[i]}:{kind}", title=names[i], **extra)

    def yenc(i: int, kind: str = "Q", **extra: Any) -> Any:
        return alt.Y(f"{field[i]}:{kind}", title=names[i], **extra)

    if temporal is not None and number is not None:
        mark, x, y = "line", temporal, number
        encoding: dict[str, Any] = {"x": enc(temporal, "T"), "y": yenc(number)}
        series = [r[text] for r in result.rows] if text is not None else []
        if text is not None and len(set(map(str, series))) <= MAX_SERIES:
            encoding["color"] = alt.Color(f"{field[text]}:N", title=names[text])
        built = chart.mark_line(point=True).encode(**encoding)
    elif text is not None and number is not None:
        mark, x, y = "bar", text, number
        built = chart.mark_bar().encode(x=enc(text, "N", sort="-y"), y=yenc(number))
    elif number is not None and (second := first("Q", skip=number)) is not None:
        mark, x, y = "point", number, second
        built = chart.mark_point().encode(x=enc(number, "Q"), y=yenc(second))
    elif number is not None:
        mark, x, y = "histogram", number, None
        built = chart.mark_bar().encode(x=enc(number, "Q", bin=True), y=alt.Y("count():Q", title="rows"))
    else:
        column = text if text is not None else (temporal if temporal is not None else 0)
        mark, x, y = "bar", column, None
        built = chart.mark_bar().encode(
            x=enc(column, "N" if column != temporal else "T", sort="-y"), y=alt.Y("count():Q", title="rows")
        )
    full = built.to_dict()
    shown = {**full, "data": {"name": "rows"}}
    return Chart(mark=mark, x=names[x], y=None if y is None else names[y], vega_lite=shown), full


def _records(rows: Sequence[Sequence[Any]], field: dict[int, str]) -> list[dict[str, Any]]:
    return [{field[i]: value for i, value in enumerate(row) if i in field} for row in rows]


def render_png(spec: dict[str, Any], scale: float = 1.0) -> bytes:
    """The spec (with its data) as PNG bytes, rendered in-process by vl-convert."""
    import vl_convert

    png: bytes = vl_convert.vegalite_to_png(spec, scale=scale)
    return png
