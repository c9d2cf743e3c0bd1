"""bench/logs.py runs end to end on a small folder laid out like loghub-2k and prints every figure
with a verdict that agrees with it (a correctness check of the benchmark, not a timing)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "logs.py"
pytestmark = pytest.mark.slow


def make_system(root: Path) -> Path:
    """One system folder, X_2k.log with its structured CSV, from generated lines of three events."""
    folder = root / "Toy"
    folder.mkdir(parents=True)
    log, rows = [], ["LineId,Content,EventId,EventTemplate"]
    for i in range(60):
        kind = i % 3
        content = [f"worker {i} started", f"request {i} took {i * 3} ms", "disk full on /var"][kind]
        log.append(f"2024-05-01 10:{i // 60:02d}:{i % 60:02d},000 INFO [main] a.B: {content}")
        rows.append(f'{i + 1},"{content}",E{kind},x')
    (folder / "Toy_2k.log").write_text("\n".join(log) + "\n")
    (folder / "Toy_2k.log_structured.csv").write_text("\n".join(rows) + "\n")
    return root


def run(*args: str) -> str:
    proc = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_ga_and_speed_on_any_folder(tmp_path: Path) -> None:
    out = run("--data", str(make_system(tmp_path / "data")), "--only", "ga", "speed", "--repeat", "1")
    assert re.search(r"^Toy +60 +java +1\.000 +\d\.\d{3} +\d\.\d{3} +1\.000 +3 +3$", out, re.M), out
    ga = re.search(r"^average GA without the model pass: ([\d.]+) \(target >= 0\.85\): (PASS|FAIL)$", out, re.M)
    assert ga and (float(ga.group(1)) >= 0.85) == (ga.group(2) == "PASS")
    speed = re.search(r"^masking \+ mining: ([\d,]+) lines/s \(target >= 25,000\): (PASS|FAIL)", out, re.M)
    assert speed and (int(speed.group(1).replace(",", "")) >= 25_000) == (speed.group(2) == "PASS")


def test_speed_beside_another_checkout(tmp_path: Path) -> None:
    data = str(make_system(tmp_path / "data"))
    root = str(BENCH.parents[1])  # this checkout stands for the other one
    out = run("--data", data, "--only", "speed", "--repeat", "2", "--reference", root)
    for part in ("masking + mining", "pipeline"):
        for label in (f"reference {root}", "this checkout"):
            assert re.search(rf"^{re.escape(f'{part}, {label}')} +[\d,]+ +[\d,]+$", out, re.M), out
        assert re.search(rf"^{re.escape(part)}: this checkout x\d+\.\d\d the reference's lines/s", out, re.M), out


def test_health_figures(tmp_path: Path) -> None:
    out = run("--only", "health", "--health-runs", "3", "--probes", "10")
    p95 = re.search(r"p95 ([\d.]+) s, max [\d.]+ s \(target p95 <= 1\.5 s\): (PASS|FAIL)$", out, re.M)
    assert p95 and (float(p95.group(1)) <= 1.5) == (p95.group(2) == "PASS"), out
    size = re.search(r"^result size: at most (\d+) tokens \(target <= 2000\): (PASS|FAIL)$", out, re.M)
    assert size and (int(size.group(1)) <= 2000) == (size.group(2) == "PASS")
    assert "probe verdicts seen: OK" in out
