"""The dashboard's snapshot and ``pool_status`` over real HTTP show the table per model and task kind:
the answers the router recorded with their kind, the share served locally, and the calibration used."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
from mcp import Client

from caelum_mcp.engine.ledger import CalibrationLabel, Ledger

from .chromium_cdp import find_chromium, open_page
from .dashboard_server import serving, two_hosts

pytestmark = pytest.mark.slow


async def test_the_snapshot_and_pool_status_show_each_models_answers_per_kind(tmp_path: Path) -> None:
    async with serving(tmp_path, two_hosts()) as served:
        paths = []
        async with Client(served.mcp) as client:
            for _ in range(3):
                done = await client.call_tool("delegate_task", {"prompt": "What is 2+2?", "model": "qwen3:8b"})
                assert not done.is_error, done.content
                assert done.structured_content is not None
                paths.append(done.structured_content["execution"]["path"])
            with Ledger(served.ledger_path) as ledger:
                ledger.add_label(
                    CalibrationLabel(
                        ts=1.0, model="qwen3:8b", kind="general", signals={"valid": True}, label=True, source="audit"
                    )
                )
            status = await client.call_tool("pool_status", {})
        async with httpx2.AsyncClient(base_url=served.base) as http:
            snapshot = (await http.get("/dashboard/api/snapshot")).json()
    for kinds in (snapshot["kinds"], status.structured_content["kinds"]):  # type: ignore[index]
        row = next(k for k in kinds if (k["model"], k["kind"]) == ("qwen3:8b", "general"))
        assert row["answers"] == 3 and row["local"] is True
        assert row["local_share"] == pytest.approx(paths.count("local") / 3)
        assert (row["labels"], row["labelled_accuracy"]) == (1, 1.0)
        assert row["threshold"] == 0.75 and row["calibration"]  # which entry or prior calibrates it


async def test_the_page_renders_the_table_per_model_and_kind(tmp_path: Path) -> None:
    find_chromium()
    async with serving(tmp_path, two_hosts()) as served:
        async with Client(served.mcp) as client:
            for model in ("qwen3:8b", "llama3.2:3b"):
                done = await client.call_tool("delegate_task", {"prompt": "What is 2+2?", "model": model})
                assert not done.is_error, done.content
        async with open_page(tmp_path / "profile") as page:
            await page.goto(f"{served.base}/")
            row = await page.wait_for(
                'document.querySelector(\'#kinds tr[data-model="qwen3:8b"][data-kind="general"]\')?.innerText',
                what="the qwen3:8b / general row",
            )
            cells = row.split("\t")
            assert cells[:3] == ["qwen3:8b", "general", "1"], cells
            assert "min_tier (prior)" in row and "prior for unmeasured" in row  # nothing measured: the static rule
            assert await page.evaluate("document.querySelectorAll('#kinds tbody tr').length") == 2
            assert await page.evaluate("document.getElementById('kinds-empty').hidden") is True
            assert page.exceptions == [] and page.console_errors == [], (page.exceptions, page.console_errors)
