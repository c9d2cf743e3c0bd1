"""The read-only DuckDB session: the user's files as tables, and queries run under guards.

A read-only connection alone still lets ``COPY … TO`` write files and ``read_csv('/etc/passwd')``
read any file, so a session is read-only in layers, each tested on its own:

1. the statement guard (:mod:`.sql_guard`): exactly one SELECT, over registered tables only;
2. DuckDB in-process and in memory, locked down *before* any source is touched:
   ``allowed_paths`` = exactly the sources' files, ``enable_external_access=false`` and
   ``lock_configuration=true``: no file outside the sources can be read or written, no extension
   installed or loaded, no setting changed, whatever statement runs, a user database's own views
   included. DuckDB is never given a name from the user's folder: each file is linked under the
   private folder with a plain name (``files/0.csv``), so a name such as ``[p]w.csv`` cannot
   become a glob that DuckDB expands to a neighbouring link. Tables are then registered (views
   over the files, DuckDB files attached ``READ_ONLY``, SQLite and Excel copied in:
   :mod:`.copies`); a database's views and computed columns are judged from the catalog before
   anything binds them (:func:`.sql_guard.check_stored_sql`), and those that read files, settings
   or other databases are left out;
3. limits: time (the query is interrupted; opening the sources too), a memory limit with spilling
   only into the session's private folder, CSV lines over ``max_line_bytes`` refused before DuckDB
   reads them, and caps on the rows and characters a result brings back.

A session belongs to one tool call; :func:`open_session` opens it in a worker thread and closes
it (interrupting a query still running) however the call ends; a call cancelled while the sources
are still being opened stops that work too (:class:`Stopper`). Its private folder under the
supervisor's state folder holds spill files and the SQLite/Excel copies, and is removed on close.
"""

from __future__ import annotations

import atexit
import datetime as dt
import math
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import pydantic_core

from caelum_mcp.core.lazy_imports import lazy_module
from caelum_mcp.engine.budget import estimate_tokens

from . import copies
from .models import (
    ColumnInfo,
    DataSourceError,
    QueryFailedError,
    QueryResult,
    QueryTimeoutError,
    SourceKind,
    SqlRejectedError,
    TableInfo,
)
from .sources import ResolvedSources, SourceFile, line_over, regular_file, table_name
from .sql_guard import CheckedSelect, check_select, check_stored_sql, stored_view_query

if TYPE_CHECKING:
    import duckdb
else:
    duckdb = lazy_module("duckdb")  # loads with the first data call, not with the server

T = TypeVar("T")
MAX_TABLES = 128
_REINTERRUPT_S = 0.2
_LIST_ITEMS = 50  # items of a LIST/ARRAY cell shown


@dataclass(frozen=True)
class SessionLimits:
    """The caps of one session. ``rows_tokens`` bounds the rows a result brings back, as JSON
    counted by :func:`caelum_mcp.engine.budget.estimate_tokens` (the count every result is fitted by);
    ``max_rows`` bounds their count."""

    timeout_s: float = 30.0
    max_rows: int = 50
    max_cell_chars: int = 300
    rows_tokens: int = 8_000
    memory_limit: str = "2GB"
    max_temp_size: str = "4GB"
    threads: int = 0  # 0: DuckDB's default (every core)
    max_copied_rows: int = 1_000_000
    max_copied_bytes: int = copies.DEFAULT_MAX_BYTES  # NDJSON written for one SQLite table or sheet
    load_bytes: int = 32 * 1024 * 1024  # CSV and JSON sources up to this size are loaded into memory
    max_line_bytes: int = 2 * 1024 * 1024  # a CSV line longer than this is refused (DuckDB's default)
    # The whole session's DuckDB time (opening, describing, every statement), on top of each
    # statement's ``timeout_s``: a call that tries one slow query after another still stops. Time
    # between statements (a model writing the next query) does not count. None: no cap.
    call_budget_s: float | None = None


