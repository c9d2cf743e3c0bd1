"""The run store: every workflow run and its steps, in SQLite under the supervisor's state folder.

A run row holds the workflow, the project, the status (``running``, ``passed``, ``failed``,
``cancelled``, ``interrupted``), when it started and ended, its inputs, the run it resumed, what its
model calls cost (from the ledger) and its summary. A step row holds the step's status
(``timed_out`` when it was stopped at its time limit), duration, finding count, error, a one-line
excerpt, the hash of its input (the step's rendered arguments and the project's content: the same
hash means the same work on the same files) and a reference to its whole output, a JSON file under
``outputs/<run>/<step>.json`` (secrets redacted).

Each write is its own committed transaction in WAL mode, so a server killed mid-run leaves the
steps that ended recorded and its run ``running``; :meth:`RunStore.mark_interrupted` (called when
the next server starts) marks such runs ``interrupted``, unless the process that owns the run is
still alive (two servers may share a data folder). Outputs beyond the newest
:data:`KEEP_OUTPUTS_OF` runs are deleted at start; their rows stay.

A store that SQLite cannot read (a corrupt or foreign file) never stops the server: it is moved
aside as ``runs.sqlite3.corrupt-<UTC time>`` (with its ``-wal``/``-shm`` files), a warning is
logged, an empty store is made in its place, and a notice saying where the old one went is kept in
the new store until a ``run_workflow`` result has shown it (:meth:`RunStore.take_notices`).

Each command a step starts is recorded while it runs (``step_processes``: its pid and start time),
so that a resumed run can first stop a step's earlier copy that is still alive
(:meth:`RunStore.live_processes`).
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from caelum_mcp.core.damaged import move_sqlite_aside
from caelum_mcp.core.types import Frozen

log = logging.getLogger(__name__)

RunStatus = Literal["running", "passed", "failed", "cancelled", "interrupted"]
StepStatus = Literal["running", "passed", "failed", "timed_out", "skipped", "cancelled", "interrupted"]
KEEP_OUTPUTS_OF = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    project TEXT NOT NULL,
    status TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    inputs TEXT NOT NULL,
    resumed_from TEXT,
    owner_pid INTEGER NOT NULL,
    owner_started REAL NOT NULL,
    model_calls INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    counterfactual_cost_usd REAL NOT NULL DEFAULT 0,
    summary TEXT
);
CREATE INDEX IF NOT EXISTS runs_started ON runs (started);
CREATE INDEX IF NOT EXISTS runs_project ON runs (project, started);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    position INTEGER NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    status TEXT NOT NULL,
    started REAL,
    seconds REAL,
    input_hash TEXT,
    findings INTEGER,
    error TEXT,
    excerpt TEXT,
    output_ref TEXT,
    reused_from TEXT,
    PRIMARY KEY (run_id, step)
);
CREATE INDEX IF NOT EXISTS steps_hash ON steps (step, input_hash);
CREATE TABLE IF NOT EXISTS step_processes (
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started REAL NOT NULL,
    PRIMARY KEY (run_id, step, pid, started)
);
CREATE TABLE IF NOT EXISTS notices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    text TEXT NOT NULL
);
"""
_MAX_TEXT = 500
# {where} is a clause of constant column names with bound values (see _where).
_FLAKY = """
    SELECT r.workflow, s.step, s.input_hash, sum(s.status = 'passed'), sum(s.status = 'failed'), max(s.started)
    FROM steps s JOIN runs r ON r.id = s.run_id
    {where} AND s.reused_from IS NULL AND s.input_hash IS NOT NULL
    GROUP BY r.workflow, s.step, s.input_hash
    HAVING sum(s.status = 'passed') > 0 AND sum(s.status = 'failed') > 0
    ORDER BY max(s.started) DESC LIMIT ?"""
_STATS = """
    SELECT r.workflow, s.step, count(*), sum(s.status != 'passed'), avg(s.seconds), max(s.seconds)
    FROM steps s JOIN runs r ON r.id = s.run_id
    {where} AND s.reused_from IS NULL AND s.status IN ('passed', 'failed', 'timed_out')
    GROUP BY r.workflow, s.step ORDER BY sum(s.status != 'passed') DESC, count(*) DESC LIMIT ?"""


