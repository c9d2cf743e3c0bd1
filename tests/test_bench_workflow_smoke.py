"""bench/workflow.py, bench/compare_models.py and bench/cascade.py run end to end and print their
figures (correctness checks with tiny counts, not timings)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
RATIO = r"\d+\.\d{3}"


def run(script: str, *args: str, timeout: float = 300, cwd: Path | None = None) -> str:
    # Only the embedded model: no implicit Ollama on its well-known port, no Claude, no config file.
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY" and not k.startswith("CAELUM_")}
    env.update({"CAELUM_IMPLICIT_OLLAMA": "false", "CAELUM_EMBEDDED": "on"})
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_compare_models_bench_prints_the_ratio_to_the_slowest_model() -> None:
    out = run("compare_models.py", "--skip-embedded", "--rounds", "2", "--delays", "0.05", "0.1", "0.2")
    assert re.search(rf"median wall / slowest: {RATIO} \(client-side {RATIO}\); target <= 1.1: (PASS|FAIL)", out), out
    assert len(re.findall(r"^  [12] +3 ", out, re.M)) == 2, out  # two rounds, three hosts each


# The bench copies radon (~5,700 lines) by default: four full lint/security/test passes of it took
# over a minute of the suite. The figures and verdicts are printed the same for any project.
TINY_PROJECT = {
    "calc.py": (
        '"""A small module: enough for every step of the pre-commit workflow to have work."""\n\n\n'
        "def add(a: int, b: int) -> int:\n    return a + b\n\n\n"
        "def mean(values: list[float]) -> float:\n"
        '    if not values:\n        raise ValueError("no values")\n    return sum(values) / len(values)\n'
    ),
    "test_calc.py": (
        "from calc import add, mean\n\n\n"
        "def test_add():\n    assert add(2, 3) == 5\n\n\n"
        "def test_mean():\n    assert mean([1.0, 2.0, 3.0]) == 2.0\n"
    ),
}


@pytest.mark.slow
def test_workflow_bench_prints_every_figure_and_verdict(tmp_path: Path) -> None:
    project = tmp_path / "tiny"
    project.mkdir()
    for name, text in TINY_PROJECT.items():
        (project / name).write_text(text)
    out = run("workflow.py", "--rounds", "1", "--project", str(project))
    assert f"a copy of {project.resolve()} (" in out, out
    assert re.search(r"pre-commit workflow \(run_workflow\) +\d+\.\d\d s", out), out
    assert re.search(r"wall <= longest branch \+ 5 % \+ 0\.2 s \(\d+\.\d\d s\): (PASS|FAIL)", out), out
    assert re.search(r"engine overhead: \d+\.\d ms a step \(target <= 50 ms\): (PASS|FAIL)", out), out
    assert re.search(r"same steps one after another +\d+\.\d\d s", out), out
    assert re.search(r"pre-commit run --all-files \(5 hooks\) +\d+\.\d\d s", out), out


@pytest.mark.model
def test_cascade_bench_prints_its_tables(tmp_path: Path) -> None:
    recording = tmp_path / "recorded.jsonl"
    out = run("cascade.py", "--limit", "1", "--concurrency", "1", "--record", str(recording), timeout=600, cwd=tmp_path)
    assert "task set: 3 tasks" in out
    assert re.search(r"^  micro +smollm2:135m +3 ", out, re.M), out
    assert re.search(r"served locally \(cleared the gate\): (\d+ %|n/a)", out), out
    assert "calibration (every local answer of every pass):" in out
    assert "all-Claude accuracy: not measured" in out
    # every local answer recorded with its label and raw signals, and scored again without a model
    import json

    rows = [json.loads(line) for line in recording.read_text().splitlines()]
    assert re.search(rf"recorded {len(rows)} local answers", out), out
    assert rows and {r["kind"] for r in rows} <= {"qa", "extraction", "review"}
    assert all(isinstance(r["correct"], bool) and r["signals"]["valid"] in (True, False) for r in rows)
    replayed = run("cascade.py", "--replay", str(recording), timeout=120, cwd=tmp_path)
    assert "hosts:" not in replayed  # no server, no model
    assert re.search(rf"^overall +raw +{len(rows)} ", replayed, re.M), replayed
    assert re.search(r"^ +now +\d+ ", replayed, re.M) and "smollm2:135m" in replayed, replayed
