"""The ledger's schema 6: the task kind of each call, running counts per (model, kind), and the
labelled outcomes ``caelum-mcp calibrate`` refits from; a version 5 file is migrated in place."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pydantic import ValidationError

from caelum_mcp.core.types import Usage
from caelum_mcp.engine.ledger import SCHEMA_VERSION, CalibrationLabel, KindFigures, Ledger, model_call_row
from caelum_mcp.engine.ledger.sqlite_schema import MIGRATIONS as _MIGRATIONS
from caelum_mcp.engine.ledger.sqlite_schema import statements as _statements


def answered(model: str = "qwen2.5-coder:1.5b", kind: str | None = "qa", path: str = "local") -> object:
    return model_call_row(
        task="delegate_task",
        path=path,  # type: ignore[arg-type]
        provider="openai" if path != "claude" else "anthropic",
        host="gpu-1" if path != "claude" else "claude",
        model=model,
        tier="small" if path != "claude" else None,
        usage=Usage(input_tokens=100, output_tokens=10),
        latency_ms=5.0,
        cost=0.0,
        counterfactual=0.001,
        kind=kind,
    )


def label(
    correct: bool | None, *, model: str = "qwen2.5-coder:1.5b", kind: str = "qa", ts: float = 1.0
) -> CalibrationLabel:
    return CalibrationLabel(
        ts=ts,
        model=model,
        kind=kind,
        signals={"valid": True, "repaired": False, "token_mean": 0.93, "samples": 0},
        label=correct,
        source="audit",
        claude_model="claude-sonnet-5-5",
        agreement={"agree": bool(correct), "differing": [] if correct else ["city"]},
    )


def scan(path: Path, threshold_hundredths: int) -> list[tuple[str, str, str, int, int, int]]:
    """The per-(model, kind) figures from a scan of every row: what the running counts must equal."""
    with sqlite3.connect(path) as raw:
        return raw.execute(
            "SELECT model, kind, outcome, count(*), count(confidence), "
            "coalesce(sum(CAST(confidence * 100 + 1e-6 AS INTEGER) >= ?), 0) FROM calls "
            "WHERE kind IS NOT NULL AND outcome != 'failed' AND tier IS NOT 'embedding' "
            "GROUP BY 1, 2, 3 ORDER BY count(*) DESC, 1, 2, 3",
            (threshold_hundredths,),
        ).fetchall()


def as_tuples(figures: list[KindFigures]) -> list[tuple[str, str, str, int, int, int]]:
    return [(f.model, f.kind, f.outcome, f.answers, f.scored, f.cleared) for f in figures]


def test_a_version_5_ledger_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with sqlite3.connect(path) as raw:  # what version 5 wrote: its schema and one call
        for version in range(1, 6):
            for statement in _statements(_MIGRATIONS[version]):
                raw.execute(statement)
        raw.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        raw.execute("INSERT INTO schema_version VALUES (5)")
        raw.execute(
            "INSERT INTO calls (ts, task, path, provider, host, model, tier, attempts, confidence, input_tokens, "
            "output_tokens, cache_read_tokens, cache_write_tokens, latency_ms, cost_usd, counterfactual_cost_usd, "
            "ok, error, outcome, call_id) VALUES (1.0, 'old', 'local', 'openai', 'gpu-1', 'm', 'small', 1, 0.9, "
            "10, 2, 0, 0, 3.0, 0, 0.0001, 1, NULL, 'local', NULL)"
        )
    assert SCHEMA_VERSION == 6
    with Ledger(path) as ledger:
        (old,) = ledger.recent(5)
        assert (old.task, old.model, old.kind) == ("old", "m", None)
        assert ledger.summary().calls == 1  # the totals of version 5 still hold it
        assert ledger.kind_figures(0.75) == []  # a row without a kind is in no kind's figures
        row = ledger.record(answered())
        ledger.annotate(row, confidence=0.8)
        assert as_tuples(ledger.kind_figures(0.75)) == [("qwen2.5-coder:1.5b", "qa", "local", 1, 1, 1)]
        ledger.add_label(label(True))
        assert [x.label for x in ledger.labels("qwen2.5-coder:1.5b", "qa")] == [True]
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(6,)]
        indexes = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "calibration_labels_pair" in indexes


def test_kind_counts_equal_a_scan_after_inserts_annotations_and_deletes(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        rows = []
        for i, confidence in enumerate([0.29, 0.75, 0.7499, 1.0, None, 0.5, 0.9]):
            rows.append(ledger.record(answered(kind=("qa", "sql")[i % 2])))
            if confidence is not None:
                ledger.annotate(rows[-1], confidence=confidence)
        ledger.record(answered(model="claude-sonnet-5-5", path="claude"))
        ledger.record(answered(kind=None))  # a call made outside any task kind
        ledger.record(answered(kind="qa").model_copy(update={"tier": "embedding"}))
        ledger.record(answered(kind="qa").model_copy(update={"path": "failed", "ok": False}))
        ledger.annotate(rows[0], confidence=0.95)  # annotated again: the count moves buckets
        for hundredths, threshold in ((75, 0.75), (29, 0.29), (30, 0.3), (0, 0.0), (100, 1.0)):
            assert as_tuples(ledger.kind_figures(threshold)) == scan(path, hundredths), threshold
        qa = next(f for f in ledger.kind_figures(0.75) if (f.model, f.kind) == ("qwen2.5-coder:1.5b", "qa"))
        assert (qa.answers, qa.scored, qa.cleared) == (4, 3, 2)  # 0.95, 0.7499, None, 0.9 -> 0.95 and 0.9
        with sqlite3.connect(path) as raw:  # e.g. a user pruning old rows by hand
            raw.execute("DELETE FROM calls WHERE id IN (?, ?)", (rows[0], rows[1]))
        assert as_tuples(ledger.kind_figures(0.75)) == scan(path, 75)
        claude = next(f for f in ledger.kind_figures(0.75) if f.outcome == "claude")
        assert (claude.model, claude.kind, claude.answers) == ("claude-sonnet-5-5", "qa", 1)


def test_labels_are_kept_per_pair_with_unknown_outcomes_apart(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        ledger.add_label(label(True, ts=3.0))
        ledger.add_label(label(False, ts=1.0))
        ledger.add_label(label(None, ts=2.0))  # Claude's reply could not be read: no label
        ledger.add_label(label(True, kind="sql"))
        ledger.add_label(label(False, model="qwen3:8b"))
        got = ledger.labels("qwen2.5-coder:1.5b", "qa")
        assert [(x.ts, x.label) for x in got] == [(1.0, False), (3.0, True)]  # oldest first, labelled only
        assert len(ledger.labels("qwen2.5-coder:1.5b", "qa", labelled_only=False)) == 3
        assert got[0].signals == {"valid": True, "repaired": False, "token_mean": 0.93, "samples": 0}
        assert got[0].agreement == {"agree": False, "differing": ["city"]}
        counts = {(c.model, c.kind): (c.rows, c.labelled, c.correct) for c in ledger.label_counts()}
        assert counts == {
            ("qwen2.5-coder:1.5b", "qa"): (3, 2, 1),
            ("qwen2.5-coder:1.5b", "sql"): (1, 1, 1),
            ("qwen3:8b", "qa"): (1, 1, 0),
        }


def test_a_label_holds_numbers_and_field_names_never_text() -> None:
    with pytest.raises(ValidationError, match="numbers and flags only"):
        CalibrationLabel(
            ts=1.0, model="m", kind="qa", signals={"valid": True, "answer": "Paris"}, label=True, source="audit"
        )
    with pytest.raises(ValidationError, match="field names"):
        CalibrationLabel(
            ts=1.0, model="m", kind="qa", signals={}, label=True, source="audit", agreement={"claude": "Paris"}
        )
    with pytest.raises(ValidationError):
        CalibrationLabel(ts=1.0, model="m", kind="qa", signals={}, label=True, source="guess")  # type: ignore[arg-type]
    long = CalibrationLabel(
        ts=1.0, model="m", kind="qa", signals={}, label=False, source="escalation",
        agreement={"differing": [f"field_{i}" * 20 for i in range(40)]},
    )  # fmt: skip
    assert long.agreement is not None
    assert len(long.agreement["differing"]) == 12 and all(len(n) <= 80 for n in long.agreement["differing"])


def test_the_per_kind_reads_never_scan_the_calls_or_the_labels_rows(tmp_path: Path) -> None:
    """pool_status and every dashboard snapshot read them: the running counts and the pair index only."""
    from caelum_mcp.engine.ledger.sqlite_sql import KIND_FIGURES as _KIND_FIGURES
    from caelum_mcp.engine.ledger.sqlite_sql import LABEL_COUNTS as _LABEL_COUNTS

    with Ledger(tmp_path / "ledger.db") as ledger:
        ledger.record(answered())
    with sqlite3.connect(tmp_path / "ledger.db") as raw:
        for sql, params in ((_KIND_FIGURES, (75,)), (_LABEL_COUNTS, ())):
            plan = [row[3] for row in raw.execute("EXPLAIN QUERY PLAN " + sql, params)]
            assert not [step for step in plan if "calls" in step.split()], plan
            assert not [step for step in plan if step.startswith("SCAN calibration_labels") and "COVERING" not in step]
