"""bench/pool_overhead.py runs end to end and prints its figures (a correctness check, not a timing one)."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest

from caelum_mcp.core.types import ChatMessage, ChatRequest
from caelum_mcp.engine.backends.openai import OpenAIBackend

BENCH = Path(__file__).resolve().parent.parent / "bench" / "pool_overhead.py"
OUTPUT_CAP = 200_000
FLOAT = r"-?\d+\.\d+"

pytestmark = pytest.mark.slow


def run_bench(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert len(proc.stdout) + len(proc.stderr) < OUTPUT_CAP
    return proc


def test_stub_run_prints_every_figure_and_verdict() -> None:
    proc = run_bench("--stub-only", "--requests", "8", "--concurrency", "2", "--rounds", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"machine: \d+ CPU cores", out)
    assert "side by side in this one run" in out
    assert "embedded llama.cpp" not in out  # --stub-only
    for path in ("direct", "backend", "pool"):
        # sequential row: p50, p95, mean; throughput row: req/s, % of direct, then the per-round spread
        assert re.search(rf"^  {path} +{FLOAT} +{FLOAT} +{FLOAT}$", out, re.M), out
        assert re.search(rf"^  {path} +{FLOAT} +{FLOAT} +{FLOAT} / {FLOAT} / {FLOAT}$", out, re.M), out
    assert re.search(r"sequential latency, 8 requests per path", out)
    assert re.search(r"throughput, 2 concurrent callers, 16 requests per path", out)
    # the limiter let both callers through at once: direct and pool did the same work
    assert "pool peak in flight: 2 (host limit 2)" in out

    latency = re.search(rf"^p50 overhead vs stub: ({FLOAT}) ms \(target < 1 ms\): (PASS|FAIL)$", out, re.M)
    assert latency, out
    assert (float(latency.group(1)) < 1.0) == (latency.group(2) == "PASS")
    rate = re.search(
        rf"^throughput with 2 callers vs stub: ({FLOAT})% of direct \(target >= 95%\): (PASS|FAIL)$", out, re.M
    )
    assert rate, out
    assert float(rate.group(1)) > 0
    assert (float(rate.group(1)) >= 95.0) == (rate.group(2) == "PASS")


def test_bad_counts_are_refused_before_anything_starts() -> None:
    proc = run_bench("--requests", "0", timeout=60)
    assert proc.returncode == 2
    assert "--requests must be at least 1" in proc.stderr


@pytest.fixture
def stub() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The benchmark's stub server as the benchmark starts it; killed if a test leaves it running."""
    proc = subprocess.Popen(
        [sys.executable, str(BENCH), "--serve-stub"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "the stub did not announce its URL"
        url = os.read(proc.stdout.fileno(), 4096).decode().strip()
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdin.close()
        proc.stdout.close()


async def test_stub_speaks_openai_and_exits_with_its_parent(stub: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, url = stub
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
    async with httpx2.AsyncClient(timeout=10) as http:
        backend = OpenAIBackend(url, http)
        assert (await backend.health()).ok
        (model,) = await backend.list_models()
        assert model.parameters_b is not None and model.parameters_b < 2  # a micro-tier model
        request = ChatRequest(model=model.name, messages=(ChatMessage(role="user", content="hi"),))
        for _ in range(3):  # several requests on one kept-alive connection
            answer = await backend.chat(request)
            assert answer.content.startswith('{"summary"')
            assert answer.finish_reason == "stop"
            assert answer.usage.input_tokens + answer.usage.cache_read_tokens == 412
        assert (await http.get(f"{url}/nope")).status_code == 404
    assert proc.stdin is not None
    proc.stdin.close()  # the parent going away must end the stub
    await anyio.to_thread.run_sync(proc.wait, 10)
    assert proc.returncode == 0
