"""Fusing the lexical (BM25) and semantic (cosine) rankings into one.

Two methods:

- ``convex`` (default): each signal's scores over its candidates are normalised, then
  ``score = w · lexical + (1 - w) · semantic``. Normalisation ``zscore`` (default): (score - mean)
  / standard deviation over the signal's candidates, a candidate the signal did not return getting
  the lowest value it gave; ``minmax``: to [0, 1], a missing candidate getting 0;
- ``rrf``: reciprocal rank fusion, ``Σ 1 / (k + rank)`` over the signals that returned the item.

The normalisation and weight ``w`` (and RRF's ``k``) were chosen on the development split of the
two labelled sets (``bench/knowledge.py``), not guessed: z-score with w = 0.6 had the best mean dev
nDCG@10 (0.511; min-max's best, at w = 0.7, 0.504), and RRF did best with k = 10 (0.490). See the
README's benchmark section; the benchmark says when its dev choice and these defaults differ. Each fused hit
says which signals ranked it near their top (``found_by``).

While the vectors are still being built, ``unembedded`` names the candidates that have none: the
semantic signal cannot have returned them, and the lowest semantic value would push a chunk down
only because its turn to be embedded has not come. Such a candidate is ranked by the lexical
signal alone (its lexical value stands in for the semantic one; with RRF, its lexical rank counts
for both), so a partial build never buries what BM25 alone would have shown.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

Fusion = Literal["convex", "rrf"]
Normalisation = Literal["zscore", "minmax"]
Signal = Literal["lexical", "semantic"]

# Chosen on the dev splits (bench/knowledge.py --tune): see the README's figures.
DEFAULT_LEXICAL_WEIGHT = 0.6
DEFAULT_NORMALISATION: Normalisation = "zscore"
DEFAULT_RRF_K = 10
FOUND_DEPTH = 20


@dataclass(frozen=True)
class FusedHit:
    id: int
    score: float
    found_by: tuple[Signal, ...]
    lexical: float | None = None
    semantic: float | None = None


def _normalised(scored: Sequence[tuple[int, float]], how: Normalisation) -> tuple[dict[int, float], float]:
    """Normalised scores by id, and the value for an id the signal did not return."""
    if not scored:
        return {}, 0.0
    values = [s for _, s in scored]
    if how == "minmax":
        low, span = min(values), max(values) - min(values)
        return {i: ((s - low) / span if span > 0 else 1.0) for i, s in scored}, 0.0
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
    normal = {i: ((s - mean) / std if std > 0 else 0.0) for i, s in scored}
    return normal, min(normal.values())


def fuse(
    lexical: Sequence[tuple[int, float]],
    semantic: Sequence[tuple[int, float]],
    *,
    method: Fusion = "convex",
    lexical_weight: float = DEFAULT_LEXICAL_WEIGHT,
    normalisation: Normalisation = DEFAULT_NORMALISATION,
    rrf_k: int = DEFAULT_RRF_K,
    found_depth: int = FOUND_DEPTH,
    unembedded: Collection[int] = frozenset(),
) -> list[FusedHit]:
    """One ranking from two (each a list of (id, score), best first); best first, ties by id.

    ``found_by`` names the signals that ranked the item within their top ``found_depth``;
    ``unembedded`` the candidates without a vector, ranked by the lexical signal alone (see the
    module docstring)."""
    lex_raw = dict(lexical)
    sem_raw = dict(semantic)
    ids = list(dict.fromkeys([*lex_raw, *sem_raw]))
    scores: dict[int, float] = {}
    if method == "rrf":
        lex_rank = {i: r for r, (i, _) in enumerate(lexical, start=1)}
        sem_rank = {i: r for r, (i, _) in enumerate(semantic, start=1)}
        for i in ids:
            if i in unembedded and semantic:
                scores[i] = 2.0 / (rrf_k + lex_rank[i]) if i in lex_rank else 0.0
                continue
            scores[i] = sum(1.0 / (rrf_k + rank[i]) for rank in (lex_rank, sem_rank) if i in rank)
    else:
        (lex_n, lex_missing), (sem_n, sem_missing) = (
            _normalised(lexical, normalisation),
            _normalised(semantic, normalisation),
        )
        w = min(max(lexical_weight, 0.0), 1.0)
        if not semantic:
            w = 1.0
        elif not lexical:
            w = 0.0
        for i in ids:
            lex_value = lex_n.get(i, lex_missing)
            sem_value = lex_value if i in unembedded else sem_n.get(i, sem_missing)
            scores[i] = w * lex_value + (1 - w) * sem_value
    lex_pos = {i: r for r, (i, _) in enumerate(lexical, start=1)}
    sem_pos = {i: r for r, (i, _) in enumerate(semantic, start=1)}
    hits = []
    for i in ids:
        # A signal "found" an item it ranked near its top; every candidate would be too generous
        # (cosine ranks the whole index), so beyond found_depth only the better signal counts.
        ranks: list[tuple[int, Signal]] = [(lex_pos.get(i, 1 << 30), "lexical"), (sem_pos.get(i, 1 << 30), "semantic")]
        found = [name for rank, name in ranks if rank <= found_depth] or [min(ranks)[1]]
        hits.append(FusedHit(i, scores[i], tuple(found), lex_raw.get(i), sem_raw.get(i)))
    hits.sort(key=lambda h: (-h.score, h.id))
    return hits
