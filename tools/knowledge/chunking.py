"""Passages that follow a file's structure, each with its path, line span and symbol.

- Python: one chunk per top-level function and per class (a long class: its header, then one chunk
  per method, named ``Class.method``); the module's other statements between them are grouped.
  Comments right above a definition belong to it. A file that does not parse is chunked as code.
- Other code: top-level blocks (a block starts at a line in column 0 after a blank line or a closing
  brace), merged while small, split when long; the symbol is the name the block declares.
- Markdown and reStructuredText: one chunk per section, the symbol being the heading path
  (``Install > From source``); a long section is split by paragraph.
- Plain text: paragraphs, merged up to the size cap.

Every chunk stays under :data:`MAX_LINES` lines and about :data:`MAX_CHARS` characters, so that a
passage fits a prompt and an embedding model's input. Line numbers are 1-based and inclusive.

A single line over :data:`MAX_CHARS` is cut to its start in code (minified code is not worth a
hundred passages), but in prose (a paragraph written on one line, as Markdown allows) it is split
at spaces into consecutive passages of the same line, up to :data:`MAX_LINE_PIECES` of them: what
lay past the cut was never searched.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

ChunkKind = Literal["function", "class", "method", "module", "block", "section", "paragraph"]

# Bumped when the same file would be cut differently: an index chunked by another version re-chunks
# every file at its next sync (keeping the vectors of the chunks that come out the same).
CHUNKING_VERSION = "2"  # 2: an overlong prose line is split, no longer cut
MAX_LINES = 80
MAX_CHARS = 4000
_SMALL_LINES = 12  # blocks and paragraphs below this are merged with their neighbours
_HEADER_LINES = 3  # a class header this short is not a passage of its own
MAX_LINE_PIECES = 16  # passages one overlong prose line becomes at most (then the rest is cut)
_PROSE_KINDS = ("section", "paragraph")

PYTHON_SUFFIXES = (".py", ".pyi")
MARKDOWN_SUFFIXES = (".md", ".markdown", ".mdx")
RST_SUFFIXES = (".rst",)
TEXT_SUFFIXES = (".txt", ".text", "")
CODE_SUFFIXES = (
    ".js", ".jsx", ".mjs", ".cjs", ".ts", ".tsx", ".go", ".rs", ".java", ".kt", ".kts", ".scala", ".c", ".h",
    ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".cs", ".swift", ".rb", ".php", ".lua", ".sh", ".bash", ".zsh",
    ".sql", ".r", ".jl", ".ex", ".exs", ".erl", ".hs", ".ml", ".dart", ".vue", ".svelte", ".toml", ".yaml",
    ".yml", ".json", ".ini", ".cfg", ".conf", ".proto", ".graphql", ".tf", ".css", ".scss", ".html", ".xml",
    ".mk", ".cmake", ".gradle", ".dockerfile",
)  # fmt: skip


@dataclass(frozen=True)
class Chunk:
    """One passage: ``text`` is lines ``start_line``..``end_line`` of ``path`` (1-based, inclusive)."""

    path: str
    start_line: int
    end_line: int
    symbol: str
    kind: ChunkKind
    text: str


def chunk_file(path: str, text: str) -> list[Chunk]:
    """``text`` (the content of ``path``) cut into passages by its kind; see the module docstring."""
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        return []
    lower = path.lower()
    suffix = "." + lower.rsplit(".", 1)[-1] if "." in lower.rsplit("/", 1)[-1] else ""
    if suffix in PYTHON_SUFFIXES:
        return python_chunks(path, lines)
    if suffix in MARKDOWN_SUFFIXES:
        return section_chunks(path, lines, _markdown_headings(lines))
    if suffix in RST_SUFFIXES:
        return section_chunks(path, lines, _rst_headings(lines))
    if suffix in CODE_SUFFIXES or lower.rsplit("/", 1)[-1] in ("makefile", "dockerfile", "justfile"):
        return block_chunks(path, lines)
    return paragraph_chunks(path, lines, 1, len(lines), "", "paragraph")


# Python ---------------------------------------------------------------------------------------


def python_chunks(path: str, lines: list[str]) -> list[Chunk]:
    """Functions and classes by ``ast``; everything else grouped as module code."""
    try:
        tree = ast.parse("\n".join(lines))
    except (SyntaxError, ValueError, RecursionError):
        return block_chunks(path, lines)
    chunks: list[Chunk] = []
    cursor = 1  # first line not yet in a chunk
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        start = _leading_comments(lines, _first_line(node), cursor)
        end = node.end_lineno or node.lineno
        if start > cursor:
            chunks += paragraph_chunks(path, lines, cursor, start - 1, "", "module")
        if isinstance(node, ast.ClassDef):
            chunks += _class_chunks(path, lines, node, start, end)
        else:
            chunks += _windows(path, lines, start, end, node.name, "function")
        cursor = end + 1
    if cursor <= len(lines):
        chunks += paragraph_chunks(path, lines, cursor, len(lines), "", "module")
    return chunks


def _first_line(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> int:
    return min([node.lineno, *(d.lineno for d in node.decorator_list)])


def _leading_comments(lines: list[str], start: int, floor: int) -> int:
    """The first line of the comment block directly above line ``start`` (not above ``floor``)."""
    line = start
    while line - 1 >= floor and lines[line - 2].lstrip().startswith("#"):
        line -= 1
    return line


def _class_chunks(path: str, lines: list[str], node: ast.ClassDef, start: int, end: int) -> list[Chunk]:
    if end - start + 1 <= MAX_LINES and _chars(lines, start, end) <= MAX_CHARS:
        return [_chunk(path, lines, start, end, node.name, "class")]
    methods = [n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    chunks: list[Chunk] = []
    cursor = start
    for method in methods:
        m_start = _leading_comments(lines, _first_line(method), cursor)
        m_end = method.end_lineno or method.lineno
        if cursor == start and m_start - cursor <= _HEADER_LINES:
            m_start = cursor  # a bare `class X(Base):` line goes with the first method, not alone
        if m_start > cursor:
            chunks += _windows(path, lines, cursor, m_start - 1, node.name, "class")
        chunks += _windows(path, lines, m_start, m_end, f"{node.name}.{method.name}", "method")
        cursor = m_end + 1
    if cursor <= end:
        chunks += _windows(path, lines, cursor, end, node.name, "class")
    return [c for c in chunks if c.text.strip()]


# other code -----------------------------------------------------------------------------------

_DECLARES = re.compile(
    r"\b(?:function\*?|def|class|func|fn|struct|interface|enum|type|impl|trait|module|object|const|let|var|"
    r"message|service|table|view|resource)\s+(?:\([^)]*\)\s*)?([A-Za-z_$][\w$]*)"
)
_BLOCK_END = re.compile(r"^\s*(?:[}\])]+[;,)]*|end|fi|done|esac)\s*$")


def block_chunks(path: str, lines: list[str]) -> list[Chunk]:
    """Top-level blocks: a new one starts at a column-0 line after a blank line or a block's end."""
    starts = [1]
    for i in range(1, len(lines)):
        line, before = lines[i], lines[i - 1]
        if line and not line[0].isspace() and not _BLOCK_END.match(line):
            if not before.strip() or _BLOCK_END.match(before):
                starts.append(i + 1)
    spans = list(zip(starts, [*(s - 1 for s in starts[1:]), len(lines)], strict=True))
    chunks: list[Chunk] = []
    group_start, group_end = spans[0]
    for start, end in spans[1:]:
        small = group_end - group_start + 1 < _SMALL_LINES or end - start + 1 < _SMALL_LINES
        fits = end - group_start + 1 <= MAX_LINES // 2 and _chars(lines, group_start, end) <= MAX_CHARS // 2
        if small and fits:
            group_end = end
            continue
        chunks += _windows(path, lines, group_start, group_end, _declared(lines, group_start, group_end), "block")
        group_start, group_end = start, end
    chunks += _windows(path, lines, group_start, group_end, _declared(lines, group_start, group_end), "block")
    return chunks


