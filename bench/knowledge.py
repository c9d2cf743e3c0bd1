# ruff: noqa: ASYNC240 - a benchmark script: file work between measured steps need not leave the event loop
"""The knowledge supervisor's figures: retrieval quality, speed, memory recall, citation validity.

Everything runs on this machine with the embedded models: all-MiniLM-L6-v2 (GGUF, llama.cpp) for
embeddings and SmolLM2-135M for answers, through the real server (``create_server``, in-process
MCP client) and the real index code (``caelum_mcp.tools.knowledge``).

1. Retrieval quality, nDCG@10 and recall@10 on the test split, for lexical only (FTS5 BM25),
   semantic only (cosine), hybrid (convex, and RRF), and a reference BM25 (``rank_bm25.BM25Okapi``
   over the code chunks, and over Cranfield's whole documents whatever the chunking; lower-cased
   word tokens without stop words, no stemming); then hybrid while the vectors are being built
   (``--partial``: 10 % to 90 % of the chunks embedded, in the order the background task embeds
   them, and 100 %), the product's ranking against lexical alone and against the fusion before
   partial builds were handled:
   (a) 54 questions about starlette's code and docs with gold file and line spans
       (``bench/data/knowledge/code_questions.json``; a retrieved chunk is relevant when it overlaps
       a gold span of the same file, each gold span counted once);
   (b) the Cranfield collection (1,400 abstracts, 225 queries, human relevance judgements; every
       judged document relevant, binary).
   Fusion weights (and the coverage from which hybrid search uses the vectors) are chosen on the dev
   split (every third question/query), never on test.
2. Speed: search p95 at >= 20,000 chunks with the query embedded by the real model each time;
   re-indexing after one changed file; files per second for a cold index of a ~60k-line repository;
   what a search and a recall wait while the background task embeds a fresh project
   (``--only background``; ``--compare-unpaced`` also measures them behind 64-chunk groups).
3. Memory: recall@5 of 100 paraphrased queries over 200 notes (every third query dev), and other
   rankings of the same notes and vectors with their parameters chosen on dev; hits after forgetting them.
4. ``ask_knowledge``: every citation returned is checked mechanically (its chunk was retrieved,
   its quote is in the chunk), with SmolLM2 allowed to answer (``[router.tasks.qa] min_tier``).

    .venv/bin/python bench/knowledge.py                # everything (first run ~15 min: embeddings)
    .venv/bin/python bench/knowledge.py --only quality --tune
    .venv/bin/python bench/knowledge.py --only quality --sets code --partial 0.25,0.5,0.9
    .venv/bin/python bench/knowledge.py --only quality --lexical-only   # no embedding: seconds
    .venv/bin/python bench/knowledge.py --only background --compare-unpaced
    .venv/bin/python bench/knowledge.py --quick        # small subsets (smoke test)
    .venv/bin/python bench/knowledge.py --config gpu.toml --embedding-model nomic-embed-text

``--config`` adds the hosts of a caelum.toml (e.g. an Ollama serving a stronger embedding model)
to the embedded ones; ``--embedding-model`` names the model every figure is measured with.

Embeddings and indexes are cached in ``--cache`` (default ``$XDG_CACHE_HOME/caelum-bench/knowledge``)
so a second run only measures.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import os
import random
import re
import shutil
import statistics
import sys
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from mcp import Client

from caelum_mcp.engine.config import load_config
from caelum_mcp.engine.embedding_service import EmbeddingService
from caelum_mcp.serving.server import create_server
from caelum_mcp.tools.knowledge.indexer import sync_index
from caelum_mcp.tools.knowledge.memory import (
    GLOBAL_SCOPE,
    MEMORY_FEEDBACK_NOTES,
    MEMORY_FEEDBACK_WEIGHT,
    MEMORY_LEXICAL_WEIGHT,
    MemoryStore,
)
from caelum_mcp.tools.knowledge.ranking import DEFAULT_LEXICAL_WEIGHT, DEFAULT_NORMALISATION, DEFAULT_RRF_K, fuse
from caelum_mcp.tools.knowledge.retrieval import MIN_HYBRID_COVERAGE, RetrievalParams, retrieve
from caelum_mcp.tools.knowledge.store import KnowledgeStore
from caelum_mcp.tools.knowledge.terms import STOPWORDS, lexical_terms, query_terms
from caelum_mcp.tools.knowledge.vectors import cosine_top, unit

DATA = Path(__file__).parent / "data" / "knowledge"
MODEL = "all-minilm:l6-v2"
CANDIDATES = 100
K = 10


# metrics ------------------------------------------------------------------------------------------


def ndcg_recall(ranked_gains: list[float], n_relevant: int, k: int = K) -> tuple[float, float]:
    """nDCG@k and recall@k of a ranking given each position's gain (1 for a new relevant item, 0
    otherwise) and how many relevant items exist."""
    if n_relevant == 0:
        return 0.0, 0.0
    top = ranked_gains[:k]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(top))
    ideal = sum(1 / math.log2(i + 2) for i in range(min(n_relevant, k)))
    return dcg / ideal, sum(top) / n_relevant


@dataclass(frozen=True)
class Query:
    id: str
    text: str
    split: str


@dataclass
class Collection:
    """A labelled set indexed in a store: queries, and how to judge a ranked list of chunk ids."""

    name: str
    store: KnowledgeStore
    queries: list[Query]
    judge: Any  # (query, [chunk ids]) -> (ndcg, recall)
    units: dict[int, str]  # chunk id -> text, for the reference BM25 (for Cranfield: a document's
    # whole text under its first chunk's id, so the reference does not depend on the chunking)
    root: Path | None = None  # the indexed folder (the partial-build rows copy its index)


def code_judge(questions: dict[str, list[dict[str, Any]]], store: KnowledgeStore) -> Any:
    def judge(query: Query, ids: list[int]) -> tuple[float, float]:
        gold = questions[query.id]
        chunks = store.chunks(ids[: K * 3])
        seen: set[int] = set()
        gains = []
        for i in ids:
            c = chunks.get(i)
            hit = None
            if c is not None:
                for n, g in enumerate(gold):
                    if n not in seen and g["path"] == c.path and c.start_line <= g["end"] and g["start"] <= c.end_line:
                        hit = n
                        break
            if hit is not None:
                seen.add(hit)
            gains.append(1.0 if hit is not None else 0.0)
        return ndcg_recall(gains, len(gold))

    return judge


def doc_judge(qrels: dict[str, set[str]], store: KnowledgeStore) -> Any:
    """Cranfield: chunks map to their document (file), documents counted once, in order."""

    def judge(query: Query, ids: list[int]) -> tuple[float, float]:
        relevant = qrels.get(query.id, set())
        chunks = store.chunks(ids)
        docs: list[str] = []
        for i in ids:
            c = chunks.get(i)
            if c is not None and c.path not in docs:
                docs.append(c.path)
        return ndcg_recall([1.0 if d in relevant else 0.0 for d in docs], len(relevant))

    return judge


# data ---------------------------------------------------------------------------------------------


def load_cranfield(folder: Path) -> tuple[dict[str, str], list[str], dict[str, set[str]]]:
    """(doc id -> "title\\n\\nabstract", queries in order, query number -> relevant doc files)."""

    def fields(text: str) -> list[tuple[str, dict[str, str]]]:
        out: list[tuple[str, dict[str, str]]] = []
        for block in re.split(r"^\.I ", text, flags=re.MULTILINE)[1:]:
            ident, _, rest = block.partition("\n")
            parts = dict(re.findall(r"^\.([TAWB])\n(.*?)(?=^\.[TAWB]\n|\Z)", rest, flags=re.MULTILINE | re.DOTALL))
            out.append((ident.strip(), {k: " ".join(v.split()) for k, v in parts.items()}))
        return out

    read = lambda name: gzip.decompress((folder / name).read_bytes()).decode("utf-8", "replace")  # noqa: E731
    docs = {i: f"{f.get('T', '')}\n\n{f.get('W', '')}" for i, f in fields(read("cran.all.1400.gz"))}
    queries = [f.get("W", "") for _, f in fields(read("cran.qry.gz"))]
    qrels: dict[str, set[str]] = {}
    for line in read("cranqrel.gz").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] != "-1":  # judged relevant (grades 1-4); -1 is "no interest"
            qrels.setdefault(parts[0], set()).add(f"cran/{int(parts[1]):04d}.txt")
    return docs, queries, qrels


def write_files(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


# the server and its embedding model ---------------------------------------------------------------


class Bench:
    """One in-process server (embedded models on) and the cache folder."""

    def __init__(self, cache: Path, *, qa_micro: bool, config: str | None = None) -> None:
        self.cache = cache
        overrides: dict[str, Any] = {
            "data_dir": str(cache / "data"),
            "embedded": "on",
            "embedded_threads": min(2, os.cpu_count() or 1),
            "allowed_roots": [str(cache / "work")],
            "knowledge": {"refresh_s": 3600},
        }
        if config is None:  # the embedded models only; with a config, its hosts too
            overrides |= {"hosts": [], "implicit_ollama": False}
        if qa_micro and config is None:  # let SmolLM2-135M answer, to check what it cites (it is below qa's tier)
            overrides["router"] = {"tasks": {"qa": {"min_tier": "micro"}}}
        (cache / "work").mkdir(parents=True, exist_ok=True)
        self.config = load_config(config, environ={}, overrides=overrides)
        self.server, self.holder = create_server(self.config)

    async def missing_model(self) -> str | None:
        """Why the embedding model cannot be measured (no host serves it), or None; once the server
        is ready (its embedded models load after it opens)."""
        state = self.holder.require()
        await state.ready.wait()
        served = sorted(EmbeddingService(state.pool, state.ledger).models())  # model@host
        if MODEL in {name.rsplit("@", 1)[0] for name in served}:
            return None
        return f"no host serves the embedding model {MODEL!r}; served: {', '.join(served) or 'none'}"

    async def embed(self, texts: Sequence[str]) -> tuple[str, Sequence[Sequence[float]]]:
        state = self.holder.require()
        result = await EmbeddingService(state.pool, state.ledger).embed(list(texts), model=MODEL)
        return MODEL, result.vectors

    async def index(self, store: KnowledgeStore, root: Path, *, embed: bool = True) -> float:
        started = time.perf_counter()
        report = await sync_index(store, root, embedder=self.embed if embed else None, embedding_model=MODEL)
        print(f"  indexed {root.name}: {report.files} files, {report.chunks} chunks, {report.embedded} embedded")
        return time.perf_counter() - started


# 1. retrieval quality -----------------------------------------------------------------------------


async def rankings(
    bench: Bench, coll: Collection
) -> dict[str, tuple[list[tuple[int, float]], list[tuple[int, float]]]]:
    """Per query: the lexical and semantic candidate lists (computed once, fused many ways)."""
    vm = coll.store.vector_matrix(MODEL)
    vectors = await query_vectors(bench, coll)
    out = {}
    for q, v in zip(coll.queries, vectors, strict=True):
        lexical = coll.store.lexical(lexical_terms(q.text), CANDIDATES)
        semantic = [(int(vm.ids[r]), s) for r, s in cosine_top(vm.matrix, unit(v), CANDIDATES)]
        out[q.id] = (lexical, semantic)
    return out


_QUERY_VECTORS: dict[str, list[Any]] = {}


async def query_vectors(bench: Bench, coll: Collection) -> list[Any]:
    """The collection's queries embedded (once per run)."""
    if coll.name not in _QUERY_VECTORS:
        _, vectors = await bench.embed([q.text for q in coll.queries])
        _QUERY_VECTORS[coll.name] = list(vectors)
    return _QUERY_VECTORS[coll.name]


