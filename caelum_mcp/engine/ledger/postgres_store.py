"""The ledger in a PostgreSQL database that several servers share (``[ledger] url``): one set of
rows, one daily Claude budget, one dashboard history for every server that names the same database.

Every write is committed before it returns (PostgreSQL's default ``synchronous_commit``: the
commit waits for its WAL to reach the disk), so a server killed right after ``record`` returns
loses nothing. A budget reservation runs in one transaction under a transaction-scoped advisory
lock (``pg_advisory_xact_lock``) taken before the day's spend and the live reservations are read
(in one statement, one snapshot), so no two servers can both take the last dollar; a reservation
carries its deadline and stops counting after it, so a server killed mid-call holds nothing past
it. Settling writes the row and removes the reservation in one transaction. The running totals of
``pool_status`` are kept by a trigger in the same transaction as each row.
"""

from __future__ import annotations

import uuid
from typing import Any

from caelum_mcp.core.errors import ConfigError
from caelum_mcp.core.llm import CallCost
from caelum_mcp.engine.ledger import postgres_sql as sql
from caelum_mcp.engine.ledger.models import (
    MAX_ERROR_CHARS,
    MONEY_EPSILON,
    BudgetFigures,
    CalibrationLabel,
    ExecutionPath,
    KindFigures,
    LabelCounts,
    LedgerEntry,
    LedgerSummary,
    Reservation,
    ToolCallRecord,
)
from caelum_mcp.engine.ledger.postgres_conn import PgConnection
from caelum_mcp.engine.ledger.postgres_schema import BUDGET_LOCK, MIGRATION_LOCK, MIGRATIONS, SCHEMA_VERSION
from caelum_mcp.engine.ledger.store import (
    HistoryStore,
    SummaryRows,
    call_cost_of,
    entry_of,
    entry_values,
    kind_figures_of,
    label_of,
    label_values,
    tool_call_of,
)


def _one(row: Any) -> Any:
    assert row is not None  # an aggregate or RETURNING always yields a row
    return row


