"""The data tools' errors and results, shared by the session, the profile and the supervisor."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from caelum_mcp.core.errors import CaelumError


class DataSourceError(CaelumError):
    """A source cannot be used: unknown format, nothing matched, too large, unreadable."""


class SqlRejectedError(CaelumError):
    """A statement the guard refuses (not exactly one SELECT, an unknown table, a refused function)."""


class QueryFailedError(CaelumError):
    """DuckDB could not run an accepted query (a binder error, a type error, the memory limit)."""


class QueryTimeoutError(QueryFailedError):
    """The query ran past its time limit and was interrupted."""


class SourceKind(StrEnum):
    CSV = "csv"
    PARQUET = "parquet"
    JSON = "json"
    XLSX = "xlsx"
    SQLITE = "sqlite"
    DUCKDB = "duckdb"


class ColumnInfo(BaseModel):
    name: str
    type: str


class TableInfo(BaseModel):
    """A table of the session: its name in SQL, where it comes from, and its columns."""

    name: str
    source: str = Field(description="the file, glob or database table it reads")
    columns: list[ColumnInfo]


class QueryResult(BaseModel):
    """One query's result, within its caps.

    ``row_count`` is every row the query produced; ``rows`` the first ones that fit the row cap and
    the character budget (``rows_omitted`` = ``row_count`` - ``len(rows)``). Cell values are JSON
    data: dates and times as ISO text, decimals as numbers, long text cut (``cells_cut`` counts them).
    ``row_count_exact`` is False when the rows came back but counting the rest ran past the time
    limit: ``row_count`` is then the rows fetched (the rows shown plus one), a lower bound.
    """

    sql: str
    columns: list[ColumnInfo]
    rows: list[list[Any]]
    row_count: int
    row_count_exact: bool = True
    rows_omitted: int = 0
    cells_cut: int = 0
    seconds: float = 0.0