def partial_copy(store: KnowledgeStore, share: float, path: Path) -> KnowledgeStore:
    """A copy of ``store`` as it stands while the background task has embedded ``share`` of its
    chunks: it embeds them in the order of ``missing_vectors`` (by chunk id), so the vectors of the
    later chunk hashes are dropped."""
    import sqlite3

    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    target = sqlite3.connect(path)
    with sqlite3.connect(store.path) as source:
        source.backup(target)
    order = [h for h, _ in target.execute("SELECT hash, MIN(id) FROM chunks GROUP BY hash ORDER BY MIN(id)")]
    keep = set(order[: round(share * len(order))])
    target.executemany("DELETE FROM vectors WHERE hash = ? AND model = ?", [(h, MODEL) for h in order if h not in keep])
    target.commit()
    target.close()
    return KnowledgeStore(path)


async def partial_build(bench: Bench, coll: Collection, shares: Sequence[float]) -> dict[str, Any]:
    """Hybrid search while the vectors are being built: per share of chunks embedded, the product's
    ranking (``retrieve`` on a copy of the index holding only those vectors), the same without its
    coverage threshold (the fused ranking, chunks without a vector ranked by BM25 alone), lexical
    alone, and the fusion before partial builds were handled (an unembedded chunk took the lowest
    semantic value; one of each query term)."""
    vectors = await query_vectors(bench, coll)
    lexical = {q.id: [i for i, _ in coll.store.lexical(lexical_terms(q.text), CANDIDATES)] for q in coll.queries}
    lex = {split: evaluate(coll, lexical, split)[0] for split in ("dev", "test")}
    out: dict[str, Any] = {"lexical": lex}
    print(
        f"\n{coll.name}, hybrid while the vectors are built (test nDCG@10, dev in brackets); lexical alone"
        f" {lex['test']:.3f} ({lex['dev']:.3f}); the product is lexical below {MIN_HYBRID_COVERAGE:.0%}"
    )
    for share in shares:
        copy = bench.cache / f"partial-{coll.name.split()[0]}.sqlite3"
        part = partial_copy(coll.store, share, copy)
        vm = part.vector_matrix(MODEL)
        runs: dict[str, dict[str, list[int]]] = {"product": {}, "fused": {}, "before": {}}
        for q, v in zip(coll.queries, vectors, strict=True):
            for name, params in (("product", RetrievalParams()), ("fused", RetrievalParams(min_hybrid_coverage=0.0))):
                found = retrieve(part, q.text, limit=K, query_vector=unit(v), model=MODEL, params=params)
                runs[name][q.id] = [h.id for h in found.hits]
            lexical_hits = part.lexical(query_terms(q.text), CANDIDATES)  # one of each term, as before
            semantic = [(int(vm.ids[r]), sc) for r, sc in cosine_top(vm.matrix, unit(v), CANDIDATES)]
            runs["before"][q.id] = [h.id for h in fuse(lexical_hits, semantic)]
        part.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{copy}{suffix}").unlink(missing_ok=True)
        row = {f"{name} {split}": evaluate(coll, runs[name], split)[0] for name in runs for split in ("dev", "test")}
        out[f"{share:.2f}"] = row
        print(
            f"  {share:4.0%} embedded: product {row['product test']:.3f} ({row['product dev']:.3f}),"
            f" fused at any coverage {row['fused test']:.3f} ({row['fused dev']:.3f}),"
            f" fusion before {row['before test']:.3f} ({row['before dev']:.3f})"
        )
    return out


