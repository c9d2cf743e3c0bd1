"""The read-only session, layer by layer: each guard is shown to hold on its own.

1. the statement guard refuses what is not one SELECT over the registered tables;
2. with the guard bypassed (statements sent straight to the connection), the locked configuration
   still refuses to write, to read other files, to attach, install or load, and to be unlocked;
3. the time limit stops a runaway query, a cancelled call stops its query, and results are capped.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from decimal import Decimal
from pathlib import Path

import anyio
import duckdb
import pytest

from caelum_mcp.tools.data.models import QueryFailedError, QueryTimeoutError, SqlRejectedError
from caelum_mcp.tools.data.session import DataSession, SessionLimits, json_cell, open_session
from caelum_mcp.tools.data.sources import resolve_sources
from caelum_mcp.tools.data.sql_guard import check_select

from .test_data_sources import SALES, digest, write_shop


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    write_shop(root)
    (root / "shop" / "private.txt").write_text("password=hunter2\n")
    return root


def session_over(root: Path, *specs: str, **limits: object) -> DataSession:
    resolved = resolve_sources(list(specs) or ["shop/sales.csv"], [root])
    return DataSession(resolved, root.parent / "work", SessionLimits(**limits))  # type: ignore[arg-type]


GUARD_REFUSES = {
    "COPY sales TO 'out.csv'": "COPY statement",
    "SELECT 1; SELECT 2": "holds 2",
    "SELECT * FROM sales /* ; */; DELETE FROM sales": "holds 2",
    "PRAGMA version": "PRAGMA",
    "CALL pragma_version()": "CALL statement",
    "SET threads = 1": "SET statement",
    "ATTACH 'x.db' AS x": "ATTACH statement",
    "INSTALL httpfs": "LOAD statement",
    "LOAD httpfs": "LOAD statement",
    "EXPORT DATABASE 'out'": "EXPORT statement",
    "CREATE TABLE t AS SELECT 1": "CREATE statement",
    "WITH d AS (DELETE FROM sales RETURNING *) SELECT * FROM d": "does not parse",
    "SELECT * FROM read_csv('/etc/passwd')": "table function read_csv",
    "SELECT * FROM '/etc/passwd'": "reading files by path",
    "SELECT * FROM query('SELECT 1')": "table function query",
    "SELECT * FROM duckdb_settings()": "table function duckdb_settings",
    "SELECT current_setting('allowed_paths')": "current_setting",
    "SELECT * FROM information_schema.tables": "not allowed",
    "SELECT * FROM nosuch": "no table named 'nosuch'",
    "": "empty",
}


@pytest.mark.parametrize("sql", sorted(GUARD_REFUSES))
def test_the_guard_refuses_everything_but_one_select_over_the_tables(sql: str) -> None:
    con = duckdb.connect()
    with pytest.raises(SqlRejectedError, match=GUARD_REFUSES[sql]):
        check_select(con, sql, {"sales": object()})


def test_the_guard_accepts_ordinary_analytical_selects() -> None:
    con = duckdb.connect()
    tables = {"sales": object(), "customers": object()}
    ok = [
        "WITH big AS (SELECT * FROM sales WHERE amount > 10) SELECT customer, sum(amount) FROM big GROUP BY ALL",
        "SELECT s.*, c.name FROM sales s JOIN customers c ON c.name = s.customer;",
        "FROM sales SELECT region, count(*) GROUP BY region ORDER BY 2 DESC LIMIT 3",
        "SELECT * FROM range(3) r, unnest([1, 2]) u",
        "SUMMARIZE sales",
        "SELECT 1 -- a trailing comment",
    ]
    for sql in ok:
        checked = check_select(con, sql, tables)
        assert not checked.sql.endswith(";")
    assert check_select(con, ok[1], tables).tables == {"sales", "customers"}


HOSTILE_DIRECT = [
    "COPY sales TO '{root}/shop/out.csv'",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('{root}/shop/private.txt')",
    "SELECT * FROM read_csv('{root}/shop/events.ndjson')",  # a file beside the source, not a source
    "SELECT * FROM glob('{root}/shop/*')",
    "ATTACH '{root}/shop/new.duckdb' AS n",
    "ATTACH '{root}/shop/warehouse.duckdb' AS w",
    "EXPORT DATABASE '{root}/shop/export'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "SET allowed_paths = ['/etc/passwd']",
    "RESET allowed_directories",
]


@pytest.mark.parametrize("statement", HOSTILE_DIRECT)
def test_without_the_guard_the_locked_configuration_still_holds(shop: Path, statement: str) -> None:
    before = digest(shop)
    session = session_over(shop)
    try:
        with pytest.raises(duckdb.Error) as caught:
            session.con.execute(statement.format(root=shop))  # straight to DuckDB: no guard
        assert any(word in str(caught.value) for word in ("disabled", "locked", "Permission", "Cannot"))
        assert session.run("SELECT count(*) FROM sales").rows == [[7]]  # the source is still readable
    finally:
        session.close()
    assert digest(shop) == before


@pytest.mark.slow  # over a second: kept out of make test-fast
def test_a_runaway_cross_join_stops_at_the_time_limit(shop: Path) -> None:
    session = session_over(shop, timeout_s=1.0)
    try:
        started = time.perf_counter()
        with pytest.raises(QueryTimeoutError, match="time limit of 1 s"):
            session.run("SELECT count(*) FROM sales a, sales b, range(100000) c, range(100000) d")
        assert time.perf_counter() - started < 5
        assert session.run("SELECT count(*) FROM sales").rows == [[7]]  # the session still works
    finally:
        session.close()


@pytest.mark.slow  # over a second: kept out of make test-fast
def test_rows_that_came_back_are_kept_when_counting_the_rest_runs_out_of_time(shop: Path) -> None:
    """The first rows of a huge result stream at once; counting all of them cannot finish. The
    caller still gets the rows, with the count marked as a lower bound."""
    session = session_over(shop, timeout_s=1.0, max_rows=5)
    try:
        result = session.run("SELECT a.range AS x, b.range AS y FROM range(100000) a, range(100000) b")
        assert len(result.rows) == 5 and result.rows[0] == [0, 0]
        assert (result.row_count, result.row_count_exact, result.rows_omitted) == (6, False, 1)
        whole = session.run("SELECT * FROM range(20)")
        assert (whole.row_count, whole.row_count_exact, whole.rows_omitted) == (20, True, 15)
    finally:
        session.close()


async def test_a_cancelled_call_interrupts_its_query(shop: Path) -> None:
    resolved = resolve_sources(["shop/sales.csv"], [shop])
    async with open_session(resolved, shop.parent / "state", SessionLimits(timeout_s=60)) as session:
        started = time.perf_counter()
        with anyio.move_on_after(0.5):
            await session.run("SELECT count(*) FROM range(100000) a, range(100000) b, range(1000) c")
        assert time.perf_counter() - started < 5
    assert time.perf_counter() - started < 10  # closing waited for the interrupted query, not its end
    assert not any((shop.parent / "state").iterdir())  # the private folder is gone


def test_results_are_capped_by_rows_and_characters_with_counts(shop: Path) -> None:
    session = session_over(shop, max_rows=3, max_cell_chars=10, rows_tokens=130)
    try:
        result = session.run("SELECT * FROM sales ORDER BY order_id")
        assert (result.row_count, len(result.rows), result.rows_omitted) == (7, 3, 4)
        assert [r[0] for r in result.rows] == [1, 2, 3]  # the order of the query is kept
        wide = session.run("SELECT repeat('x', 500) AS blob, order_id FROM sales")
        assert wide.cells_cut >= 1 and wide.rows[0][0].startswith("xxxxxxxxxx…(+490 chars)")
        assert len(wide.rows) < 7 and wide.rows_omitted == 7 - len(wide.rows)
        assert [c.name for c in wide.columns] == ["blob", "order_id"]
        with pytest.raises(QueryFailedError, match="not found"):
            session.run("SELECT nope FROM sales")
    finally:
        session.close()


def test_cells_become_json_data() -> None:
    cut = [0]
    assert json_cell(Decimal("1.50"), 10, cut) == 1.5
    assert json_cell(float("nan"), 10, cut) == "nan"
    assert json_cell(dt.date(2024, 1, 2), 10, cut) == "2024-01-02"
    assert json_cell(b"\x00\x01", 10, cut) == "<2 bytes: 0001>"
    assert json_cell(list(range(60)), 10, cut)[-1] == "…(+10 items)"
    assert json_cell({"a": dt.time(1, 2)}, 10, cut) == {"a": "01:02:00"}
    assert cut == [0]


def test_a_session_on_a_spare_connection_sees_only_its_own_sources_and_is_locked(shop: Path) -> None:
    """Sessions take a connection opened ahead of time; the one after a session must be a fresh
    database: no table, view or setting of the session before it, and locked again."""
    from caelum_mcp.tools.data.session import SPARES

    first = session_over(shop, "shop/sales.csv")
    first.close()
    deadline = time.monotonic() + 10
    while not SPARES._ready and time.monotonic() < deadline:  # the spare opens in the background
        time.sleep(0.01)
    assert SPARES._ready, "no spare connection was opened after the first session closed"
    second = session_over(shop, "shop/events.ndjson")
    try:
        assert SPARES._ready == {}  # it was taken
        assert set(second.tables) == {"events"}
        with pytest.raises(duckdb.Error):
            second.con.execute("SELECT * FROM sales").fetchall()
        with pytest.raises(duckdb.Error, match="locked"):
            second.con.execute("SET enable_external_access = true")
        spill = second.con.execute("SELECT current_setting('temp_directory')").fetchone()
        assert spill is not None and str(spill[0]).startswith(str(second.work_dir))
    finally:
        second.close()


def test_a_process_that_exits_while_a_spare_opens_exits_cleanly(shop: Path) -> None:
    """A spare opening in a thread when the interpreter exits must not abort the process (a
    daemon thread inside DuckDB's open did: 'terminate called without an active exception')."""
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path\n"
        "from caelum_mcp.tools.data.session import DataSession\n"
        "from caelum_mcp.tools.data.sources import resolve_sources\n"
        "root = Path(sys.argv[1])\n"
        "for i in range(3):\n"
        "    DataSession(resolve_sources(['shop/sales.csv'], [root]), root.parent / f'w{i}').close()\n"
    )
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", code, str(shop)], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr[-2000:]


