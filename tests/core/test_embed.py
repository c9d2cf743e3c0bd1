"""The embedding service: the pool's embedding tier, batched, in order, and in the ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from caelum_mcp.core.errors import NoHostAvailableError
from caelum_mcp.core.types import EmbedRequest
from caelum_mcp.engine.embedding_service import EmbeddingService
from caelum_mcp.engine.ledger import Ledger

from .conftest import backend_of, scripted_host, scripted_pool


async def test_texts_are_embedded_in_batches_in_order_and_recorded(tmp_path: Path) -> None:
    embedder = scripted_host("gpu-1", [("nomic-embed-text", 0.137), ("qwen3:8b", 8.0)])
    pool = await scripted_pool(embedder)
    texts = [f"chunk number {i}" for i in range(150)]
    with Ledger(tmp_path / "l.db") as ledger:
        embeddings = EmbeddingService(pool, ledger)
        assert embeddings.models() == ["nomic-embed-text@gpu-1"]
        got = await embeddings.embed(texts, call_id="call-7", batch_size=64)
        rows = ledger.recent(10)
    assert (got.model, got.host, len(got.vectors)) == ("nomic-embed-text", "gpu-1", 150)
    assert [len(r.inputs) for r in backend_of(embedder).embed_requests] == [64, 64, 22]
    direct = await backend_of(embedder).embed(EmbedRequest(model="nomic-embed-text", inputs=(texts[100],)))
    assert got.vectors[100] == direct.embeddings[0]  # the order of the texts is kept across batches
    assert len(rows) == 3 and {r.tier for r in rows} == {"embedding"} and {r.call_id for r in rows} == {"call-7"}
    assert sum(r.input_tokens for r in rows) == got.input_tokens > 0
    assert all(r.cost_usd == 0 and r.counterfactual_cost_usd == 0 for r in rows)


async def test_with_no_embedding_model_the_caller_is_told(tmp_path: Path) -> None:
    pool = await scripted_pool(scripted_host("gpu-1", [("qwen3:8b", 8.0)]))
    with Ledger(tmp_path / "l.db") as ledger:
        embeddings = EmbeddingService(pool, ledger)
        assert embeddings.models() == []
        with pytest.raises(NoHostAvailableError, match="embedding"):
            await embeddings.embed(["hello"])
        (row,) = ledger.recent(5)
        assert row.path == "failed" and row.tier == "embedding"
