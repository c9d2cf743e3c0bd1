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

Every copy is bounded: by rows, by bytes written, and by ``should_stop`` (the session's time limit
or a cancelled call), which SQLite checks while it runs a query (a slow view stops mid-statement)
and the copy loop checks between rows. A SQLite view may read only the database's own tables and
views: an authorizer refuses ``pragma_database_list`` (the file's absolute path) and other
table-valued functions, and such a view is left out (:class:`RefusedTableError`).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .models import DataSourceError, QueryTimeoutError

StopCheck = Callable[[], bool]
_STEPS_PER_CHECK = 10_000  # SQLite virtual-machine steps between two should_stop checks
_ROWS_PER_CHECK = 256
DEFAULT_MAX_BYTES = 1 << 30


class RefusedTableError(DataSourceError):
    """A table or view of a database file that is left out: its SQL reads what it may not."""


def _never() -> bool:
    return False


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
    out: Path,
    names: Sequence[str],
    rows: Iterable[Sequence[Any]],
    max_rows: int,
    what: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    should_stop: StopCheck = _never,
) -> CopiedTable:
    """Write ``rows`` (tuples in ``names`` order) to ``out``; more than ``max_rows`` rows or
    ``max_bytes`` of NDJSON is refused, and ``should_stop()`` ends the copy (QueryTimeoutError)."""
    kinds = [_ColumnKinds() for _ in names]
    count = written = 0
    with out.open("w", encoding="utf-8") as handle:
        for row in rows:
            count += 1
            if count > max_rows:
                raise DataSourceError(
                    f"{what} has more than {max_rows:,} rows, the copy limit for SQLite and Excel sources; "
                    "export it to Parquet or CSV, or raise [data] max_copied_rows"
                )
            if count % _ROWS_PER_CHECK == 0 and should_stop():
                raise QueryTimeoutError(f"copying {what} was stopped (the time limit, or the call was cancelled)")
            record = {name: kinds[i].add(row[i] if i < len(row) else None) for i, name in enumerate(names)}
            line = json.dumps(record, ensure_ascii=False, allow_nan=False, default=str)
            written += len(line) + 1
            if written > max_bytes:
                raise DataSourceError(
                    f"{what} is more than {max_bytes / 2**20:,.0f} MiB as data, the copy limit for SQLite and Excel "
                    "sources; export it to Parquet or CSV, or raise [data] max_copied_mb"
                )
            handle.write(line)
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


def _open_sqlite(path: Path, should_stop: StopCheck = _never) -> sqlite3.Connection:
    uri = f"file:{quote(str(path))}?mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
    except sqlite3.Error as exc:
        raise DataSourceError(f"cannot open SQLite file {path.name}: {exc}") from None
    # A non-zero answer aborts the statement running now ("interrupted"): a view that runs for
    # ever, or one the caller no longer waits for, stops within a few thousand steps.
    conn.set_progress_handler(lambda: 1 if should_stop() else 0, _STEPS_PER_CHECK)
    return conn


def _own_objects(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}


def _read_only_own(names: set[str]) -> Callable[[int, str | None, str | None, str | None, str | None], int]:
    """An authorizer that lets a query read the database's own tables and views and nothing else
    (no ``pragma_*`` table-valued function, no attached or temporary database, no PRAGMA)."""

    def authorize(action: int, first: str | None, column: str | None, database: str | None, _view: str | None) -> int:
        if action == sqlite3.SQLITE_READ:
            if first in names and database in ("main", None):
                return sqlite3.SQLITE_OK
            # A common table expression is read with no database and no column named; a
            # table-valued function (`pragma_database_list`) with its database and columns.
            return sqlite3.SQLITE_OK if database is None and not column else sqlite3.SQLITE_DENY
        if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE):
            return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY

    return authorize


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


def copy_sqlite_table(
    path: Path,
    table: str,
    out: Path,
    max_rows: int,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    should_stop: StopCheck = _never,
) -> CopiedTable:
    """Copy one SQLite table (or view) to NDJSON at ``out``.

    Raises :class:`RefusedTableError` for a view that reads anything but the database's own
    tables, and :class:`QueryTimeoutError` when ``should_stop()`` ends it."""
    conn = _open_sqlite(path, should_stop)
    what = f"SQLite table {table!r} of {path.name}"
    try:
        conn.set_authorizer(_read_only_own(_own_objects(conn)))
        cursor = conn.execute(f'SELECT * FROM "{table.replace(chr(34), chr(34) * 2)}"')  # noqa: S608 - a name from sqlite_master, quoted
        names = unique_names([d[0] for d in cursor.description or ()])
        rows = _batches(cursor)
        return write_ndjson(out, names, rows, max_rows, what, max_bytes=max_bytes, should_stop=should_stop)
    except sqlite3.DatabaseError as exc:
        if "prohibited" in str(exc) or "not authorized" in str(exc):
            raise RefusedTableError(
                f"{path.name}:{table} was left out: it reads something other than the database's own tables"
            ) from None
        if "interrupted" in str(exc) and should_stop():
            raise QueryTimeoutError(f"reading {what} was stopped (the time limit, or the call was cancelled)") from None
        raise DataSourceError(f"cannot read table {table!r} of {path.name}: {exc}") from None
    finally:
        conn.close()


def _batches(cursor: sqlite3.Cursor) -> Iterator[Sequence[Any]]:
    while batch := cursor.fetchmany(5000):
        yield from batch


# Excel -------------------------------------------------------------------------------------------


def xlsx_sheets(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> list[str]:
    """The worksheet names of a workbook, in order; a workbook that unpacks to more than
    ``max_bytes`` (a zip bomb, or simply too big to copy) is refused before it is parsed."""
    import openpyxl  # imported here: only Excel sources pay for it

    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(item.file_size for item in archive.infolist())
    except (zipfile.BadZipFile, OSError):
        unpacked = 0  # openpyxl says what is wrong with it, below
    if unpacked > max_bytes:
        raise DataSourceError(
            f"{path.name} unpacks to {unpacked / 2**20:,.0f} MiB, more than the {max_bytes / 2**20:,.0f} MiB "
            "copy limit; export the sheet to CSV or Parquet, or raise [data] max_copied_mb"
        )

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds for a broken or foreign file
        raise DataSourceError(f"{path.name} is not a readable .xlsx workbook: {type(exc).__name__}") from None
    try:
        return [ws.title for ws in book.worksheets]
    finally:
        book.close()


def copy_xlsx_sheet(
    path: Path,
    sheet: str,
    out: Path,
    max_rows: int,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    should_stop: StopCheck = _never,
) -> CopiedTable:
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
        what = f"sheet {sheet!r} of {path.name}"
        cut = (r[:width] for r in rows)
        return write_ndjson(out, names, cut, max_rows, what, max_bytes=max_bytes, should_stop=should_stop)
    finally:
        book.close()
