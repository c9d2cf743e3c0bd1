"""Passages trimmed around what matched, so a result shows the lines that matter and stays small.

A chunk longer than ``max_lines`` is cut to the window of ``max_lines`` lines holding the most
query terms (a term matches a line's word when one starts with the other's first five letters, a
crude stem that needs no stemmer); the snippet says which lines it shows and how many it left
out. Lines are cut at ``max_line_chars`` characters.
"""

from __future__ import annotations

from dataclasses import dataclass

from .terms import index_text

DEFAULT_LINES = 12
DEFAULT_LINE_CHARS = 160
_STEM = 5


@dataclass(frozen=True)
class Snippet:
    text: str
    start_line: int
    end_line: int
    lines_cut: int


def _line_score(line: str, stems: set[str]) -> int:
    words = {w[:_STEM] for w in index_text(line).split()}
    return len(words & stems)


def snippet(
    text: str,
    first_line: int,
    terms: list[str],
    *,
    max_lines: int = DEFAULT_LINES,
    max_line_chars: int = DEFAULT_LINE_CHARS,
) -> Snippet:
    """The best window of ``text`` (whose first line is numbered ``first_line``) for ``terms``."""
    lines = text.split("\n")
    start = 0
    if len(lines) > max_lines:
        stems = {t[:_STEM] for t in terms}
        scores = [_line_score(line, stems) for line in lines]
        window = sum(scores[:max_lines])
        best, best_start = window, 0
        for i in range(1, len(lines) - max_lines + 1):
            window += scores[i + max_lines - 1] - scores[i - 1]
            if window > best:
                best, best_start = window, i
        start = best_start
    shown = lines[start : start + max_lines]
    cut = [line if len(line) <= max_line_chars else line[: max_line_chars - 1] + "…" for line in shown]
    return Snippet(
        text="\n".join(cut),
        start_line=first_line + start,
        end_line=first_line + start + len(shown) - 1,
        lines_cut=len(lines) - len(shown),
    )
