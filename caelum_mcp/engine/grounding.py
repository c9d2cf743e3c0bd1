"""Cited lists: the shape most LLM steps in this product ask for, and how their items are checked.

A review recommendation cites a file, line and rule; a triage item a test and a place; an answer a
passage; a log hypothesis a ``file:line``. Each is an item in a list, and each item either points
at something that exists or does not. This module is that pattern once, as plain data and
functions (no model, no MCP), for every supervisor and internal tool:

- :func:`cited_list_schema`: the JSON schema of an object holding the list under one key (at most
  ``max_items`` items) and, optionally, a short summary;
- :func:`output_cap`: an output-token cap sized to that schema;
- :func:`check_items`: run a per-item check over the list and return the
  :class:`~caelum_mcp.core.llm.GroundingResult` (score = share of items that passed, the problems, and
  the indexes of the items that passed);
- :func:`quote_problem` and :func:`support_problem`: whether quotes are long enough to carry a
  claim, and whether an answer's commands and key terms occur in what it cites (a quote of a word
  or two is in almost any passage, so it grounds nothing).

The router uses the score as the grounding part of confidence; the supervisor shows only the items
that passed (``supervisors/llm_steps.py`` routes the task and counts what was kept and dropped).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from caelum_mcp.core.llm import GroundingResult

ItemCheck = Callable[[int, Mapping[str, Any]], str | None]


def cited_list_schema(
    key: str,
    item_properties: Mapping[str, Any],
    required: Sequence[str],
    *,
    max_items: int,
    summary: str | None = None,
) -> dict[str, Any]:
    """``{"<summary>": str, "<key>": [ {item}, … ≤ max_items ]}`` as a JSON schema.

    ``summary`` is the description of an optional-in-spirit but required ``summary`` string (None
    leaves it out). Every item property listed in ``required`` must be present.
    """
    properties: dict[str, Any] = {}
    if summary is not None:
        properties["summary"] = {"type": "string", "description": summary}
    properties[key] = {
        "type": "array",
        "maxItems": max_items,
        "items": {"type": "object", "properties": dict(item_properties), "required": list(required)},
    }
    return {"type": "object", "properties": properties, "required": list(properties)}


def output_cap(max_items: int, tokens_per_item: int, *, overhead: int = 120) -> int:
    """Output tokens for a full list: ``overhead`` (braces, a summary, the confidence field) plus
    ``max_items`` items of about ``tokens_per_item`` each."""
    return overhead + max_items * tokens_per_item


def check_items(
    items: Sequence[Any],
    check_one: ItemCheck,
    *,
    label: str = "item",
    when_empty: GroundingResult | None = None,
) -> GroundingResult:
    """Check every item: ``check_one(index, item)`` returns None when the item is grounded, else the
    problem. An item that is not an object is a problem too. An empty list gets ``when_empty``
    (default: fully grounded — nothing cited, nothing wrong)."""
    if not items:
        return when_empty or GroundingResult(score=1.0)
    problems: list[str] = []
    valid: list[int] = []
    for i, item in enumerate(items):
        problem = check_one(i, item) if isinstance(item, Mapping) else "is not an object"
        if problem is None:
            valid.append(i)
        else:
            problems.append(f"{label} {i + 1}: {problem}")
    return GroundingResult(score=len(valid) / len(items), problems=tuple(problems), valid=tuple(valid))


# Quotes that can carry a claim. A quote of a word or two ("run", "the") is in almost every passage,
# so it proves nothing; an indexed file that tells the model what to say (prompt injection) needs
# only such a quote to pass as grounded.
MIN_QUOTE_WORDS = 3
MIN_QUOTE_CHARS = 16
# Together the quotes hold at least this share of the answer's length, but never need more than
# QUOTED_CHARS_CAP characters (a long answer may summarise several passages).
QUOTED_SHARE = 0.25
QUOTED_CHARS_CAP = 120
# At least this share of the answer's plain words and numbers occur in the passages it cites.
KEY_TERM_SHARE = 0.5
_STEM = 5

# A token that is a command, a path, a URL or a flag: the answer may only say it in a quote's words.
_EXACT_TOKEN = re.compile(r"://|[/\\|$<>]|&&|^--?[A-Za-z]")
_PROSE_PUNCTUATION = ".,;:!?\"'`()[]{}*\u201c\u201d\u2018\u2019"  # markdown and typographic quotes too
_WORD = re.compile(r"\w+")
_STOPWORDS = frozenset(
    """a about above after again all also an and any are as at be because been before being below
    between both but by can could did do does doing done down during each either else etc every few for
    from further had has have having here how however i if in into is it its itself just may might more
    most must no nor not now of off on once only or other our out over own same shall should so some
    such than that the their them then there these they this those through to too under until up upon
    us use used uses using very via was way we were what when where whether which while who whom whose
    why will with within without would yes yet you your""".split()
)


def normalised_text(text: str) -> str:
    """``text`` with runs of whitespace as one space, lower case: how quotes are compared."""
    return " ".join(text.split()).lower()


def quote_problem(quote: str) -> str | None:
    """Why ``quote`` is too short to carry a claim (MIN_QUOTE_WORDS, MIN_QUOTE_CHARS); None when long enough."""
    words = len(_WORD.findall(quote))
    if words < MIN_QUOTE_WORDS or len(normalised_text(quote)) < MIN_QUOTE_CHARS:
        return (
            f"quote {quote[:60]!r} is too short to carry a claim "
            f"(a quote needs {MIN_QUOTE_WORDS} words and {MIN_QUOTE_CHARS} characters)"
        )
    return None


def exact_terms(answer: str) -> list[str]:
    """The answer's commands, paths, URLs, flags and shell operators (lower case, in order)."""
    terms: list[str] = []
    for token in answer.split():
        term = token.strip(_PROSE_PUNCTUATION).lower()
        if term and _EXACT_TOKEN.search(term) and term not in terms:
            terms.append(term)
    return terms