CSV_DIALECTS = {
    "plain.csv": "id,name,amount,day\n1,ann,2.5,2024-01-02\n2,bob,,2024-02-03\n3,cy,7,2024-03-04\n",
    "quoted.csv": 'id,text\n1,"a, b"\n2,"say ""hi"""\n3,"two\nlines"\n',
    "semicolon.csv": "a;b;c\n1;x;2024-01-01 10:00:00\n2;y;2024-01-02 11:30:00\n",
    "no_header.csv": "1,2,3\n4,5,6\n7,8,9\n",
    "crlf.csv": "k,v\r\n1,one\r\n2,two\r\n",
    "dates_dmy.csv": "when,n\n31/01/2024,1\n29/02/2024,2\n15/03/2024,3\n",
    "it's quoted.csv": "x\n1\n2\n",
}


@pytest.mark.parametrize("name", sorted(CSV_DIALECTS))
def test_a_large_csv_view_reads_as_read_csv_does(tmp_path: Path, name: str) -> None:
    """CSV files too big to load stay views over ``read_csv`` with the sniffed dialect and types
    spelled out (so queries do not sniff again): they must read exactly as DuckDB's own
    auto-detecting ``read_csv`` does, names, types and values."""
    root = tmp_path / "root"
    root.mkdir()
    path = root / name
    path.write_text(CSV_DIALECTS[name], encoding="utf-8", newline="")
    session = DataSession(resolve_sources([name], [root]), tmp_path / "work", SessionLimits(load_bytes=0))
    try:
        (table,) = session.tables.values()
        with duckdb.connect() as con:
            described = con.execute("DESCRIBE SELECT * FROM read_csv(?)", [str(path)]).fetchall()
            expected = con.execute("SELECT * FROM read_csv(?)", [str(path)]).fetchall()
        assert [(c.name, c.type) for c in table.columns] == [(str(r[0]), str(r[1])) for r in described]
        view = session.con.execute("SELECT sql FROM duckdb_views() WHERE view_name = ?", [table.name]).fetchone()
        assert view is not None and "auto_detect" in str(view[0])  # the sniffed options, spelled out
        got = session.run(f'SELECT * FROM "{table.name}"', max_rows=100)
        assert got.rows == [[json_cell(v, 300, [0]) for v in row] for row in expected]
    finally:
        session.close()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) AS n FROM sales;",
        "SELECT count(*) AS n FROM sales; -- the total",
        "SELECT count(*) AS n FROM sales /* x */ ; /* y */",
        "SELECT count(*) AS n FROM sales -- no semicolon",
    ],
)
def test_a_closing_semicolon_or_comment_still_runs(shop: Path, sql: str) -> None:
    session = session_over(shop)
    try:
        got = session.run(sql)
        assert got.rows == [[len(SALES)]] and not got.sql.rstrip().endswith(";")
    finally:
        session.close()


