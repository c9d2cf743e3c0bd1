"""Notes kept across sessions, per project or global, found again by hybrid search.

One SQLite file (WAL) holds every note: its text, tags and scope (``global``, or a project's
resolved path), its FTS5 row and, when an embedding model was up, its vector. A note, its FTS row
and its vector are written in one transaction and removed in one, so a process killed mid-write
(``kill -9``) leaves either the whole note or none of it, and a forgotten note leaves nothing
behind. Notes without a vector for the current model (written while none was up, or under another
model) get one on the next recall.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .ranking import FusedHit, fuse
from .terms import FTS_TOKENIZER, fts_query, index_text, query_terms
from .vectors import cosine_top, unit

GLOBAL_SCOPE = "global"
MAX_NOTE_CHARS = 4000
# Notes are recalled mostly by meaning: a note is short and a paraphrase shares few of its words.
# Chosen on the dev third of bench/knowledge.py's 100 paraphrased queries (recall@5 0.88 for every
# weight from 0 to 0.3, falling above): the largest of those, to keep exact words (a port, a name) in play.
# With the feedback below, dev gives 0.91 at 0 and 0.88 from 0.1 to 0.3: one query of 34, on a set
# with no exact-word query, so the weight stays.
MEMORY_LEXICAL_WEIGHT = 0.3
# Pseudo-relevance feedback on the vectors (Rocchio): before the notes are ranked by cosine, the
# query's vector is moved towards the mean of its MEMORY_FEEDBACK_NOTES nearest notes, by
# MEMORY_FEEDBACK_WEIGHT. A paraphrase lands near notes about the same thing; their mean is closer to
# the wording notes use than the question is. Chosen on dev splits (bench/knowledge.py, memory): on
# the memory dev third recall@5 0.88 with or without it at the weight above (test 0.955 against
# 0.939); on Cranfield's dev queries (60-query subset) cosine nDCG@10 0.683 against 0.623 (test
# 0.615 against 0.592), the best of a in {0.25, 0.5, 1} and k in {3, 5} on both.
MEMORY_FEEDBACK_WEIGHT = 0.5
MEMORY_FEEDBACK_NOTES = 3

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS notes (
    id INTEGER PRIMARY KEY, scope TEXT NOT NULL, text TEXT NOT NULL, tags TEXT NOT NULL, created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS notes_by_scope ON notes (scope);
CREATE VIRTUAL TABLE IF NOT EXISTS notes_fts USING fts5 (body, tags, tokenize="{FTS_TOKENIZER}");
CREATE TABLE IF NOT EXISTS note_vectors (
    note_id INTEGER NOT NULL, model TEXT NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (note_id, model)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Note:
    id: int
    scope: str
    text: str
    tags: tuple[str, ...]
    created: float


@dataclass(frozen=True)
class RecalledNote:
    note: Note
    score: float
    found_by: tuple[str, ...]
    similarity: float | None = None  # cosine to the query, when it was embedded


class MemoryStore:
    """Every note, in one SQLite file; thread-safe, synchronous (call through a worker thread)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.RLock()
        try:
            self._db.execute("PRAGMA journal_mode=WAL")  # the first read: a file that is no database fails here
            self._db.execute("PRAGMA synchronous=FULL")  # a remembered note survives a power cut too
            with self._lock:
                self._db.executescript(_SCHEMA)
        except BaseException:
            self._db.close()  # the caller may move the file aside: nothing of ours holds it open
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # writing ---------------------------------------------------------------------------------

    def remember(
        self, text: str, tags: Sequence[str], scope: str, vector: tuple[str, Sequence[float]] | None = None
    ) -> tuple[Note, bool]:
        """Store a note (with its vector as (model, vector), if any). The same text in the same scope
        is stored once: returns the note and whether it is new (its tags are merged)."""
        text = text.strip()
        if not text:
            raise ValueError("a note needs some text")
        if len(text) > MAX_NOTE_CHARS:
            raise ValueError(f"a note holds at most {MAX_NOTE_CHARS} characters; this one has {len(text)}")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT id, tags FROM notes WHERE scope = ? AND text = ?", (scope, text)
                ).fetchone()
                if row is not None:
                    merged = tuple(dict.fromkeys([*json.loads(row[1]), *tags]))
                    self._db.execute("UPDATE notes SET tags = ? WHERE id = ?", (json.dumps(merged), row[0]))
                    self._db.execute(
                        "UPDATE notes_fts SET tags = ? WHERE rowid = ?", (index_text(" ".join(merged)), row[0])
                    )
                    note_id, is_new = int(row[0]), False
                else:
                    cur = self._db.execute(
                        "INSERT INTO notes (scope, text, tags, created) VALUES (?, ?, ?, ?)",
                        (scope, text, json.dumps(list(tags)), time.time()),
                    )
                    note_id, is_new = int(cur.lastrowid or 0), True
                    self._db.execute(
                        "INSERT INTO notes_fts (rowid, body, tags) VALUES (?, ?, ?)",
                        (note_id, index_text(text), index_text(" ".join(tags))),
                    )
                if vector is not None:
                    self._put_vector(note_id, *vector)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            note = self._get(note_id)
        assert note is not None
        return note, is_new

    def forget(self, ids: Sequence[int]) -> list[int]:
        """Remove the notes ``ids`` with their FTS rows and vectors; returns the ids that existed."""
        removed: list[int] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for note_id in ids:
                    if self._db.execute("DELETE FROM notes WHERE id = ?", (note_id,)).rowcount:
                        removed.append(note_id)
                    self._db.execute("DELETE FROM notes_fts WHERE rowid = ?", (note_id,))
                    self._db.execute("DELETE FROM note_vectors WHERE note_id = ?", (note_id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return removed

    def put_vectors(self, model: str, items: Sequence[tuple[int, Sequence[float]]]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for note_id, vector in items:
                    self._put_vector(note_id, model, vector)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _put_vector(self, note_id: int, model: str, vector: Sequence[float]) -> None:
        import numpy as np  # on first use: the server starts without numpy

        self._db.execute(
            "INSERT OR REPLACE INTO note_vectors (note_id, model, vector) VALUES (?, ?, ?)",
            (note_id, model, np.asarray(vector, dtype=np.float32).tobytes()),
        )

    # reading ---------------------------------------------------------------------------------

    def _get(self, note_id: int) -> Note | None:
        notes = self.get([note_id])
        return notes[0] if notes else None

    def get(self, ids: Sequence[int]) -> list[Note]:
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, scope, text, tags, created FROM notes WHERE id IN ({marks})",  # noqa: S608
                list(ids),
            ).fetchall()
        by_id = {int(r[0]): Note(int(r[0]), r[1], r[2], tuple(json.loads(r[3])), float(r[4])) for r in rows}
        return [by_id[i] for i in ids if i in by_id]

    def recent(
        self, scopes: Sequence[str], tags: Sequence[str] = (), *, limit: int = 20, offset: int = 0
    ) -> list[Note]:
        """Notes in ``scopes`` (newest first) carrying every tag in ``tags``."""
        marks = ",".join("?" * len(scopes))
        with self._lock:
            rows = self._db.execute(
                f"SELECT id FROM notes WHERE scope IN ({marks}) ORDER BY created DESC, id DESC",  # noqa: S608
                list(scopes),
            ).fetchall()
        notes = self.get([int(r[0]) for r in rows])
        if tags:
            notes = [n for n in notes if set(tags) <= set(n.tags)]
        return notes[offset : offset + limit]

    def count(self, scopes: Sequence[str]) -> int:
        marks = ",".join("?" * len(scopes))
        with self._lock:
            row = self._db.execute(f"SELECT COUNT(*) FROM notes WHERE scope IN ({marks})", list(scopes)).fetchone()  # noqa: S608
        return int(row[0])

    def missing_vectors(self, model: str, scopes: Sequence[str]) -> list[Note]:
        marks = ",".join("?" * len(scopes))
        with self._lock:
            rows = self._db.execute(
                f"SELECT n.id FROM notes n LEFT JOIN note_vectors v ON v.note_id = n.id AND v.model = ? "  # noqa: S608
                f"WHERE v.note_id IS NULL AND n.scope IN ({marks})",
                [model, *scopes],
            ).fetchall()
        return self.get([int(r[0]) for r in rows])

    def matching(self, query: str, scopes: Sequence[str], *, require_all: bool = True, limit: int = 50) -> list[int]:
        """Ids of notes in ``scopes`` whose text or tags hold every term of ``query`` (or any)."""
        terms = query_terms(query)
        if not terms:
            return []
        marks = ",".join("?" * len(scopes))
        with self._lock:
            rows = self._db.execute(
                f"SELECT f.rowid, bm25(notes_fts) AS s FROM notes_fts f JOIN notes n ON n.id = f.rowid "  # noqa: S608
                f"WHERE notes_fts MATCH ? AND n.scope IN ({marks}) ORDER BY s LIMIT ?",
                [fts_query(terms, require_all=require_all), *scopes, limit],
            ).fetchall()
        return [int(r[0]) for r in rows]

    def candidates(
        self,
        query: str,
        scopes: Sequence[str],
        query_vector: tuple[str, Sequence[float]] | None = None,
        *,
        feedback: float = MEMORY_FEEDBACK_WEIGHT,
        feedback_notes: int = MEMORY_FEEDBACK_NOTES,
    ) -> tuple[list[tuple[int, float]], list[tuple[int, float]], dict[int, float]]:
        """What :meth:`recall` fuses: the notes in ``scopes`` ranked by BM25 over text and tags (tags
        weigh double) and, when ``query_vector`` (model, vector) is given, by cosine similarity to
        that vector moved ``feedback`` of the way towards its ``feedback_notes`` nearest notes (0:
        not moved); each a list of (note id, score), best first, at most 200 long. Third: each ranked
        note's cosine to ``query_vector`` itself, as said to a caller."""
        import numpy as np  # on first use: the server starts without numpy

        terms = query_terms(query)
        marks = ",".join("?" * len(scopes))
        lexical: list[tuple[int, float]] = []
        if terms:
            with self._lock:
                rows = self._db.execute(
                    f"SELECT f.rowid, bm25(notes_fts, 1.0, 2.0) AS s FROM notes_fts f JOIN notes n ON n.id = f.rowid "  # noqa: S608
                    f"WHERE notes_fts MATCH ? AND n.scope IN ({marks}) ORDER BY s LIMIT 200",
                    [fts_query(terms), *scopes],
                ).fetchall()
            lexical = [(int(i), -float(s)) for i, s in rows]
        semantic: list[tuple[int, float]] = []
        similarity: dict[int, float] = {}
        if query_vector is not None:
            model, vector = query_vector
            with self._lock:
                rows = self._db.execute(
                    f"SELECT v.note_id, v.vector FROM note_vectors v JOIN notes n ON n.id = v.note_id "  # noqa: S608
                    f"WHERE v.model = ? AND n.scope IN ({marks})",
                    [model, *scopes],
                ).fetchall()
            if rows:
                ids = [int(r[0]) for r in rows]
                matrix = np.vstack([unit(np.frombuffer(r[1], dtype=np.float32)) for r in rows])
                asked = unit(vector)
                moved = asked
                if feedback > 0 and feedback_notes > 0:
                    nearest = [row for row, _ in cosine_top(matrix, asked, feedback_notes)]
                    if nearest:  # none when the stored vectors are not the query's size
                        moved = unit(asked + feedback * matrix[nearest].mean(axis=0))
                ranked = cosine_top(matrix, moved, 200)
                semantic = [(ids[row], s) for row, s in ranked]
                if ranked:
                    cosines = matrix[[row for row, _ in ranked]] @ asked
                    similarity = {ids[row]: float(c) for (row, _), c in zip(ranked, cosines, strict=True)}
        return lexical, semantic, similarity

    def recall(
        self,
        query: str,
        scopes: Sequence[str],
        tags: Sequence[str] = (),
        *,
        limit: int = 5,
        query_vector: tuple[str, Sequence[float]] | None = None,
        lexical_weight: float = MEMORY_LEXICAL_WEIGHT,
    ) -> list[RecalledNote]:
        """The notes in ``scopes`` (with every tag in ``tags``) that best match ``query``, fusing BM25
        with cosine similarity when ``query_vector`` (model, vector) is given (the vector moved by
        pseudo-relevance feedback first, see :meth:`candidates`; ``similarity`` is the cosine to the
        vector as given)."""
        lexical, semantic, similarity = self.candidates(query, scopes, query_vector)
        hits: list[FusedHit] = fuse(lexical, semantic, lexical_weight=lexical_weight)
        notes = {n.id: n for n in self.get([h.id for h in hits])}
        out: list[RecalledNote] = []
        for hit in hits:
            note = notes.get(hit.id)
            if note is None or (tags and not set(tags) <= set(note.tags)):
                continue
            cosine = round(similarity[hit.id], 3) if hit.id in similarity else None
            out.append(RecalledNote(note, round(hit.score, 4), hit.found_by, cosine))
            if len(out) >= limit:
                break
        return out
