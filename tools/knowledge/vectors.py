"""Embedding inputs and exact cosine search with numpy.

What is embedded for a chunk is its path, symbol and text, cut to about :data:`MAX_EMBED_TOKENS`
word pieces: small embedding models (MiniLM: 256 trained, 512 at most) fail or degrade on longer
inputs, and llama.cpp refuses an input longer than its batch. The cut is estimated without the
model's tokenizer, generously (every punctuation mark a token, a long word several): on
setuptools' 3,942 chunks the real count was at most 1.7 times the estimate (base64 hashes).

Exact search multiplies the query by every unit vector: 20,000 chunks of 384 dimensions take about
2 ms here, so no approximate index is needed up to ~100k chunks.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

from .chunking import Chunk

MAX_EMBED_TOKENS = 256
# Texts sent per embed call from the indexer (the LLM service batches below this again).
EMBED_GROUP = 128
# The first group of paced (background) embedding: small enough to take well under a second on a
# CPU; the next groups are sized from its time (``indexer.embed_missing``).
PACED_FIRST_GROUP = 2

# An embedder turns texts into (model name, vectors in order); the supervisor wraps its LLM service.
Embedder = Callable[[Sequence[str]], Awaitable[tuple[str, Sequence[Sequence[float]]]]]

_PIECE = re.compile(r"\w+|[^\w\s]")


def estimated_tokens(word: str) -> int:
    """Word pieces ``word`` probably becomes: punctuation one each, a word one per ~4 characters,
    a long one (a hash, base64: WordPiece cuts those into 2-3 character pieces) one per 2."""
    if not word[0].isalnum() and word[0] != "_":
        return 1
    if not word.isascii():
        return len(word)
    return (len(word) + 1) // 2 if len(word) > 12 else max(1, (len(word) + 3) // 4)


def truncate_for_embedding(text: str, max_tokens: int = MAX_EMBED_TOKENS) -> str:
    """``text`` cut at the piece where the estimated token count passes ``max_tokens``."""
    spent = 0
    for match in _PIECE.finditer(text):
        spent += estimated_tokens(match.group(0))
        if spent > max_tokens:
            return text[: match.start()]
    return text


def embedding_input(path: str, symbol: str, text: str) -> str:
    """What is embedded for a chunk: where it is, what it is called, then its text (cut)."""
    head = f"{path} {symbol}".strip()
    return truncate_for_embedding(f"{head}\n{text}")


def chunk_embedding_input(chunk: Chunk) -> str:
    return embedding_input(chunk.path, chunk.symbol, chunk.text)


def text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def unit(vector: Sequence[float] | npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
    import numpy as np  # on first use: the server starts without numpy

    arr = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(arr))
    return arr / norm if norm else arr


def cosine_top(
    matrix: npt.NDArray[np.float32], query: npt.NDArray[np.float32], k: int, mask: npt.NDArray[np.bool_] | None = None
) -> list[tuple[int, float]]:
    """(row, cosine) of the ``k`` rows most similar to ``query`` (rows and query are unit vectors),
    best first; rows where ``mask`` is False are left out."""
    import numpy as np  # on first use: the server starts without numpy

    if matrix.size == 0 or k <= 0 or matrix.shape[1] != query.shape[0]:
        return []
    scores = matrix @ query
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    k = min(k, scores.shape[0])
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return [(int(i), float(scores[i])) for i in top if np.isfinite(scores[i])]
