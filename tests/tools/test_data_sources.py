"""Sources: files, folders and globs inside the roots, every format, read without a byte changed.

``write_shop`` writes one small data set in every format the data tools read; the session and
integration tests use it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import duckdb
import openpyxl
import pytest

from caelum_mcp.core.errors import PathNotAllowedError
from caelum_mcp.tools.data.models import DataSourceError, SourceKind
from caelum_mcp.tools.data.session import DataSession, SessionLimits
from caelum_mcp.tools.data.sources import resolve_sources, table_name

SALES = [
    (1, "ann", "north", 120.5, "2024-01-03"),
    (2, "bob", "south", 80.0, "2024-01-05"),
    (3, "ann", "north", 42.25, "2024-02-11"),
    (4, "cy", "east", 300.0, "2024-02-12"),
    (5, "dee", "west", 15.0, "2024-03-01"),
    (6, "bob", "south", 99.9, "2024-03-15"),
    (7, "eve", "east", 250.0, "2024-03-20"),
]


def write_shop(root: Path) -> Path:
    """A folder ``shop`` under ``root`` with the same kind of data in every supported format."""
    shop = root / "shop"
    (shop / "monthly").mkdir(parents=True, exist_ok=True)
    lines = ["order_id,customer,region,amount,day"] + [",".join(map(str, r)) for r in SALES]
    (shop / "sales.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (shop / "sales.tsv").write_text("\n".join(line.replace(",", "\t") for line in lines) + "\n", encoding="utf-8")
    records = [dict(zip(("order_id", "customer", "region", "amount", "day"), r, strict=True)) for r in SALES]
    (shop / "events.json").write_text(json.dumps(records), encoding="utf-8")
    (shop / "events.ndjson").write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    con = duckdb.connect()
    for month in (1, 2, 3):
        target = shop / "monthly" / f"2024-{month:02d}.parquet"
        month_rows = f"SELECT * FROM read_csv('{shop / 'sales.csv'}') WHERE month(day) = {month}"
        con.execute(f"COPY ({month_rows}) TO '{target}' (FORMAT parquet)")
    con.close()
    db = sqlite3.connect(shop / "crm.sqlite")
    db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, joined TEXT, score REAL)")
    db.executemany(
        "INSERT INTO customers VALUES (?, ?, ?, ?)",
        [(1, "ann", "2023-05-01", 4.5), (2, "bob", "2023-06-11", 3.0), (3, "cy", None, None), (4, "dee", "x", 2)],
    )
    db.execute("CREATE VIEW good_customers AS SELECT * FROM customers WHERE score >= 3")
    db.commit()
    db.close()
    warehouse = duckdb.connect(str(shop / "warehouse.duckdb"))
    warehouse.execute("CREATE TABLE stock AS SELECT 'sku' || i AS sku, i * 3 AS units FROM range(10) t(i)")
    warehouse.close()
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "Targets"
    sheet.append(["region", "target", "due"])
    import datetime as dt

    sheet.append(["north", 100, dt.datetime(2024, 3, 31)])
    sheet.append(["south", 150.5, dt.datetime(2024, 6, 30)])
    notes = book.create_sheet("Notes")
    notes.append(["note", None, "author"])
    notes.append(["check Q2", None, "ann"])
    book.save(shop / "plan.xlsx")
    return shop


def digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its SHA-256: what must not change."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def open_all(root: Path, specs: list[str], **limits: object) -> DataSession:
    work = root.parent / f"work-{len(list(root.parent.iterdir()))}"
    work.mkdir()
    return DataSession(resolve_sources(specs, [root]), work, SessionLimits(**limits))  # type: ignore[arg-type]


def test_a_folder_gives_one_table_per_file_and_databases_their_own_tables(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_shop(root)
    resolved = resolve_sources(["shop"], [root])
    kinds = {f.label: f.kind for f in resolved.files}
    assert kinds == {
        "shop/crm.sqlite": SourceKind.SQLITE,
        "shop/events.json": SourceKind.JSON,
        "shop/events.ndjson": SourceKind.JSON,
        "shop/plan.xlsx": SourceKind.XLSX,
        "shop/sales.csv": SourceKind.CSV,
        "shop/sales.tsv": SourceKind.CSV,
        "shop/warehouse.duckdb": SourceKind.DUCKDB,
    }
    before = digest(root)
    session = open_all(root, ["shop"])
    try:
        assert set(session.tables) == {
            "customers",
            "good_customers",
            "events",
            "events_2",
            "plan_targets",
            "plan_notes",
            "sales",
            "sales_2",
            "stock",
        }
        assert session.run("SELECT count(*) FROM sales_2").rows == [[7]]  # the TSV
        assert session.run("SELECT sum(units) FROM stock").rows == [[135]]
        assert session.run("SELECT name FROM good_customers ORDER BY id").rows == [["ann"], ["bob"]]
        target = session.run("SELECT region, target, due FROM plan_targets ORDER BY region")
        assert [c.type for c in target.columns] == ["VARCHAR", "DOUBLE", "DATE"]
        assert target.rows == [["north", 100.0, "2024-03-31"], ["south", 150.5, "2024-06-30"]]
        assert [c.name for c in session.tables["plan_notes"].columns] == ["note", "column_2", "author"]
        # SQLite is dynamically typed: a REAL column holding an int stays numeric, text stays text
        customers = {c.name: c.type for c in session.tables["customers"].columns}
        assert customers == {"id": "BIGINT", "name": "VARCHAR", "joined": "VARCHAR", "score": "DOUBLE"}
        assert session.run("SELECT sum(order_id) FROM events_2").rows == [[28]]
    finally:
        session.close()
    assert digest(root) == before  # not a byte changed, no journal or WAL file left beside them


def test_a_glob_is_one_table_over_every_match(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_shop(root)
    session = open_all(root, ["shop/monthly/*.parquet"])
    try:
        assert list(session.tables) == ["monthly"]
        assert session.run("SELECT count(*), count(DISTINCT month(day)) FROM monthly").rows == [[7, 3]]
    finally:
        session.close()
    (named,) = resolve_sources(["shop/monthly/2024-*.parquet"], [root]).files
    assert named.name == "t_2024" and len(named.paths) == 3
    (absolute,) = resolve_sources([str(root / "shop/monthly/*.parquet")], [root]).files
    assert absolute.label == "shop/monthly/*.parquet"  # relative to its root, never an absolute path


def test_paths_outside_the_roots_are_refused_whatever_the_spelling(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_shop(root)
    outside = tmp_path / "outside.csv"
    outside.write_text("a\n1\n")
    (root / "shop" / "link.csv").symlink_to(outside)
    for spec in ["../outside.csv", str(outside), "shop/../../outside.csv", "/etc/passwd", "shop/link.csv"]:
        with pytest.raises(PathNotAllowedError):
            resolve_sources([spec], [root])
    # a glob skips a link that leaves the roots, and says so
    resolved = resolve_sources(["shop/*.csv"], [root])
    assert [p.name for p in resolved.files[0].paths] == ["sales.csv"]
    assert "skipped" in resolved.notes[0]


def test_unusable_sources_get_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_shop(root)
    (root / "shop" / "readme.md").write_text("# hi")
    (root / "empty").mkdir()
    cases = {
        "shop/readme.md": "not a data file",
        "empty": "holds no data files",
        "shop/*.nothing": "matches no files",
        "shop/*": "several kinds",
        "shop/*.sqlite": "cannot be combined",
        "": "empty",
    }
    for spec, expected in cases.items():
        with pytest.raises(DataSourceError, match=expected):
            resolve_sources([spec], [root])
    with pytest.raises(PathNotAllowedError, match="does not exist"):
        resolve_sources(["shop/missing.csv"], [root])


def test_a_db_file_is_told_apart_by_its_header_and_names_are_plain_identifiers(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "a.db").execute("CREATE TABLE t (x)").connection.commit()
    duckdb.connect(str(tmp_path / "b.db")).close()
    (tmp_path / "c.db").write_bytes(b"not a database")
    kinds = [f.kind for f in resolve_sources(["a.db", "b.db"], [tmp_path]).files]
    assert kinds == [SourceKind.SQLITE, SourceKind.DUCKDB]
    with pytest.raises(DataSourceError):
        resolve_sources(["c.db"], [tmp_path])
    assert table_name("2024 Sales-Report (final)") == "t_2024_sales_report_final"
    assert table_name("Ünïcode!") == "n_code"


def test_a_sqlite_file_in_wal_mode_is_read_without_creating_shm_or_wal_files(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "live.sqlite")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x INTEGER)")
    db.execute("INSERT INTO t VALUES (1)")
    db.commit()
    db.close()  # the last connection checkpoints and removes -wal and -shm
    before = sorted(os.listdir(tmp_path))
    session = DataSession(resolve_sources(["live.sqlite"], [tmp_path]), tmp_path / "work", SessionLimits())
    try:
        assert session.run("SELECT x FROM t").rows == [[1]]
    finally:
        session.close()
    assert sorted(os.listdir(tmp_path)) == before or sorted(os.listdir(tmp_path)) == sorted([*before, "work"])


def test_copies_over_the_row_limit_are_refused_with_the_fix(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "big.sqlite")
    db.execute("CREATE TABLE t (x INTEGER)")
    db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(50)])
    db.commit()
    db.close()
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(DataSourceError, match="max_copied_rows"):
        DataSession(resolve_sources(["big.sqlite"], [tmp_path]), work, SessionLimits(max_copied_rows=10))
    assert list(work.rglob("copy-*")) == []  # the partial copy is gone


def test_large_text_files_stay_views_with_the_types_they_were_bound_with(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_shop(root)
    work = tmp_path / "work"
    loaded = DataSession(resolve_sources(["shop/sales.csv"], [root]), work / "a", SessionLimits())
    streamed = DataSession(resolve_sources(["shop/sales.csv"], [root]), work / "b", SessionLimits(load_bytes=0))
    try:
        kinds = {
            session: session.con.execute("SELECT table_type FROM information_schema.tables").fetchall()
            for session in (loaded, streamed)
        }
        assert kinds[loaded] == [("BASE TABLE",)] and kinds[streamed] == [("VIEW",)]
        assert loaded.tables["sales"].columns == streamed.tables["sales"].columns
        assert [c.type for c in streamed.tables["sales"].columns] == ["BIGINT", "VARCHAR", "VARCHAR", "DOUBLE", "DATE"]
        assert streamed.run("SELECT sum(amount) FROM sales").rows == loaded.run("SELECT sum(amount) FROM sales").rows
    finally:
        loaded.close()
        streamed.close()


SECRET_LINE = "root:x:0:0:canary-5b21:/root:/bin/bash"


def _outside_secret(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "passwd").write_text(f"{SECRET_LINE}\ndaemon:x:1:1:canary-5b21:/usr/sbin:/bin/sh\n")
    (outside / "records.json").write_text(json.dumps([{"user": SECRET_LINE}]))
    return outside


def _every_cell(session: DataSession) -> str:
    text = json.dumps([t.model_dump() for t in session.tables.values()]) + json.dumps(session.notes)
    for name in session.tables:
        text += json.dumps(session.run(f'SELECT * FROM "{name}"', max_rows=1000).rows, default=str)
    return text


@pytest.mark.parametrize("spec", ["src", "src/[p]w.csv", "src/*.csv", "src/[p]w.json", "src/*.json"])
def test_glob_characters_in_a_file_name_never_make_duckdb_read_a_neighbouring_link(tmp_path: Path, spec: str) -> None:
    """Issue 19 item 3: `[p]w.csv` beside `pw.csv -> /etc/passwd`; DuckDB expanded the name as a
    pattern and read the link. Each file must read as itself, and the link's target never."""
    root = tmp_path / "root"
    source = root / "src"
    source.mkdir(parents=True)
    outside = _outside_secret(tmp_path)
    (source / "[p]w.csv").write_text("a,b\n1,2\n")
    (source / "pw.csv").symlink_to(outside / "passwd")
    (source / "[p]w.json").write_text(json.dumps([{"a": 1, "b": 2}]))
    (source / "pw.json").symlink_to(outside / "records.json")
    session = open_all(root, [spec])
    try:
        text = _every_cell(session)
        assert "canary-5b21" not in text and "root:x" not in text
        assert [[1, 2]] in [session.run(f'SELECT a, b FROM "{name}"').rows for name in session.tables]
    finally:
        session.close()


