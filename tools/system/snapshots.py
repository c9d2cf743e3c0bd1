"""Earlier health readings, kept in SQLite, for trends ("disk / 71 % → 83 % since yesterday").

A snapshot is a set of named figures (``disk /.used_pct``, ``probe api.latency_ms``) at one time.
:class:`SnapshotStore` keeps at most one snapshot per :data:`MIN_GAP_S` (a burst of calls does not
fill the file) for :data:`KEEP_DAYS` days. :meth:`SnapshotStore.baseline` picks what to compare
with: the snapshot closest to 24 hours ago when there is one between 12 and 36 hours old ("since
yesterday"), else the oldest one at least an hour old ("since 3 h ago"). :func:`describe_trend`
says whether a figure moved enough to mention.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

MIN_GAP_S = 60.0
KEEP_DAYS = 30
_DAY = 86_400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (id INTEGER PRIMARY KEY, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS snapshots_at ON snapshots(at);
CREATE TABLE IF NOT EXISTS figures (
    snapshot INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (snapshot, name)
);
"""


@dataclass(frozen=True)
class Baseline:
    """An earlier snapshot: when, and its figures."""

    at: float
    figures: dict[str, float]

    def age_words(self, now: float) -> str:
        age = now - self.at
        if 12 * 3600 <= age <= 36 * 3600:
            return "since yesterday"
        if age >= 2 * _DAY:
            return f"since {age / _DAY:.0f} days ago"
        if age >= 3600:
            return f"since {age / 3600:.0f} h ago"
        return f"since {age / 60:.0f} min ago"


class SnapshotStore:
    """Snapshots in ``path`` (SQLite, WAL). Blocking: call from a worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with closing(self._connect()) as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=5)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def save(self, figures: dict[str, float], now: float | None = None) -> bool:
        """Keep ``figures`` as a snapshot, unless the last one is under :data:`MIN_GAP_S` old.
        Returns whether it was kept. Snapshots older than :data:`KEEP_DAYS` are dropped."""
        now = time.time() if now is None else now
        with closing(self._connect()) as db, db:
            last = db.execute("SELECT MAX(at) FROM snapshots").fetchone()[0]
            if last is not None and now - last < MIN_GAP_S:
                return False
            snapshot = db.execute("INSERT INTO snapshots(at) VALUES (?)", (now,)).lastrowid
            db.executemany(
                "INSERT INTO figures(snapshot, name, value) VALUES (?, ?, ?)",
                [(snapshot, name, float(value)) for name, value in figures.items()],
            )
            db.execute("DELETE FROM snapshots WHERE at < ?", (now - KEEP_DAYS * _DAY,))
        return True

    def baseline(self, now: float | None = None) -> Baseline | None:
        """The snapshot to compare with (see the module docstring), or None."""
        now = time.time() if now is None else now
        with closing(self._connect()) as db:
            row = db.execute(
                "SELECT id, at FROM snapshots WHERE at BETWEEN ? AND ? ORDER BY ABS(at - ?) LIMIT 1",
                (now - 36 * 3600, now - 12 * 3600, now - _DAY),
            ).fetchone()
            if row is None:
                row = db.execute(
                    "SELECT id, at FROM snapshots WHERE at <= ? ORDER BY at LIMIT 1", (now - 3600,)
                ).fetchone()
            if row is None:
                return None
            figures = dict(db.execute("SELECT name, value FROM figures WHERE snapshot = ?", (row[0],)).fetchall())
        return Baseline(at=row[1], figures=figures)


def describe_trend(name: str, before: float | None, now: float | None, words: str) -> str | None:
    """``"disk / 71% → 83% since yesterday"`` when a figure moved enough to matter, else None.

    Enough: 5 points for a percentage, 5 °C for a temperature, half again (and 50 ms) for a
    latency, any rise of an error count.
    """
    if before is None or now is None:
        return None
    label, _, figure = name.rpartition(".")
    if figure.endswith("_pct"):
        unit = "%"
        moved = abs(now - before) >= 5
    elif figure.endswith("_c"):
        unit = "°C"
        moved = abs(now - before) >= 5
    elif figure.endswith("_ms"):
        unit = " ms"
        moved = abs(now - before) >= 50 and (now >= 1.5 * before or before >= 1.5 * now)
    elif figure in ("errors", "drops"):
        return f"{label} {figure} +{now - before:.0f} {words}" if now > before else None
    else:
        return None
    if not moved:
        return None
    return f"{label} {before:.3g}{unit} → {now:.3g}{unit} {words}"
