"""The first layer of the read-only session: which statements may run at all.

Checked with DuckDB's own parser, never with regular expressions over the text:

1. :func:`duckdb.extract_statements` must find exactly one statement, of type SELECT (so a second
   statement hidden after a comment, ``COPY``, ``ATTACH``, ``INSTALL``/``LOAD``, ``SET``, ``CALL``,
   ``EXPORT DATABASE`` and DDL are refused by their type);
2. the statement must serialise as a plain SELECT tree (``json_serialize_sql``): DuckDB rewrites
   ``PRAGMA x`` into a SELECT, and this is where it is caught;
3. walking that tree: every table it reads must be a registered table or one of its own CTEs (a
   replacement scan such as ``FROM '/etc/passwd'`` names no registered table), every table function
   must be a plain generator (``range``, ``generate_series``, ``unnest``): ``read_csv``, ``glob``,
   ``query('…')`` (SQL in a string) and the ``pragma_*`` / ``duckdb_*`` views are refused; and a
   few scalar functions that read settings are refused.

Layers below this one (``enable_external_access=false``, locked configuration, time and size caps)
hold even if a statement got through; see :mod:`.session`.

SQL stored in a user's DuckDB file (a view's query, a computed column) runs when a registered table
reads it, so it is judged too, from the catalog and before anything binds it, by
:func:`check_stored_sql`: it may read only that database's own tables and views.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from caelum_mcp.core.lazy_imports import lazy_module

from .models import SqlRejectedError

if TYPE_CHECKING:
    import duckdb
else:
    duckdb = lazy_module("duckdb")  # loads with the first data call, not with the server

MAX_SQL_CHARS = 20_000
ALLOWED_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})
# Scalar functions that read the session's settings (paths of the user's files among them).
REFUSED_FUNCTIONS = frozenset({"current_setting", "getenv", "getvariable", "current_schemas", "current_database"})
# Nodes that can read a table by name; their ``table_name`` must be a registered table or a CTE.
_TABLE_NODES = ("BASE_TABLE", "SHOW_REF")


@dataclass(frozen=True)
class CheckedSelect:
    """A statement that passed the guard: its text (one SELECT, no trailing ``;``) and what it reads."""

    sql: str
    tables: frozenset[str]


def _without_final_semicolon(text: str) -> str:
    """``text`` without its closing ``;`` and whatever comment follows it (DuckDB's tokenizer skips
    comments), so that it can stand inside a subquery."""
    tokens = duckdb.tokenize(text)
    if tokens and text[tokens[-1][0]] == ";":
        return text[: tokens[-1][0]].rstrip()
    return text


def check_select(con: duckdb.DuckDBPyConnection, sql: str, tables: Mapping[str, object]) -> CheckedSelect:
    """Refuse anything but one SELECT over the registered ``tables`` (names compared case-insensitively).

    ``con`` only serialises the statement (``json_serialize_sql``, a pure function); nothing runs.
    Raises :class:`SqlRejectedError` saying what was refused and what to do instead.
    """
    text = sql.strip()
    if not text:
        raise SqlRejectedError("the SQL is empty; give one SELECT statement")
    if len(text) > MAX_SQL_CHARS:
        raise SqlRejectedError(f"the SQL is {len(text):,} characters, more than {MAX_SQL_CHARS:,}; shorten it")
    try:
        statements = duckdb.extract_statements(text)
    except duckdb.Error as exc:
        raise SqlRejectedError(f"the SQL does not parse: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise SqlRejectedError(f"exactly one statement may run, and this SQL holds {len(statements)}; send one SELECT")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise SqlRejectedError(f"only a SELECT may run; this is a {kind.name} statement (the data is read-only)")
    body = _without_final_semicolon(text)
    tree = _serialised(con, body)
    known = {name.lower() for name in tables}
    ctes = {key.lower() for key in _cte_names(tree)}
    read: set[str] = set()
    for node in _nodes(tree):
        node_type = node.get("type")
        if node_type == "SHOW_REF" and node.get("query"):
            continue  # SUMMARIZE / DESCRIBE of a query: the tables inside it are checked in turn
        if node_type in _TABLE_NODES:
            read.add(_check_table(node, known, ctes, sorted(tables)))
        elif node_type == "TABLE_FUNCTION":
            function = node.get("function") or {}
            name = str(function.get("function_name", "")).lower()
            if name not in ALLOWED_TABLE_FUNCTIONS:
                raise SqlRejectedError(
                    f"table function {name}() is not allowed: only the registered tables may be read "
                    f"({_listing(sorted(tables))})"
                )
        if node.get("class") == "FUNCTION":
            if str(node.get("function_name", "")).lower() in REFUSED_FUNCTIONS:
                raise SqlRejectedError(f"function {node['function_name']}() is not allowed here")
            if str(node.get("catalog") or "").lower() not in ("", "system", "memory"):
                # an attached database's own macros are bound from its file, not checked here
                raise SqlRejectedError(f"function {node['function_name']}() of another database is not allowed here")
    return CheckedSelect(sql=body, tables=frozenset(read - ctes))


@dataclass(frozen=True)
class StoredSql:
    """What a database's own stored SQL (a view's query, a column's expression) reads, or why it is refused."""

    problem: str | None
    reads: frozenset[str]