def test_names_with_glob_characters_are_read_as_named(tmp_path: Path) -> None:
    """`*`, `?`, `[`, `{a,b}` and `**` in file and folder names: a name that exists is taken
    literally (never as a pattern that could also match a neighbour), in Python and in DuckDB."""
    root = tmp_path / "root"
    outside = _outside_secret(tmp_path)
    names = ["*.csv", "?.csv", "{a,b}.csv", "**.csv", "d[1]/x.csv", "d{1,2}/y.csv", "**/z.csv"]
    for n, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"v\n{n}\n")
    (root / "a.csv").symlink_to(outside / "passwd")  # what `?.csv` or `*.csv` would also match
    (root / "d1").mkdir()
    (root / "d1" / "x.csv").symlink_to(outside / "passwd")  # what `d[1]/x.csv` matches as a glob
    for n, name in enumerate(names):
        (found,) = resolve_sources([name], [root]).files
        assert found.paths == ((root / name).resolve(),), name
        session = open_all(root, [name])
        try:
            assert session.run(f'SELECT v FROM "{found.name}"').rows == [[n]], name
        finally:
            session.close()
    (glob,) = resolve_sources(["d[1]/*.csv"], [root]).files  # a literal folder, then a pattern
    assert glob.paths == ((root / "d[1]" / "x.csv").resolve(),)


