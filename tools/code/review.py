"""The LLM parts of code work, as plain data: prompts, output schemas and grounding checks.

Each ``*_task`` function builds the messages and the JSON schema of one LLM task from analyser
output; each ``ground_*`` function checks an answer against the project (every cited file exists,
every line is inside it, every rule id was reported) and returns a score in [0, 1] with the
problems found. The router uses the score as the grounding part of confidence; the supervisor keeps
only the grounded items. Nothing here calls a model, so all of it is tested without one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .models import Finding

MAX_EXCERPT_LINES = 7
MAX_FINDINGS_IN_PROMPT = 30
MAX_PROMPT_CHARS = 12_000

REVIEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "description": "two or three sentences on the state of the code"},
        "recommendations": {
            "type": "array",
            "maxItems": 8,
            "items": {
                "type": "object",
                "properties": {
                    "title": {"type": "string"},
                    "priority": {"type": "integer", "minimum": 1, "maximum": 5, "description": "1 = most urgent"},
                    "file": {"type": "string", "description": "a file from the findings"},
                    "line": {"type": "integer"},
                    "rule": {"type": "string", "description": "the rule id of the finding it addresses"},
                    "rationale": {"type": "string"},
                },
                "required": ["title", "priority", "file", "line", "rule", "rationale"],
            },
        },
    },
    "required": ["summary", "recommendations"],
}

COMMENTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        "comments": {
            "type": "array",
            "maxItems": 10,
            "items": {
                "type": "object",
                "properties": {
                    "file": {"type": "string"},
                    "line": {"type": "integer", "description": "a line added or changed by the diff"},
                    "severity": {"type": "string", "enum": ["info", "low", "medium", "high"]},
                    "comment": {"type": "string"},
                },
                "required": ["file", "line", "severity", "comment"],
            },
        },
    },
    "required": ["summary", "comments"],
}

TRIAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "triage": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "test": {"type": "string", "description": "the failing test's id, as given"},
                    "likely_cause": {"type": "string"},
                    "file": {"type": "string", "description": "where to look"},
                    "line": {"type": "integer"},
                },
                "required": ["test", "likely_cause", "file", "line"],
            },
        }
    },
    "required": ["triage"],
}

EDITS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "edits": {
            "type": "array",
            "maxItems": 5,
            "items": {
                "type": "object",
                "properties": {
                    "file": {"type": "string"},
                    "start_line": {"type": "integer"},
                    "end_line": {"type": "integer"},
                    "replacement": {"type": "string", "description": "the new text for those lines"},
                    "rule": {"type": "string"},
                    "description": {"type": "string"},
                },
                "required": ["file", "start_line", "end_line", "replacement", "rule", "description"],
            },
        }
    },
    "required": ["edits"],
}


@dataclass(frozen=True)
class Grounding:
    score: float
    problems: tuple[str, ...]
    valid: tuple[int, ...]  # indexes of the items that passed every check


class SourceIndex:
    """Line counts of the project's text files, read once, for grounding checks."""

    def __init__(self, root: Path, files: Iterable[str]) -> None:
        self.root = root
        self.files = set(files)
        self._lines: dict[str, list[str]] = {}

    def lines(self, rel: str) -> list[str]:
        if rel not in self._lines:
            try:
                text = (self.root / rel).read_text(encoding="utf-8", errors="replace")
            except OSError:
                text = ""
            self._lines[rel] = text.splitlines()
        return self._lines[rel]

    def has_line(self, rel: str, line: int) -> bool:
        return rel in self.files and 1 <= line <= max(1, len(self.lines(rel)))

    def excerpt(self, rel: str, line: int, around: int = 3) -> str:
        lines = self.lines(rel)
        lo, hi = max(1, line - around), min(len(lines), line + around)
        return "\n".join(f"{n:>5} | {lines[n - 1]}" for n in range(lo, hi + 1))