def check_stored_sql(
    con: duckdb.DuckDBPyConnection, body: str, own: Collection[tuple[str, str]], macros: Collection[str]
) -> StoredSql:
    """Judge SQL stored in a user's database file before anything binds it.

    A view or a generated column runs with the session's rights when it is read, so it may read
    only the database's own tables and views (``own``: lower-case ``(schema, name)`` pairs) and
    plain generators: no file (``read_csv('/etc/passwd')``, ``FROM 'x.csv'``), no other database,
    no catalog view (``duckdb_settings()``, ``pragma_database_list``, ``duckdb_databases()``, which
    would show settings and absolute paths), no setting-reading function and none of the file's own
    ``macros`` (their bodies are SQL too). ``reads`` names what it reads, for views over views.
    """
    try:
        tree = _serialised(con, body)
    except SqlRejectedError:
        return StoredSql("its SQL cannot be checked", frozenset())
    names = {name for _, name in own}
    reads: set[str] = set()
    ctes = {key.lower() for key in _cte_names(tree)}
    for node in _nodes(tree):
        node_type = node.get("type")
        if node_type in _TABLE_NODES and not (node_type == "SHOW_REF" and node.get("query")):
            name = str(node.get("table_name", "")).lower()
            schema = str(node.get("schema_name") or "").lower()
            if node.get("catalog_name"):
                return StoredSql(f"it reads {name!r} of another database", frozenset())
            if not schema and name in ctes:
                continue
            if (schema, name) not in own and not (not schema and name in names):
                if any(c in name for c in "/\\.:"):  # a replacement scan: never echo the path
                    return StoredSql("it reads a file by its path", frozenset())
                return StoredSql(f"it reads {name[:80]!r}, which is not a table of this database", frozenset())
            reads.add(name)
        elif node_type == "TABLE_FUNCTION":
            function = node.get("function") or {}
            name = str(function.get("function_name", "")).lower()
            if name not in ALLOWED_TABLE_FUNCTIONS:
                return StoredSql(f"it calls {name}() (files, settings or other databases)", frozenset())
        if node.get("class") == "FUNCTION":
            name = str(node.get("function_name", "")).lower()
            if name in REFUSED_FUNCTIONS or name in macros or node.get("catalog"):
                return StoredSql(f"it calls {name}()", frozenset())
    return StoredSql(None, frozenset(reads))


def stored_view_query(create_sql: str) -> str:
    """The query of a ``CREATE VIEW … AS <query>`` statement (DuckDB's ``duckdb_views().sql``)."""
    for offset, kind in duckdb.tokenize(create_sql):
        if kind == duckdb.token_type.keyword and re.match(r"(?i)AS\b", create_sql[offset : offset + 3]):
            return _without_final_semicolon(create_sql[offset + 2 :].strip())
    return ""


def _serialised(con: duckdb.DuckDBPyConnection, sql: str) -> dict[str, Any]:
    row = con.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchone()
    tree = json.loads(row[0]) if row else {"error": True, "error_message": "no answer"}
    if tree.get("error"):
        message = str(tree.get("error_message", ""))
        if "Only SELECT" in message:  # e.g. PRAGMA, which extract_statements reports as a SELECT
            raise SqlRejectedError("only a plain SELECT may run (PRAGMA and other commands are refused)")
        raise SqlRejectedError(f"the SQL does not parse: {message[:300]}")
    statements = tree.get("statements")
    if not isinstance(statements, list) or len(statements) != 1:
        raise SqlRejectedError("exactly one statement may run; send one SELECT")
    return tree


def _check_table(node: Mapping[str, Any], known: set[str], ctes: set[str], listing: list[str]) -> str:
    name = str(node.get("table_name", ""))
    lowered = name.lower()
    qualifier = [str(node.get(k) or "") for k in ("catalog_name", "schema_name")]
    if any(q and q.lower() not in ("main", "memory") for q in qualifier):
        raise SqlRejectedError(
            f"table {'.'.join(q for q in [*qualifier, name] if q)!r} is not allowed: use the registered tables "
            f"by their plain names ({_listing(listing)})"
        )
    if lowered in known or lowered in ctes:
        return lowered
    if any(c in name for c in "/\\.:") or not name:
        raise SqlRejectedError(
            f"reading files by path ({name[:120]!r}) is not allowed: only the registered tables may be read "
            f"({_listing(listing)})"
        )
    raise SqlRejectedError(f"no table named {name[:120]!r}; the tables are: {_listing(listing)}")


def _listing(names: list[str]) -> str:
    return ", ".join(names[:30]) + (f" and {len(names) - 30} more" if len(names) > 30 else "") if names else "none"


def _cte_names(tree: Any) -> Iterator[str]:
    for node in _nodes(tree):
        cte_map = node.get("cte_map")
        if isinstance(cte_map, Mapping):
            for entry in cte_map.get("map") or ():
                if isinstance(entry, Mapping) and isinstance(entry.get("key"), str):
                    yield entry["key"]


def _nodes(tree: Any) -> Iterator[Mapping[str, Any]]:
    """Every object in the serialised tree, depth first (iteratively: deep trees must not recurse)."""
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
