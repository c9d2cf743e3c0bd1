"""Question → SQL through the router, grounded by running the SQL, with at most two repair rounds.

One round is one ``sql`` task (:class:`~caelum_mcp.core.llm.TaskKind.SQL`: tier small or larger, a code
model first) whose grounding check runs the answer's SQL in the guarded session: a query that is
refused, fails, reads no table or gives a result that contradicts the question (five rows for "top
three") scores low, so the router escalates as its policy says. A round whose SQL still fails is
followed by a repair round that shows the model its SQL and DuckDB's own error (at most
``repair_rounds``, default 2). Repair rounds stay on local models while one can do the task: Claude
(when the call allows it) is only offered in the last round, so an error a local model can fix
costs nothing. A local answer that runs but reads below the threshold goes to Claude alone for that
last round, and only when Claude can take it now; otherwise it is returned as it is. Each query
runs once: the check keeps its result, and the tool returns that one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from caelum_mcp.core.errors import CaelumError
from caelum_mcp.core.llm import GroundingResult, LLMTask, TaskKind
from caelum_mcp.core.types import ChatMessage
from caelum_mcp.supervisors.base import ToolContext
from caelum_mcp.supervisors.llm_steps import LLMStep, run_step
from caelum_mcp.tools.data.models import QueryResult
from caelum_mcp.tools.data.session import AsyncDataSession
from caelum_mcp.tools.data.sql_checks import EMPTY_SCORE, judge

SQL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "sql": {"type": "string", "description": "one DuckDB SELECT statement"},
        "explanation": {"type": "string", "description": "one sentence: what the query computes"},
    },
    "required": ["sql", "explanation"],
}
SYSTEM = """You write one DuckDB SQL query that answers a question about the tables described.
Rules:
- exactly one SELECT statement (WITH ... SELECT is fine); never modify data, never read files;
- use only the tables and columns listed; double-quote names that are not plain lower-case words;
- write text literals exactly as the example values are spelled;
- "top N", "first N", "N largest": ORDER BY ... LIMIT N; a single number: one row;
- DuckDB dialect: date_trunc, strftime, extract, ILIKE, QUALIFY, GROUP BY ALL.
Answer with JSON: {"sql": "...", "explanation": "one sentence"}."""
_FENCE = re.compile(r"^```(?:sql)?\s*|\s*```$", re.IGNORECASE)
PROBLEM_CHARS = 400


class SqlRound(BaseModel):
    """One round of the question → SQL step: the SQL the model wrote and what was wrong with it."""

    sql: str | None
    problem: str | None = None
    model: str | None = None
    confidence: float | None = None


@dataclass
class _Tried:
    """A query the check ran: its result or error, and its grounding."""

    result: QueryResult | None
    error: str | None
    grounding: GroundingResult
    tables: frozenset[str] = frozenset()

    @property
    def acceptable(self) -> bool:
        return self.result is not None and self.grounding.score >= EMPTY_SCORE

    @property
    def problem(self) -> str | None:
        text = self.error or ("; ".join(self.grounding.problems) if self.grounding.problems else None)
        return text[:PROBLEM_CHARS] if text else None


@dataclass
class SqlAnswer:
    """What the step produced: the chosen SQL and its result (None when no round's SQL ran)."""

    sql: str | None
    explanation: str | None
    result: QueryResult | None
    error: str | None
    step: LLMStep
    rounds: list[SqlRound] = field(default_factory=list)
    doubt: str | None = None  # what the grounding found wrong with a result it still returns


def clean_sql(text: Any) -> str:
    """The model's SQL without Markdown fences or surrounding blanks."""
    return _FENCE.sub("", str(text or "").strip()).strip()


def unavailable(ctx: ToolContext, allow_claude: bool) -> LLMStep | None:
    """The skipped step when no model may write SQL now (checked before describing the tables)."""
    probe = LLMTask(
        name="question_to_sql",
        kind=TaskKind.SQL,
        messages=(ChatMessage(role="system", content=SYSTEM),),
        output_schema=SQL_SCHEMA,
        allow_claude=allow_claude,
    )
    availability = ctx.llm.availability(probe)
    if availability.runnable:
        return None
    return LLMStep(status="skipped", note=f"question_to_sql skipped: {availability.reason}")


def user_prompt(schema: str, question: str, failed: list[SqlRound]) -> str:
    text = f"Tables:\n{schema}\n\nQuestion: {question}"
    if failed:
        tries = "\n\n".join(f"SQL:\n{r.sql}\nProblem: {r.problem}" for r in failed)
        text += f"\n\nEarlier answers did not work:\n{tries}\n\nWrite a corrected query."
    return text


class _Checker:
    """The grounding check: run the SQL once in the session, remember what happened."""

    def __init__(self, session: AsyncDataSession, question: str, max_rows: int) -> None:
        self.session = session
        self.question = question
        self.max_rows = max_rows
        self.tried: dict[str, _Tried] = {}

    async def __call__(self, output: dict[str, Any]) -> GroundingResult:
        sql = clean_sql(output.get("sql"))
        return (await self.run(sql)).grounding

    async def run(self, sql: str) -> _Tried:
        if sql in self.tried:
            return self.tried[sql]
        if not sql:
            tried = _Tried(None, "the answer holds no SQL", GroundingResult(score=0.0, problems=("no SQL",)))
        else:
            try:
                checked = await self.session.check(sql)
                result = await self.session.run(sql, max_rows=self.max_rows)
            except CaelumError as exc:  # refused by the guard, failed or timed out in DuckDB
                tried = _Tried(None, str(exc), GroundingResult(score=0.0, problems=(str(exc)[:PROBLEM_CHARS],)))
            else:
                tried = _Tried(result, None, judge(self.question, result, checked.tables), checked.tables)
        self.tried[sql] = tried
        return tried


async def question_to_sql(
    ctx: ToolContext,
    session: AsyncDataSession,
    *,
    question: str,
    schema: str,
    allow_claude: bool,
    repair_rounds: int,
    max_rows: int,
) -> SqlAnswer:
    """Ask for SQL answering ``question`` over ``schema``; see the module docstring."""
    checker = _Checker(session, question, max_rows)
    rounds: list[SqlRound] = []
    best: tuple[_Tried, str, str | None] | None = None
    step = LLMStep(status="skipped", note="no round ran")

    def task(allow: bool, *, claude_only: bool = False) -> LLMTask:
        failed = [r for r in rounds if r.problem]
        return LLMTask(
            name="question_to_sql",
            kind=TaskKind.SQL,
            messages=(
                ChatMessage(role="system", content=SYSTEM),
                ChatMessage(role="user", content=user_prompt(schema, question, failed[-2:])),
            ),
            output_schema=SQL_SCHEMA,
            grounding=checker,
            allow_claude=allow,
            claude_only=claude_only,
            temperature=0.0,
        )

    local_possible = ctx.llm.availability(task(False)).local
    round_index = 0
    claude_round = False  # the last round goes to Claude alone: the local answer ran, but unsure
    while round_index <= repair_rounds:
        last = round_index == repair_rounds
        allow = allow_claude and (last or not local_possible)
        routed, step = await run_step(ctx, task(allow, claude_only=claude_round))
        if routed is None:
            break  # skipped, timed out or failed: the step says why; keep what earlier rounds found
        output = routed.output or {}
        sql = clean_sql(output.get("sql"))
        tried = await checker.run(sql)
        explanation = str(output.get("explanation") or "").strip()[:500] or None
        ex = routed.execution
        rounds.append(SqlRound(sql=sql or None, problem=tried.problem, model=ex.model, confidence=ex.confidence))
        # a later round (a repair, or Claude) wins a tie: it answers what the earlier one did not
        if best is None or tried.grounding.score >= best[0].grounding.score:
            best = (tried, sql, explanation)
        if tried.acceptable:
            claude_held_back = allow_claude and not allow and step.status == "low_confidence"
            # It runs but is unsure: one last round, on Claude alone, where Claude can take it now.
            # The local model would only be asked the same prompt again (no problem to show it) and,
            # at temperature 0, give the same SQL: model time spent for nothing.
            if claude_held_back and not last and ctx.llm.availability(task(True, claude_only=True)).claude:
                round_index, claude_round = repair_rounds, True
                continue
            break
        round_index += 1
    return _answer(best, step, rounds)


def _answer(best: tuple[_Tried, str, str | None] | None, step: LLMStep, rounds: list[SqlRound]) -> SqlAnswer:
    repairs = max(0, len(rounds) - 1)
    if repairs:
        what = "; ".join(f"round {i + 1}: {r.problem}" for i, r in enumerate(rounds[:-1]) if r.problem)
        note = f"{repairs} repair round(s) after DuckDB or shape errors ({what[:600]})"
        step = step.model_copy(update={"note": "; ".join(n for n in (step.note, note) if n)})
    if best is None:
        return SqlAnswer(None, None, None, None, step, rounds)
    tried, sql, explanation = best
    if tried.result is None:
        return SqlAnswer(sql or None, explanation, None, tried.problem, step, rounds)
    return SqlAnswer(sql, explanation, tried.result, None, step, rounds, doubt=tried.problem)