def test_a_long_result_is_counted_without_being_held(shop: Path) -> None:
    """Only the rows shown (plus one) are fetched; a longer result is counted by a second query."""
    session = session_over(shop)
    try:
        got = session.run("SELECT * FROM sales, range(1000) r", max_rows=3)
        assert (len(got.rows), got.row_count, got.rows_omitted) == (3, len(SALES) * 1000, len(SALES) * 1000 - 3)
        assert [c.name for c in got.columns][-1] == "range"
        short = session.run("SELECT * FROM sales", max_rows=len(SALES))
        assert (len(short.rows), short.row_count, short.rows_omitted) == (len(SALES), len(SALES), 0)
    finally:
        session.close()


def _hostile_duckdb(path: Path, outside: Path) -> None:
    """A DuckDB file whose views and computed columns reach outside it (issue 19 item 4)."""
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE stock AS SELECT i AS sku, i * 3 AS units FROM range(4) t(i)")
    con.execute("CREATE VIEW big_stock AS SELECT sku FROM stock WHERE units > 3")
    con.execute("CREATE SCHEMA extra")
    con.execute("CREATE VIEW extra.doubled AS SELECT sku * 2 AS d FROM main.stock")
    hostile = {
        "v_file": f"SELECT * FROM read_csv('{outside}')",
        "v_path": f"SELECT * FROM '{outside}'",
        "v_text": f"SELECT * FROM read_text('{outside}')",
        "v_settings": "SELECT * FROM duckdb_settings()",
        "v_dblist": "SELECT * FROM pragma_database_list",
        "v_databases": "SELECT * FROM duckdb_databases()",
        "v_databases_view": "SELECT * FROM duckdb_databases",
        "v_setting": "SELECT current_setting('allowed_paths') AS p",
        "v_macro": "SELECT paths() AS p",
        "v_table_macro": "SELECT * FROM leak()",
        "v_over_file": "SELECT * FROM v_file",
    }
    con.execute("CREATE MACRO paths() AS current_setting('allowed_paths')")
    con.execute(f"CREATE MACRO leak() AS TABLE SELECT * FROM read_csv('{outside}')")
    for name, sql in hostile.items():
        con.execute(f"CREATE VIEW {name} AS {sql}")
    con.execute("CREATE TABLE computed (a INTEGER, p VARCHAR GENERATED ALWAYS AS (current_setting('temp_directory')))")
    con.execute("INSERT INTO computed (a) VALUES (1)")
    con.close()


