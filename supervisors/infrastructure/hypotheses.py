"""Root-cause hypotheses over the ranked signatures, each citing ``file:line`` evidence.

The model (task kind ``review``: tier ``full``, 6B+) sees the top signatures with their counts,
times, bursts and example lines, and the signatures that burst together. An item is kept only when
every line it cites exists among the entries analysed and belongs to the signature it is cited
for (:func:`~caelum_mcp.tools.logs.diagnosis.signature_at`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from caelum_mcp.core.llm import TaskKind
from caelum_mcp.engine.grounding import check_items, cited_list_schema, output_cap
from caelum_mcp.supervisors.base import ToolContext
from caelum_mcp.supervisors.llm_steps import CitedList, run_cited_list
from caelum_mcp.tools.logs.diagnosis import LogDiagnosis

MAX_HYPOTHESES = 4
PROMPT_SIGNATURES = 12
HYPOTHESES = cited_list_schema(
    "hypotheses",
    {
        "cause": {"type": "string", "description": "the likely root cause, one or two sentences"},
        "signatures": {"type": "array", "items": {"type": "string"}, "description": "signature ids, e.g. S1"},
        "evidence": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "file": {"type": "string"},
                    "line": {"type": "integer"},
                    "signature": {"type": "string", "description": "the id of the signature of that line"},
                },
                "required": ["file", "line", "signature"],
            },
        },
        "next_step": {"type": "string", "description": "what to check or do next"},
    },
    ("cause", "signatures", "evidence", "next_step"),
    max_items=MAX_HYPOTHESES,
    summary="one sentence: what most likely went wrong",
)
SYSTEM = (
    "You are an SRE diagnosing an incident from log signatures mined from the user's logs. Give at "
    "most four root-cause hypotheses, most likely first. Each cites evidence lines exactly as shown "
    "(file, line number) with the id of the signature the line belongs to. Use only lines shown."
)


class Evidence(BaseModel):
    file: str
    line: int
    signature: str


class Hypothesis(BaseModel):
    cause: str
    signatures: list[str]
    evidence: list[Evidence]
    next_step: str = Field(default="")


def prompt(report: LogDiagnosis, focus: str | None) -> str:
    lines = []
    if focus:
        lines.append(f"The user asks about: {focus}\n")
    lines.append(f"{report.entries} entries; levels {report.levels}. Top signatures:")
    for s in report.signatures[:PROMPT_SIGNATURES]:
        when = f"{s.first_seen:%Y-%m-%d %H:%M:%S} .. {s.last_seen:%H:%M:%S}" if s.first_seen and s.last_seen else ""
        lines.append(f"{s.id} [{s.level or 'no level'}] x{s.count} {when} bursts={s.bursts}: {s.template[:300]}")
        for ex in s.examples:
            detail = f"  | {ex.detail[:160]}" if ex.detail else ""
            lines.append(f"    {ex.file}:{ex.line}: {ex.text[:240]}{detail}")
    for group in report.together[:3]:
        windows = ", ".join(f"{w.start:%m-%d %H:%M}" for w in group.windows)
        lines.append(f"Burst together: {', '.join(group.signatures)} at {windows}")
    return "\n".join(lines)


async def hypotheses(
    ctx: ToolContext,
    report: LogDiagnosis,
    focus: str | None,
    signature_at: Callable[[str, int], str | None],
    *,
    allow_claude: bool,
) -> tuple[list[Hypothesis], CitedList]:
    known = {s.id for s in report.signatures}

    def check_one(_: int, item: Any) -> str | None:
        cited = item.get("signatures") or []
        if not cited or any(s not in known for s in cited):
            return "cites a signature that is not shown"
        evidence = item.get("evidence") or []
        if not evidence:
            return "cites no evidence line"
        for ev in evidence:
            if not isinstance(ev, dict):
                return "evidence is not an object"
            file, line, signature = str(ev.get("file")), ev.get("line"), str(ev.get("signature"))
            if not isinstance(line, int):
                return "evidence line is not a number"
            actual = signature_at(file, line)
            if actual is None:
                return f"{file[:80]}:{line} is not a line analysed"
            if actual != signature:
                return f"{file[:80]}:{line} belongs to {actual}, not {signature[:20]}"
        return None

    got = await run_cited_list(
        ctx,
        name="log_hypotheses",
        kind=TaskKind.REVIEW,
        system=SYSTEM,
        user=prompt(report, focus),
        schema=HYPOTHESES,
        key="hypotheses",
        check=lambda out: check_items(out.get("hypotheses") or [], check_one, label="hypothesis"),
        allow_claude=allow_claude,
        max_output_tokens=output_cap(MAX_HYPOTHESES, 160),
    )
    found = [
        Hypothesis(
            cause=str(item.get("cause", ""))[:600],
            signatures=[str(s) for s in item.get("signatures", [])][:8],
            evidence=[Evidence.model_validate(ev) for ev in item.get("evidence", [])][:6],
            next_step=str(item.get("next_step", ""))[:400],
        )
        for item in got.items
    ]
    return found, got
