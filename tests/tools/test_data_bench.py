"""bench/query_data.py runs end to end on tiny settings and prints each part's figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from caelum_mcp.tools.data.session import DataSession, SessionLimits
from caelum_mcp.tools.data.sources import resolve_sources

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "query_data.py"
DATA = ROOT / "bench" / "data" / "query_data"


def test_every_gold_query_runs_in_the_guarded_session_over_the_shipped_penguins(tmp_path: Path) -> None:
    import json

    session = DataSession(resolve_sources(["penguins.csv"], [DATA]), tmp_path / "work", SessionLimits())
    try:
        for line in (DATA / "penguins.jsonl").read_text().splitlines():
            item = json.loads(line)
            assert session.run(item["sql"]).row_count >= 1, item["id"]  # the guard accepts every gold query
    finally:
        session.close()
    assert len((DATA / "tpch.jsonl").read_text().splitlines()) >= 30


@pytest.mark.slow
def test_the_benchmark_prints_its_figures(tmp_path: Path) -> None:
    config = tmp_path / "caelum.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\nembedded = "off"\nimplicit_ollama = false\n')
    args = ["--accuracy", "--set", "penguins", "--limit", "2", "--config", str(config)]
    args += ["--speed", "--rows", "2000", "--repeat", "1", "--security"]
    done = subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "| - | - | skipped | 2 | 0 %" in out  # no model here: the sql step is skipped at once
    assert "profile_data, 2,000 x 20 CSV: median" in out and "| parquet |" in out and "| csv |" in out
    assert "red team: 59 tried, 59 refused; files byte-identical and nothing written: True" in out


@pytest.mark.slow
async def test_a_calibration_given_is_the_servers_user_table(tmp_path: Path) -> None:
    """``--calibration``: the bench's server keeps its own data folder, so the table is copied there,
    where the server reads a user's table (and would move aside one it cannot read)."""
    import importlib.util
    import shutil

    from caelum_mcp.engine.calibration import DEFAULT_PATH, USER_FILE

    spec = importlib.util.spec_from_file_location("query_data_bench_under_test", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    table = tmp_path / "mine.json"
    shutil.copyfile(DEFAULT_PATH, table)
    config = tmp_path / "caelum.toml"
    config.write_text('embedded = "off"\nimplicit_ollama = false\n')
    work = tmp_path / "work"
    work.mkdir()
    sets = {"penguins": (bench.prepare_penguins(work), bench.questions("penguins")[:1])}

    outcomes = await bench.ask_all(str(config), work, sets, None, table)

    assert [o.status for o in outcomes] == ["skipped"]  # no model here
    assert (work / "data" / USER_FILE).read_bytes() == table.read_bytes()
    assert not list((work / "data").glob(f"{USER_FILE}.corrupt-*"))  # read, not moved aside