def _declared(lines: list[str], start: int, end: int) -> str:
    for line in lines[start - 1 : min(end, start + 5)]:
        match = _DECLARES.search(line)
        if match:
            return match.group(1)
    return ""


# documents ------------------------------------------------------------------------------------

_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+.:_])\1{2,}\s*$")


def _markdown_headings(lines: list[str]) -> list[tuple[int, int, str]]:
    """(line, level, title) of each Markdown heading outside code fences."""
    found: list[tuple[int, int, str]] = []
    fence: str | None = None
    for number, line in enumerate(lines, start=1):
        stripped = line.lstrip()
        if stripped.startswith(("```", "~~~")):
            marker = stripped[:3]
            fence = None if fence == marker else (fence or marker)
            continue
        match = None if fence else _MD_HEADING.match(line)
        if match:
            found.append((number, len(match.group(1)), match.group(2)))
    return found


def _rst_headings(lines: list[str]) -> list[tuple[int, int, str]]:
    """(line, level, title) of each reStructuredText title; levels in order of first appearance."""
    found: list[tuple[int, int, str]] = []
    styles: list[str] = []
    i = 0
    while i < len(lines) - 1:
        title, under = lines[i].rstrip(), lines[i + 1].rstrip()
        match = _RST_UNDERLINE.match(under)
        if title.strip() and not _RST_UNDERLINE.match(title) and match and len(under) >= len(title.strip()):
            overlined = i > 0 and lines[i - 1].rstrip() == under
            style = ("o" if overlined else "") + match.group(1)
            if style not in styles:
                styles.append(style)
            start = i if overlined else i + 1
            found.append((start, styles.index(style) + 1, title.strip()))
            i += 2
            continue
        i += 1
    return found