class Stopper:
    """Stops a session's work from another thread, also while its sources are still being opened
    (before the caller has the session): the DuckDB statement running now is interrupted, and the
    SQLite and Excel copies and the line scan stop at their next check."""

    def __init__(self) -> None:
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def watch(self, con: duckdb.DuckDBPyConnection) -> None:
        with self._lock:
            self._con = con
        if self.stopped:
            con.interrupt()

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            con = self._con
        if con is not None:
            con.interrupt()


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _SpareConnections:
    """One DuckDB connection opened ahead of time per configuration.

    Opening an in-memory DuckDB costs about 7 ms here, half of what an aggregate over a 1M-row
    Parquet file takes; a session takes the spare (when one is ready) and, once it has closed, a
    thread opens the next: between calls, not beside the session's own queries, which use
    every core. A spare is a fresh, untouched database: no session has seen it, and each session
    still sets its own spill folder, allowed paths and configuration lock.
    """

    MAX_KEPT = 4  # configurations with a spare; settings are per server, so one in practice

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: dict[tuple[tuple[str, Any], ...], duckdb.DuckDBPyConnection] = {}
        self._opening: set[tuple[tuple[str, Any], ...]] = set()

    def take(self, config: dict[str, Any]) -> duckdb.DuckDBPyConnection:
        """The spare for ``config`` if one is ready, else a new connection."""
        with self._lock:
            con = self._ready.pop(tuple(sorted(config.items())), None)
        return con if con is not None else duckdb.connect(":memory:", config=config)

    def refill(self, config: dict[str, Any]) -> None:
        """Open a spare for ``config`` in the background, unless one is ready or on its way."""
        key = tuple(sorted(config.items()))
        with self._lock:
            if key in self._ready or key in self._opening or len(self._ready) >= self.MAX_KEPT:
                return
            self._opening.add(key)
        # Not a daemon: a process must not exit while DuckDB is opening a database in this thread
        # (the C++ runtime aborts); the interpreter waits the few milliseconds it takes instead.
        threading.Thread(target=self._open, args=(key,), name="duckdb-spare").start()

    def _open(self, key: tuple[tuple[str, Any], ...]) -> None:
        con: duckdb.DuckDBPyConnection | None
        try:
            con = duckdb.connect(":memory:", config=dict(key))
        except duckdb.Error:  # the session's own connect will raise it with its context
            con = None
        with self._lock:
            self._opening.discard(key)
            if con is not None and key not in self._ready:
                self._ready[key], con = con, None
        if con is not None:
            con.close()

    def clear(self) -> None:
        """Close every spare (tests; a process that exits needs not)."""
        with self._lock:
            ready, self._ready = list(self._ready.values()), {}
        for con in ready:
            con.close()


SPARES = _SpareConnections()
atexit.register(SPARES.clear)


