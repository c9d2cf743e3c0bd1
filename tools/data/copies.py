"""SQLite databases and Excel workbooks, read without writing and copied into the session.

DuckDB reads SQLite and Excel only through extensions that it would download, which is refused
here (and impossible offline). So these files are read with the standard library's ``sqlite3``
(opened ``mode=ro&immutable=1``: no lock, no journal, no ``-wal`` or ``-shm`` file created beside
the user's database) and openpyxl (read-only mode), written as NDJSON into the session's private
folder, and loaded from there with a column type chosen from the values actually seen: whole
numbers ``BIGINT``, numbers ``DOUBLE``, Excel dates ``TIMESTAMP`` (``DATE`` when every value is
midnight), booleans ``BOOLEAN``, anything mixed ``VARCHAR`` (numbers kept as their text), bytes as
hex text. The user's file is never opened for writing.

An ``immutable`` SQLite open does not see changes still in a ``-wal`` file that was never
checkpointed; :func:`sqlite_tables` says so in its notes when such a file is there.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .models import DataSourceError

_KIND_ORDER = ("bool", "int", "float", "date", "timestamp", "text")


@dataclass
class _ColumnKinds:
    """What kinds of values one column held, to choose its DuckDB type at the end."""

    seen: set[str] = field(default_factory=set)

    def add(self, value: Any) -> Any:
        """Record ``value`` and return it as JSON data."""
        if value is None:
            return None
        if isinstance(value, bool):
            self.seen.add("bool")
            return value
        if isinstance(value, int):
            self.seen.add("int")
            return value
        if isinstance(value, float | Decimal):
            self.seen.add("float")
            return float(value)
        if isinstance(value, dt.datetime):
            midnight = value.time() == dt.time(0, 0) and value.tzinfo is None
            self.seen.add("date" if midnight else "timestamp")
            return value.replace(tzinfo=None).isoformat()
        if isinstance(value, dt.date):
            self.seen.add("date")
            return value.isoformat()
        if isinstance(value, dt.time | dt.timedelta):
            self.seen.add("text")
            return str(value)
        if isinstance(value, bytes | bytearray | memoryview):
            self.seen.add("text")
            return bytes(value).hex()
        self.seen.add("text")
        return str(value)

    def duckdb_type(self) -> str:
        kinds = self.seen
        if not kinds or "text" in kinds:
            return "VARCHAR"
        if kinds == {"bool"}:
            return "BOOLEAN"
        if kinds <= {"int"}:
            return "BIGINT"
        if kinds <= {"int", "float"}:
            return "DOUBLE"
        if kinds == {"date"}:
            return "DATE"
        if kinds <= {"date", "timestamp"}:
            return "TIMESTAMP"
        return "VARCHAR"


@dataclass(frozen=True)
class CopiedTable:
    """A table written as NDJSON: its columns with the chosen types, and its row count."""

    path: Path
    columns: tuple[tuple[str, str], ...]
    rows: int


def write_ndjson(
    out: Path, names: Sequence[str], rows: Iterable[Sequence[Any]], max_rows: int, what: str
) -> CopiedTable:
    """Write ``rows`` (tuples in ``names`` order) to ``out``; more than ``max_rows`` is refused."""
    kinds = [_ColumnKinds() for _ in names]
    count = 0
    with out.open("w", encoding="utf-8") as handle:
        for row in rows:
            count += 1
            if count > max_rows:
                raise DataSourceError(
                    f"{what} has more than {max_rows:,} rows, the copy limit for SQLite and Excel sources; "
                    "export it to Parquet or CSV, or raise [data] max_copied_rows"
                )
            record = {name: kinds[i].add(row[i] if i < len(row) else None) for i, name in enumerate(names)}
            handle.write(json.dumps(record, ensure_ascii=False, allow_nan=False, default=str))
            handle.write("\n")
    columns = tuple((name, kind.duckdb_type()) for name, kind in zip(names, kinds, strict=True))
    return CopiedTable(out, columns, count)


def unique_names(raw: Sequence[Any]) -> list[str]:
    """Column names from a header row: blanks become ``column_<n>``, repeats get ``_2``, ``_3``."""
    names: list[str] = []
    for i, value in enumerate(raw):
        name = str(value).strip() if value is not None and str(value).strip() else f"column_{i + 1}"
        base, n = name, 2
        while name in names:
            name = f"{base}_{n}"
            n += 1
        names.append(name)
    return names


# SQLite ------------------------------------------------------------------------------------------


def _open_sqlite(path: Path) -> sqlite3.Connection:
    uri = f"file:{quote(str(path))}?mode=ro&immutable=1"
    try:
        return sqlite3.connect(uri, uri=True, check_same_thread=False)
    except sqlite3.Error as exc:
        raise DataSourceError(f"cannot open SQLite file {path.name}: {exc}") from None


def sqlite_tables(path: Path) -> tuple[list[str], list[str]]:
    """The tables and views of a SQLite file, and notes (uncheckpointed ``-wal`` changes unseen)."""
    conn = _open_sqlite(path)
    try:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
    except sqlite3.Error as exc:
        raise DataSourceError(f"{path.name} is not a readable SQLite database: {exc}") from None
    finally:
        conn.close()
    notes = []
    wal = path.with_name(path.name + "-wal")
    if wal.is_file() and wal.stat().st_size > 0:
        notes.append(f"{path.name}: changes still in its -wal file (not checkpointed) are not seen")
    return names, notes


def copy_sqlite_table(path: Path, table: str, out: Path, max_rows: int) -> CopiedTable:
    """Copy one SQLite table (or view) to NDJSON at ``out``."""
    conn = _open_sqlite(path)
    try:
        cursor = conn.execute(f'SELECT * FROM "{table.replace(chr(34), chr(34) * 2)}"')  # noqa: S608 - a name from sqlite_master, quoted
        names = unique_names([d[0] for d in cursor.description or ()])
        return write_ndjson(out, names, _batches(cursor), max_rows, f"SQLite table {table!r} of {path.name}")
    except sqlite3.Error as exc:
        raise DataSourceError(f"cannot read table {table!r} of {path.name}: {exc}") from None
    finally:
        conn.close()


def _batches(cursor: sqlite3.Cursor) -> Iterator[Sequence[Any]]:
    while batch := cursor.fetchmany(5000):
        yield from batch


# Excel -------------------------------------------------------------------------------------------


def xlsx_sheets(path: Path) -> list[str]:
    """The worksheet names of a workbook, in order."""
    import openpyxl  # imported here: only Excel sources pay for it

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds for a broken or foreign file
        raise DataSourceError(f"{path.name} is not a readable .xlsx workbook: {type(exc).__name__}") from None
    try:
        return [ws.title for ws in book.worksheets]
    finally:
        book.close()


def copy_xlsx_sheet(path: Path, sheet: str, out: Path, max_rows: int) -> CopiedTable:
    """Copy one worksheet to NDJSON: the first non-empty row is the header, empty rows are skipped,
    formulas give their last computed value."""
    import openpyxl

    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        rows = (row for row in book[sheet].iter_rows(values_only=True) if any(v is not None for v in row))
        header = next(rows, None)
        if header is None:
            return write_ndjson(out, [], [], max_rows, f"sheet {sheet!r}")
        width = max((i + 1 for i, v in enumerate(header) if v is not None), default=0)
        names = unique_names(header[:width])
        return write_ndjson(out, names, (r[:width] for r in rows), max_rows, f"sheet {sheet!r} of {path.name}")
    finally:
        book.close()
