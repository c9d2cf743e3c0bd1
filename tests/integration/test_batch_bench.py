"""bench/batch.py runs end to end with small sizes and prints its rows (a correctness check: no
item lost across the kill -9; the timings are the bench's, never asserted here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "batch.py"

pytestmark = pytest.mark.slow


def test_small_run_prints_every_row_and_loses_nothing_across_a_kill() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAELUM_")}
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--items", "60", "--rss-items", "120"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"^throughput \| 60 items in [\d.]+ s = [\d.]+/s of 27\.5/s summed capacity", out, re.M), out
    assert re.search(r"ok 60, low confidence 0, errors 0", out), out
    kill = re.search(r"^kill -9 at 50 % \|.* lost (\d+) .* sent twice (\d+) \(target <= (\d+) in flight", out, re.M)
    assert kill and kill.group(1) == "0" and int(kill.group(2)) <= int(kill.group(3)), out
    assert re.search(r"^rss over 120 items \| before \d+ MiB; at 10 % \d+, 50 % \d+, 100 % \d+ MiB", out, re.M), out