def test_a_duckdb_files_views_cannot_read_outside_or_show_settings_and_paths(tmp_path: Path) -> None:
    """Issue 19 item 4: a `.duckdb` source's views were bound before the session was locked down,
    so `read_csv('<any file>')` in a view put that file's lines into the table listing. The views
    that read files, settings, paths or macros are left out, said so in the notes, and nothing in
    the listing or any table shows the outside file or an absolute path."""
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside.csv"
    outside.write_text("root:x:0:0:canary-77aa\n")
    _hostile_duckdb(root / "hostile.duckdb", outside)
    session = session_over(root, "hostile.duckdb")
    try:
        assert set(session.tables) == {"stock", "big_stock", "extra_doubled"}
        assert session.run("SELECT sum(d) FROM extra_doubled").rows == [[12]]
        assert session.run("SELECT count(*) FROM big_stock").rows == [[2]]
        left_out = " ".join(session.notes)
        for name in ("v_file", "v_path", "v_text", "v_settings", "v_dblist", "v_databases", "v_setting"):
            assert f"hostile.duckdb:{name} was left out" in left_out, name
        assert "v_macro" in left_out and "v_table_macro" in left_out and "v_over_file" in left_out
        assert "computed was left out" in left_out
        text = json.dumps([t.model_dump() for t in session.tables.values()]) + left_out
        for name in session.tables:
            text += json.dumps(session.run(f'SELECT * FROM "{name}"', max_rows=1000).rows, default=str)
        assert "canary-77aa" not in text and "root:x" not in text
        assert str(tmp_path) not in text  # no absolute path: not the outside file's, not the session's
    finally:
        session.close()