class DataSession:
    """One in-memory DuckDB with the sources registered and the configuration locked.

    Every method that touches DuckDB holds the session's lock, so :meth:`close` waits for a query
    that :meth:`interrupt` has just stopped. ``materialize`` loads file sources into memory once
    (for profiling, which reads every column several times) instead of registering views.
    """

    def __init__(
        self,
        sources: ResolvedSources,
        work_dir: Path,
        limits: SessionLimits = SessionLimits(),
        *,
        materialize: bool = False,
        stopper: Stopper | None = None,
    ) -> None:
        self.limits = limits
        self.work_dir = work_dir
        work_dir.mkdir(parents=True, exist_ok=True)
        self.tables: dict[str, TableInfo] = {}
        self.notes: list[str] = list(sources.notes)
        self._lock = threading.Lock()
        self._stopper = stopper or Stopper()
        opening = time.monotonic()
        self._opening_deadline = opening + limits.timeout_s
        self._spent = 0.0  # DuckDB time so far, against limits.call_budget_s
        self._shown: dict[str, str] = {}  # a private link's path -> the source it stands for
        config: dict[str, Any] = {
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_community_extensions": False,
            "allow_unsigned_extensions": False,
            "memory_limit": limits.memory_limit,
            "max_temp_directory_size": limits.max_temp_size,
        }
        if limits.threads > 0:
            config["threads"] = limits.threads
        self._config = config
        self.con = SPARES.take(config)
        self._stopper.watch(self.con)
        try:
            links = [self._links(index, source) for index, source in enumerate(sources.files)]
            self._lock_down(links, sources.files)
            with _Watchdog(limits.timeout_s, self.con.interrupt):
                for index, (source, linked) in enumerate(zip(sources.files, links, strict=True)):
                    self._raise_if_stopped()
                    self._register(index, source, linked, materialize)
            if not self.tables:
                raise DataSourceError("the sources hold no tables")
        except BaseException:
            self.con.close()
            raise
        self._spent = time.monotonic() - opening

    # lock-down ---------------------------------------------------------------------------------

    def _should_stop(self) -> bool:
        return self._stopper.stopped or time.monotonic() > self._opening_deadline

    def _raise_if_stopped(self) -> None:
        if self._stopper.stopped:
            raise QueryTimeoutError("the call was cancelled while its sources were being opened")
        if time.monotonic() > self._opening_deadline:
            raise QueryTimeoutError(self._opening_too_slow())

    def _opening_too_slow(self) -> str:
        return (
            f"opening the sources ran past the time limit of {self.limits.timeout_s:g} s and was stopped; "
            "name fewer or smaller sources, or raise the [data] time limit"
        )

    def _links(self, index: int, source: SourceFile) -> tuple[Path, ...]:
        """Each file of ``source`` checked once more (a regular file, lines within the limit) and
        linked under the private folder with a plain name DuckDB cannot read as a pattern."""
        folder = self.work_dir / "files"
        folder.mkdir(exist_ok=True)
        links = []
        for n, path in enumerate(source.paths):
            regular_file(path, source.label)
            if source.kind in (SourceKind.SQLITE, SourceKind.XLSX):
                continue  # read by Python from the resolved path and copied in: DuckDB never opens it
            try:
                too_long = source.kind is SourceKind.CSV and line_over(
                    path, self.limits.max_line_bytes, self._should_stop
                )
            except QueryTimeoutError:
                self._raise_if_stopped()  # says which: the time limit, or a cancelled call
                raise
            if too_long:
                shown_path = source.label if len(source.paths) == 1 else f"{source.label} ({path.name})"
                raise DataSourceError(
                    f"{shown_path!r} has a line longer than {self.limits.max_line_bytes:,} bytes, which is not read "
                    "(a line that long is not a table row); fix the file, or raise [data] max_line_bytes"
                )
            link = folder / f"{index}-{n}{_plain_suffix(path)}"
            link.symlink_to(path)
            self._shown[str(link)] = source.label
            self._shown[str(path)] = source.label
            links.append(link)
        return tuple(links)

    def _lock_down(self, links: Sequence[tuple[Path, ...]], files: Sequence[SourceFile]) -> None:
        """Allow exactly the linked files (and a DuckDB file's WAL), then turn off every other
        file access and lock the configuration: before any source is read or attached."""
        allowed = [str(link) for linked in links for link in linked]
        for source in files:
            if source.kind is SourceKind.DUCKDB:
                allowed.append(str(_wal_of(source)))
        copies_dir = self.work_dir / "copies"
        copies_dir.mkdir(exist_ok=True)
        self.con.execute(f"SET temp_directory = {_literal(str(self.work_dir / 'spill'))}")
        self.con.execute(f"SET allowed_paths = [{', '.join(_literal(p) for p in allowed)}]")
        self.con.execute(f"SET allowed_directories = [{_literal(str(copies_dir) + os.sep)}]")
        self.con.execute("SET enable_external_access = false")
        self.con.execute("SET lock_configuration = true")

    # registration ------------------------------------------------------------------------------

    def _name(self, wanted: str) -> str:
        if len(self.tables) >= MAX_TABLES:
            raise DataSourceError(f"the sources hold more than {MAX_TABLES} tables; name fewer sources")
        name, n = wanted, 2
        while name in self.tables:
            name = f"{wanted}_{n}"
            n += 1
        return name

    def _register(self, index: int, source: SourceFile, links: tuple[Path, ...], materialize: bool) -> None:
        """Register ``source``, read through its private ``links`` (DuckDB) or its resolved paths (Python)."""
        try:
            if source.kind in (SourceKind.CSV, SourceKind.PARQUET, SourceKind.JSON):
                self._register_scan(source, links, materialize)
            elif source.kind is SourceKind.DUCKDB:
                self._register_duckdb(index, source, links[0])
            elif source.kind is SourceKind.SQLITE:
                names, notes = copies.sqlite_tables(source.paths[0])
                self.notes += notes
                self._register_copies(source, names, copies.copy_sqlite_table)
            else:
                sheets = copies.xlsx_sheets(source.paths[0], self.limits.max_copied_bytes)
                self._register_copies(source, sheets, copies.copy_xlsx_sheet)
        except duckdb.InterruptException:
            self._raise_if_stopped()
            raise QueryTimeoutError(self._opening_too_slow()) from None
        except duckdb.Error as exc:
            raise DataSourceError(f"cannot read {source.label!r} as {source.kind}: {self._say(exc)}") from None

    def _say(self, exc: BaseException) -> str:
        """DuckDB's message about a source, naming the source instead of its private link."""
        text = str(exc)
        for path, label in sorted(self._shown.items(), key=lambda item: -len(item[0])):
            text = text.replace(path, label)
        return _message(text.replace(str(self.work_dir), "<session folder>"))

    def _register_scan(self, source: SourceFile, links: tuple[Path, ...], materialize: bool) -> None:
        files = "[" + ", ".join(_literal(str(p)) for p in links) + "]"
        several = ", union_by_name = true" if len(source.paths) > 1 else ""
        line = f", max_line_size = {int(self.limits.max_line_bytes)}"
        reader = {
            SourceKind.CSV: f"read_csv({files}{several}{line})",
            SourceKind.PARQUET: f"read_parquet({files}{several})",
            SourceKind.JSON: f"read_json({files}, format = 'auto'{several})",
        }[source.kind]
        name = self._name(source.name)
        # A text file small enough is parsed once into memory: the schema description, the model's
        # queries and their repairs then scan columns instead of parsing (and sniffing) it each time.
        # Parquet is columnar already, and large text files stay views that each query streams.
        size = sum(p.stat().st_size for p in source.paths)
        loaded = materialize or (source.kind is not SourceKind.PARQUET and size <= self.limits.load_bytes)
        kind = "TABLE" if loaded else "VIEW"
        if not loaded and source.kind is SourceKind.CSV and len(links) == 1:
            reader = self._sniffed_csv(links[0]) or reader
        self.con.execute(f"CREATE {kind} {quote_ident(name)} AS SELECT * FROM {reader}")  # noqa: S608 - our literals
        # DESCRIBE binds a view again, which for a text file means sniffing it again: read the types
        # it was bound with from the catalog instead (slower than DESCRIBE for anything else).
        self._describe(name, source.label, from_catalog=not loaded and source.kind is not SourceKind.PARQUET)

    def _sniffed_csv(self, path: Path) -> str | None:
        """``read_csv`` of ``path`` with the dialect and column types DuckDB's sniffer finds, spelled
        out, or None where they cannot be. A view over plain ``read_csv`` sniffs the file again
        each time a query binds it (~0.1 s on a 1M-row file, a third of a simple aggregate over
        it); spelled out, only this call sniffs. The options are DuckDB's own ``sniff_csv``
        answer (what its ``Prompt`` column suggests), each value quoted here, never its SQL text.
        """
        try:
            got = self.con.execute(
                "SELECT Delimiter, Quote, Escape, NewLineDelimiter, Comment, SkipRows, HasHeader, Columns, "
                "DateFormat, TimestampFormat FROM sniff_csv(?, max_line_size = ?)",
                [str(path), int(self.limits.max_line_bytes)],
            ).fetchone()
        except duckdb.Error:  # plain read_csv says what is wrong with the file, in its own words
            return None
        if got is None:
            return None
        delim, quote, escape, new_line, comment, skip, header, columns, date_format, ts_format = got
        if not columns or not isinstance(skip, int) or not isinstance(header, bool):
            return None

        def text(value: object) -> str:
            return "" if value is None or value == "(empty)" else str(value)

        if new_line not in ("\\n", "\\r", "\\r\\n"):
            return None
        spelled = ", ".join(f"{_literal(str(c['name']))}: {_literal(str(c['type']))}" for c in columns)
        options = [
            "auto_detect = false",
            f"delim = {_literal(text(delim))}",
            f"quote = {_literal(text(quote))}",
            f"escape = {_literal(text(escape))}",
            f"new_line = {_literal(str(new_line))}",
            f"comment = {_literal(text(comment))}",
            f"skip = {int(skip)}",
            f"header = {'true' if header else 'false'}",
            f"columns = {{{spelled}}}",
            f"max_line_size = {int(self.limits.max_line_bytes)}",
        ]
        if text(date_format):
            options.append(f"dateformat = {_literal(text(date_format))}")
        if text(ts_format):
            options.append(f"timestampformat = {_literal(text(ts_format))}")
        return f"read_csv({_literal(str(path))}, {', '.join(options)})"

    def _register_duckdb(self, index: int, source: SourceFile, link: Path) -> None:
        alias = f"src_{index}_{uuid.uuid4().hex[:8]}"
        self.con.execute(f"ATTACH {_literal(str(link))} AS {alias} (READ_ONLY)")
        found = self.con.execute(
            "SELECT schema_name, table_name, NULL FROM duckdb_tables() WHERE database_name = ? "
            "UNION ALL SELECT schema_name, view_name, sql FROM duckdb_views() WHERE database_name = ? AND NOT internal "
            "ORDER BY 1, 2",
            [alias, alias],
        ).fetchall()
        refused = self._refused_objects(alias, [(str(s), str(t), v) for s, t, v in found])
        for schema, table, _ in found:
            if (schema, table) in refused:
                self.notes.append(f"{source.label}:{table} was left out: {refused[(schema, table)]}")
                continue
            wanted = table_name(table if schema == "main" else f"{schema}_{table}")
            name = self._name(wanted)
            target = f"{alias}.{quote_ident(schema)}.{quote_ident(table)}"
            self.con.execute(f"CREATE VIEW {quote_ident(name)} AS SELECT * FROM {target}")  # noqa: S608
            self._describe(name, f"{source.label}:{table}")

    def _refused_objects(self, alias: str, found: Sequence[tuple[str, str, str | None]]) -> dict[tuple[str, str], str]:
        """The tables and views of attached database ``alias`` that must not be read, and why.

        Judged from the catalog, before anything binds them: a view's stored query, and a table's
        column expressions (a generated column runs its expression when read). A view over a
        refused view is refused too."""
        own = {(schema.lower(), name.lower()) for schema, name, _ in found}
        macros = {
            str(row[0]).lower()
            for row in self.con.execute(
                "SELECT function_name FROM duckdb_functions() WHERE database_name = ?", [alias]
            ).fetchall()
        }
        expressions: dict[tuple[str, str], list[str]] = {}
        for schema, table, expression in self.con.execute(
            "SELECT schema_name, table_name, column_default FROM duckdb_columns() "
            "WHERE database_name = ? AND column_default IS NOT NULL",
            [alias],
        ).fetchall():
            expressions.setdefault((str(schema), str(table)), []).append(f"SELECT {expression}")
        refused: dict[tuple[str, str], str] = {}
        reads: dict[tuple[str, str], frozenset[str]] = {}
        for schema, name, view_sql in found:
            key = (schema, name)
            queries = [stored_view_query(view_sql)] if view_sql is not None else expressions.get(key, [])
            for query in queries:
                verdict = check_stored_sql(self.con, query, own, macros)
                if verdict.problem is not None:
                    refused[key] = verdict.problem
                    break
                reads[key] = reads.get(key, frozenset()) | verdict.reads
        changed = True
        while changed:  # views over refused views
            changed = False
            for key, names in reads.items():
                bad = next((n for (_, n) in refused if n.lower() in names), None)
                if key not in refused and bad is not None:
                    refused[key] = f"it reads {bad!r}, which is left out"
                    changed = True
        return refused

    def _register_copies(
        self, source: SourceFile, inner: Sequence[str], copy: Callable[..., copies.CopiedTable]
    ) -> None:
        path = source.paths[0]
        for item in inner:
            self._raise_if_stopped()
            out = self.work_dir / "copies" / f"copy-{uuid.uuid4().hex}.ndjson"
            try:
                try:
                    copied = copy(
                        path,
                        item,
                        out,
                        self.limits.max_copied_rows,
                        max_bytes=self.limits.max_copied_bytes,
                        should_stop=self._should_stop,
                    )
                except copies.RefusedTableError as exc:
                    self.notes.append(str(exc))
                    continue
                except QueryTimeoutError:
                    self._raise_if_stopped()
                    raise
                if not copied.columns:
                    self.notes.append(f"{source.label}:{item} is empty and was left out")
                    continue
                if source.kind is SourceKind.SQLITE:  # a database's tables keep their own names
                    wanted = item
                else:  # a workbook's sheets are named after it
                    wanted = source.name if len(inner) == 1 else f"{source.name}_{item}"
                name = self._name(table_name(wanted))
                columns = "{" + ", ".join(f"{_literal(c)}: {_literal(t)}" for c, t in copied.columns) + "}"
                self.con.execute(
                    f"CREATE TABLE {quote_ident(name)} AS SELECT * FROM read_json({_literal(str(out))}, "  # noqa: S608
                    f"format = 'newline_delimited', columns = {columns})"
                )
                self._describe(name, f"{source.label}:{item}")
            finally:
                out.unlink(missing_ok=True)

    def _describe(self, name: str, label: str, *, from_catalog: bool = False) -> None:
        if from_catalog:
            described = self.con.execute(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE schema_name = 'main' AND table_name = ? "
                "AND database_name = current_database() ORDER BY column_index",
                [name],
            ).fetchall()
        else:
            described = self.con.execute(f"DESCRIBE {quote_ident(name)}").fetchall()
        columns = [ColumnInfo(name=str(row[0]), type=str(row[1])) for row in described]
        self.tables[name] = TableInfo(name=name, source=label, columns=columns)

    # queries -------------------------------------------------------------------------------------

    def check(self, sql: str) -> CheckedSelect:
        """The guard's verdict on ``sql`` (see :mod:`.sql_guard`); raises SqlRejectedError."""
        with self._lock:
            return check_select(self.con, sql, self.tables)

    def run(self, sql: str, *, max_rows: int | None = None) -> QueryResult:
        """Check ``sql``, run it within the time limit and return its result within the caps.

        The query runs once, cut to the rows shown plus one: a result that fits is complete, and
        only a longer one is counted, by a second query that streams (``count(*)`` over it), so a
        ``SELECT *`` over a large file neither waits for nor holds every row. When the count runs
        past the time limit, the rows are still returned, the count marked as a lower bound.

        Raises :class:`SqlRejectedError`, :class:`QueryTimeoutError` or :class:`QueryFailedError`
        (DuckDB's own message, which a model can act on).
        """
        checked = self.check(sql)
        limit = self.limits.max_rows if max_rows is None else max_rows
        started = time.perf_counter()
        with self._lock, self._time_limit():
            try:
                first = f"SELECT * FROM ({{sql}}\n) LIMIT {int(limit) + 1}"  # noqa: S608 - a checked SELECT
                cursor = self.con.execute(_wrapped(checked.sql, first))
                described = cursor.description or []
                raw = cursor.fetchall()
                total, exact = len(raw), True
                if total > limit:
                    try:
                        count_sql = _wrapped(checked.sql, "SELECT count(*) FROM ({sql}\n)")
                        count_row = self.con.execute(count_sql).fetchone()
                    except duckdb.InterruptException:
                        exact = False  # the rows are here; only counting the rest ran out of time
                    else:
                        total = int(count_row[0]) if count_row else total
            except duckdb.InterruptException:
                raise QueryTimeoutError(
                    f"the query ran past its time limit of {self.limits.timeout_s:g} s and was stopped; "
                    "make it cheaper (filter early, avoid cross joins) or raise [data] query_timeout_s"
                ) from None
            except duckdb.Error as exc:
                raise QueryFailedError(self._say(exc)) from None
        columns = [ColumnInfo(name=str(d[0]), type=str(d[1])) for d in described]
        rows, cut = self._fit_rows(raw[:limit])
        return QueryResult(
            sql=checked.sql,
            columns=columns,
            rows=rows,
            row_count=total,
            row_count_exact=exact,
            rows_omitted=total - len(rows),
            cells_cut=cut,
            seconds=round(time.perf_counter() - started, 4),
        )

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one of *our own* read statements (profiling), under the time limit but not the guard.
        Never pass user text here except as a parameter."""
        with self._lock, self._time_limit():
            try:
                return self.con.execute(sql, list(params)).fetchall()
            except duckdb.InterruptException:
                raise QueryTimeoutError(
                    f"stopped at the time limit of {self.limits.timeout_s:g} s; raise [data] profile_timeout_s"
                ) from None
            except duckdb.Error as exc:
                raise QueryFailedError(self._say(exc)) from None

    @contextmanager
    def _time_limit(self) -> Iterator[None]:
        """One statement under its watchdog: ``timeout_s``, or what is left of the call's budget of
        DuckDB time; the statement's time is added to what the call has spent (run under the lock)."""
        seconds = self.limits.timeout_s
        if self.limits.call_budget_s is not None:
            seconds = min(seconds, self.limits.call_budget_s - self._spent)
            if seconds <= 0:
                raise QueryTimeoutError(
                    f"this call's queries ran past their time limit of {self.limits.timeout_s:g} s, so this one "
                    "did not run; make the queries cheaper (filter early, avoid cross joins) or raise the limit"
                )
        started = time.monotonic()
        try:
            with _Watchdog(seconds, self.con.interrupt):
                yield
        finally:
            self._spent += time.monotonic() - started

    def interrupt(self) -> None:
        """Stop the query running now, if any (safe from any thread)."""
        self._stopper.stop()

    def close(self) -> None:
        with self._lock:
            self.con.close()
        shutil.rmtree(self.work_dir, ignore_errors=True)
        SPARES.refill(self._config)

    # results -------------------------------------------------------------------------------------

    def _fit_rows(self, raw: Sequence[tuple[Any, ...]]) -> tuple[list[list[Any]], int]:
        """Rows as JSON data within ``rows_tokens`` (the first row always), and the cells cut."""
        rows: list[list[Any]] = []
        spent = cut = 0
        for record in raw:
            counter = [0]
            row = [json_cell(value, self.limits.max_cell_chars, counter) for value in record]
            size = estimate_tokens(pydantic_core.to_json(row).decode())
            if rows and spent + size > self.limits.rows_tokens:
                break
            rows.append(row)
            spent += size
            cut += counter[0]
        return rows, cut