def test_fifos_and_other_non_regular_files_are_refused_without_opening_them(tmp_path: Path) -> None:
    """Issue 19 item 7: a FIFO named `.csv` (or `.db`, whose header is read) blocked the reader."""
    import threading
    import time

    root = tmp_path / "root"
    root.mkdir()
    (root / "ok.csv").write_text("a\n1\n")
    for name in ("pipe.csv", "pipe.db", "pipe.parquet"):
        os.mkfifo(root / name)
    (root / "link.csv").symlink_to(root / "pipe.csv")
    # Should anything open a FIFO anyway, a writer turns up after a while so the test cannot hang
    # (long after the bound below, which a loaded machine must not reach by slowness alone).
    unblock = threading.Timer(30.0, lambda: [_open_for_writing(root / n) for n in ("pipe.csv", "pipe.db")])
    unblock.daemon = True
    unblock.start()
    try:
        started = time.monotonic()
        for spec in ("pipe.csv", "link.csv", "pipe.parquet", "pipe.db"):
            with pytest.raises(DataSourceError, match=r"FIFO|not a data file"):
                resolve_sources([spec], [root])
        folder = resolve_sources(["."], [root])
        assert [f.label for f in folder.files] == ["ok.csv"]
        (glob,) = resolve_sources(["*.csv"], [root]).files
        assert [p.name for p in glob.paths] == ["ok.csv"]
        assert time.monotonic() - started < 10
    finally:
        unblock.cancel()