def test_the_lock_holds_for_a_databases_views_even_without_the_catalog_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Layer 2 on its own: with the check of stored SQL switched off, a view reading an outside
    file still cannot, because the session is locked down before the database is attached."""
    from caelum_mcp.tools.data import session as session_module
    from caelum_mcp.tools.data.models import DataSourceError
    from caelum_mcp.tools.data.sql_guard import StoredSql

    monkeypatch.setattr(session_module, "check_stored_sql", lambda *_args: StoredSql(None, frozenset()))
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside.csv"
    outside.write_text("root:x:0:0:canary-77aa\n")
    con = duckdb.connect(str(root / "views.duckdb"))
    con.execute("CREATE TABLE t AS SELECT 1 AS a")
    con.execute(f"CREATE VIEW v_file AS SELECT * FROM read_csv('{outside}')")
    con.close()
    with pytest.raises(DataSourceError, match=r"disabled|Permission") as caught:
        session_over(root, "views.duckdb")
    assert "canary-77aa" not in str(caught.value) and "root:x" not in str(caught.value)


def test_a_sqlite_files_views_cannot_show_its_path_or_other_databases(tmp_path: Path) -> None:
    """Issue 19 item 4 (SQLite): a view over `pragma_database_list` shows the file's absolute
    path; such views are left out (an authorizer lets a view read only the file's own tables)."""
    import sqlite3

    root = tmp_path / "root"
    root.mkdir()
    db = sqlite3.connect(root / "crm.sqlite")
    db.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
    db.execute("INSERT INTO customers VALUES (1, 'ann'), (2, 'bob')")
    db.execute("CREATE VIEW named AS SELECT name FROM customers WHERE id > 1")
    db.execute("CREATE VIEW v_dblist AS SELECT * FROM pragma_database_list")
    db.execute("CREATE VIEW v_columns AS SELECT * FROM pragma_table_info('customers')")
    db.execute("CREATE VIEW v_master AS SELECT sql FROM sqlite_master")
    db.commit()
    db.close()
    session = session_over(root, "crm.sqlite")
    try:
        assert {"customers", "named"} <= set(session.tables)
        assert not {"v_dblist", "v_columns"} & set(session.tables)
        assert session.run("SELECT name FROM named").rows == [["bob"]]
        notes = " ".join(session.notes)
        assert "v_dblist was left out" in notes and "v_columns was left out" in notes
        text = notes + json.dumps([t.model_dump() for t in session.tables.values()])
        for name in session.tables:
            text += json.dumps(session.run(f'SELECT * FROM "{name}"', max_rows=1000).rows, default=str)
        assert str(root) not in text
    finally:
        session.close()


def _slow_sqlite(path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x INTEGER)")
    db.execute("INSERT INTO t VALUES (1)")
    # Counts to a billion without producing a row: minutes of work, which only a time limit stops.
    db.execute(
        "CREATE VIEW slow AS WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 1000000000) "
        "SELECT count(*) AS n FROM c"
    )
    db.commit()
    db.close()


@pytest.mark.slow  # about a second: the time limit
def test_a_slow_sqlite_view_stops_at_the_time_limit(tmp_path: Path) -> None:
    """Issue 19 item 7: a slow SQLite view had no time limit. Against a 1 s limit the session
    must fail, saying so, within a few seconds (stopped, not run to its end)."""
    _slow_sqlite(tmp_path / "slow.sqlite")
    started = time.perf_counter()
    with pytest.raises(QueryTimeoutError, match="time limit of 1 s"):
        DataSession(resolve_sources(["slow.sqlite"], [tmp_path]), tmp_path / "work", SessionLimits(timeout_s=1.0))
    assert time.perf_counter() - started < 10


async def test_a_call_cancelled_while_its_sources_open_stops_that_work(tmp_path: Path) -> None:
    """Issue 19 item 7: cancelling a call stops its work, also while the sources are opened
    (a slow SQLite view being copied), and the private folder is removed."""
    _slow_sqlite(tmp_path / "slow.sqlite")
    resolved = resolve_sources(["slow.sqlite"], [tmp_path])
    state = tmp_path / "state"
    started = time.perf_counter()
    with anyio.move_on_after(0.5):
        async with open_session(resolved, state, SessionLimits(timeout_s=600)):
            pytest.fail("the session opened; the view should take minutes")
    assert time.perf_counter() - started < 5
    # The worker stops at its next check and cleans up after itself: 30 s at most, for a loaded machine.
    for _ in range(600):
        if not any(state.iterdir()):
            break
        await anyio.sleep(0.05)
    assert not any(state.iterdir())


@pytest.mark.slow  # 1.5 s of waiting
def test_time_between_statements_does_not_spend_the_call_budget(shop: Path) -> None:
    """The budget is DuckDB's time: a model that takes longer than it to write the query (a CPU
    host, a long schema) must not find its query refused as if the data had been slow."""
    session = session_over(shop, timeout_s=1.0, call_budget_s=1.0)
    try:
        assert session.fetch("SELECT count(*) FROM sales") == [(7,)]
        time.sleep(1.5)  # the model thinking
        result = session.run("SELECT count(*) AS n FROM sales")
        assert result.rows == [[7]]
    finally:
        session.close()


@pytest.mark.slow  # about a second: the time limit
def test_a_call_budget_is_shared_by_every_statement_of_the_session(shop: Path) -> None:
    """One runaway statement spends the call's budget; the next one is refused at once instead of
    getting the whole limit again (three repair rounds ran 3x the limit before)."""
    session = session_over(shop, timeout_s=1.0, call_budget_s=1.0)
    try:
        runaway = "SELECT count(*) FROM range(100000) a, range(100000) b, range({n}) c"
        with pytest.raises(QueryTimeoutError, match="time limit of 1 s"):
            session.run(runaway.format(n=1000))
        started = time.perf_counter()
        with pytest.raises(QueryTimeoutError, match="did not run"):
            session.run(runaway.format(n=1001))
        with pytest.raises(QueryTimeoutError):
            session.fetch("SELECT 1")
        assert time.perf_counter() - started < 1
    finally:
        session.close()