class _Watchdog:
    """Calls ``interrupt`` once ``seconds`` have passed inside the ``with`` block, and again every
    :data:`_REINTERRUPT_S` until the block ends: DuckDB forgets an interrupt that arrives before
    its statement has started, and a statement may start after a short limit has passed."""

    def __init__(self, seconds: float, interrupt: Callable[[], None]) -> None:
        self._seconds = seconds
        self._interrupt = interrupt
        self._done = threading.Event()
        self._lock = threading.Lock()  # no interrupt once the block has ended: it would hit the next statement
        self._thread = threading.Thread(target=self._watch, name="duckdb-watchdog", daemon=True)

    def _watch(self) -> None:
        wait = self._seconds
        while not self._done.wait(wait):
            with self._lock:
                if self._done.is_set():
                    return
                self._interrupt()
            wait = _REINTERRUPT_S

    def __enter__(self) -> None:
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._done.set()


def json_cell(value: Any, max_chars: int, cut: list[int]) -> Any:
    """A DuckDB value as JSON data: ISO dates, decimals as numbers, non-finite floats as text,
    bytes as a short hex preview, long text cut (``cut[0]`` counts the cells cut)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        number = float(value)
        return number if math.isfinite(number) else str(value)
    if isinstance(value, str):
        if len(value) > max_chars:
            cut[0] += 1
            return value[:max_chars] + f"…(+{len(value) - max_chars} chars)"
        return value
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return f"<{len(data)} bytes: {data[:16].hex()}{'…' if len(data) > 16 else ''}>"
    if isinstance(value, list | tuple):
        items = [json_cell(v, max_chars, cut) for v in value[:_LIST_ITEMS]]
        return items + ([f"…(+{len(value) - _LIST_ITEMS} items)"] if len(value) > _LIST_ITEMS else [])
    if isinstance(value, dict):
        return {str(k): json_cell(v, max_chars, cut) for k, v in list(value.items())[:_LIST_ITEMS]}
    return json_cell(str(value), max_chars, cut)  # timedelta, UUID, intervals


def _wrapped(sql: str, template: str) -> str:
    """A checked SELECT inside ``template`` (``{sql}`` marks where), re-parsed: the wrapping must
    still be exactly one SELECT, or the statement is refused."""
    wrapped = template.replace("{sql}", sql)
    statements = _statements(wrapped)
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise SqlRejectedError("this statement cannot run as a query here; send a plain SELECT")
    return wrapped


def _statements(sql: str) -> list[duckdb.Statement]:
    """DuckDB's parse of ``sql``; nothing when it does not parse."""
    try:
        return duckdb.extract_statements(sql)
    except duckdb.Error:
        return []


