"""Schema linking: the session's tables described for a model that will write SQL over them.

Each table gets its row count and, per column, its type and what its values look like, from a
sample of its first rows (:data:`SAMPLE_ROWS`): the range of numbers and dates, the share of
NULLs, the number of distinct values, and for text columns a few frequent values (so the model
writes ``WHERE region = 'EUROPE'``, not ``'Europe'``). The text is trimmed to a character budget:
first the examples go, then the statistics, then the tables that share no word with the question.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .models import QueryFailedError, TableInfo
from .session import DataSession, quote_ident

SAMPLE_ROWS = 20_000
EXAMPLES = 4
EXAMPLE_CHARS = 40
TEXT_TYPES = ("VARCHAR",)
_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class ColumnFacts:
    name: str
    type: str
    low: str | None = None
    high: str | None = None
    distinct: int | None = None
    null_pct: float | None = None
    examples: list[str] = field(default_factory=list)


@dataclass
class TableFacts:
    info: TableInfo
    rows: int | None
    columns: list[ColumnFacts]


def gather_facts(session: DataSession, tables: Sequence[str] | None = None) -> list[TableFacts]:
    """Facts about every table (or ``tables``): row count, and per column its sample statistics."""
    found = []
    for name in tables or list(session.tables):
        info = session.tables[name]
        ident = quote_ident(name)
        try:
            count = session.fetch(f"SELECT count(*) FROM {ident}")  # noqa: S608 - a registered name, quoted
            summary = session.fetch(f"SUMMARIZE SELECT * FROM {ident} LIMIT {SAMPLE_ROWS}")  # noqa: S608
        except QueryFailedError:
            found.append(TableFacts(info, None, [ColumnFacts(c.name, c.type) for c in info.columns]))
            continue
        columns = []
        for row in summary:
            name_, type_, low, high, distinct, *_rest, null_pct = row
            columns.append(
                ColumnFacts(
                    name=str(name_),
                    type=str(type_),
                    low=None if low is None else str(low),
                    high=None if high is None else str(high),
                    distinct=None if distinct is None else int(distinct),
                    null_pct=None if null_pct is None else float(null_pct),
                )
            )
        _add_examples(session, ident, columns)
        found.append(TableFacts(info, int(count[0][0]) if count else None, columns))
    return found


def _add_examples(session: DataSession, ident: str, columns: list[ColumnFacts]) -> None:
    texts = [c for c in columns if c.type in TEXT_TYPES]
    if not texts:
        return
    parts = [
        f"(SELECT list(v) FROM (SELECT {quote_ident(c.name)}::VARCHAR AS v, count(*) AS n FROM sample "  # noqa: S608
        f"WHERE {quote_ident(c.name)} IS NOT NULL GROUP BY 1 ORDER BY n DESC, v LIMIT {EXAMPLES}))"
        for c in texts
    ]
    sql = f"WITH sample AS (SELECT * FROM {ident} LIMIT {SAMPLE_ROWS}) SELECT {', '.join(parts)}"  # noqa: S608
    try:
        (row,) = session.fetch(sql)
    except (QueryFailedError, ValueError):
        return
    for column, values in zip(texts, row, strict=True):
        column.examples = [_short(str(v)) for v in values or ()]


def _short(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


def _column_line(column: ColumnFacts, detail: int) -> str:
    line = f"  {column.name} {column.type}"
    if detail >= 1:
        facts = []
        if column.low is not None and column.type not in TEXT_TYPES:
            facts.append(f"{column.low} .. {column.high}")
        if column.distinct is not None:
            facts.append(f"~{column.distinct} distinct")
        if column.null_pct:
            facts.append(f"{column.null_pct:g}% null")
        if facts:
            line += "  -- " + ", ".join(facts)
    if detail >= 2 and column.examples:
        line += "  e.g. " + ", ".join("'" + v.replace("'", "''") + "'" for v in column.examples)
    return line


def _table_text(table: TableFacts, detail: int) -> str:
    rows = f"{table.rows:,} rows" if table.rows is not None else "rows unknown"
    head = f"TABLE {table.info.name} ({rows}; from {table.info.source})"
    return "\n".join([head, *(_column_line(c, detail) for c in table.columns)])


def schema_text(facts: Sequence[TableFacts], question: str = "", budget_chars: int = 6_000) -> str:
    """The tables as text within ``budget_chars``: the most detail that fits, then the tables that
    share the most words with ``question`` first (the rest named in one line)."""
    for detail in (2, 1, 0):
        text = "\n\n".join(_table_text(t, detail) for t in facts)
        if len(text) <= budget_chars:
            return text
    words = set(_WORD.findall(question.lower()))

    def overlap(table: TableFacts) -> int:
        names = {table.info.name.lower(), *(c.name.lower() for c in table.columns)}
        return sum(1 for name in names if set(_WORD.findall(name)) & words)

    ranked = sorted(facts, key=overlap, reverse=True)
    kept: list[str] = []
    spent = 0
    left_out = []
    for table in ranked:
        text = _table_text(table, 0)
        if spent + len(text) > budget_chars and kept:
            left_out.append(table.info.name)
            continue
        kept.append(text[:budget_chars])
        spent += len(text) + 2
    if left_out:
        kept.append(f"(also: {', '.join(left_out)})")
    return "\n\n".join(kept)