def _clip(text: str, limit: int = MAX_PROMPT_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "\n[... cut ...]"


def format_findings(findings: Sequence[Finding]) -> str:
    return "\n".join(
        f"- {f.file}:{f.line} [{f.rule}] ({f.severity}, {f.tool}) {f.message[:200]}"
        for f in findings[:MAX_FINDINGS_IN_PROMPT]
    )


def review_task(
    findings: Sequence[Finding], index: SourceIndex, metrics: Mapping[str, Any], focus: str
) -> tuple[str, str]:
    """(system, user) messages asking for prioritised recommendations over the findings."""
    excerpts = []
    for f in findings[:6]:
        if f.file in index.files:
            excerpts.append(f"{f.file}:{f.line} [{f.rule}]\n{index.excerpt(f.file, f.line)}")
    system = (
        "You are a senior engineer reviewing a project from its static-analysis findings. Recommend the "
        "most important fixes. Every recommendation must cite a file, line and rule id that appear in the "
        "findings below; never invent files, lines or rules."
    )
    user = _clip(
        f"Focus: {focus}.\nMetrics: {dict(metrics)}\n\nFindings (most severe first):\n{format_findings(findings)}"
        + ("\n\nCode around the top findings:\n" + "\n\n".join(excerpts) if excerpts else "")
    )
    return system, user


def ground_recommendations(output: Mapping[str, Any], findings: Sequence[Finding], index: SourceIndex) -> Grounding:
    """Every recommendation must name a reported (file, rule) at a line that exists."""
    recs = output.get("recommendations") or []
    if not recs:
        return Grounding(1.0 if not findings else 0.5, () if not findings else ("no recommendations given",), ())
    reported = {(f.file, f.rule) for f in findings}
    rules_by_file: dict[str, set[str]] = {}
    for f in findings:
        rules_by_file.setdefault(f.file, set()).add(f.rule)
    problems: list[str] = []
    valid: list[int] = []
    for i, rec in enumerate(recs):
        file, line, rule = str(rec.get("file", "")), rec.get("line"), str(rec.get("rule", ""))
        if file not in index.files:
            problems.append(f"recommendation {i + 1}: file {file!r} is not in the project")
        elif not isinstance(line, int) or not index.has_line(file, line):
            problems.append(f"recommendation {i + 1}: {file} has no line {line}")
        elif (file, rule) not in reported:
            known = ", ".join(sorted(rules_by_file.get(file, set()))) or "none"
            problems.append(f"recommendation {i + 1}: rule {rule!r} was not reported for {file} (reported: {known})")
        else:
            valid.append(i)
    return Grounding(len(valid) / len(recs), tuple(problems), tuple(valid))


def comments_task(diff_text: str, findings: Sequence[Finding]) -> tuple[str, str]:
    system = (
        "You review a code change. Comment only on lines the diff adds or changes (the '+' lines), citing "
        "the file and the new line number. Point out bugs, security problems and risky changes; be brief."
    )
    user = _clip(
        "Static findings on changed lines:\n"
        + (format_findings(findings) or "(none)")
        + "\n\nThe diff (new line numbers after each hunk header):\n"
        + diff_text
    )
    return system, user


def ground_comments(output: Mapping[str, Any], changed_lines: Mapping[str, set[int]]) -> Grounding:
    """Every comment must be anchored to a line the diff added or changed."""
    comments = output.get("comments") or []
    if not comments:
        return Grounding(1.0, (), ())
    problems: list[str] = []
    valid: list[int] = []
    for i, c in enumerate(comments):
        file, line = str(c.get("file", "")), c.get("line")
        if file not in changed_lines:
            problems.append(f"comment {i + 1}: {file!r} is not a changed file")
        elif line not in changed_lines[file]:
            problems.append(f"comment {i + 1}: line {line} of {file} is not a changed line")
        else:
            valid.append(i)
    return Grounding(len(valid) / len(comments), tuple(problems), tuple(valid))


def triage_task(failures: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """``failures`` are (test id, failure text) pairs."""
    system = (
        "You triage failing tests. For each failing test give the likely cause and the file and line to look "
        "at, taken from its failure text (tracebacks name them). Use the test ids exactly as given."
    )
    body = "\n\n".join(f"TEST {tid}\n{text[-2500:]}" for tid, text in failures)
    return system, _clip(body)


def ground_triage(output: Mapping[str, Any], failures: Mapping[str, str], index: SourceIndex) -> Grounding:
    """Each item must name a failing test, and a file:line that its failure text or the project has."""
    items = output.get("triage") or []
    if not items:
        return Grounding(0.0 if failures else 1.0, ("no triage given",) if failures else (), ())
    problems: list[str] = []
    valid: list[int] = []
    for i, item in enumerate(items):
        test, file, line = str(item.get("test", "")), str(item.get("file", "")), item.get("line")
        text = failures.get(test)
        if text is None:
            problems.append(f"item {i + 1}: {test!r} is not one of the failing tests")
        elif not (f"{file}:{line}" in text or (isinstance(line, int) and index.has_line(file, line))):
            problems.append(f"item {i + 1}: {file}:{line} is neither in the failure text nor in the project")
        else:
            valid.append(i)
    return Grounding(len(valid) / len(items), tuple(problems), tuple(valid))


def edits_task(findings: Sequence[Finding], index: SourceIndex) -> tuple[str, str]:
    """Ask for minimal line-range replacements that fix the given findings."""
    blocks = []
    for f in findings:
        blocks.append(f"{f.file}:{f.line} [{f.rule}] {f.message[:200]}\n{index.excerpt(f.file, f.line, around=4)}")
    system = (
        "You fix code. For each finding, give the smallest edit: the file, the first and last line to replace "
        "(numbers as shown), and the replacement text with the original indentation. Do not change anything else."
    )
    return system, _clip("\n\n".join(blocks))