def chosen_coverage(partial: dict[str, dict[str, Any]], shares: Sequence[float]) -> float:
    """The lowest share of chunks embedded from which the fused ranking is at least lexical search
    on every set's dev split, at that share and every higher one below 100 % (1.0 when none). With
    every vector built the question is the fusion weight's, chosen on its own (``quality``)."""
    partial_shares = sorted(s for s in shares if s < 1.0)
    ok = [all(p[f"{s:.2f}"]["fused dev"] >= p["lexical"]["dev"] for p in partial.values()) for s in partial_shares]
    for n, share in enumerate(partial_shares):
        if all(ok[n:]):
            return share
    return 1.0


def evaluate(coll: Collection, ranked: dict[str, list[int]], split: str) -> tuple[float, float]:
    scores = [coll.judge(q, ranked[q.id]) for q in coll.queries if q.split == split]
    return statistics.fmean(s[0] for s in scores), statistics.fmean(s[1] for s in scores)


def fused(lists: dict[str, Any], method: str, **kw: Any) -> dict[str, list[int]]:
    return {qid: [h.id for h in fuse(lex, sem, method=method, **kw)] for qid, (lex, sem) in lists.items()}  # type: ignore[arg-type]


def reference_bm25(coll: Collection, *, stop_words: bool = True) -> dict[str, list[int]]:
    """rank_bm25's Okapi BM25 over the collection's units: lower-cased ``\\w+`` words, no stemming,
    stop words left out (or, with ``stop_words=False``, kept: issue 22's reference, 0.352 on all of
    Cranfield's queries)."""
    from rank_bm25 import BM25Okapi

    def tokens(text: str) -> list[str]:
        return [t for t in re.findall(r"\w+", text.lower()) if not stop_words or t not in STOPWORDS]

    ids = list(coll.units)
    bm25 = BM25Okapi([tokens(coll.units[i]) for i in ids])
    out = {}
    for q in coll.queries:
        scores = bm25.get_scores(tokens(q.text))
        top = np.argsort(-scores)[:CANDIDATES]
        out[q.id] = [ids[i] for i in top]
    return out


def lexical_quality(colls: list[Collection]) -> dict[str, Any]:
    """Lexical search against the reference BM25 alone: no embedding model needed (seconds)."""
    results: dict[str, Any] = {}
    for coll in colls:
        lexical = {q.id: [i for i, _ in coll.store.lexical(lexical_terms(q.text), CANDIDATES)] for q in coll.queries}
        once = {q.id: [i for i, _ in coll.store.lexical(query_terms(q.text), CANDIDATES)] for q in coll.queries}
        runs = {
            "lexical (FTS5 BM25)": lexical,
            "lexical, each query term once (before)": once,
            "reference BM25 (rank_bm25 Okapi)": reference_bm25(coll),
            "reference BM25, stop words kept": reference_bm25(coll, stop_words=False),
        }
        table = {name: {s: evaluate(coll, ranked, s)[0] for s in ("dev", "test")} for name, ranked in runs.items()}
        results[coll.name] = table
        print(f"\n{coll.name}: nDCG@10 on test (dev)")
        for name, r in table.items():
            print(f"  {name:45s} {r['test']:.3f}   ({r['dev']:.3f})")
    return results


