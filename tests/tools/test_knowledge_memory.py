"""The note store on a real SQLite file: remember, recall (hybrid), forget leaves nothing behind,
and a process killed with SIGKILL in the middle of remembering never corrupts it."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caelum_mcp.tools.knowledge.memory import GLOBAL_SCOPE, MemoryStore
from caelum_mcp.tools.knowledge.ranking import fuse

PROJECT = "project:/work/app"


def vec(*weights: float) -> list[float]:
    return [*weights, *([0.0] * (4 - len(weights)))]


@pytest.fixture
def store(tmp_path: Path) -> MemoryStore:
    s = MemoryStore(tmp_path / "memory.sqlite3")
    yield s
    s.close()


def rows(path: Path, table: str) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def test_remember_recall_by_words_and_by_meaning(store: MemoryStore) -> None:
    port, _ = store.remember("The staging database listens on port 5433", ["db"], PROJECT, ("m", vec(1, 0)))
    deploy, _ = store.remember("Deploys go out on Tuesdays after the standup", [], GLOBAL_SCOPE, ("m", vec(0, 1)))
    store.remember("Unrelated note in another project", [], "project:/elsewhere", ("m", vec(1, 0)))
    by_words = store.recall("staging database port", [PROJECT, GLOBAL_SCOPE])
    assert [r.note.id for r in by_words][:1] == [port.id] and by_words[0].found_by == ("lexical",)
    # No shared word, but a vector close to the note's: found by meaning alone.
    by_meaning = store.recall(
        "which number does pre-prod sql use", [PROJECT, GLOBAL_SCOPE], query_vector=("m", vec(1, 0.1))
    )
    assert by_meaning[0].note.id == port.id and by_meaning[0].found_by == ("semantic",)
    assert all(r.note.scope in (PROJECT, GLOBAL_SCOPE) for r in by_meaning)
    assert [r.note.id for r in store.recall("deploys", [GLOBAL_SCOPE])] == [deploy.id]
    assert store.recall("staging", [PROJECT, GLOBAL_SCOPE], tags=["nope"]) == []


def test_candidates_are_the_two_rankings_recall_fuses_within_the_scopes(store: MemoryStore) -> None:
    port, _ = store.remember("The staging database listens on port 5433", [], PROJECT, ("m", vec(1, 0)))
    tagged, _ = store.remember("Backups run nightly", ["staging"], PROJECT, ("m", vec(0, 1)))
    other, _ = store.remember("staging staging staging", [], "project:/elsewhere", ("m", vec(1, 0)))
    lexical, semantic, _ = store.candidates("staging", [PROJECT], ("m", vec(1, 0.2)))
    # the tag weighs double: one word in the tags outranks one word in a longer text
    assert [i for i, _ in lexical] == [tagged.id, port.id] and lexical[0][1] > lexical[1][1] > 0
    assert [i for i, _ in semantic] == [port.id, tagged.id] and semantic[0][1] > 0.9 > semantic[1][1]
    assert other.id not in {i for i, _ in lexical + semantic}
    assert store.candidates("staging", [PROJECT])[1:] == ([], {})  # no query vector: no semantic ranking
    fused = fuse(lexical, semantic, lexical_weight=0.3)
    recalled = store.recall("staging", [PROJECT], query_vector=("m", vec(1, 0.2)), lexical_weight=0.3)
    assert [r.note.id for r in recalled] == [h.id for h in fused]


def test_feedback_ranks_by_the_query_moved_towards_its_nearest_notes(store: MemoryStore) -> None:
    # One note close to the question's wording (0.80) and one that sits among two others on the
    # same subject (0.78, and 0.75 and 0.70 beside it): the three nearest notes pull the query
    # towards that subject, so the second comes first; the cosine said is still to the query.
    near, _ = store.remember("Deploy windows are on Tuesdays", [], GLOBAL_SCOPE, ("m", vec(0.8, 0.6)))
    among, _ = store.remember("Staging runs on port 5433", [], GLOBAL_SCOPE, ("m", vec(0.78, 0, 0.626)))
    store.remember("Staging has its own Postgres", [], GLOBAL_SCOPE, ("m", vec(0.75, 0, 0.661)))
    store.remember("Staging data is reset nightly", [], GLOBAL_SCOPE, ("m", vec(0.7, 0, 0.714)))
    asked = ("m", vec(1.0))
    _, unmoved, _ = store.candidates("zzz", [GLOBAL_SCOPE], asked, feedback=0)
    _, moved, similarity = store.candidates("zzz", [GLOBAL_SCOPE], asked)
    assert [i for i, _ in unmoved][:2] == [near.id, among.id]
    assert moved[0][0] == among.id and [i for i, _ in moved].index(near.id) > 0
    assert similarity[near.id] == pytest.approx(0.8, abs=1e-6) and similarity[among.id] == pytest.approx(0.78, abs=1e-3)
    recalled = store.recall("zzz", [GLOBAL_SCOPE], query_vector=asked, limit=2)
    assert recalled[0].note.id == among.id and recalled[0].similarity == pytest.approx(0.78, abs=1e-3)
    # a query vector of another size than the stored ones: nothing to move towards, nothing ranked
    assert store.candidates("zzz", [GLOBAL_SCOPE], ("m", [1.0, 0.0]))[1] == []


def test_the_same_text_is_one_note_with_merged_tags(store: MemoryStore) -> None:
    first, new = store.remember("Use ruff, not flake8", ["lint"], GLOBAL_SCOPE)
    again, new_again = store.remember("Use ruff, not flake8", ["style"], GLOBAL_SCOPE)
    assert new and not new_again and first.id == again.id and again.tags == ("lint", "style")
    assert [r.note.id for r in store.recall("style", [GLOBAL_SCOPE])] == [first.id]  # tags are searchable
    with pytest.raises(ValueError, match="at most"):
        store.remember("x" * 5000, [], GLOBAL_SCOPE)


def test_forget_removes_the_text_its_fts_row_and_its_vector(store: MemoryStore) -> None:
    kept, _ = store.remember("Keep this note about caching", [], GLOBAL_SCOPE, ("m", vec(0, 1)))
    gone, _ = store.remember("The API key rotates every 90 days", [], GLOBAL_SCOPE, ("m", vec(1, 0)))
    matched = store.matching("api key rotates", [GLOBAL_SCOPE])
    assert matched == [gone.id]
    assert store.forget(matched) == [gone.id]
    after = store.recall("API key rotates", [GLOBAL_SCOPE], query_vector=("m", vec(1, 0)))
    assert [r.note.id for r in after] == [kept.id]  # only the other note, found by its vector alone
    assert rows(store.path, "notes") == 1 and rows(store.path, "notes_fts") == 1
    assert rows(store.path, "note_vectors") == 1
    assert store.forget([gone.id]) == []


def test_list_pages_newest_first_and_backfills_nothing_by_itself(store: MemoryStore) -> None:
    for i in range(5):
        store.remember(f"note number {i}", ["n"], GLOBAL_SCOPE)
        time.sleep(0.001)
    first = store.recent([GLOBAL_SCOPE], limit=2)
    second = store.recent([GLOBAL_SCOPE], limit=2, offset=2)
    assert [n.text for n in first + second] == [f"note number {i}" for i in (4, 3, 2, 1)]
    assert store.count([GLOBAL_SCOPE]) == 5
    assert len(store.missing_vectors("m", [GLOBAL_SCOPE])) == 5


WRITER = """
import sys
from pathlib import Path
from caelum_mcp.tools.knowledge.memory import MemoryStore
store = MemoryStore(Path(sys.argv[1]))
i = 0
while True:
    store.remember(f"note {i} " + "words " * 50, ["t"], "global", ("m", [float(i)] * 384))
    i += 1
    if i == 20:
        print("ready", flush=True)
"""


@pytest.mark.slow
def test_a_kill_9_while_remembering_never_corrupts_the_store(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite3"
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.05 * (round_ + 1))  # kill at different points of a write
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            notes = db.execute("SELECT COUNT(*) FROM notes").fetchone()[0]
            assert db.execute("SELECT COUNT(*) FROM notes_fts").fetchone()[0] == notes
            assert db.execute("SELECT COUNT(*) FROM note_vectors").fetchone()[0] == notes
            orphans = db.execute(
                "SELECT COUNT(*) FROM note_vectors v LEFT JOIN notes n ON n.id = v.note_id WHERE n.id IS NULL"
            ).fetchone()[0]
            assert orphans == 0 and notes >= 20
    store = MemoryStore(path)
    try:
        assert store.recall("note 3", [GLOBAL_SCOPE])  # still readable and searchable
    finally:
        store.close()
