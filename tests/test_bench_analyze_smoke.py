"""bench/analyze.py runs end to end on a small tree and prints its figures (a correctness check, not a timing one)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "analyze.py"
OUTPUT_CAP = 200_000
FLOAT = r"\d+\.\d+"

pytestmark = pytest.mark.slow


def run_bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert len(proc.stdout) + len(proc.stderr) < OUTPUT_CAP
    return proc


def test_quick_run_prints_every_figure_and_consistent_verdicts() -> None:
    proc = run_bench("--quick", "--repeat", "1", "--no-llm")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"machine: \d+ CPU cores", out)
    assert "side by side in this one run; 1 round(s)" in out
    tree = re.search(
        r"^tree: (.+?) \(a copy of (.+?), the installed .*, (\d+) Python files, (\d+) Python lines$", out, re.M
    )
    assert tree, out
    assert Path(tree.group(2)).name == Path(tree.group(1)).name  # analysed a copy, never the original
    assert not Path(tree.group(1)).exists(), "the copy is removed at the end"
    assert int(tree.group(3)) > 0 and int(tree.group(4)) >= 2000
    assert "LLM review" not in out  # --no-llm

    for path in ("by hand", "caelum cold", "caelum warm", "caelum, 1 file touched", "caelum, 1 file edited"):
        # runs, median, min, own CPU, child CPU
        assert re.search(rf"^  {re.escape(path)} +1 +{FLOAT} +{FLOAT} +{FLOAT} +{FLOAT}$", out, re.M), out
    steps = re.search(
        rf"^by hand, median s per step: ruff {FLOAT}, bandit {FLOAT}, radon cc {FLOAT}, "
        rf"radon mi {FLOAT}, vulture {FLOAT}",
        out,
        re.M,
    )
    assert steps, out
    for stage in ("structure", "lint", "security", "complexity", "dead_code", "dependencies"):
        assert re.search(rf"^  {stage} +{FLOAT} +{FLOAT} +{FLOAT} +{FLOAT}$", out, re.M), out
    # the cache behaved as designed: nothing reused cold, everything warm and after a touch, nothing after an edit
    assert "cached: cold none, warm all, touched all, edited none" in out

    # both paths did the same analysis: identical finding counts per analyser, and no analyser failed
    same = re.search(r"^same work: (.*)$", out, re.M)
    assert same, out
    pairs = re.findall(r"(\w+) (\d+) by hand = (\d+) in caelum", same.group(1))
    assert {tool for tool, _, _ in pairs} == {"ruff", "bandit", "vulture"}
    assert all(a == b for _, a, b in pairs), same.group(0)
    assert sum(int(a) for _, a, _ in pairs) > 0, "a real package gives some findings"
    assert "analyser errors in caelum's cold result: 0" in out

    cold = re.search(
        rf"^cold vs by hand: median ({FLOAT}) s / ({FLOAT}) s = ({FLOAT})x \(target <= 1\.2x\): (PASS|FAIL)$", out, re.M
    )
    assert cold, out
    ratio = float(cold.group(3))
    assert abs(ratio - float(cold.group(1)) / float(cold.group(2))) < 0.01
    assert (ratio <= 1.2) == (cold.group(4) == "PASS")
    warm = re.search(
        rf"^warm vs cold: median ({FLOAT}) s vs ({FLOAT}) s = ({FLOAT})x faster \(target >= 10x\): (PASS|FAIL)$",
        out,
        re.M,
    )
    assert warm, out
    assert float(warm.group(2)) == float(cold.group(1))  # the same cold median in both lines
    assert (float(warm.group(3)) >= 10) == (warm.group(4) == "PASS")


def test_bad_arguments_are_refused_before_anything_starts() -> None:
    proc = run_bench("--repeat", "0", timeout=60)
    assert proc.returncode == 2
    assert "--repeat must be at least 1" in proc.stderr
    proc = run_bench("--quick", "--tree", ".", timeout=60)
    assert proc.returncode == 2
    assert "give one" in proc.stderr