def _plain_suffix(path: Path) -> str:
    """The extension DuckDB needs to know a file by (``.csv``, ``.csv.gz``), letters and digits only."""
    suffixes = [s.lower() for s in path.suffixes if re.fullmatch(r"\.[A-Za-z0-9]{1,10}", s)]
    keep = 2 if suffixes and suffixes[-1] == ".gz" else 1
    return "".join(suffixes[-keep:])


def _wal_of(source: SourceFile) -> Path:
    """The WAL DuckDB reads beside a database file; one there must be a regular file of its own."""
    wal = source.paths[0].with_name(source.paths[0].name + ".wal")
    if os.path.lexists(wal) and (wal.is_symlink() or not wal.is_file()):
        raise DataSourceError(
            f"{source.label!r} has a .wal file beside it that is a link or not a regular file; remove it"
        )
    return wal


def _message(exc: BaseException | str) -> str:
    """DuckDB's message without the caret diagram, short enough to show and to feed back to a model."""
    # DuckDB's "LINE 1: …" excerpt would quote our wrapping of the query, not the caller's text.
    lines = [
        line
        for line in str(exc).splitlines()
        if line.strip() and not line.strip().startswith("^") and not line.startswith("LINE ")
    ]
    text = " ".join(lines)
    return text[:600] + ("…" if len(text) > 600 else "")


