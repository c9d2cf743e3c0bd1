"""The local-model pass over mined clusters (split or merge), cached per template.

The mined templates that statistics cannot settle (:func:`~caelum_mcp.tools.logs.refine.candidates`)
go to a model (task kind ``classification``: tier ``small``, 2B+) in batches of
:data:`BATCH`, at most ``[infrastructure.logs] model_pass_clusters`` per call. Each answer is
kept in ``clusters.sqlite3`` in the supervisor's state folder under the template's text (a
template the model gave no usable answer for is kept as "no change"), so a template is asked
about once, ever; answers already known apply without a call. The answers are
checked before use: a split slot must be one offered, a merge must name an offered neighbour.
When no model of the tier may be used the pass is skipped at once, with a note.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio

from caelum_mcp.core.llm import GroundingResult, TaskKind
from caelum_mcp.engine.grounding import check_items, cited_list_schema, output_cap
from caelum_mcp.supervisors.base import ToolContext
from caelum_mcp.supervisors.llm_steps import LLMStep, run_cited_list
from caelum_mcp.tools.logs.refine import Candidate, Decision

BATCH = 8
DECISIONS = cited_list_schema(
    "decisions",
    {
        "template": {"type": "integer", "description": "the number of a template shown"},
        "split_slots": {
            "type": "array",
            "items": {"type": "integer"},
            "description": "slots whose listed words name different events",
        },
        "same_as": {
            "type": "integer",
            "description": "the number of a listed neighbour that is the same event; -1 for none",
        },
    },
    ("template", "split_slots", "same_as"),
    max_items=BATCH,
)
SYSTEM = (
    "You check log templates that a program mined from log lines; <*> marks a variable part. For each "
    "numbered template decide: split_slots = the slot numbers whose listed words name different events "
    "(like service names in '<*> startup succeeded'), not variable data (user names, hosts, ids): split "
    "only when the words change what happened; same_as = the number of a listed neighbour that is the "
    "same event with different variable values, else -1. Answer for every template."
)


class DecisionCache:
    """Decisions by template text, in SQLite. Blocking: call from a worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with closing(sqlite3.connect(path)) as db, db:
            db.execute("CREATE TABLE IF NOT EXISTS decisions (template TEXT PRIMARY KEY, decision TEXT NOT NULL)")

    def get_many(self, templates: Sequence[str]) -> dict[str, Decision]:
        found: dict[str, Decision] = {}
        with closing(sqlite3.connect(self.path)) as db:
            for template in templates:
                row = db.execute("SELECT decision FROM decisions WHERE template = ?", (template,)).fetchone()
                if row:
                    found[template] = Decision.model_validate_json(row[0])
        return found

    def put_many(self, decisions: Sequence[Decision]) -> None:
        with closing(sqlite3.connect(self.path)) as db, db:
            db.executemany(
                "INSERT OR REPLACE INTO decisions(template, decision) VALUES (?, ?)",
                [(d.template, d.model_dump_json()) for d in decisions],
            )


def _prompt(batch: Sequence[Candidate]) -> str:
    lines = []
    for n, c in enumerate(batch, start=1):
        lines.append(f"Template {n} ({c.count} lines): {c.template}")
        for slot, words in c.slot_values.items():
            lines.append(f"  slot {slot} holds: {', '.join(words)}")
        for k, neighbour in enumerate(c.neighbours, start=1):
            lines.append(f"  neighbour {n}.{k}: {neighbour}")
    return "\n".join(lines)


def _check(batch: Sequence[Candidate], item: Mapping[str, Any]) -> str | None:
    number = item.get("template")
    if not isinstance(number, int) or not 1 <= number <= len(batch):
        return "no such template"
    candidate = batch[number - 1]
    slots = item.get("split_slots") or []
    if any(s not in candidate.slot_values for s in slots if isinstance(s, int)):
        return "split slot not offered"
    same = item.get("same_as", -1)
    if isinstance(same, int) and same != -1 and not 1 <= same <= len(candidate.neighbours):
        return "same_as is not a listed neighbour"
    return None


def _checker(batch: Sequence[Candidate]) -> Callable[[dict[str, Any]], GroundingResult]:
    def check(output: dict[str, Any]) -> GroundingResult:
        return check_items(output.get("decisions") or [], lambda _, item: _check(batch, item))

    return check


def _decision(batch: Sequence[Candidate], item: dict[str, Any]) -> Decision:
    candidate = batch[int(item["template"]) - 1]
    same = item.get("same_as", -1)
    return Decision(
        template=candidate.template,
        split_slots=[s for s in item.get("split_slots") or [] if isinstance(s, int)],
        same_as=candidate.neighbours[same - 1] if isinstance(same, int) and same >= 1 else None,
    )


async def cluster_pass(
    ctx: ToolContext, found: Sequence[Candidate], *, limit: int, allow_claude: bool
) -> tuple[list[Decision], LLMStep | None]:
    """Decisions for ``found``: the cached ones, plus the model's for up to ``limit`` new ones.
    The step is None when nothing had to be asked."""
    cache = await anyio.to_thread.run_sync(DecisionCache, ctx.state_dir / "clusters.sqlite3")
    known = await anyio.to_thread.run_sync(cache.get_many, [c.template for c in found])
    decisions = list(known.values())
    new = [c for c in found if c.template not in known][:limit]
    if not new:
        return decisions, None
    steps: list[LLMStep] = []
    for start in range(0, len(new), BATCH):
        batch = new[start : start + BATCH]
        got = await run_cited_list(
            ctx,
            name="log_clusters",
            kind=TaskKind.CLASSIFICATION,
            system=SYSTEM,
            user=_prompt(batch),
            schema=DECISIONS,
            key="decisions",
            check=_checker(batch),
            allow_claude=allow_claude,
            max_output_tokens=output_cap(len(batch), 30),
        )
        steps.append(got.step)
        if got.step.status == "skipped":
            break
        answered = [_decision(batch, item) for item in got.items]
        if got.step.execution is not None:
            # The model was asked: remember an answer for every template of the batch (no change
            # where it gave none that held up), so that no template is ever asked about twice.
            said = {d.template for d in answered}
            unchanged = [Decision(template=c.template) for c in batch if c.template not in said]
            await anyio.to_thread.run_sync(cache.put_many, [*answered, *unchanged])
        decisions.extend(answered)
    return decisions, _combine(steps)


def _combine(steps: list[LLMStep]) -> LLMStep:
    if len(steps) == 1:
        return steps[0]
    statuses = [s.status for s in steps]
    status = "ran" if all(s == "ran" for s in statuses) else next(s for s in statuses if s != "ran")
    notes = "; ".join(dict.fromkeys(s.note for s in steps if s.note))
    return LLMStep(
        status=status,
        note=f"{len(steps)} calls" + (f"; {notes}" if notes else ""),
        kept=sum(s.kept for s in steps),
        dropped=sum(s.dropped for s in steps),
        execution=steps[-1].execution,
    )