def _open_for_writing(path: Path) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return  # no reader waits on it: nothing to unblock
    os.close(fd)


def test_line_over_finds_exactly_the_lines_past_the_limit(tmp_path: Path) -> None:
    import gzip

    from caelum_mcp.tools.data.sources import line_over

    limit = 1000
    cases = {
        "short": b"a,b\n" + b"1,2\n" * 10_000,
        "at_limit": b"a\n" + b"x" * limit + b"\n" + b"1\n" * 3000,
        "over_middle": b"a\n" + b"1\n" * 3000 + b"x" * (limit + 1) + b"\n" + b"1\n" * 3000,
        "over_first": b"x" * (limit * 5) + b"\n1\n",
        "over_last_no_newline": b"a\n" + b"1\n" * 3000 + b"x" * (limit + 1),
        "crlf": b"a\r\n" + b"1\r\n" * 5000,
        "cr_only": b"a\r" + b"1\r" * 5000,
    }
    expected = {"over_middle", "over_first", "over_last_no_newline"}
    for name, data in cases.items():
        (tmp_path / f"{name}.csv").write_bytes(data)
        (tmp_path / f"{name}.csv.gz").write_bytes(gzip.compress(data))
        for path in (tmp_path / f"{name}.csv", tmp_path / f"{name}.csv.gz"):
            assert line_over(path, limit) is (name in expected), path.name


