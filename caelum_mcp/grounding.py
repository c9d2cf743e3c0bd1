"""Cited lists: the shape most LLM steps in this product ask for, and how their items are checked.

A review recommendation cites a file, line and rule; a triage item a test and a place; an answer a
passage; a log hypothesis a ``file:line``. Each is an item in a list, and each item either points
at something that exists or does not. This module is that pattern once, as plain data and
functions (no model, no MCP), for every supervisor and internal tool:

- :func:`cited_list_schema`: the JSON schema of an object holding the list under one key (at most
  ``max_items`` items) and, optionally, a short summary;
- :func:`output_cap`: an output-token cap sized to that schema;
- :func:`check_items`: run a per-item check over the list and return the
  :class:`~caelum_mcp.llm.GroundingResult` (score = share of items that passed, the problems, and
  the indexes of the items that passed).

The router uses the score as the grounding part of confidence; the supervisor shows only the items
that passed (``supervisors/llm_steps.py`` routes the task and counts what was kept and dropped).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from caelum_mcp.llm import GroundingResult

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
