"""Whether a query's result fits the question it was written for: the grounding of question → SQL.

DuckDB already proves the query parses, binds (every column it names exists) and runs. What is
left is the shape: "the top five customers" must give at most five rows, "how many orders" one.
:func:`expected_shape` reads that from the question (conservatively: no rule, no expectation) and
:func:`judge` scores a result against it, saying what is wrong in words a model can act on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from caelum_mcp.core.llm import GroundingResult

from .models import QueryResult

_NUMBERS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "fifteen": 15,
    "twenty": 20,
    "fifty": 50,
    "hundred": 100,
}
_RANKING = (
    "top|first|last|bottom|largest|smallest|highest|lowest|biggest|best|worst|most|least|leading|latest|"
    "earliest|oldest|newest|cheapest|busiest|longest|shortest|heaviest|lightest"
)
_N = r"(\d{1,4}|" + "|".join(_NUMBERS) + ")"
_RANK_BEFORE = re.compile(rf"\b(?:{_RANKING})\s+{_N}\b", re.IGNORECASE)
_RANK_AFTER = re.compile(rf"\b{_N}\s+(?:{_RANKING})\b", re.IGNORECASE)
_WHICH_N = re.compile(rf"\b(?:which|what|list|show|name|find|give me)\s+(?:the\s+)?{_N}(?=\s+[a-z])", re.IGNORECASE)
_SINGLE_VALUE = re.compile(
    r"^\s*(how many|how much|what is the (total|average|sum|mean|number|count|maximum|minimum|median)|"
    r"what's the (total|average|sum|mean|number|count))\b",
    re.IGNORECASE,
)
_GROUPED = re.compile(
    r"\b(per|by|each|every|for all|grouped|breakdown|split|respectively|and how many)\b", re.IGNORECASE
)

# Grounding scores: a result that contradicts the question stays under the confidence gate's
# cap (0.5); one that merely returned nothing is doubtful but may be right.
SHAPE_SCORE = 0.3
NO_TABLE_SCORE = 0.3
EMPTY_SCORE = 0.7


@dataclass(frozen=True)
class Shape:
    """What the question implies about the result: at most ``max_rows``, or exactly ``exact_rows``."""

    max_rows: int | None = None
    exact_rows: int | None = None
    because: str = ""


def _number(text: str) -> int:
    return int(text) if text.isdigit() else _NUMBERS[text.lower()]


def expected_shape(question: str) -> Shape | None:
    """The result shape ``question`` implies, or None when it implies none we can check."""
    for pattern in (_RANK_BEFORE, _RANK_AFTER, _WHICH_N):
        match = pattern.search(question)
        if match:
            n = _number(match.group(1))
            if n > 0:
                return Shape(max_rows=n, because=f"the question asks for {match.group(0).strip()!r}")
    if _SINGLE_VALUE.search(question) and not _GROUPED.search(question):
        return Shape(exact_rows=1, because="the question asks for a single value")
    return None


def judge(question: str, result: QueryResult, tables_read: frozenset[str]) -> GroundingResult:
    """Score ``result`` (a query that ran) against ``question``: 1.0 when nothing is wrong."""
    if not tables_read:
        return GroundingResult(score=NO_TABLE_SCORE, problems=("the query reads none of the tables",))
    shape = expected_shape(question)
    if shape is not None:
        if shape.max_rows is not None and result.row_count > shape.max_rows:
            return GroundingResult(
                score=SHAPE_SCORE,
                problems=(
                    f"the query returned {result.row_count} rows but {shape.because} (at most {shape.max_rows}); "
                    "add ORDER BY … LIMIT",
                ),
            )
        if shape.exact_rows is not None and result.row_count != shape.exact_rows:
            return GroundingResult(
                score=SHAPE_SCORE,
                problems=(f"the query returned {result.row_count} rows but {shape.because}",),
            )
    if result.row_count == 0:
        return GroundingResult(
            score=EMPTY_SCORE,
            problems=("the query returned no rows (check literal values against the examples)",),
        )
    return GroundingResult(score=1.0)
