"""bench/router_overhead.py runs end to end, here and against another checkout, and prints its rows
(a correctness check of the benchmark, not a timing one)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "router_overhead.py"
FLOAT = r"-?\d+\.\d+"


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=300, check=False)


def test_bad_arguments_are_refused_before_anything_starts(tmp_path: Path) -> None:
    proc = run_bench("--calls", "0")
    assert proc.returncode == 2 and "--rounds and --calls must be at least 1" in proc.stderr
    proc = run_bench("--reference", str(tmp_path))
    assert proc.returncode == 2 and "is not a checkout of caelum-mcp" in proc.stderr


@pytest.mark.slow
def test_both_checkouts_are_measured_side_by_side() -> None:
    # this checkout as its own reference: the child imports it the way it would import another
    proc = run_bench("--reference", str(ROOT), "--rounds", "2", "--calls", "20", "--warmup", "5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "2 rounds x 20 calls per path, after 5 warm-up calls" in out
    for label in (rf"reference {re.escape(str(ROOT))}"[:40], "this checkout"):
        assert re.search(rf"^{re.escape(label)}\s+(?:{FLOAT}\s+){{6}}{FLOAT}$", out, re.M), out
    answered = re.findall(r"^    answered as: (\S+) \((.+)\)$", out, re.M)
    assert [where for _, where in answered] == [str(ROOT), str(ROOT)], out
    assert {path for path, _ in answered} <= {"local", "local_low_confidence"}
