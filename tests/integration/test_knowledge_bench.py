"""bench/knowledge.py's data and metrics: the gold spans point at what they name, the Cranfield
files parse to the collection's known sizes, and nDCG/recall are computed as defined."""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "knowledge.py"
DATA = BENCH.parent / "data" / "knowledge"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_knowledge", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # importing the benchmark imports the whole server
def test_ndcg_and_recall_at_10(bench: ModuleType) -> None:
    assert bench.ndcg_recall([1.0, 0.0, 1.0], 2) == pytest.approx(((1 + 1 / 2) / (1 + 1 / 1.5849625), 1.0))
    assert bench.ndcg_recall([0.0] * 10 + [1.0], 1) == (0.0, 0.0)  # past the cut-off
    assert bench.ndcg_recall([], 0) == (0.0, 0.0)


@pytest.mark.slow
def test_cranfield_parses_to_the_collection_sizes(bench: ModuleType) -> None:
    docs, queries, qrels = bench.load_cranfield(DATA / "cranfield")
    assert len(docs) == 1400 and len(queries) == 225
    assert len(qrels) == 225 and all(qrels.values())
    assert docs["1"].startswith("experimental investigation of the aerodynamics of a wing in a slipstream")
    assert queries[0].startswith("what similarity laws must be obeyed")
    assert "cran/0184.txt" in qrels["1"]


def test_every_gold_span_is_the_symbol_or_heading_it_names() -> None:
    doc = json.loads((DATA / "code_questions.json").read_text())
    questions = doc["questions"]
    assert len(questions) >= 40 and {q["split"] for q in questions} == {"dev", "test"}
    with tarfile.open(DATA / "starlette.tar.gz") as tar:
        files = {
            m.name: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile() and m.name.endswith((".py", ".md"))
        }
    for q in questions:
        for gold in q["gold"]:
            lines = files[gold["path"]].splitlines()
            first, last = lines[gold["start"] - 1], lines[gold["end"] - 1]
            name = gold["symbol"].rsplit(".", 1)[-1]
            if gold["path"].endswith(".md"):
                assert first.lstrip("#").strip() == gold["symbol"], (q["id"], first)
            else:
                assert f"def {name}" in first or f"class {name}" in first or first.lstrip().startswith("@"), q["id"]
                assert last.strip(), q["id"]
                ast.parse(io.StringIO("\n".join(lines)).read())  # the file parses


@pytest.mark.slow
@pytest.mark.model
def test_an_embedding_model_nobody_serves_is_named_before_anything_runs(tmp_path: Path) -> None:
    """`--embedding-model` (with `--config` for a GPU host) measures another model; one that no
    host serves ends the run at once, naming what is served."""
    import subprocess

    done = subprocess.run(
        [sys.executable, str(BENCH), "--cache", str(tmp_path), "--only", "memory", "--embedding-model", "nosuch"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "no host serves the embedding model 'nosuch'" in done.stderr and "all-minilm" in done.stderr
    assert not (tmp_path / "memory-bench.sqlite3").exists()


@pytest.mark.slow
def test_a_partial_copy_keeps_the_vectors_the_background_task_embeds_first(bench: ModuleType, tmp_path: Path) -> None:
    from caelum_mcp.tools.knowledge.chunking import Chunk
    from caelum_mcp.tools.knowledge.store import FileState, KnowledgeStore, NewChunk

    store = KnowledgeStore(tmp_path / "full.sqlite3")
    for n in range(10):
        chunk = Chunk(f"d{n}.txt", 1, 1, "", "paragraph", f"text {n}")
        store.replace_file(chunk.path, FileState(f"h{n}", 6, 0), [NewChunk(chunk, f"e{n}")])
    store.put_vectors(bench.MODEL, [(f"e{n}", [1.0, float(n)]) for n in range(10)])
    part = bench.partial_copy(store, 0.3, tmp_path / "part.sqlite3")
    assert [h for h, _ in part.missing_vectors(bench.MODEL)] == [f"e{n}" for n in range(3, 10)]
    assert store.vector_models() == {bench.MODEL: 10}  # the original keeps every vector
    part.close()
    store.close()


@pytest.mark.slow
def test_the_coverage_chosen_is_where_fusion_stays_at_least_lexical_on_every_set(bench: ModuleType) -> None:
    def rows(fused: list[float]) -> dict[str, object]:
        return {"lexical": {"dev": 0.5}, **{f"{s:.2f}": {"fused dev": f} for s, f in zip(shares, fused, strict=True)}}

    shares = [0.1, 0.5, 0.9, 1.0]
    assert bench.chosen_coverage({"a": rows([0.4, 0.5, 0.6, 0.6]), "b": rows([0.6, 0.6, 0.6, 0.6])}, shares) == 0.5
    assert bench.chosen_coverage({"a": rows([0.6, 0.4, 0.6, 0.6])}, shares) == 0.9  # every higher share too
    assert bench.chosen_coverage({"a": rows([0.6, 0.6, 0.4, 0.6])}, shares) == 1.0
    # with every vector built, the fusion weight decides: that row does not move the threshold
    assert bench.chosen_coverage({"a": rows([0.6, 0.6, 0.6, 0.4])}, shares) == 0.1
