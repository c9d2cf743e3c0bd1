"""Hybrid retrieval over one project's index: BM25 candidates, cosine candidates, one fused ranking.

:func:`retrieve` is the whole query path after the query vector is known (the caller embeds the
query, so this stays free of models): FTS5 returns up to ``candidates`` chunks by BM25, numpy up to
``candidates`` by cosine, and :func:`~.ranking.fuse` ranks their union. ``paths`` restricts both to
files under the given prefixes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

from .ranking import (
    DEFAULT_LEXICAL_WEIGHT,
    DEFAULT_NORMALISATION,
    DEFAULT_RRF_K,
    FusedHit,
    Fusion,
    Normalisation,
    Signal,
    fuse,
)
from .store import KnowledgeStore, StoredChunk
from .terms import query_terms
from .vectors import cosine_top

DEFAULT_CANDIDATES = 100


@dataclass(frozen=True)
class RetrievalParams:
    fusion: Fusion = "convex"
    lexical_weight: float = DEFAULT_LEXICAL_WEIGHT
    normalisation: Normalisation = DEFAULT_NORMALISATION
    rrf_k: int = DEFAULT_RRF_K
    candidates: int = DEFAULT_CANDIDATES


@dataclass(frozen=True)
class Retrieved:
    """A fused ranking with the chunks it names (only the ``limit`` asked for are loaded)."""

    hits: list[FusedHit]
    chunks: dict[int, StoredChunk]
    signals: tuple[Signal, ...]
    terms: list[str]


def _under(path: str, prefixes: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def retrieve(
    store: KnowledgeStore,
    query: str,
    *,
    limit: int,
    offset: int = 0,
    query_vector: npt.NDArray[np.float32] | None = None,
    model: str | None = None,
    signals: Sequence[Signal] = ("lexical", "semantic"),
    paths: Sequence[str] = (),
    params: RetrievalParams = RetrievalParams(),
) -> Retrieved:
    """The fused ranking for ``query``; hits ``offset``..``offset + limit`` come with their chunks.

    The semantic signal runs only with a ``query_vector`` and the ``model`` that made it.
    """
    import numpy as np  # on first use: the server starts without numpy

    terms = query_terms(query)
    pool = params.candidates + offset + limit
    lexical: list[tuple[int, float]] = []
    semantic: list[tuple[int, float]] = []
    used: list[Signal] = []
    if "lexical" in signals and terms:
        wanted = pool * 4 if paths else pool  # room for the filter below
        lexical = store.lexical(terms, wanted)
        if paths:
            paths_of = {i: c.path for i, c in store.chunks([i for i, _ in lexical]).items()}
            lexical = [(i, s) for i, s in lexical if _under(paths_of.get(i, ""), paths)]
        lexical = lexical[:pool]
        used.append("lexical")
    if "semantic" in signals and query_vector is not None and model:
        vm = store.vector_matrix(model)
        mask = np.array([_under(p, paths) for p in vm.paths], dtype=bool) if paths else None
        semantic = [(int(vm.ids[row]), score) for row, score in cosine_top(vm.matrix, query_vector, pool, mask)]
        used.append("semantic")
    hits = fuse(
        lexical,
        semantic,
        method=params.fusion,
        lexical_weight=params.lexical_weight,
        normalisation=params.normalisation,
        rrf_k=params.rrf_k,
    )
    page = hits[offset : offset + limit]
    return Retrieved(hits=hits, chunks=store.chunks(h.id for h in page), signals=tuple(used), terms=terms)