# async -------------------------------------------------------------------------------------------


class AsyncDataSession:
    """A :class:`DataSession` for async callers: every call in a worker thread; a cancelled call
    interrupts the query it was waiting for."""

    def __init__(self, session: DataSession) -> None:
        self.session = session

    @property
    def tables(self) -> dict[str, TableInfo]:
        return self.session.tables

    @property
    def notes(self) -> list[str]:
        return self.session.notes

    async def call(self, fn: Callable[[DataSession], T]) -> T:
        """``fn(session)`` in a worker thread (e.g. :func:`~.profile.profile_table`)."""
        try:
            return await anyio.to_thread.run_sync(partial(fn, self.session), abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            self.session.interrupt()
            raise

    async def run(self, sql: str, *, max_rows: int | None = None) -> QueryResult:
        return await self.call(partial(DataSession.run, sql=sql, max_rows=max_rows))

    async def check(self, sql: str) -> CheckedSelect:
        return await self.call(partial(DataSession.check, sql=sql))


def _private_folder(state_dir: Path) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="session-", dir=state_dir))


def _new_session(
    sources: ResolvedSources, state_dir: Path, limits: SessionLimits, materialize: bool, stopper: Stopper
) -> DataSession:
    work_dir = _private_folder(state_dir)
    try:
        session = DataSession(sources, work_dir, limits, materialize=materialize, stopper=stopper)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    if stopper.stopped:  # cancelled while opening, and nobody waits for it any more
        session.close()
        raise QueryTimeoutError("the call was cancelled while its sources were being opened")
    return session


@asynccontextmanager
async def open_session(
    sources: ResolvedSources,
    state_dir: Path,
    limits: SessionLimits = SessionLimits(),
    *,
    materialize: bool = False,
) -> AsyncIterator[AsyncDataSession]:
    """A session over ``sources`` with its private folder under ``state_dir``; closed on exit.

    Cancelled while the sources are opened, the call returns at once and the opening stops
    (interrupted, or at its next check) and cleans up in its thread."""
    stopper = Stopper()
    try:
        session = await anyio.to_thread.run_sync(
            partial(_new_session, sources, state_dir, limits, materialize, stopper), abandon_on_cancel=True
        )
    except anyio.get_cancelled_exc_class():
        stopper.stop()
        raise
    try:
        yield AsyncDataSession(session)
    finally:
        session.interrupt()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(session.close)
