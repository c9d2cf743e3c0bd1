"""The dashboard in a real headless browser (the OS's Chromium, over the DevTools protocol).

The server is the real HTTP app with two scripted model hosts and a ledger holding ten days of past
calls. The test opens the dashboard and checks that:

1. both hosts are listed with health, breaker state, in-flight / limit, models and tiers;
2. the charts are drawn: the per-day chart has a cost and a savings bar for each of 14 days, the
   share donut and the budget gauge have their parts;
3. a tool call made through MCP appears in the calls table, under its request id (the ledger's
   call id), without a reload, with its path, host, model and confidence;
4. clicking it opens its execution record;
5. switching a host off (a POST with the page's CSRF token) takes it out of the pool, and the
   page shows it;
6. the page threw no exception, logged no error (a CSP violation would be one) and requested
   nothing but this server (no CDN).

It saves a screenshot and prints its path (``CAELUM_DASHBOARD_SCREENSHOT=docs/dashboard.png``
also writes it there: that is how the README's picture is made). Skips, saying why, where no
Chromium is installed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx2
import pytest
from fakes.calibration_tables import write_calibrated_as_raw
from mcp import Client

from caelum_mcp.engine.ledger import Ledger

from .chromium_cdp import find_chromium, open_page
from .dashboard_server import seed_ledger, serving, two_hosts

pytestmark = pytest.mark.slow

ROWS = "document.querySelectorAll('#calls tbody tr')"


def host_row(name: str, part: str = "innerText") -> str:
    return f"document.querySelector('#hosts tr[data-host=\"{name}\"]')?.{part}"


async def test_the_dashboard_shows_hosts_charts_and_a_new_call_live(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    find_chromium()
    seed_ledger(tmp_path / "data" / "ledger.sqlite3")
    write_calibrated_as_raw(tmp_path / "data")  # both models measured: one answer clears, one does not
    async with serving(tmp_path, two_hosts()) as served:
        async with Client(served.mcp) as client:  # some traffic first: latency points, a low-confidence call
            for model in ("qwen3:8b", "llama3.2:3b", "qwen3:8b"):
                done = await client.call_tool("delegate_task", {"prompt": "What is 2+2?", "model": model})
                assert not done.is_error, done.content

        async with open_page(tmp_path / "profile", width=1360, height=1130) as page:
            await page.goto(f"{served.base}/")
            await page.wait_for("Number(document.body.dataset.rendered || 0) >= 1", what="the first render")

            # 1. hosts
            row_a = await page.wait_for(host_row("gpu-a"), what="host gpu-a")
            row_b = await page.evaluate(host_row("gpu-b"))
            assert "healthy" in row_a and "closed" in row_a and "0 / 2" in row_a
            assert "qwen3:8b" in row_a and "full" in row_a and "code" in row_a  # models with their tiers
            assert "llama3.2:3b" in row_b and "small" in row_b and "0 / 1" in row_b
            points = await page.evaluate(host_row("gpu-a", "querySelectorAll('svg[data-chart=latency] rect').length"))
            assert points >= 1  # latency over the last hour

            # 2. charts
            bars = await page.evaluate(
                "[...document.querySelectorAll('svg[data-chart=daily] rect')].map(r => [r.dataset.series, "
                "Number(r.getAttribute('height'))])"
            )
            assert len(bars) == 28
            assert sum(1 for series, h in bars if series == "cost" and h > 0) >= 3
            assert sum(1 for series, h in bars if series == "savings" and h > 0) >= 10
            share = await page.evaluate(
                "[...document.querySelectorAll('svg[data-chart=share] [data-part]')].map(p => p.dataset.part)"
            )
            assert {"local", "claude"} <= set(share)
            assert await page.evaluate("!!document.querySelector('svg[data-chart=budget] [data-part=used]')")
            assert "$0.41 spent of $5.00" in await page.evaluate("document.getElementById('budget-text').innerText")

            # 3. a new call appears without a reload
            before = await page.evaluate(f"{ROWS}.length")
            assert before == 3
            await page.evaluate("window.__sameDocument = 'yes'")
            async with Client(served.mcp) as client:
                done = await client.call_tool("delegate_task", {"prompt": "And 3+3?", "model": "qwen3:8b"})
            assert not done.is_error, done.content
            with Ledger(served.ledger_path) as ledger:
                (newest,) = ledger.tool_calls(limit=1)
                rows = [r for r in ledger.recent(10) if r.call_id == newest.id]
            assert newest.tool == "delegate_task" and len(rows) == 1  # the request id is the ledger's call id
            selector = f'#calls tr[data-call-id="{newest.id}"]'
            # the row may show first as running (the page is live) and then finished, within a heartbeat
            text = await page.wait_for(
                f"(t => t && !t.includes('running') && t)(document.querySelector('{selector}')?.innerText)",
                what="the new call's row, finished",
            )
            assert await page.evaluate("window.__sameDocument") == "yes"
            assert await page.evaluate("performance.getEntriesByType('navigation').length") == 1
            assert await page.evaluate(f"{ROWS}.length") == before + 1
            assert newest.id in text and "delegate_task" in text and "local" in text
            assert "gpu-a" in text and "qwen3:8b" in text and "0.9" in text  # host, model, confidence
            low = await page.evaluate("document.querySelector('#calls tr[data-path=local_low_confidence]')?.innerText")
            assert low is not None and "low confidence" in low and "gpu-b" in low

            shot = await page.screenshot(tmp_path / "dashboard.png")

            # 4. its execution record
            await page.evaluate(f"document.querySelector('{selector}').click()")
            record = await page.wait_for(
                "(t => t.includes('LLM answer') && t)(document.getElementById('detail-body').innerText)",
                what="the execution record",
            )
            assert newest.id in record and "gpu-a / qwen3:8b" in record and "threshold 0.75" in record
            assert "model calls in the ledger (1)" in record

            # 5. a host switched off from the page
            await page.evaluate(host_row("gpu-b", "querySelector('input[type=checkbox]').click()"))
            await page.wait_for(f"({host_row('gpu-b')} || '').includes('disabled')", what="gpu-b shown disabled")
            async with httpx2.AsyncClient(base_url=served.base) as http:
                snap = (await http.get("/dashboard/api/snapshot")).json()
            assert {h["status"]["name"]: h["status"]["enabled"] for h in snap["hosts"]} == {
                "gpu-a": True,
                "gpu-b": False,
            }

            # 6. nothing went wrong, nothing came from elsewhere
            assert page.exceptions == [], page.exceptions
            assert page.console_errors == [], page.console_errors
            foreign = [u for u in page.requested if not u.startswith(served.base)]
            assert foreign == [], foreign
            assert any(u.endswith("/dashboard/static/app.js") for u in page.requested)

    assert shot.stat().st_size > 10_000
    keep = os.environ.get("CAELUM_DASHBOARD_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)
    with capsys.disabled():
        print(f"\ndashboard screenshot: {shot}" + (f" (copied to {keep})" if keep else ""))
