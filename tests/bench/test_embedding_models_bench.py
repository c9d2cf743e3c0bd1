"""bench/embedding_models.py's scoring: nDCG@10 and the Cranfield subset it embeds."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "embedding_models.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("embedding_models_bench_under_test", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = load_bench()
ndcg_at_10 = bench.ndcg_at_10
load_cranfield = bench.load_cranfield


def test_ndcg_at_10_counts_only_the_first_ten_and_is_one_for_an_ideal_ranking() -> None:
    assert ndcg_at_10(["a", "b", "x"], {"a", "b"}) == 1.0
    assert ndcg_at_10(["x", "a"], {"a"}) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_10([f"x{i}" for i in range(10)] + ["a"], {"a"}) == 0.0
    assert ndcg_at_10(["a"], set()) == 0.0


def test_the_cranfield_subset_keeps_every_judged_abstract_of_the_kept_queries() -> None:
    docs, queries, qrels = load_cranfield(5, 100)
    assert len(queries) == 5 and set(qrels) <= set(range(5)) and qrels[0]
    judged = set().union(*qrels.values())
    assert judged <= set(docs) and len(docs) > len(judged)  # plus every 100th other abstract
    assert "0184" in qrels[0]  # cranqrel's first line: query 1 judges abstract 184
    assert all(text.strip() for text in docs.values())


def test_an_unknown_model_is_refused() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--models", "bert-huge", "--cranfield-queries", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0 and "unknown model 'bert-huge'" in proc.stderr