def key_terms(answer: str) -> list[str]:
    """The answer's content words and numbers (lower case, no stopwords), leaving out its exact terms."""
    terms: list[str] = []
    for token in answer.split():
        if _EXACT_TOKEN.search(token.strip(_PROSE_PUNCTUATION)):
            continue
        for word in _WORD.findall(token.lower()):
            keep = word.isdigit() or (len(word) >= 3 and word not in _STOPWORDS)
            if keep and word not in terms:
                terms.append(word)
    return terms


def restatement_problem(answer: str, question: str) -> str | None:
    """Why ``answer`` does not answer ``question``: every one of its key terms (:func:`key_terms`,
    compared by their first five letters) is one of the question's, so it only says the question
    back ("graph" for "… on what kind of graph?"). None when it adds a term of its own, or has none.

    A heuristic, not a proof: on the gate's SQuAD tasks 3 of 93 gold answers also read this way,
    and 4 of the 5 model answers it flagged on the dev split were wrong."""
    answered = {term[:_STEM] for term in key_terms(answer)}
    if answered and answered <= {term[:_STEM] for term in key_terms(question)}:
        return "only repeats words of the question"
    return None


def support_problem(
    answer: str, quotes: Sequence[str], cited: Sequence[str], *, sources: Sequence[str] = ()
) -> str | None:
    """Why the grounded ``quotes`` (and the ``cited`` passages they come from) do not carry ``answer``;
    None when they do. ``sources`` are names the answer may give without quoting them (the cited
    files' paths).

    Three rules, each aimed at an answer that quotes something true while saying something else:
    the quotes together are long enough for the answer (QUOTED_SHARE of it, at most
    QUOTED_CHARS_CAP characters); every command, path, URL, flag or shell operator of the answer
    occurs in a quote (an answer never tells the user to run what no source says word for word);
    and most of its words and numbers (KEY_TERM_SHARE) occur in the passages cited.
    """
    said = normalised_text(answer)
    if not said:
        return None
    quoted = " \n ".join(normalised_text(q) for q in quotes)
    needed = min(QUOTED_SHARE * len(said), QUOTED_CHARS_CAP)
    quoted_chars = sum(len(normalised_text(q)) for q in quotes)
    if quoted_chars < needed:
        return f"quotes {quoted_chars} characters, under {needed:.0f} for an answer this long"
    named = {normalised_text(source) for source in sources}
    unquoted = [t for t in exact_terms(answer) if t not in quoted and t not in named]
    if unquoted:
        shown = ", ".join(repr(t[:60]) for t in unquoted[:4])
        return f"says {shown}, which no quote holds (commands, paths and URLs must be quoted word for word)"
    terms = key_terms(answer)
    if terms:
        words = {w for text in cited for w in _WORD.findall(text.lower())}
        stems = {w[:_STEM] for w in words if len(w) >= _STEM}
        found = [t for t in terms if t in words or (len(t) >= _STEM and t[:_STEM] in stems)]
        if len(found) < KEY_TERM_SHARE * len(terms):
            missing = [t for t in terms if t not in found][:5]
            return (
                f"uses {len(terms) - len(found)} of its {len(terms)} key terms that the passages it cites "
                f"do not hold ({', '.join(missing)})"
            )
    return None
