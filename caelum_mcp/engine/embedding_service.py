"""Embeddings as a service of their own: vectors from the pool's ``embedding`` tier, in the ledger.

The router runs chat tasks; texts to embed need none of its ladder, gate or budget, only the pool,
the secrets redaction (every text passes it before it is sent: a key read from a project's ``.env``
or a CSV cell never reaches a model) and one ledger row per request. A tool reaches it through its
context (``ctx.llm.embed``), built once for the running server beside the router.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from caelum_mcp.core.errors import (
    AllHostsFailedError,
    BackendError,
    DeadlineExceededError,
    MalformedResponseError,
    NoHostAvailableError,
)
from caelum_mcp.core.llm import Embeddings
from caelum_mcp.core.types import EmbedRequest, Tier
from caelum_mcp.engine.hosts import Host
from caelum_mcp.engine.ledger import Ledger, failed_call_row, model_call_row
from caelum_mcp.engine.pool import Pool
from caelum_mcp.engine.router.requests import redacted_texts

# Texts per embedding request: Ollama and llama.cpp take batches; one per text would cost a round trip each.
EMBED_BATCH = 64


class EmbeddingService:
    """Embeds texts through ``pool``, recording each request in ``ledger``."""

    def __init__(self, pool: Pool, ledger: Ledger) -> None:
        self.pool = pool
        self.ledger = ledger

    def models(self) -> list[str]:
        """The embedding models the pool serves now (model@host), empty when there are none."""
        found = []
        for host in self.pool.hosts.values():
            if host.enabled and host.breaker.allows():
                found += [f"{m}@{host.name}" for m in self._embedding_models(host)]
        return found

    def problem(self) -> str:
        """Why no embedding model is up: each host that lists one, with its state and last error
        (a restart of the embedded model that failed says so there); "" when no host lists one."""
        problems = []
        for host in self.pool.hosts.values():
            models = self._embedding_models(host)
            if models and not (host.enabled and host.breaker.allows()):
                state = "disabled" if not host.enabled else f"circuit {host.breaker.state.value}"
                why = host.last_error or "no error recorded"
                problems.append(f"{', '.join(models)} on host {host.name} is down ({state}): {why}")
        return "; ".join(problems)

    def _embedding_models(self, host: Host) -> list[str]:
        return [m for m in host.models if Tier.EMBEDDING in self.pool.tiers.of(host, m)]

    async def embed(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        task: str = "embed",
        call_id: str | None = None,
        batch_size: int = EMBED_BATCH,
    ) -> Embeddings:
        """Vectors for ``texts`` from the pool's ``embedding`` tier (or ``model``), sent in batches
        of ``batch_size``; one ledger row per batch, or one per sync inside
        :func:`~caelum_mcp.engine.embedding_sync.embedding_sync`. Raises NoHostAvailableError when no embedding
        model is up (callers fall back to lexical search and say so)."""
        vectors: list[tuple[float, ...]] = []
        used_model = host = ""
        tokens = 0
        for start in range(0, len(texts), max(1, batch_size)):
            batch = await redacted_texts(texts[start : start + batch_size])
            started = time.perf_counter()
            try:
                host, response = await self.pool.embed(EmbedRequest(model=model or "", inputs=batch), model=model)
            except (NoHostAvailableError, AllHostsFailedError, BackendError, DeadlineExceededError) as exc:
                self.ledger.record(
                    failed_call_row(
                        task=task,
                        error=str(exc),
                        host=getattr(exc, "host", ""),
                        model=model or "",
                        tier=Tier.EMBEDDING.value,
                        latency_ms=(time.perf_counter() - started) * 1000,
                        call_id=call_id,
                    )
                )
                raise
            if len(response.embeddings) != len(batch):
                raise MalformedResponseError(
                    f"asked for {len(batch)} embeddings, got {len(response.embeddings)}", host=host
                )
            vectors.extend(response.embeddings)
            used_model = response.model
            tokens += response.usage.input_tokens
            self.ledger.record_embedding(
                model_call_row(
                    task=task,
                    path="local",
                    provider=self.pool.hosts[host].kind if host in self.pool.hosts else "",
                    host=host,
                    model=response.model,
                    tier=Tier.EMBEDDING.value,
                    usage=response.usage,
                    latency_ms=(time.perf_counter() - started) * 1000,
                    cost=0.0,
                    counterfactual=0.0,  # Claude has no embeddings to compare with
                    call_id=call_id,
                )
            )
        return Embeddings(model=used_model, host=host, vectors=tuple(vectors), input_tokens=tokens)
