"""A table's profile, computed by DuckDB: what each column holds, what looks wrong, what could be a key.

Per column: type, NULL share, exact distinct count, min and max, mean and quartiles (numbers),
the most frequent values with their counts, IQR outliers (below Q1 - 1.5·IQR or above
Q3 + 1.5·IQR), date ranges, and for text columns whose values mostly parse as numbers, dates or
booleans, how many do not (with examples): the "mixed type" columns a CSV export leaves behind.
Per table: duplicate rows and candidate keys (single columns, else pairs of the most distinct ones).

The work is a handful of scans over a table the session has loaded into memory once
(``materialize=True``): one pass for every column's aggregates, one GROUP BY per column for the
distinct count and the top values, one pass for outliers and unparseable values, one for duplicate
rows. A 1M-row, 20-column CSV takes a few seconds (``bench/query_data.py``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from itertools import combinations
from typing import Any

from pydantic import BaseModel, Field

from .models import TableInfo
from .session import DataSession, json_cell, quote_ident

TOP_VALUES = 5
EXAMPLES = 5
MIXED_MIN_SHARE = 0.5  # a text column is "mostly" of a type when at least this share parses as it
HIGH_NULL_PCT = 50.0
KEY_PAIR_COLUMNS = 5  # pairs are tried among this many of the most distinct columns
NUMERIC_PREFIXES: tuple[str, ...] = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT")
NUMERIC_PREFIXES += ("USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL", "REAL")
TEMPORAL_PREFIXES = ("DATE", "TIMESTAMP", "TIME")
# What a text column is tried as, in order; the first that most values parse as wins.
PARSE_AS = ("BIGINT", "DOUBLE", "DATE", "TIMESTAMP", "BOOLEAN")
PARSE_SAMPLE = 20_000


class TopValue(BaseModel):
    value: Any
    count: int


class ColumnProfile(BaseModel):
    name: str
    type: str
    null_pct: float
    distinct: int
    min: Any = None
    max: Any = None
    mean: float | None = None
    q25: float | None = None
    median: float | None = None
    q75: float | None = None
    top_values: list[TopValue] = Field(default_factory=list)
    outliers: int | None = Field(default=None, description="values outside Q1 - 1.5 IQR .. Q3 + 1.5 IQR")
    outlier_bounds: list[float] | None = None
    parses_as: str | None = Field(default=None, description="the type most values of a text column parse as")
    unparseable: int = Field(default=0, description="non-null values that do not parse as `parses_as`")
    unparseable_examples: list[str] = Field(default_factory=list)
    date_range: list[str] | None = None
    issues: list[str] = Field(default_factory=list)


class TableProfile(BaseModel):
    table: str
    source: str
    rows: int
    columns: list[ColumnProfile]
    duplicate_rows: int = Field(description="rows that repeat an earlier row exactly")
    candidate_keys: list[list[str]] = Field(description="columns (or pairs) whose values are unique and never NULL")
    seconds: float = 0.0


def is_numeric(type_: str) -> bool:
    return type_.startswith(NUMERIC_PREFIXES)


def is_temporal(type_: str) -> bool:
    return type_.startswith(TEMPORAL_PREFIXES)


def profile_table(session: DataSession, name: str, only: Sequence[str] | None = None) -> TableProfile:
    """Profile table ``name`` of ``session`` (see the module docstring): every column, or only
    those named in ``only`` (names the table has; candidate keys are then looked for among them)."""
    started = time.perf_counter()
    info: TableInfo = session.tables[name]
    if only is not None:
        chosen = set(only)
        info = info.model_copy(update={"columns": [c for c in info.columns if c.name in chosen]})
    table = quote_ident(name)
    columns = info.columns
    rows = _aggregates(session, table, info)
    profiles = [_column(session, table, c.name, c.type, rows["count"], rows[c.name]) for c in columns]
    _second_pass(session, table, profiles)
    duplicates = _duplicates(session, table)
    keys = _candidate_keys(session, table, profiles, rows["count"], duplicates)
    for profile in profiles:
        profile.issues = _issues(profile, rows["count"])
    return TableProfile(
        table=name,
        source=info.source,
        rows=rows["count"],
        columns=profiles,
        duplicate_rows=duplicates,
        candidate_keys=keys,
        seconds=round(time.perf_counter() - started, 3),
    )


def _aggregates(session: DataSession, table: str, info: TableInfo) -> dict[str, Any]:
    """One pass: per column non-null count, min, max, and mean and quartiles of numbers. Then, on
    the first :data:`PARSE_SAMPLE` rows only, how many text values parse as each of
    :data:`PARSE_AS` (the exact count of the winner is taken in the second pass)."""
    parts = ["count(*)"]
    layout: list[tuple[str, list[str]]] = []
    for column in info.columns:
        c = quote_ident(column.name)
        fields = ["nonnull", "min", "max"]
        parts += [f"count({c})", f"min({c})", f"max({c})"]
        if is_numeric(column.type):
            fields += ["mean", "quartiles"]
            parts += [f"avg({c})::DOUBLE", f"approx_quantile({c}::DOUBLE, [0.25, 0.5, 0.75])"]
        layout.append((column.name, fields))
    (row,) = session.fetch(f"SELECT {', '.join(parts)} FROM {table}")  # noqa: S608 - quoted names
    values = iter(row)
    result: dict[str, Any] = {"count": int(next(values))}
    for name, fields in layout:
        result[name] = {field: next(values) for field in fields}
    texts = [c.name for c in info.columns if c.type == "VARCHAR"]
    if texts:
        sample = [f"count({quote_ident(n)})" for n in texts]
        sample += [f"count(TRY_CAST(trim({quote_ident(n)}) AS {t}))" for n in texts for t in PARSE_AS]
        sql = f"SELECT {', '.join(sample)} FROM (SELECT * FROM {table} LIMIT {PARSE_SAMPLE})"  # noqa: S608
        (row,) = session.fetch(sql)
        counts = iter(row[len(texts) :])
        for name, nonnull in zip(texts, row[: len(texts)], strict=False):
            result[name]["sample"] = int(nonnull)
            for target in PARSE_AS:
                result[name][f"as_{target}"] = int(next(counts))
    return result


def _column(session: DataSession, table: str, name: str, type_: str, rows: int, agg: dict[str, Any]) -> ColumnProfile:
    c = quote_ident(name)
    top = session.fetch(
        f"SELECT v, n, count(*) OVER () FROM (SELECT {c} AS v, count(*) AS n FROM {table} GROUP BY 1) "  # noqa: S608
        f"ORDER BY n DESC, v NULLS LAST LIMIT {TOP_VALUES}"
    )
    nonnull = int(agg["nonnull"])
    groups = int(top[0][2]) if top else 0
    distinct = groups - (1 if nonnull < rows and groups else 0)  # the NULL group is not a value
    cut = [0]
    profile = ColumnProfile(
        name=name,
        type=type_,
        null_pct=round(100.0 * (rows - nonnull) / rows, 2) if rows else 0.0,
        distinct=distinct,
        min=json_cell(agg["min"], 80, cut),
        max=json_cell(agg["max"], 80, cut),
        top_values=[TopValue(value=json_cell(v, 80, cut), count=int(n)) for v, n, _ in top if v is not None],
    )
    if "mean" in agg and agg["mean"] is not None:
        profile.mean = round(float(agg["mean"]), 6)
        q = agg["quartiles"] or [None, None, None]
        profile.q25, profile.median, profile.q75 = (None if v is None else float(v) for v in q)
    if is_temporal(type_) and agg["min"] is not None:
        profile.date_range = [str(json_cell(agg["min"], 40, cut)), str(json_cell(agg["max"], 40, cut))]
    if type_ == "VARCHAR" and agg.get("sample"):
        best = max(PARSE_AS, key=lambda target: (int(agg[f"as_{target}"]), -PARSE_AS.index(target)))
        if int(agg[f"as_{best}"]) >= MIXED_MIN_SHARE * int(agg["sample"]):
            profile.parses_as = best  # how many do not parse: counted over every row in the second pass
    return profile


def _second_pass(session: DataSession, table: str, profiles: list[ColumnProfile]) -> None:
    """IQR outliers of numbers; examples and date range of text that mostly parses as another type."""
    parts: list[str] = []
    plan: list[tuple[ColumnProfile, str]] = []
    for p in profiles:
        c = quote_ident(p.name)
        if p.q25 is not None and p.q75 is not None:
            iqr = p.q75 - p.q25
            low, high = p.q25 - 1.5 * iqr, p.q75 + 1.5 * iqr
            p.outlier_bounds = [round(low, 6), round(high, 6)]
            parts.append(f"count(*) FILTER (WHERE {c}::DOUBLE < {low!r} OR {c}::DOUBLE > {high!r})")
            plan.append((p, "outliers"))
        if p.parses_as:
            cast = f"TRY_CAST(trim({c}) AS {p.parses_as})"
            parts += [
                f"count({c}) - count({cast})",
                f"(list(DISTINCT {c}) FILTER (WHERE {c} IS NOT NULL AND {cast} IS NULL))[1:{EXAMPLES}]",
            ]
            plan += [(p, "unparseable"), (p, "examples")]
            if p.parses_as in ("DATE", "TIMESTAMP"):
                parts += [f"min({cast})::VARCHAR", f"max({cast})::VARCHAR"]
                plan += [(p, "date_low"), (p, "date_high")]
    if not parts:
        return
    (row,) = session.fetch(f"SELECT {', '.join(parts)} FROM {table}")  # noqa: S608
    for (p, what), value in zip(plan, row, strict=True):
        if what == "outliers":
            p.outliers = int(value)
        elif what == "unparseable":
            p.unparseable = int(value)
        elif what == "examples":
            p.unparseable_examples = [str(v)[:80] for v in value or ()]
        elif what == "date_low":
            p.date_range = [str(value), ""]
        elif what == "date_high" and p.date_range:
            p.date_range[1] = str(value)


def _duplicates(session: DataSession, table: str) -> int:
    (row,) = session.fetch(f"SELECT count(*) - (SELECT count(*) FROM (SELECT DISTINCT * FROM {table})) FROM {table}")  # noqa: S608
    return int(row[0])


def _candidate_keys(
    session: DataSession, table: str, profiles: list[ColumnProfile], rows: int, duplicates: int
) -> list[list[str]]:
    if rows == 0 or duplicates:
        return []  # with repeated rows no set of columns is unique
    singles = [[p.name] for p in profiles if p.distinct == rows and p.null_pct == 0]
    if singles:
        return singles
    ranked = sorted((p for p in profiles if p.null_pct == 0 and p.distinct > 1), key=lambda p: -p.distinct)
    pairs = list(combinations([p.name for p in ranked[:KEY_PAIR_COLUMNS]], 2))
    if not pairs:
        return []
    parts = [f"count(DISTINCT ({quote_ident(a)}, {quote_ident(b)}))" for a, b in pairs]
    (row,) = session.fetch(f"SELECT {', '.join(parts)} FROM {table}")  # noqa: S608
    return [list(pair) for pair, n in zip(pairs, row, strict=True) if int(n) == rows]


def _issues(p: ColumnProfile, rows: int) -> list[str]:
    """What looks wrong in the column, in short phrases with the profile's own numbers."""
    issues = []
    if rows and p.null_pct >= HIGH_NULL_PCT:
        issues.append(f"{p.null_pct:g}% of values are NULL")
    if rows > 1 and p.distinct == 1:
        issues.append("a single value in every non-null row (constant)")
    if p.parses_as and p.unparseable:
        shown = ", ".join(repr(e) for e in p.unparseable_examples[:3])
        issues.append(
            f"mixed types: text where {p.unparseable} non-null value(s) do not parse as {p.parses_as} (e.g. {shown})"
        )
    elif p.parses_as:
        issues.append(f"stored as text but every value parses as {p.parses_as}")
    if p.outliers:
        issues.append(f"{p.outliers} IQR outlier(s) outside {p.outlier_bounds}")
    return issues