def test_a_csv_line_over_the_limit_is_refused_before_duckdb_reads_it(tmp_path: Path) -> None:
    """Issue 19 item 7: a 2 GiB one-line CSV took 146 s and 6 GB. Scaled down: a 4 MiB line
    against a 64 KiB limit is refused at once, with the setting that raises it."""
    import time

    root = tmp_path / "root"
    root.mkdir()
    with (root / "one_line.csv").open("wb") as handle:
        handle.write(b"a,b\n")
        handle.write(b"x" * (4 * 1024 * 1024))
        handle.write(b",1\n")
    (root / "fine.csv").write_text("a,b\n" + "y" * 10_000 + ",1\n")
    started = time.monotonic()
    with pytest.raises(DataSourceError, match=r"line longer than 65,536 bytes.*max_line_bytes"):
        open_all(root, ["one_line.csv"], max_line_bytes=64 * 1024)
    with pytest.raises(DataSourceError, match="max_line_bytes"):
        open_all(root, ["*.csv"], max_line_bytes=64 * 1024, load_bytes=0)
    assert time.monotonic() - started < 5
    session = open_all(root, ["fine.csv"], max_line_bytes=64 * 1024, load_bytes=0)
    try:
        assert session.run("SELECT b FROM fine").rows == [[1]]
    finally:
        session.close()


def test_copies_are_bounded_by_bytes_and_a_workbook_by_what_it_unpacks_to(tmp_path: Path) -> None:
    """Issue 19 item 7: every reader is bounded by bytes. A SQLite table whose copy would pass the
    byte cap, and a workbook that unpacks to more than it (a zip bomb), are refused with the fix."""
    import zipfile

    db = sqlite3.connect(tmp_path / "blobs.sqlite")
    db.execute("CREATE TABLE t (x TEXT)")
    db.executemany("INSERT INTO t VALUES (?)", [("y" * 100_000,) for _ in range(30)])
    db.commit()
    db.close()
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["a"])
    book.save(tmp_path / "bomb.xlsx")
    with zipfile.ZipFile(tmp_path / "bomb.xlsx", "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xl/padding.bin", b"\0" * (8 * 1024 * 1024))  # 8 MiB that packs to a few KiB
    assert (tmp_path / "bomb.xlsx").stat().st_size < 100_000
    for name in ("blobs.sqlite", "bomb.xlsx"):
        work = tmp_path / f"work-{name}"
        work.mkdir()
        with pytest.raises(DataSourceError, match="max_copied_mb"):
            DataSession(resolve_sources([name], [tmp_path]), work, SessionLimits(max_copied_bytes=1024 * 1024))
        assert list(work.rglob("copy-*")) == []
