"""query_data and profile_data: accuracy of question -> SQL, speed, and the red-team count.

Three parts, each printing its figures (``--accuracy``, ``--speed``, ``--security``; all by default):

- **accuracy**: labelled questions with gold SQL (``bench/data/query_data/``: 32 over TPC-H at
  ``sf=0.01``, generated offline by DuckDB's ``tpch`` extension from its PyPI wheel, and 32 over the
  Palmer penguins CSV shipped there) asked through the real ``query_data`` tool on the real server
  (in-process MCP client), against whatever hosts the configuration names (``--config``, else the
  usual discovery: an Ollama that answers, otherwise the embedded model). Execution accuracy compares
  result sets: numbers rounded to 2 decimals, rows as multisets unless the question is ``ordered``,
  and extra columns allowed when the gold columns are all among them. Per host, model and tier it
  prints accuracy, repair rate (answers that needed a repair round), escalation rate (a larger tier
  or Claude was asked), and how often a wrong answer still claimed confidence at or above the
  threshold. ``--min-tier micro`` lets the ``sql`` task run on a micro model (the embedded 135M one)
  so the harness can be exercised where no capable model is up;
- **speed**: ``profile_data`` on a generated 1M-row x 20-column CSV (target <= 10 s), and
  ``query_data(sql=...)`` against DuckDB alone (a fresh connection, the same SQL over the same file,
  ``fetchall``) on a 1M-row Parquet file and the CSV (target <= 1.2x), rounds interleaved;
- **security**: the red-team set of ``tests/integration/test_data_redteam.py`` (hostile statements
  as ``sql``, hostile questions through a scripted model that obeys them): tried / refused, and
  whether the files are byte-identical afterwards; and its hostile project (file names that are
  glob patterns beside links to an outside file, a DuckDB file whose views read files and
  settings): sources tried, and how many answers showed the outside file or an absolute path.

    .venv/bin/python bench/query_data.py                         # everything
    .venv/bin/python bench/query_data.py --accuracy --set penguins --limit 8
    .venv/bin/python bench/query_data.py --accuracy --min-tier micro --limit 4
    .venv/bin/python bench/query_data.py --speed --rows 1000000 --repeat 3
    .venv/bin/python bench/query_data.py --security
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.util
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import duckdb
from mcp import Client

from caelum_mcp.engine.calibration import USER_FILE
from caelum_mcp.engine.config import load_config
from caelum_mcp.engine.hosts import Host
from caelum_mcp.serving.server import create_server

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data" / "query_data"
TPCH_TABLES = ("customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier")


# data ---------------------------------------------------------------------------------------------


def tpch_extension() -> Path | None:
    """The tpch extension from the ``duckdb-extension-tpch`` wheel, when it matches this DuckDB."""
    spec = importlib.util.find_spec("duckdb_extension_tpch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = (
        Path(next(iter(spec.submodule_search_locations)))
        / "extensions"
        / f"v{duckdb.__version__}"
        / "tpch.duckdb_extension"
    )
    return path if path.is_file() else None


def prepare_tpch(work: Path, sf: float) -> Path | None:
    extension = tpch_extension()
    if extension is None:
        version = duckdb.__version__
        print(f"TPC-H: no tpch extension for DuckDB {version} (pip install duckdb-extension-tpch=={version})")
        return None
    folder = work / "tpch"
    folder.mkdir()
    con = duckdb.connect()
    con.execute(f"LOAD '{extension}'")  # a separate, unguarded connection: benchmark set-up only
    con.execute(f"CALL dbgen(sf = {sf})")
    for table in TPCH_TABLES:
        con.execute(f"COPY {table} TO '{folder / table}.parquet' (FORMAT parquet)")
    con.close()
    return folder


def prepare_penguins(work: Path) -> Path:
    folder = work / "penguins"
    folder.mkdir()
    shutil.copy(DATA / "penguins.csv", folder / "penguins.csv")
    return folder


BIG_COLUMNS = (
    "i AS id",
    "'cust_' || (i % 50000) AS customer",
    "(random() * 1000)::DECIMAL(10, 2) AS amount",
    "(i % 7)::INT AS dow",
    "DATE '2020-01-01' + (i % 1500)::INT AS day",
    "['north', 'south', 'east', 'west'][1 + (i % 4)] AS region",
    "random() AS r1",
    "random() * 100 AS r2",
    "(i % 1000)::INT AS k1",
    "'p' || (i % 300) AS product",
    "CASE WHEN i % 1000 = 0 THEN 'n/a' ELSE (i % 97)::VARCHAR END AS mixed",
    "CASE WHEN i % 10 = 0 THEN NULL ELSE i % 13 END AS nullish",
    "(random() * 1e6)::BIGINT AS big",
    "md5(i::VARCHAR) AS hashy",
    "i % 2 = 0 AS flag",
    "'const' AS constant",
    "(i % 5000)::DOUBLE / 3 AS f3",
    "'city' || (i % 800) AS city",
    "(random() * 50)::INT AS qty",
    "TIMESTAMP '2024-01-01' + to_seconds(i) AS ts",
)


def big_csv(work: Path, rows: int) -> Path:
    """``rows`` rows x 20 columns of mixed types (numbers, text, dates, NULLs, a mixed column)."""
    path = work / "big" / "sales_1m.csv"
    path.parent.mkdir(exist_ok=True)
    con = duckdb.connect()
    con.execute("SELECT setseed(0.42)")
    columns = ",\n".join(BIG_COLUMNS)
    con.execute(f"COPY (SELECT {columns} FROM range({rows}) t(i)) TO '{path}' (HEADER)")
    con.execute(f"COPY (SELECT * FROM read_csv('{path}')) TO '{path.with_suffix('.parquet')}' (FORMAT parquet)")
    con.close()
    return path


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


# comparing results --------------------------------------------------------------------------------


def norm(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float | Decimal):
        return round(float(value), 2)
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return str(value)


def columns_of(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    return [[norm(r[i]) for r in rows] for i in range(width)]


def same_result(got: Sequence[Sequence[Any]], gold: Sequence[Sequence[Any]], ordered: bool) -> bool:
    """Execution match: the gold columns (each found among ``got``'s by its values) hold the same rows."""
    if len(got) != len(gold):
        return False
    if not gold:
        return True
    width_gold, width_got = len(gold[0]), len(got[0]) if got else 0
    gold_cols = columns_of(gold, width_gold)
    got_cols = columns_of(got, width_got)
    if not ordered:  # match columns by their sorted values, then compare rows as multisets
        gold_keys = [sorted(map(repr, c)) for c in gold_cols]
        got_keys = [sorted(map(repr, c)) for c in got_cols]
    else:
        gold_keys, got_keys = [list(map(repr, c)) for c in gold_cols], [list(map(repr, c)) for c in got_cols]
    picked: list[int] = []
    for key in gold_keys:
        match = next((j for j, k in enumerate(got_keys) if k == key and j not in picked), None)
        if match is None:
            return False
        picked.append(match)
    projected = [tuple(norm(r[j]) for j in picked) for r in got]
    expected = [tuple(norm(v) for v in r) for r in gold]
    return projected == expected if ordered else Counter(map(repr, projected)) == Counter(map(repr, expected))


# accuracy -----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    id: str
    key: tuple[str, str, str]
    status: str
    correct: bool
    repaired: bool
    escalated: bool
    confident: bool
    seconds: float


def questions(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines() if line.strip()]


async def ask_all(
    config_path: str | None,
    work: Path,
    sets: dict[str, tuple[Path, list[dict[str, Any]]]],
    min_tier: str | None,
    calibration: Path | None = None,
) -> list[Outcome]:
    """Every question through ``query_data`` on an in-process server whose data folder is ``work``'s
    own; ``calibration`` (a ``calibration.json``, e.g. written by ``bench/gate.py --write-default
    --table``) is copied into it, where the server reads a user's table."""
    overrides: dict[str, Any] = {"data_dir": str(work / "data"), "allowed_roots": [str(work)]}
    if calibration is not None:
        (work / "data").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(calibration, work / "data" / USER_FILE)
    if min_tier:
        overrides["router.tasks.sql.min_tier"] = min_tier
    config = load_config(config_path, overrides=overrides)
    server, _ = create_server(config)
    outcomes: list[Outcome] = []
    async with Client(server) as client:
        for folder, items in sets.values():
            gold_con = duckdb.connect()
            for file in sorted(folder.iterdir()):
                reader = "read_parquet" if file.suffix == ".parquet" else "read_csv"
                gold_con.execute(f"CREATE VIEW {file.stem} AS SELECT * FROM {reader}('{file}')")
            for item in items:
                started = time.perf_counter()
                res = await client.call_tool(
                    "query_data", {"sources": [folder.name], "question": item["question"], "max_rows": 1000}
                )
                seconds = time.perf_counter() - started
                out = res.structured_content or {}
                step = out.get("llm") or {}
                ex = step.get("execution") or {}
                key = (
                    ex.get("host") or "-",
                    ex.get("model") or "-",
                    str(ex.get("tier") or step.get("status") or "error"),
                )
                gold = gold_con.execute(item["sql"]).fetchall()
                ran = not res.is_error and out.get("error") is None and bool(out.get("sql"))
                correct = (
                    ran
                    and out.get("rows_omitted", 0) == 0
                    and same_result(out["rows"], gold, item.get("ordered", False))
                )
                # escalated: the answer came from Claude or from another tier than a weak first answer
                escalated = ex.get("path") == "claude" or any(
                    f"({ex.get('tier')})" not in e for e in ex.get("escalations", ())
                )
                confident = bool(ex) and ex.get("confidence", 0) >= ex.get("threshold", 1)
                outcome = Outcome(
                    item["id"],
                    key,
                    step.get("status", "error"),
                    correct,
                    len(out.get("rounds") or []) > 1,
                    escalated,
                    confident,
                    seconds,
                )
                outcomes.append(outcome)
                mark = "ok " if correct else "-- "
                said = (out.get("sql") or out.get("error") or step.get("note") or "")[:90]
                print(f"  {mark}{item['id']:8} {outcome.status:14} {seconds:6.1f} s  {said!r}")
            gold_con.close()
    return outcomes


def share(k: int, n: int) -> str:
    return f"{100 * k / n:.0f} %" if n else "-"


def report_accuracy(outcomes: list[Outcome]) -> None:
    groups: dict[tuple[str, str, str], list[Outcome]] = defaultdict(list)
    for o in outcomes:
        groups[o.key].append(o)
    head = (
        "| host | model | tier or step | questions | accuracy | repair rate | escalation rate | wrong but confident |"
    )
    print(f"\n{head} median s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (host, model, tier), items in sorted(groups.items()):
        n = len(items)
        correct, repaired = share(sum(o.correct for o in items), n), share(sum(o.repaired for o in items), n)
        escalated = share(sum(o.escalated for o in items), n)
        wrong_sure = sum(1 for o in items if o.confident and not o.correct)
        wrong = sum(not o.correct for o in items)
        print(
            f"| {host} | {model} | {tier} | {n} | {correct} | {repaired} | {escalated} | {wrong_sure} of {wrong} wrong "
            f"| {statistics.median(o.seconds for o in items):.2f} |"
        )
    total = len(outcomes)
    print(f"overall: {sum(o.correct for o in outcomes)}/{total} correct")


# speed --------------------------------------------------------------------------------------------

QUERY = (
    "SELECT region, product, sum(amount) AS revenue, count(*) AS orders FROM {table} "
    "WHERE day >= DATE '2021-01-01' GROUP BY ALL ORDER BY revenue DESC LIMIT 20"
)


async def speed(work: Path, rows: int, repeat: int) -> None:
    started = time.perf_counter()
    csv = big_csv(work, rows)
    parquet = csv.with_suffix(".parquet")
    print(
        f"generated {rows:,} rows x 20 columns: {csv.stat().st_size / 1e6:.0f} MB CSV, "
        f"{parquet.stat().st_size / 1e6:.0f} MB Parquet ({time.perf_counter() - started:.1f} s)"
    )
    config = load_config(
        None,
        environ={},
        overrides={
            "data_dir": str(work / "data"),
            "allowed_roots": [str(work)],
            "embedded": "off",
            "implicit_ollama": False,
            "hosts": [],
        },
    )
    server, _ = create_server(config)
    profile_s: list[float] = []
    inner_s: list[float] = []
    timings: dict[str, list[float]] = defaultdict(list)
    async with Client(server) as client:
        for _ in range(repeat):
            t = time.perf_counter()
            res = await client.call_tool("profile_data", {"source": str(csv), "summary": False})
            profile_s.append(time.perf_counter() - t)
            assert not res.is_error, res.content
            inner_s.append((res.structured_content or {})["profile"]["seconds"])
        for i in range(repeat * 2 + 1):
            for kind, path in (
                (("parquet", parquet), ("csv", csv)) if i % 2 == 0 else (("csv", csv), ("parquet", parquet))
            ):
                reader = "read_parquet" if kind == "parquet" else "read_csv"
                t = time.perf_counter()
                con = duckdb.connect()
                alone = con.execute(QUERY.format(table=f"{reader}('{path}')")).fetchall()
                con.close()
                timings[f"{kind} alone"].append(time.perf_counter() - t)
                t = time.perf_counter()
                res = await client.call_tool(
                    "query_data", {"sources": [str(path)], "sql": QUERY.format(table="sales_1m")}
                )
                timings[f"{kind} caelum"].append(time.perf_counter() - t)
                assert not res.is_error and len((res.structured_content or {})["rows"]) == len(alone)
    print(
        f"\nprofile_data, {rows:,} x 20 CSV: median {statistics.median(profile_s):.2f} s over {repeat} "
        f"(load + profile; the profile alone {statistics.median(inner_s):.2f} s) -- target <= 10 s"
    )
    print(f"\n| query over {rows:,} rows | DuckDB alone (median s) | query_data(sql=...) (median s) | ratio |")
    print("|---|---|---|---|")
    for kind in ("parquet", "csv"):
        alone, ours = statistics.median(timings[f"{kind} alone"]), statistics.median(timings[f"{kind} caelum"])
        print(f"| {kind} | {alone:.3f} | {ours:.3f} | {ours / alone:.2f}x (target <= 1.2x) |")


# security -----------------------------------------------------------------------------------------


async def security(work: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from integration.test_data_redteam import (  # type: ignore[import-not-found]
        HOSTILE_QUESTIONS,
        HOSTILE_SOURCES,
        HOSTILE_SQL,
        hostile_project,
        obedient_model,
    )
    from tools.test_data_sources import write_shop  # type: ignore[import-not-found]

    from caelum_mcp.engine.backends.scripted import ScriptedBackend

    root = work / "redteam"
    write_shop(root)
    hostile = hostile_project(work / "hostile")
    (root / "private.txt").write_text("password=canary\n")
    out = work / "out"
    out.mkdir()
    before = digest(root)
    backend = ScriptedBackend([("qwen2.5-coder:7b", 7.0)], obedient_model, name="obedient")
    config = load_config(
        None,
        environ={},
        overrides={
            "data_dir": str(work / "data-sec"),
            "allowed_roots": [str(root), str(hostile)],
            "embedded": "off",
            "implicit_ollama": False,
            "hosts": [],
            "data": {"query_timeout_s": 1.0, "repair_rounds": 0},
        },
    )
    server, _ = create_server(config, extra_hosts=[Host(name="obedient", backend=backend)])
    refused = 0
    tried = 0
    async with Client(server) as client:
        for template, _ in HOSTILE_SQL:
            tried += 1
            res = await client.call_tool(
                "query_data",
                {"sources": ["shop/sales.csv", "shop/warehouse.duckdb"], "sql": template.format(root=root, out=out)},
            )
            refused += bool(res.is_error)
        for template, _ in HOSTILE_QUESTIONS:
            tried += 1
            res = await client.call_tool(
                "query_data", {"sources": ["shop/sales.csv"], "question": template.format(root=root, out=out)}
            )
            data = res.structured_content or {}
            refused += bool(res.is_error or (data.get("error") and not data.get("rows")))
        leaked = 0
        for sources, sql in HOSTILE_SOURCES:
            res = await client.call_tool("query_data", {"sources": [str(hostile / s) for s in sources], "sql": sql})
            text = " ".join(getattr(c, "text", "") for c in res.content) + str(res.structured_content)
            leaked += "canary-19c4" in text or str(work) in text
    unchanged = digest(root) == before and not any(out.iterdir())
    print(f"\nred team: {tried} tried, {refused} refused; files byte-identical and nothing written: {unchanged}")
    print(f"hostile sources: {len(HOSTILE_SOURCES)} tried, {leaked} showed an outside file or an absolute path")


# main ---------------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    everything = not (args.accuracy or args.speed or args.security)
    work = Path(tempfile.mkdtemp(prefix="caelum-bench-data-"))
    try:
        if args.accuracy or everything:
            sets: dict[str, tuple[Path, list[dict[str, Any]]]] = {}
            if args.set in ("all", "tpch"):
                folder = prepare_tpch(work, args.sf)
                if folder is not None:
                    sets["tpch"] = (folder, questions("tpch")[: args.limit])
            if args.set in ("all", "penguins"):
                sets["penguins"] = (prepare_penguins(work), questions("penguins")[: args.limit])
            print(f"accuracy: {sum(len(v[1]) for v in sets.values())} questions ({', '.join(sets)})")
            report_accuracy(await ask_all(args.config, work, sets, args.min_tier, args.calibration))
        if args.speed or everything:
            await speed(work, args.rows, args.repeat)
        if args.security or everything:
            await security(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accuracy", action="store_true")
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--security", action="store_true")
    parser.add_argument("--config", help="caelum config (hosts); default: the usual discovery")
    parser.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="a calibration.json the server reads as the user's table (the server's data folder is the bench's own)",
    )
    parser.add_argument("--set", choices=("all", "tpch", "penguins"), default="all")
    parser.add_argument("--limit", type=int, default=None, help="questions per set")
    parser.add_argument("--sf", type=float, default=0.01, help="TPC-H scale factor")
    parser.add_argument("--min-tier", choices=("micro", "small", "full"), help="override the sql task's smallest tier")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    logging.basicConfig(level=logging.WARNING)
    parsed = parser.parse_args()
    if parsed.calibration is not None and not parsed.calibration.is_file():
        parser.error(
            f"--calibration {parsed.calibration}: no such file (bench/gate.py --write-default --table writes one)"
        )
    anyio.run(main, parsed)