class RunRecord(Frozen):
    id: str
    workflow: str
    project: str
    status: RunStatus
    started: float
    finished: float | None = None
    inputs: dict[str, Any] = {}
    resumed_from: str | None = None
    owner_pid: int = 0
    owner_started: float = 0.0
    model_calls: int = 0
    cost_usd: float = 0.0
    counterfactual_cost_usd: float = 0.0
    summary: str | None = None


class StepRecord(Frozen):
    step: str
    position: int
    kind: str
    target: str
    status: StepStatus
    started: float | None = None
    seconds: float | None = None
    input_hash: str | None = None
    findings: int | None = None
    error: str | None = None
    excerpt: str | None = None
    output_ref: str | None = None
    reused_from: str | None = None


class FlakyStep(Frozen):
    """A step that both passed and failed on the same input (same arguments, same files)."""

    workflow: str
    step: str
    input_hash: str
    passed: int
    failed: int
    last_seen: float


class StepStats(Frozen):
    workflow: str
    step: str
    runs: int
    failures: int
    mean_seconds: float | None
    max_seconds: float | None


class RunFilter(Frozen):
    project: str | None = None
    workflow: str | None = None
    status: RunStatus | None = None
    since: float | None = None
    until: float | None = None


class RunStore:
    """The runs database at ``state_dir/runs.sqlite3`` and the outputs folder beside it.

    With ``check`` (done once when the server starts) the whole file is read through
    (``PRAGMA quick_check``), so that damage inside it is found then, not in the middle of a run.
    A store that cannot be read is moved aside and replaced (see the module docstring).
    """

    def __init__(self, state_dir: Path, *, check: bool = False) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "runs.sqlite3"
        self.outputs = state_dir / "outputs"
        self._lock = threading.Lock()
        try:
            self._conn = self._open(check=check)
        except sqlite3.DatabaseError as exc:
            moved = self._move_aside()
            notice = (
                f"the workflow run store could not be read ({exc}); it was moved aside to {moved} and an empty "
                "one started: earlier runs are no longer in workflow_history or resumable (the old file is kept "
                "for inspection; delete it when you no longer need it)"
            )
            log.warning("%s", notice)
            self._conn = self._open(check=False)
            with self._db() as db:
                db.execute("INSERT INTO notices (at, text) VALUES (?, ?)", (time.time(), notice))

    def _open(self, *, check: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=5, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: a killed process loses nothing committed
            conn.executescript(_SCHEMA)
            if check:
                verdict = conn.execute("PRAGMA quick_check(1)").fetchone()
                if verdict is None or verdict[0] != "ok":
                    raise sqlite3.DatabaseError(f"damaged: {verdict[0] if verdict else 'no answer'}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _move_aside(self) -> Path:
        """Rename the store (and its WAL and shared-memory files) with a UTC time suffix; returns
        the new name of the store file."""
        return move_sqlite_aside(self.path)

    def take_notices(self) -> list[str]:
        """The notices not yet shown (a store moved aside), oldest first; they are removed."""
        with self._db() as db:
            rows = db.execute("SELECT id, text FROM notices ORDER BY id").fetchall()
            if rows:
                db.execute("DELETE FROM notices WHERE id <= ?", (rows[-1][0],))
        return [text for _, text in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._conn

    # runs ------------------------------------------------------------------------------------

    def start_run(self, run: RunRecord) -> None:
        with self._db() as db:
            db.execute(
                "INSERT INTO runs (id, workflow, project, status, started, inputs, resumed_from, owner_pid, "
                "owner_started) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.id,
                    run.workflow,
                    run.project,
                    run.status,
                    run.started,
                    json.dumps(run.inputs, default=str),
                    run.resumed_from,
                    run.owner_pid,
                    run.owner_started,
                ),
            )

    def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        *,
        model_calls: int = 0,
        cost_usd: float = 0.0,
        counterfactual_cost_usd: float = 0.0,
        summary: str | None = None,
    ) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE runs SET status = ?, finished = ?, model_calls = ?, cost_usd = ?, "
                "counterfactual_cost_usd = ?, summary = ? WHERE id = ?",
                (status, time.time(), model_calls, cost_usd, counterfactual_cost_usd, _cut(summary), run_id),
            )

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._db() as db:
            row = db.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()  # noqa: S608
        return _run(row) if row else None

    def find_runs(self, where: RunFilter, *, limit: int) -> list[RunRecord]:
        clause, params = _where(where)
        with self._db() as db:
            rows = db.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs r{clause} ORDER BY started DESC, rowid DESC LIMIT ?",  # noqa: S608
                (*params, limit),
            ).fetchall()
        return [_run(row) for row in rows]

    def count_runs(self, where: RunFilter) -> dict[str, int]:
        """Runs matching ``where``, by status."""
        clause, params = _where(where)
        with self._db() as db:
            rows = db.execute(f"SELECT status, count(*) FROM runs r{clause} GROUP BY status", params).fetchall()  # noqa: S608
        return {status: count for status, count in rows}

    def total_cost(self, where: RunFilter) -> tuple[float, float]:
        clause, params = _where(where)
        with self._db() as db:
            row = db.execute(
                f"SELECT total(cost_usd), total(counterfactual_cost_usd) FROM runs r{clause}",  # noqa: S608
                params,
            ).fetchone()
        return float(row[0]), float(row[1])

    def mark_interrupted(self, owner_alive: Callable[[int, float], bool]) -> list[str]:
        """Mark ``interrupted`` every run still ``running`` whose owning process is gone (and its
        running steps); returns their ids."""
        with self._db() as db:
            rows = db.execute("SELECT id, owner_pid, owner_started FROM runs WHERE status = 'running'").fetchall()
            dead = [run_id for run_id, pid, started in rows if not owner_alive(pid, started)]
            for run_id in dead:
                db.execute("UPDATE runs SET status = 'interrupted' WHERE id = ?", (run_id,))
                db.execute("UPDATE steps SET status = 'interrupted' WHERE run_id = ? AND status = 'running'", (run_id,))
        return dead

    def prune_outputs(self, keep: int = KEEP_OUTPUTS_OF) -> int:
        """Delete the output files of all but the newest ``keep`` runs; returns how many runs lost them."""
        with self._db() as db:
            old = [
                row[0]
                for row in db.execute("SELECT id FROM runs ORDER BY started DESC LIMIT -1 OFFSET ?", (keep,)).fetchall()
            ]
        removed = 0
        for run_id in old:
            folder = self.outputs / run_id
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    # steps -----------------------------------------------------------------------------------

    def put_step(self, run_id: str, step: StepRecord) -> None:
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO steps (run_id, step, position, kind, target, status, started, seconds, "
                "input_hash, findings, error, excerpt, output_ref, reused_from) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    step.step,
                    step.position,
                    step.kind,
                    step.target,
                    step.status,
                    step.started,
                    step.seconds,
                    step.input_hash,
                    step.findings,
                    _cut(step.error),
                    _cut(step.excerpt),
                    step.output_ref,
                    step.reused_from,
                ),
            )

    def steps_of(self, run_ids: Sequence[str]) -> dict[str, list[StepRecord]]:
        """The steps of each run, in the workflow's order."""
        found: dict[str, list[StepRecord]] = {run_id: [] for run_id in run_ids}
        if not run_ids:
            return found
        marks = ",".join("?" * len(run_ids))
        with self._db() as db:
            rows = db.execute(
                f"SELECT run_id, {_STEP_COLUMNS} FROM steps WHERE run_id IN ({marks}) ORDER BY position",  # noqa: S608
                tuple(run_ids),
            ).fetchall()
        for row in rows:
            found[row[0]].append(StepRecord.model_validate(dict(zip(_STEP_FIELDS, row[1:], strict=True))))
        return found

    def flaky_steps(self, where: RunFilter, *, limit: int) -> list[FlakyStep]:
        """Steps that passed and failed on the same input hash (reused results not counted)."""
        clause, params = _where(where)
        with self._db() as db:
            rows = db.execute(_FLAKY.format(where=clause), (*params, limit)).fetchall()
        return [
            FlakyStep(workflow=w, step=s, input_hash=h, passed=p, failed=f, last_seen=t or 0.0)
            for w, s, h, p, f, t in rows
        ]

    def step_stats(self, where: RunFilter, *, limit: int) -> list[StepStats]:
        """Per workflow step: how often it ran and failed, and how long it took (reused results not counted)."""
        clause, params = _where(where)
        with self._db() as db:
            rows = db.execute(_STATS.format(where=clause), (*params, limit)).fetchall()
        return [
            StepStats(workflow=w, step=s, runs=n, failures=f, mean_seconds=_round(mean), max_seconds=_round(top))
            for w, s, n, f, mean, top in rows
        ]

    # outputs ---------------------------------------------------------------------------------

    def output_ref(self, run_id: str, step: str) -> str:
        """Where :meth:`save_output` puts a step's output (a path relative to the store)."""
        return f"{self.outputs.name}/{run_id}/{step}.json"

    def save_output(self, run_id: str, step: str, output: Any) -> str:
        """Write a step's whole output; returns its reference. The file appears whole or not at all."""
        ref = self.output_ref(run_id, step)
        path = self.outputs.parent / ref
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        partial.write_text(json.dumps(output, default=str, separators=(",", ":")), encoding="utf-8")
        partial.replace(path)
        return ref

    def load_output(self, ref: str) -> Any:
        """A step output written by :meth:`save_output`; None when it was pruned or cannot be
        read (a damaged file is treated as gone: the step runs again rather than the call failing)."""
        path = (self.outputs.parent / ref).resolve()
        if not path.is_relative_to(self.outputs.resolve()) or not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            log.warning("workflow step output %s cannot be read; treated as pruned", path)
            return None

    # processes -------------------------------------------------------------------------------

    def add_process(self, run_id: str, step: str, pid: int, started: float) -> None:
        """Record a command a step started (its pid and its process's start time)."""
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO step_processes (run_id, step, pid, started) VALUES (?, ?, ?, ?)",
                (run_id, step, pid, started),
            )

    def drop_process(self, run_id: str, step: str, pid: int, started: float) -> None:
        """Forget a command that ended."""
        with self._db() as db:
            db.execute(
                "DELETE FROM step_processes WHERE run_id = ? AND step = ? AND pid = ? AND started = ?",
                (run_id, step, pid, started),
            )

    def live_processes(self, run_id: str) -> list[tuple[str, int, float]]:
        """The commands of ``run_id`` 's steps recorded as started and never seen to end:
        (step, pid, start time). Whether each still runs is for the caller to check."""
        with self._db() as db:
            rows = db.execute(
                "SELECT step, pid, started FROM step_processes WHERE run_id = ? ORDER BY step, pid", (run_id,)
            ).fetchall()
        return [(str(step), int(pid), float(started)) for step, pid, started in rows]