async def quality(bench: Bench, colls: list[Collection], tune: bool, partial: Sequence[float] = ()) -> dict[str, Any]:
    """The table per set; the convex normalisation and weight (and RRF's k) chosen on dev."""
    results: dict[str, Any] = {}
    weights = [round(0.1 * i, 1) for i in range(11)]
    grid = [(norm, w) for norm in ("zscore", "minmax") for w in weights]
    per = {coll.name: await rankings(bench, coll) for coll in colls}

    def dev_mean(**kw: Any) -> float:
        return statistics.fmean(evaluate(c, fused(per[c.name], **kw), "dev")[0] for c in colls)

    dev = {(norm, w): dev_mean(method="convex", normalisation=norm, lexical_weight=w) for norm, w in grid}
    shared = max(grid, key=lambda g: (dev[g], -abs(g[1] - 0.5)))
    shared_k = max((10, 30, 60, 100), key=lambda k: dev_mean(method="rrf", rrf_k=k))
    default = (DEFAULT_NORMALISATION, DEFAULT_LEXICAL_WEIGHT)
    for coll in colls:
        lists = per[coll.name]
        own = max(
            grid,
            key=lambda g: evaluate(coll, fused(lists, "convex", normalisation=g[0], lexical_weight=g[1]), "dev")[0],
        )
        runs = {
            "lexical (FTS5 BM25)": {q: [i for i, _ in lists[q][0]] for q in lists},
            "semantic (MiniLM cosine)": {q: [i for i, _ in lists[q][1]] for q in lists},
            f"hybrid {default[0]} w={default[1]} (the default)": fused(
                lists, "convex", normalisation=default[0], lexical_weight=default[1]
            ),
            f"hybrid {shared[0]} w={shared[1]} (dev, both sets)": fused(
                lists, "convex", normalisation=shared[0], lexical_weight=shared[1]
            ),
            f"hybrid {own[0]} w={own[1]} (dev, this set)": fused(
                lists, "convex", normalisation=own[0], lexical_weight=own[1]
            ),
            f"hybrid rrf k={shared_k} (dev, both sets)": fused(lists, "rrf", rrf_k=shared_k),
            "reference BM25 (rank_bm25 Okapi)": reference_bm25(coll),
            "reference BM25, stop words kept": reference_bm25(coll, stop_words=False),
        }
        table = {}
        for name, ranked in runs.items():
            test = evaluate(coll, ranked, "test")
            table[name] = {"test_ndcg": test[0], "test_recall": test[1], "dev_ndcg": evaluate(coll, ranked, "dev")[0]}
        results[coll.name] = table
        n_test = sum(q.split == "test" for q in coll.queries)
        print(f"\n{coll.name} ({n_test} test queries): nDCG@10 / recall@10 on test (dev nDCG)", flush=True)
        for name, r in table.items():
            print(f"  {name:45s} {r['test_ndcg']:.3f} / {r['test_recall']:.3f}   ({r['dev_ndcg']:.3f})")
    for norm in ("zscore", "minmax"):
        print(f"\nmean dev nDCG@10 over both sets, {norm}: " + ", ".join(f"{w}: {dev[(norm, w)]:.3f}" for w in weights))
    print(f"chosen on dev: {shared[0]} w={shared[1]}, rrf k={shared_k}")
    if (shared, shared_k) != (default, DEFAULT_RRF_K):
        # The defaults must be what dev chose: a change to chunking or to the embedding input moves it.
        print(
            f"NOTE: the defaults ({default[0]} w={default[1]}, rrf k={DEFAULT_RRF_K}) are not what dev chose;"
            " update tools/knowledge/ranking.py (and the README) if this run is the reference one"
        )
    if tune:
        for coll in colls:
            if coll.name.startswith("code"):
                qs = [q for q in coll.queries if q.split == "dev"]
                for lw in (1.0, 2.0, 4.0):
                    ranked = {
                        q.id: [i for i, _ in coll.store.lexical(lexical_terms(q.text), CANDIDATES, label_weight=lw)]
                        for q in qs
                    }
                    scores = [coll.judge(q, ranked[q.id])[0] for q in qs]
                    print(f"  label weight {lw}: code dev lexical nDCG@10 {statistics.fmean(scores):.3f}")
    results["chosen"] = {"normalisation": shared[0], "lexical_weight": shared[1], "rrf_k": shared_k}
    if partial:
        results["partial_build"] = {c.name: await partial_build(bench, c, partial) for c in colls}
        chosen = chosen_coverage(results["partial_build"], partial)
        results["partial_build"]["chosen_min_coverage"] = chosen
        print(f"\nhybrid from {chosen:.0%} embedded chosen on dev (MIN_HYBRID_COVERAGE is {MIN_HYBRID_COVERAGE:.0%})")
    return results


# 2. speed -----------------------------------------------------------------------------------------


SPEED_TREES = ("setuptools", "pip", "pydantic", "mcp", "anyio", "starlette", "hypothesis", "pygments", "rich",
               "jsonschema", "httpx2", "uvicorn", "bandit", "radon", "_pytest", "sqlalchemy")  # fmt: skip


def site_packages_trees() -> list[Path]:
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    return [site / n for n in SPEED_TREES if (site / n).is_dir()]