def section_chunks(path: str, lines: list[str], headings: list[tuple[int, int, str]]) -> list[Chunk]:
    """One chunk per section (heading to the next heading), named by its heading path."""
    chunks: list[Chunk] = []
    if not headings or headings[0][0] > 1:
        first = headings[0][0] - 1 if headings else len(lines)
        chunks += paragraph_chunks(path, lines, 1, first, "", "section")
    trail: list[tuple[int, str]] = []
    for i, (line, level, title) in enumerate(headings):
        trail = [(lv, t) for lv, t in trail if lv < level] + [(level, title)]
        end = headings[i + 1][0] - 1 if i + 1 < len(headings) else len(lines)
        symbol = " > ".join(t for _, t in trail)[:200]
        if end - line + 1 <= MAX_LINES and _chars(lines, line, end) <= MAX_CHARS:
            if _chars(lines, line, end) > 0:
                chunks.append(_chunk(path, lines, line, end, symbol, "section"))
        else:
            chunks += paragraph_chunks(path, lines, line, end, symbol, "section")
    return [c for c in chunks if c.text.strip()]


def paragraph_chunks(path: str, lines: list[str], start: int, end: int, symbol: str, kind: ChunkKind) -> list[Chunk]:
    """Lines ``start``..``end`` as paragraphs (blank-line separated), merged up to the size caps."""
    chunks: list[Chunk] = []
    group: tuple[int, int] | None = None
    for p_start, p_end in _paragraphs(lines, start, end):
        if group is None:
            group = (p_start, p_end)
            continue
        if p_end - group[0] + 1 <= MAX_LINES // 2 and _chars(lines, group[0], p_end) <= MAX_CHARS // 2:
            group = (group[0], p_end)
            continue
        chunks += _windows(path, lines, group[0], group[1], symbol, kind)
        group = (p_start, p_end)
    if group is not None:
        chunks += _windows(path, lines, group[0], group[1], symbol, kind)
    return chunks


def _paragraphs(lines: list[str], start: int, end: int) -> Iterator[tuple[int, int]]:
    current: int | None = None
    for number in range(start, end + 1):
        blank = not lines[number - 1].strip()
        if blank and current is not None:
            yield current, number - 1
            current = None
        elif not blank and current is None:
            current = number
    if current is not None:
        yield current, end


# shared ---------------------------------------------------------------------------------------


def _windows(path: str, lines: list[str], start: int, end: int, symbol: str, kind: ChunkKind) -> list[Chunk]:
    """Lines ``start``..``end`` as one chunk, or as consecutive windows when over the caps."""
    while start <= end and not lines[start - 1].strip():
        start += 1
    while end >= start and not lines[end - 1].strip():
        end -= 1
    if start > end:
        return []
    out: list[Chunk] = []
    window_start = start
    while window_start <= end:
        window_end = min(end, window_start + MAX_LINES - 1)
        while window_end > window_start and _chars(lines, window_start, window_end) > MAX_CHARS:
            window_end = window_start + (window_end - window_start) // 2
        if window_end == window_start and kind in _PROSE_KINDS and len(lines[window_start - 1]) > MAX_CHARS:
            out += [
                Chunk(path=path, start_line=window_start, end_line=window_start, symbol=symbol, kind=kind, text=piece)
                for piece in _line_pieces(lines[window_start - 1])
            ]
        else:
            out.append(_chunk(path, lines, window_start, window_end, symbol, kind))
        window_start = window_end + 1
    return out


def _line_pieces(line: str) -> list[str]:
    """``line`` in consecutive pieces of at most :data:`MAX_CHARS` characters, cut at a space where
    there is one in the piece's second half; at most :data:`MAX_LINE_PIECES` of them."""
    pieces: list[str] = []
    rest = line
    while rest.strip() and len(pieces) < MAX_LINE_PIECES:
        if len(rest) <= MAX_CHARS:
            pieces.append(rest)
            break
        cut = rest.rfind(" ", MAX_CHARS // 2, MAX_CHARS)
        cut = MAX_CHARS if cut < 0 else cut
        pieces.append(rest[:cut])
        rest = rest[cut:].lstrip(" ")
    return [p for p in pieces if p.strip()]


def _chunk(path: str, lines: list[str], start: int, end: int, symbol: str, kind: ChunkKind) -> Chunk:
    text = "\n".join(lines[start - 1 : end])
    if len(text) > MAX_CHARS:  # one enormous line (minified code): keep its start
        text = text[:MAX_CHARS]
    return Chunk(path=path, start_line=start, end_line=end, symbol=symbol, kind=kind, text=text)


def _chars(lines: list[str], start: int, end: int) -> int:
    return sum(len(line) + 1 for line in lines[start - 1 : end])
