"""The LLM parts of code work, as plain data: prompts, output schemas and grounding checks.

Each ``*_task`` function builds the messages and the JSON schema of one LLM task from analyser
output; each ``ground_*`` function checks an answer against the project (every cited file exists,
every line is inside it, every rule id was reported) and returns a score in [0, 1] with the
problems found. The router uses the score as the grounding part of confidence; the supervisor keeps
only the grounded items. Nothing here calls a model, so all of it is tested without one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from caelum_mcp.core.llm import GroundingResult
from caelum_mcp.engine.grounding import check_items, cited_list_schema, output_cap

from ..safe_read import FileHead, ReadTimeoutError, off_loop, read_head
from .models import Finding

MAX_EXCERPT_LINES = 7
MAX_SOURCE_BYTES = 8 << 20  # of one file, for excerpts and line checks
MAX_EXCERPT_LINE_CHARS = 400
MAX_FINDINGS_IN_PROMPT = 30
MAX_PROMPT_CHARS = 12_000

MAX_RECOMMENDATIONS = 8
MAX_COMMENTS = 10
MAX_TRIAGE = 6
MAX_EDITS = 5

REVIEW_SCHEMA = cited_list_schema(
    "recommendations",
    {
        "title": {"type": "string"},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5, "description": "1 = most urgent"},
        "file": {"type": "string", "description": "a file from the findings"},
        "line": {"type": "integer"},
        "rule": {"type": "string", "description": "the rule id of the finding it addresses"},
        "rationale": {"type": "string"},
    },
    ("title", "priority", "file", "line", "rule", "rationale"),
    max_items=MAX_RECOMMENDATIONS,
    summary="two or three sentences on the state of the code",
)
REVIEW_TOKENS = output_cap(MAX_RECOMMENDATIONS, 90)

COMMENTS_SCHEMA = cited_list_schema(
    "comments",
    {
        "file": {"type": "string"},
        "line": {"type": "integer", "description": "a line added or changed by the diff"},
        "severity": {"type": "string", "enum": ["info", "low", "medium", "high"]},
        "comment": {"type": "string"},
    },
    ("file", "line", "severity", "comment"),
    max_items=MAX_COMMENTS,
    summary="one or two sentences on the change",
)
COMMENTS_TOKENS = output_cap(MAX_COMMENTS, 70)

TRIAGE_SCHEMA = cited_list_schema(
    "triage",
    {
        "test": {"type": "string", "description": "the failing test's id, as given"},
        "likely_cause": {"type": "string"},
        "file": {"type": "string", "description": "where to look"},
        "line": {"type": "integer"},
    },
    ("test", "likely_cause", "file", "line"),
    max_items=MAX_TRIAGE,
)
TRIAGE_TOKENS = output_cap(MAX_TRIAGE, 90)

EDITS_SCHEMA = cited_list_schema(
    "edits",
    {
        "file": {"type": "string"},
        "start_line": {"type": "integer"},
        "end_line": {"type": "integer"},
        "replacement": {"type": "string", "description": "the new text for those lines"},
        "rule": {"type": "string"},
        "description": {"type": "string"},
    },
    ("file", "start_line", "end_line", "replacement", "rule", "description"),
    max_items=MAX_EDITS,
)
EDITS_TOKENS = output_cap(MAX_EDITS, 160)


class SourceIndex:
    """Lines of the project's text files, read once, for excerpts and grounding checks.

    Only regular files are read, and at most :data:`MAX_SOURCE_BYTES` of each (lines past that
    count as absent). :meth:`load` reads files ahead in a worker thread; a file that was not loaded
    is read when first asked for, which is bounded but happens on the caller's thread.
    """

    def __init__(self, root: Path, files: Iterable[str]) -> None:
        self.root = root
        self.files = set(files)
        self._lines: dict[str, list[str]] = {}

    async def load(self, rels: Iterable[str]) -> None:
        """Read the project files among ``rels`` off the event loop, within a time limit."""
        wanted = [rel for rel in dict.fromkeys(rels) if rel in self.files and rel not in self._lines]

        def read_all(stop: threading.Event) -> None:
            for rel in wanted:
                if stop.is_set():
                    return
                self.lines(rel)

        if wanted:
            try:
                await off_loop(read_all, what="reading the files the findings cite")
            except ReadTimeoutError:
                pass  # what was not read in time is read when asked for

    def lines(self, rel: str) -> list[str]:
        if rel not in self._lines:
            try:
                head = read_head(self.root / rel, MAX_SOURCE_BYTES)
            except OSError:
                head = FileHead(b"", False)
            lines = head.data.decode("utf-8", errors="replace").splitlines()
            if head.truncated and lines:
                lines.pop()  # cut at the byte cap: the last line is not whole
            self._lines[rel] = lines
        return self._lines[rel]

    def has_line(self, rel: str, line: int) -> bool:
        return rel in self.files and 1 <= line <= max(1, len(self.lines(rel)))

    def excerpt(self, rel: str, line: int, around: int = 3) -> str:
        lines = self.lines(rel)
        lo, hi = max(1, line - around), min(len(lines), line + around)
        return "\n".join(f"{n:>5} | {_cut_line(lines[n - 1])}" for n in range(lo, hi + 1))


def _cut_line(text: str) -> str:
    # one minified or generated line must not fill the prompt
    return text if len(text) <= MAX_EXCERPT_LINE_CHARS else text[:MAX_EXCERPT_LINE_CHARS] + " [... line cut]"


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


def ground_recommendations(
    output: Mapping[str, Any], findings: Sequence[Finding], index: SourceIndex
) -> GroundingResult:
    """Every recommendation must name a reported (file, rule) at a line that exists."""
    reported = {(f.file, f.rule) for f in findings}
    rules_by_file: dict[str, set[str]] = {}
    for f in findings:
        rules_by_file.setdefault(f.file, set()).add(f.rule)

    def check(_: int, rec: Mapping[str, Any]) -> str | None:
        file, line, rule = str(rec.get("file", "")), rec.get("line"), str(rec.get("rule", ""))
        if file not in index.files:
            return f"file {file!r} is not in the project"
        if not isinstance(line, int) or not index.has_line(file, line):
            return f"{file} has no line {line}"
        if (file, rule) not in reported:
            known = ", ".join(sorted(rules_by_file.get(file, set()))) or "none"
            return f"rule {rule!r} was not reported for {file} (reported: {known})"
        return None

    empty = GroundingResult(score=0.5, problems=("no recommendations given",)) if findings else None
    return check_items(output.get("recommendations") or [], check, label="recommendation", when_empty=empty)


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


def ground_comments(output: Mapping[str, Any], changed_lines: Mapping[str, set[int]]) -> GroundingResult:
    """Every comment must be anchored to a line the diff added or changed."""

    def check(_: int, comment: Mapping[str, Any]) -> str | None:
        file, line = str(comment.get("file", "")), comment.get("line")
        if file not in changed_lines:
            return f"{file!r} is not a changed file"
        if line not in changed_lines[file]:
            return f"line {line} of {file} is not a changed line"
        return None

    return check_items(output.get("comments") or [], check, label="comment")


def triage_task(failures: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """``failures`` are (test id, failure text) pairs."""
    system = (
        "You triage failing tests. For each failing test give the likely cause and the file and line to look "
        "at, taken from its failure text (tracebacks name them). Use the test ids exactly as given."
    )
    body = "\n\n".join(f"TEST {tid}\n{text[-2500:]}" for tid, text in failures)
    return system, _clip(body)


def ground_triage(output: Mapping[str, Any], failures: Mapping[str, str], index: SourceIndex) -> GroundingResult:
    """Each item must name a failing test, and a file:line that its failure text or the project has."""

    def check(_: int, item: Mapping[str, Any]) -> str | None:
        test, file, line = str(item.get("test", "")), str(item.get("file", "")), item.get("line")
        text = failures.get(test)
        if text is None:
            return f"{test!r} is not one of the failing tests"
        if not (f"{file}:{line}" in text or (isinstance(line, int) and index.has_line(file, line))):
            return f"{file}:{line} is neither in the failure text nor in the project"
        return None

    empty = GroundingResult(score=0.0, problems=("no triage given",)) if failures else None
    return check_items(output.get("triage") or [], check, label="item", when_empty=empty)


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