_RUN_FIELDS = (
    "id", "workflow", "project", "status", "started", "finished", "inputs", "resumed_from", "owner_pid",
    "owner_started", "model_calls", "cost_usd", "counterfactual_cost_usd", "summary",
)  # fmt: skip
_RUN_COLUMNS = ", ".join(_RUN_FIELDS)
_STEP_FIELDS = (
    "step", "position", "kind", "target", "status", "started", "seconds", "input_hash", "findings", "error",
    "excerpt", "output_ref", "reused_from",
)  # fmt: skip
_STEP_COLUMNS = ", ".join(_STEP_FIELDS)


def _run(row: Sequence[Any]) -> RunRecord:
    data = dict(zip(_RUN_FIELDS, row, strict=True))
    data["inputs"] = json.loads(data["inputs"] or "{}")
    return RunRecord.model_validate(data)


def _where(where: RunFilter) -> tuple[str, tuple[Any, ...]]:
    parts: list[str] = []
    params: list[Any] = []
    for column, value, op in (
        ("project", where.project, "="),
        ("workflow", where.workflow, "="),
        ("status", where.status, "="),
        ("started", where.since, ">="),
        ("started", where.until, "<"),
    ):
        if value is not None:
            parts.append(f"r.{column} {op} ?")
            params.append(value)
    return " WHERE " + " AND ".join(parts or ["1"]), tuple(params)


def _cut(text: str | None) -> str | None:
    return text if text is None or len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass(frozen=True)
class WorkflowState:
    """What the workflow supervisor's lifespan yields: where its run store lives. Each call opens
    its own connection (:meth:`store`; calls run in worker threads, a SQLite connection stays in one)."""

    state_dir: Path

    def store(self) -> RunStore:
        return RunStore(self.state_dir)