async def speed(bench: Bench, queries: list[str], quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    work = bench.cache / "work"
    big = work / "big"
    if not big.exists():
        for tree in site_packages_trees()[: 2 if quick else None]:
            shutil.copytree(tree, big / tree.name, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
    store = KnowledgeStore(bench.cache / "big.sqlite3")
    started = time.perf_counter()
    report = await sync_index(store, big)
    print(
        f"\n  big index: {report.files} files, {report.chunks} chunks (lexical, {time.perf_counter() - started:.1f} s)"
    )
    # Vectors for every chunk: synthetic unit vectors of the model's size (embedding 20k chunks
    # here would take ~25 min); the cosine search costs the same whatever the numbers are.
    missing = store.missing_vectors(MODEL)
    if missing:
        rng = np.random.default_rng(7)
        vectors = rng.standard_normal((len(missing), 384)).astype(np.float32)
        store.put_vectors(MODEL, [(h, v) for (h, _), v in zip(missing, vectors, strict=True)])
    out["chunks"] = report.chunks
    totals, embeds, searches = [], [], []
    for i in range(60 if not quick else 10):
        q = queries[i % len(queries)]
        t0 = time.perf_counter()
        _, vec = await bench.embed([q])
        t1 = time.perf_counter()
        found = retrieve(store, q, limit=10, query_vector=unit(vec[0]), model=MODEL)
        t2 = time.perf_counter()
        assert found.hits
        totals.append((t2 - t0) * 1000)
        embeds.append((t1 - t0) * 1000)
        searches.append((t2 - t1) * 1000)
    # the first queries load the vector matrix and warm SQLite's page cache: left out
    totals, embeds, searches = totals[5:], embeds[5:], searches[5:]
    out["search_p50_ms"] = statistics.median(totals)
    out["search_p95_ms"] = float(np.percentile(totals, 95))
    out["embed_p95_ms"] = float(np.percentile(embeds, 95))
    out["retrieve_p95_ms"] = float(np.percentile(searches, 95))
    print(
        f"  hybrid search at {report.chunks} chunks, query embedded each time: p50 {out['search_p50_ms']:.1f} ms, "
        f"p95 {out['search_p95_ms']:.1f} ms (p95 of the embedding call {out['embed_p95_ms']:.1f} ms, "
        f"of FTS5 + cosine + fusion {out['retrieve_p95_ms']:.1f} ms)",
        flush=True,
    )
    # re-index after one changed file (real embedding of its changed chunks)
    times = []
    victim = sorted(big.rglob("*.py"))[len(list(big.rglob("*.py"))) // 2]
    original = victim.read_text()
    try:
        for n in range(5):
            victim.write_text(original + f"\n\ndef bench_added_{n}(value):\n    return value * {n}\n")
            t0 = time.perf_counter()
            r = await sync_index(store, big, embedder=bench.embed, embedding_model=MODEL)
            times.append(time.perf_counter() - t0)
            assert r.changed == 1, r
    finally:
        victim.write_text(original)
        await sync_index(store, big, embedder=bench.embed, embedding_model=MODEL)
    out["reindex_one_file_s"] = statistics.median(times)
    out["reindex_one_file_max_s"] = max(times)
    print(
        f"  re-index after editing one file ({report.files} files): median {statistics.median(times):.2f} s, "
        f"max {max(times):.2f} s"
    )
    store.close()
    return out


async def cold_index(bench: Bench, embed: bool) -> dict[str, Any]:
    import sysconfig

    tree = bench.cache / "work" / "setuptools"
    if not tree.exists():
        src = Path(sysconfig.get_paths()["purelib"]) / "setuptools"
        shutil.copytree(src, tree, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.exe"))
    lines = sum(len(p.read_text(errors="replace").splitlines()) for p in tree.rglob("*.py"))
    path = bench.cache / "cold.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    store = KnowledgeStore(path)
    t0 = time.perf_counter()
    report = await sync_index(store, tree)
    lexical_s = time.perf_counter() - t0
    out: dict[str, Any] = {
        "files": report.files,
        "python_lines": lines,
        "chunks": report.chunks,
        "lexical_s": lexical_s,
    }
    print(
        f"\n  cold index of setuptools ({report.files} files, {lines} Python lines, {report.chunks} chunks): "
        f"{lexical_s:.2f} s lexical = {report.files / lexical_s:.0f} files/s"
    )
    if embed:
        t0 = time.perf_counter()
        r = await sync_index(store, tree, embedder=bench.embed, embedding_model=MODEL)
        embed_s = time.perf_counter() - t0
        out["embed_s"] = embed_s
        print(
            f"  + embedding {r.embedded} chunks with MiniLM on 2 threads: {embed_s:.1f} s; "
            f"cold total {(lexical_s + embed_s):.1f} s = {report.files / (lexical_s + embed_s):.1f} files/s"
        )
    store.close()
    return out


# 3. memory ----------------------------------------------------------------------------------------


async def memory(bench: Bench) -> dict[str, Any]:
    data = json.loads((DATA / "memory_notes.json").read_text())
    path = bench.cache / "memory-bench.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    store = MemoryStore(path)
    _, vectors = await bench.embed([n["text"] for n in data["notes"]])
    ids = {}
    for note, vector in zip(data["notes"], vectors, strict=True):
        stored, _ = store.remember(note["text"], [], GLOBAL_SCOPE, (MODEL, vector))
        ids[note["id"]] = stored.id
    queries = data["queries"]
    _, qvecs = await bench.embed([q["query"] for q in queries])

    def recall_at_5(split: int | None, use_vec: bool, weight: float) -> float:
        # split: queries 1, 4, 7, ... are dev (0), the others test (1); None: all of them
        hits = total = 0
        for n, (q, v) in enumerate(zip(queries, qvecs, strict=True)):
            if split is not None and (n % 3 != 0) != bool(split):
                continue
            vec = (MODEL, v) if use_vec else None
            found = store.recall(q["query"], [GLOBAL_SCOPE], limit=5, query_vector=vec, lexical_weight=weight)
            hits += ids[q["note"]] in [r.note.id for r in found]
            total += 1
        return hits / total

    weights = [round(0.1 * i, 1) for i in range(11)]
    dev_curve = {w: recall_at_5(0, True, w) for w in weights}
    # ties: the largest weight, keeping as much of the exact-word signal as costs nothing on dev
    chosen = max(weights, key=lambda w: (dev_curve[w], w))
    print("  memory dev recall@5 by lexical weight: " + ", ".join(f"{w}: {r:.2f}" for w, r in dev_curve.items()))
    out: dict[str, Any] = {
        "chosen_weight": chosen,
        "recall@5_lexical": recall_at_5(None, False, 1.0),
        "recall@5_semantic": recall_at_5(None, True, 0.0),
        f"recall@5_hybrid_default_w{MEMORY_LEXICAL_WEIGHT}": recall_at_5(None, True, MEMORY_LEXICAL_WEIGHT),
        f"recall@5_hybrid_dev_w{chosen}_test": recall_at_5(1, True, chosen),
        "recall@5_semantic_test": recall_at_5(1, True, 0.0),
    }
    out["methods"] = await memory_methods(bench, store, ids, queries, qvecs)
    store.forget([ids[q["note"]] for q in queries])
    after = 0
    for q, v in zip(queries, qvecs, strict=True):
        found = store.recall(q["query"], [GLOBAL_SCOPE], limit=5, query_vector=(MODEL, v))
        after += ids[q["note"]] in [r.note.id for r in found]
    out["hits_after_forget"] = after
    store.close()
    print(
        f"\n  memory: {len(data['notes'])} notes, {len(queries)} paraphrased queries (1 in 3 dev): "
        + ", ".join(f"{k.removeprefix('recall@5_')} {v:.2f}" for k, v in out.items() if k.startswith("recall"))
        + f" (recall@5); weight chosen on dev {chosen}; hits after forget: {after}"
    )
    return out


MemoryRanker = Any  # (query number) -> note ids, best first


async def memory_methods(
    bench: Bench, store: MemoryStore, ids: dict[str, int], queries: list[dict[str, str]], qvecs: Sequence[Any]
) -> dict[str, dict[str, Any]]:
    """Other ways of ranking the same notes with the same model (issue 22 item 4's route without a
    new model), each one's parameters chosen on the dev third and scored on the test two thirds:
    convex fusion (z-score, as the product) and min-max normalisation without feedback, reciprocal
    rank fusion, the query's content words embedded instead of the question (query normalisation),
    and pseudo-relevance feedback on the vectors (the product's ``candidates``: the query moved a of
    the way towards its k nearest notes; the product's a and k are in the grid)."""
    gold = [ids[q["note"]] for q in queries]
    dev = [n for n in range(len(queries)) if n % 3 == 0]
    test = [n for n in range(len(queries)) if n % 3 != 0]
    _, content_vecs = await bench.embed([" ".join(query_terms(q["query"])) or q["query"] for q in queries])

    def lists(vecs: Sequence[Any], a: float = 0.0, k: int = 0) -> list[Any]:
        return [
            store.candidates(q["query"], [GLOBAL_SCOPE], (MODEL, v), feedback=a, feedback_notes=k)[:2]
            for q, v in zip(queries, vecs, strict=True)
        ]

    plain = lists(qvecs)
    content = lists(content_vecs)
    weights = [round(0.1 * i, 1) for i in range(11)]
    variants: dict[str, list[tuple[str, MemoryRanker]]] = {
        "convex z-score, no feedback": [
            (f"w={w}", lambda n, w=w: [h.id for h in fuse(*plain[n], lexical_weight=w)]) for w in weights
        ],
        "convex min-max, no feedback": [
            (f"w={w}", lambda n, w=w: [h.id for h in fuse(*plain[n], lexical_weight=w, normalisation="minmax")])
            for w in weights
        ],
        "reciprocal rank fusion": [
            (f"k={k}", lambda n, k=k: [h.id for h in fuse(*plain[n], method="rrf", rrf_k=k)]) for k in (5, 10, 20, 60)
        ],
        "content words embedded": [
            (f"w={w}", lambda n, w=w: [h.id for h in fuse(*content[n], lexical_weight=w)]) for w in weights
        ],
        "vector feedback": [],
    }
    for a in (0.25, 0.5, 1.0):
        for k in (3, 5):
            moved = lists(qvecs, a, k)
            variants["vector feedback"] += [
                (f"a={a} k={k} w={w}", lambda n, m=moved, w=w: [h.id for h in fuse(*m[n], lexical_weight=w)])
                for w in (0.0, MEMORY_LEXICAL_WEIGHT)
            ]
    product = lists(qvecs, MEMORY_FEEDBACK_WEIGHT, MEMORY_FEEDBACK_NOTES)
    variants[f"product (a={MEMORY_FEEDBACK_WEIGHT} k={MEMORY_FEEDBACK_NOTES} w={MEMORY_LEXICAL_WEIGHT})"] = [
        ("as shipped", lambda n: [h.id for h in fuse(*product[n], lexical_weight=MEMORY_LEXICAL_WEIGHT)])
    ]

    def recall(rank: MemoryRanker, which: list[int]) -> float:
        return sum(gold[n] in rank(n)[:5] for n in which) / len(which)

    out: dict[str, dict[str, Any]] = {}
    print("  memory, rankings of the same notes and vectors (parameters chosen on dev; recall@5):")
    for name, grid in variants.items():
        # ties: the last in the grid (for the weights, the largest, as the product's choice)
        best = max((recall(rank, dev), i) for i, (_, rank) in enumerate(grid))[1]
        label, rank = grid[best]
        row = out[name] = {"chosen": label, "dev": recall(rank, dev), "test": recall(rank, test)}
        row["all"] = recall(rank, dev + test)
        print(f"    {name:38s} {label:18s} dev {row['dev']:.3f}  test {row['test']:.3f}  all {row['all']:.2f}")
    return out


# 4. ask_knowledge citations ------------------------------------------------------------------------


async def ask(bench: Bench, client: Client, questions: list[Query], project: str) -> dict[str, Any]:
    counts = {"asked": 0, "answered": 0, "abstained": 0, "citations": 0, "valid": 0, "dropped": 0, "skipped": 0}
    seconds = []
    models: set[str] = set()
    answers: list[dict[str, Any]] = []  # each question's outcome, printed: what to judge the answers by
    state_store: KnowledgeStore | None = None
    for q in questions:
        t0 = time.perf_counter()
        res = await client.call_tool("ask_knowledge", {"question": q.text, "project": project, "allow_claude": False})
        seconds.append(time.perf_counter() - t0)
        out = res.structured_content or {}
        counts["asked"] += 1
        step = out.get("llm") or {}
        execution = step.get("execution") or {}
        if execution.get("model"):
            models.add(str(execution["model"]))
        answers.append(
            {
                "id": q.id,
                "found": out.get("found"),
                "confidence": execution.get("confidence"),
                "grounding": ((execution.get("confidence_parts") or {}).get("signals") or {}).get("grounding"),
                "path": execution.get("path"),
                "citations": len(out.get("citations", [])),
                "dropped": int(step.get("dropped", 0)),
                "answer": str(out.get("answer", ""))[:300],
            }
        )
        counts["dropped"] += int(step.get("dropped", 0))
        counts["skipped"] += step.get("status") == "skipped"
        counts["answered"] += out.get("found") is True
        counts["abstained"] += out.get("found") is False
        if state_store is None:  # the server's own index of the project: the chunks it cited
            index_dir = bench.cache / "data" / "supervisors" / "knowledge" / "indexes"
            for candidate in index_dir.glob("*.sqlite3"):
                opened = KnowledgeStore(candidate)
                if opened.meta("project") == str(Path(project).resolve()):
                    state_store = opened
                    break
                opened.close()
            assert state_store is not None, "the server's index of the project was not found"
        shown = {p["chunk"] for p in out.get("passages", [])}
        chunks = state_store.chunks([c["chunk"] for c in out.get("citations", [])])
        for c in out.get("citations", []):
            counts["citations"] += 1
            chunk = chunks.get(c["chunk"])
            quote = " ".join(c["quote"].split()).lower()
            counts["valid"] += (
                c["chunk"] in shown and chunk is not None and quote in " ".join(chunk.text.split()).lower()
            )
    if state_store is not None:
        state_store.close()
    validity = counts["valid"] / counts["citations"] if counts["citations"] else None
    print(
        f"\n  ask_knowledge ({', '.join(sorted(models)) or 'no model'}) on {counts['asked']} questions: {counts}; "
        f"citation validity {validity if validity is None else f'{validity:.0%}'}; "
        f"median {statistics.median(seconds):.1f} s a question"
    )
    for a in answers:
        print(f"    {a}")
    return {**counts, "validity": validity, "median_s": statistics.median(seconds), "answers": answers}


async def mcp_latency(client: Client, project: str, queries: list[str]) -> dict[str, float]:
    await client.call_tool("search_knowledge", {"query": queries[0], "project": project})  # index + warm
    times = []
    for q in queries:
        t0 = time.perf_counter()
        res = await client.call_tool("search_knowledge", {"query": q, "project": project})
        times.append((time.perf_counter() - t0) * 1000)
        assert not res.is_error
    p50, p95 = statistics.median(times), float(np.percentile(times, 95))
    print(f"\n  search_knowledge through MCP (in-process) on starlette: p50 {p50:.1f} ms, p95 {p95:.1f} ms")
    return {"p50_ms": p50, "p95_ms": p95}


async def while_embedding(
    client: Client, star: Path, work: Path, queries: list[str], *, paced: bool = True
) -> dict[str, float]:
    """What a search and a recall wait while the background task embeds a project nobody has
    indexed before (a fresh copy of starlette): they share the embedding model with it.
    ``paced=False`` sends the background's chunks in full groups, as before paced groups."""
    from caelum_mcp.supervisors.knowledge import state

    group_s = state.BACKGROUND_GROUP_S
    state.BACKGROUND_GROUP_S = group_s if paced else None
    project = work / f"starlette-fresh-{os.getpid()}-{time.time_ns()}"
    shutil.copytree(star, project)
    try:
        await client.call_tool("memory", {"action": "remember", "text": "The bench note lives here."})
        await client.call_tool("search_knowledge", {"query": queries[0], "project": str(project)})  # starts it
        search, recall = [], []
        n = 0
        while True:
            t0 = time.perf_counter()
            res = await client.call_tool(
                "search_knowledge", {"query": queries[n % len(queries)], "project": str(project)}
            )
            t1 = time.perf_counter()
            await client.call_tool("memory", {"action": "recall", "query": "where is the bench note"})
            t2 = time.perf_counter()
            n += 1
            if not (res.structured_content or {}).get("note"):
                break  # every chunk has its vector: the background task is done
            search.append((t1 - t0) * 1000)
            recall.append((t2 - t1) * 1000)
            await anyio.sleep(0.2)
    finally:
        state.BACKGROUND_GROUP_S = group_s
        shutil.rmtree(project, ignore_errors=True)
    out = {
        "calls": float(len(search)),
        "search_p50_ms": statistics.median(search) if search else 0.0,
        "search_max_ms": max(search, default=0.0),
        "recall_p50_ms": statistics.median(recall) if recall else 0.0,
        "recall_max_ms": max(recall, default=0.0),
    }
    print(
        f"\n  while the background embeds a fresh starlette, {'paced' if paced else 'unpaced'} groups"
        f" ({len(search)} searches and recalls): search p50"
        f" {out['search_p50_ms']:.0f} ms, max {out['search_max_ms']:.0f} ms; recall p50 {out['recall_p50_ms']:.0f} ms,"
        f" max {out['recall_max_ms']:.0f} ms"
    )
    return out


# main ---------------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> int:
    global MODEL
    MODEL = args.embedding_model
    logging.disable(logging.INFO)  # the HTTP client logs every embedding request
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    star = cache / "work" / "starlette"
    if not star.exists():
        with tarfile.open(DATA / "starlette.tar.gz") as tar:
            tar.extractall(star, filter="data")
    questions = json.loads((DATA / "code_questions.json").read_text())["questions"]
    if args.quick:
        questions = questions[:12]
    code_queries = [Query(q["id"], q["question"], q["split"]) for q in questions]
    bench = Bench(cache, qa_micro=not args.no_ask, config=args.config)
    results: dict[str, Any] = {}
    async with Client(bench.server) as client:
        missing = None if args.lexical_only else await bench.missing_model()
        if missing is not None:
            print(f"knowledge bench: {missing}", file=sys.stderr)
            return 2
        if args.only in (None, "quality"):
            colls = []
            if "code" in args.sets:
                code_store = KnowledgeStore(cache / "code.sqlite3")
                await bench.index(code_store, star, embed=not args.lexical_only)
                units = {i: f"{c.path} {c.symbol}\n{c.text}" for i, c in code_store.all_chunks().items()}
                gold = {q["id"]: q["gold"] for q in questions}
                colls.append(
                    Collection(
                        "code questions (starlette)", code_store, code_queries, code_judge(gold, code_store), units
                    )
                )
        if args.only in (None, "quality") and "prose" in args.sets:
            docs, cran_queries, qrels = load_cranfield(DATA / "cranfield")
            subset = 15 if args.quick else args.cranfield_queries
            if subset < len(cran_queries):
                # the first queries, the documents judged for them and every 20th (or 10th) other one
                every = 20 if args.quick else 10
                cran_queries = cran_queries[:subset]
                keep = {d for q in range(1, subset + 1) for d in qrels.get(str(q), set())}
                docs = {i: t for i, t in docs.items() if f"cran/{int(i):04d}.txt" in keep or int(i) % every == 0}
            name = "cranfield-quick" if args.quick else "cranfield" if subset >= 225 else f"cranfield-{subset}q"
            cran_root = cache / "work" / name
            write_files(cran_root, {f"cran/{int(i):04d}.txt": t for i, t in docs.items()})
            cran_store = KnowledgeStore(cache / f"{cran_root.name}.sqlite3")
            await bench.index(cran_store, cran_root, embed=not args.lexical_only)
            first_chunk: dict[str, int] = {}
            for i, c in sorted(cran_store.all_chunks().items()):
                first_chunk.setdefault(c.path, i)
            cran_units = {
                first_chunk[path]: text
                for path, text in ((f"cran/{int(i):04d}.txt", t) for i, t in docs.items())
                if path in first_chunk  # an empty document (one is) has no chunk
            }
            qs = [Query(str(n), t, "dev" if n % 3 == 1 else "test") for n, t in enumerate(cran_queries, start=1)]
            colls.append(Collection("Cranfield", cran_store, qs, doc_judge(qrels, cran_store), cran_units))
        if args.only in (None, "quality"):
            if args.lexical_only:
                results["quality"] = lexical_quality(colls)
            else:
                results["quality"] = await quality(bench, colls, args.tune, args.partial)
            for c in colls:
                c.store.close()
        if args.only in (None, "speed"):
            results["speed"] = await speed(bench, [q.text for q in code_queries], args.quick)
            results["cold"] = await cold_index(bench, embed=args.cold_embed)
            results["mcp"] = await mcp_latency(client, str(star), [q.text for q in code_queries][:30])
        if args.only in (None, "speed", "background"):
            texts = [q.text for q in code_queries][:30]
            if args.compare_unpaced:
                results["while_embedding_unpaced"] = await while_embedding(
                    client, star, cache / "work", texts, paced=False
                )
            results["while_embedding"] = await while_embedding(client, star, cache / "work", texts)
        if args.only in (None, "memory"):
            results["memory"] = await memory(bench)
        if args.only in (None, "ask") and not args.no_ask:
            test_qs = [q for q in code_queries if q.split == "test"][: (3 if args.quick else args.ask_questions)]
            results["ask"] = await ask(bench, client, test_qs, str(star))
    if args.json:
        print(json.dumps(results, indent=1, default=float))
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    default_cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "caelum-bench" / "knowledge"
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--cache", default=str(default_cache), help="embeddings and indexes kept between runs")
    p.add_argument("--only", choices=["quality", "speed", "background", "memory", "ask"])
    p.add_argument(
        "--sets",
        type=lambda v: v.split(","),
        default=["code", "prose"],
        help="the labelled sets measured for quality: code, prose (Cranfield) or code,prose (the default)",
    )
    p.add_argument(
        "--partial",
        type=lambda v: [float(x) for x in v.split(",") if x],
        default=[0.1, 0.25, 0.5, 0.75, 0.9, 1.0],
        help="shares of the chunks embedded for the partial-build rows ('' for none)",
    )
    p.add_argument(
        "--cranfield-queries",
        type=int,
        default=225,
        help="Cranfield's first N queries only, with the documents judged for them and every 10th other one"
        " (a subset that embeds in minutes; its figures are not the whole collection's)",
    )
    p.add_argument(
        "--lexical-only",
        action="store_true",
        help="quality: lexical search and the reference BM25 only, nothing embedded (seconds, not minutes)",
    )
    p.add_argument("--tune", action="store_true", help="also print the path/symbol column weight on the dev split")
    p.add_argument("--quick", action="store_true", help="small subsets: a smoke test, not figures")
    p.add_argument("--cold-embed", action="store_true", help="also embed the cold-indexed repository (minutes)")
    p.add_argument("--compare-unpaced", action="store_true", help="also measure searches behind unpaced groups")
    p.add_argument("--no-ask", action="store_true", help="skip the ask_knowledge citation check")
    p.add_argument("--ask-questions", type=int, default=8, help="test questions for the citation check")
    p.add_argument("--json", action="store_true", help="print every figure as JSON at the end")
    p.add_argument("--config", help="a caelum.toml whose hosts join the embedded ones (e.g. a GPU host)")
    p.add_argument("--embedding-model", default=MODEL, help=f"the embedding model measured (default {MODEL})")
    return p.parse_args(argv)


if __name__ == "__main__":
    random.seed(0)
    sys.setrecursionlimit(10_000)
    sys.exit(anyio.run(main, parse()))
