"""The read-only session, layer by layer: each guard is shown to hold on its own.

1. the statement guard refuses what is not one SELECT over the registered tables;
2. with the guard bypassed (statements sent straight to the connection), the locked configuration
   still refuses to write, to read other files, to attach, install or load, and to be unlocked;
3. the time limit stops a runaway query, a cancelled call stops its query, and results are capped.
"""

from __future__ import annotations

import datetime as dt
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
    session = session_over(shop, max_rows=3, max_cell_chars=10, rows_chars=400)
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