class PostgresStore:
    """The ledger in the database at ``url`` (its tables created, or migrated, when opened)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._db = PgConnection(url)
        try:
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    @property
    def location(self) -> str:
        return self._db.location

    def _migrate(self) -> None:
        with self._db.use() as conn, conn.transaction():
            # Servers starting at once: the first migrates, the others wait and find it done.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
            current = int(_one(conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone())[0])
            if current > SCHEMA_VERSION:
                raise ConfigError(
                    f"the cost ledger {self.location} has schema version {current}, written by a newer "
                    f"caelum-mcp (this one knows up to {SCHEMA_VERSION}); upgrade caelum-mcp on every server "
                    "sharing it, or point [ledger] url at another database"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                conn.execute(MIGRATIONS[version])
            if current < SCHEMA_VERSION:
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))

    @staticmethod
    def _values(entry: LedgerEntry) -> list[Any]:
        return entry_values(entry, entry.error[:MAX_ERROR_CHARS] if entry.error else entry.error)

    def insert(self, entry: LedgerEntry) -> int:
        with self._db.use() as conn:
            return int(_one(conn.execute(sql.INSERT, self._values(entry)).fetchone())[0])

    def annotate(self, row_id: int, confidence: float | None, path: ExecutionPath | None) -> None:
        with self._db.use() as conn:
            conn.execute(
                "UPDATE calls SET confidence = coalesce(%s, confidence), path = coalesce(%s, path) WHERE id = %s",
                (confidence, path, row_id),
            )

    def reserve(
        self, amount_usd: float, *, limit_usd: float | None, ttl_s: float, now: float, day: tuple[float, float]
    ) -> tuple[Reservation | None, BudgetFigures]:
        with self._db.use() as conn, conn.transaction():
            # Held to the commit: every other reservation, from any server, waits here, and reads
            # after this one's row is visible (each statement of a READ COMMITTED transaction reads
            # what was committed before it started).
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (BUDGET_LOCK,))
            conn.execute("DELETE FROM reservations WHERE expires <= %s", (now,))
            spent, reserved = _one(conn.execute(sql.BUDGET, (*day, now)).fetchone())
            figures = BudgetFigures(spent_usd=float(spent), reserved_usd=float(reserved))
            if limit_usd is not None and figures.spent_usd + figures.reserved_usd + amount_usd > (
                limit_usd + MONEY_EPSILON
            ):
                return None, figures  # committed: the expired rows stay deleted
            reservation = Reservation(id=uuid.uuid4().hex, amount_usd=amount_usd, expires=now + ttl_s)
            conn.execute(
                "INSERT INTO reservations (id, created, expires, amount_usd) VALUES (%s, %s, %s, %s)",
                (reservation.id, now, reservation.expires, amount_usd),
            )
        return reservation, figures

    def settle(self, reservation_id: str, entry: LedgerEntry | None) -> int | None:
        with self._db.use() as conn, conn.transaction():
            rowid = None if entry is None else int(_one(conn.execute(sql.INSERT, self._values(entry)).fetchone())[0])
            conn.execute("DELETE FROM reservations WHERE id = %s", (reservation_id,))
        return rowid

    def budget_figures(self, now: float, day: tuple[float, float]) -> BudgetFigures:
        with self._db.use() as conn:
            spent, reserved = _one(conn.execute(sql.BUDGET, (*day, now)).fetchone())
        return BudgetFigures(spent_usd=float(spent), reserved_usd=float(reserved))

    def spend_between(self, start: float, end: float) -> float:
        with self._db.use() as conn:
            return float(_one(conn.execute(sql.SPEND_BETWEEN, (start, end)).fetchone())[0])

    def summary(self, since: float | None, day: tuple[float, float]) -> LedgerSummary:
        params: tuple[float, ...] = (since,) if since is not None else ()
        totals_sql, by_model_sql, by_host_sql, embedding_sql, tool_calls_sql = sql.SUMMARY_QUERIES[since is not None]
        with self._db.use() as conn, conn.transaction():
            # One snapshot for every figure, as SQLite's read transaction gives.
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            rows = SummaryRows(
                totals=_one(conn.execute(totals_sql, params).fetchone()),
                models=conn.execute(by_model_sql, params).fetchall(),
                hosts=conn.execute(by_host_sql, params).fetchall(),
                embedding=_one(conn.execute(embedding_sql, params).fetchone()),
                tool_calls=int(_one(conn.execute(tool_calls_sql, params).fetchone())[0]),
                today=float(_one(conn.execute(sql.SPEND_BETWEEN, day).fetchone())[0]),
            )
        return rows.summary(since)

    def start_tool_call(self, call_id: str, tool: str, parent_id: str | None, started: float) -> None:
        with self._db.use() as conn:
            conn.execute(sql.START_TOOL_CALL, (call_id, parent_id, tool, started))

    def finish_tool_call(self, call_id: str, seconds: float, outcome: str, error: str | None) -> None:
        with self._db.use() as conn:
            conn.execute(
                "UPDATE tool_calls SET seconds = %s, outcome = %s, error = %s WHERE id = %s",
                (seconds, outcome, error, call_id),
            )

    def tool_calls(self, parent_id: str | None, limit: int) -> list[ToolCallRecord]:
        with self._db.use() as conn:
            rows = conn.execute(
                sql.SELECT_TOOL_CALL + " WHERE parent_id IS NOT DISTINCT FROM %s ORDER BY started DESC, seq DESC "
                "LIMIT %s",
                (parent_id, limit),
            ).fetchall()
        return [tool_call_of(row) for row in rows]

    def call_cost(self, call_id: str) -> CallCost:
        with self._db.use() as conn:
            return call_cost_of(_one(conn.execute(sql.CALL_TREE_COST, (call_id,)).fetchone()))

    def recent(self, limit: int) -> list[LedgerEntry]:
        with self._db.use() as conn:
            rows = conn.execute(sql.SELECT_RECENT, (limit,)).fetchall()
        return [entry_of(row) for row in rows]

    def kind_figures(self, bucket: int) -> list[KindFigures]:
        with self._db.use() as conn:
            return kind_figures_of(conn.execute(sql.KIND_FIGURES, (bucket,)).fetchall())

    def add_label(self, label: CalibrationLabel) -> int:
        with self._db.use() as conn:
            row = conn.execute(
                "INSERT INTO calibration_labels (ts, model, kind, signals, label, source, claude_model, agreement) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                label_values(label),
            ).fetchone()
        return int(_one(row)[0])

    def labels(self, model: str, kind: str, labelled_only: bool) -> list[CalibrationLabel]:
        query = sql.SELECT_LABELS.format(labelled="AND label IS NOT NULL" if labelled_only else "")
        with self._db.use() as conn:
            rows = conn.execute(query, (model, kind)).fetchall()
        return [label_of(row) for row in rows]

    def label_counts(self) -> list[LabelCounts]:
        with self._db.use() as conn:
            rows = conn.execute(sql.LABEL_COUNTS).fetchall()
        return [LabelCounts(model=r[0], kind=r[1], rows=r[2], labelled=r[3], correct=r[4]) for r in rows]

    def open_history(self) -> HistoryStore:
        from caelum_mcp.engine.ledger.postgres_history import PostgresHistory

        return PostgresHistory(self._url)

    def close(self) -> None:
        self._db.close()
