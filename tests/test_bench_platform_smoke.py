"""bench/platform_costs.py runs end to end and prints its figures (a correctness check, not a timing one)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "platform_costs.py"

pytestmark = [pytest.mark.slow, pytest.mark.model]


def test_prints_the_tool_sizes_and_the_gated_scan(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "db.py").write_text("def q(c, n):\n    return c.execute(\"SELECT * FROM t WHERE n = '%s'\" % n)\n")
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--project", str(project), "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"^  \d+ tools, \d+ characters of compact JSON", out, re.M), out
    assert re.search(r"^  analyze_and_improve_code +\d+ tokens", out, re.M), out
    assert re.search(r"model-visible average: \d+ tokens per tool \(target <= 400\): PASS", out), out
    assert "schema portability findings (Inspector --strict rules): 0" in out
    assert re.search(r"review needs tier full \(default\) +median +\d+\.\d+ s .*LLM step skipped", out), out
    assert re.search(r"; [1-9]\d* findings; LLM step skipped", out), out  # bandit's B608 at least
