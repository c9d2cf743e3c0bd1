"""What a batch runs over: its prompt template and its items, read as a stream.

A template is plain text with ``{{ item }}``, ``{{ item.FIELD }}`` (dotted for nested objects) and
``{{ id }}`` fields. Rendering is substitution only: nothing in a template or an item is evaluated,
so a template cannot run code and an item cannot inject fields (a ``{{ ... }}`` inside an item's
value stays text). A field an item lacks is that item's error, never the batch's.

Items come from one source, each read as a stream so that memory stays flat however long it is:

- a JSONL file (one JSON value a line; an object's fields are ``item.FIELD``);
- a CSV file (a header row, then one item a row, its fields by column name);
- a glob of files under a project (the file's text is the item, its relative path the id);
- an inline list.

Bad input never stops the batch: a line over the size limit (read in bounded pieces, never held
whole), a line that is not JSON, a malformed CSV row, a file that is not UTF-8 text each become an
:class:`RawItem` with an ``error`` that says what to fix, and the rest runs.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from caelum_mcp.core.errors import PathNotAllowedError, ToolInputError
from caelum_mcp.tools.paths import OUTSIDE_ROOTS, resolves_inside, shown
from caelum_mcp.tools.safe_read import open_regular

# Folders a glob never enters: tool caches and environments are not project files.
SKIPPED_DIRS = frozenset({".git", ".hg", ".svn", ".venv", "venv", "node_modules", "__pycache__", ".mypy_cache"})
_FIELD = re.compile(r"\{\{\s*(.*?)\s*\}\}", re.DOTALL)
_KNOWN = re.compile(r"^(?:id|item(?:\.[^.\s{}]+)*)$")
_DRAIN_CHUNK = 1 << 20
# Stands in for a CSV line over the limit, so the row it belongs to can be told apart.
_OVERSIZE = "\ue000caelum-oversize\ue000"


@dataclass(frozen=True, slots=True)
class RawItem:
    """One input: its id, and its value (any JSON value) or why it cannot run."""

    item_id: str
    value: Any = None
    error: str | None = None


class Template:
    """A prompt template, checked when made: every field is ``item``, ``item.FIELD…`` or ``id``,
    and at least one uses the item (a template without one would ask the same thing every time)."""

    def __init__(self, text: str) -> None:
        fields = [m.group(1) for m in _FIELD.finditer(text)]
        unknown = [f for f in fields if not _KNOWN.match(f)]
        if unknown:
            raise ToolInputError(
                f"template field {{{{ {unknown[0][:60]} }}}} is not known; use {{{{ item }}}}, "
                "{{ item.FIELD }} or {{ id }} (plain substitution: no expressions or filters)"
            )
        if not any(f.startswith("item") for f in fields):
            raise ToolInputError("the template must use the item: put {{ item }} or {{ item.FIELD }} where it goes")
        self.text = text

    def render(self, item_id: str, value: Any) -> str:
        """The prompt for one item. Raises :class:`KeyError` with a message naming the missing
        field (and the fields the item has) when the item lacks one."""

        def field(match: re.Match[str]) -> str:
            name = match.group(1)
            if name == "id":
                return item_id
            current = value
            path = name.split(".")[1:]
            for depth, key in enumerate(path):
                if not isinstance(current, dict):
                    kind = type(current).__name__ if current is not None else "null"
                    where = "item" if depth == 0 else "item." + ".".join(path[:depth])
                    raise KeyError(f"{{{{ {name} }}}} needs {where} to be an object with fields, but it is a {kind}")
                if key not in current:
                    have = ", ".join(list(current)[:12]) or "none"
                    raise KeyError(f"the item has no field {key!r} for {{{{ {name} }}}} (its fields: {have})")
                current = current[key]
            return current if isinstance(current, str) else json.dumps(current, ensure_ascii=False)

        return _FIELD.sub(field, self.text)


def resolve_in_roots(path: str, roots: tuple[Path, ...], *, what: str, must_exist: bool = True) -> Path:
    """``path`` resolved (relative to the first root), which must lie inside one of ``roots``."""
    if not roots:
        raise PathNotAllowedError(f"{what} {shown(path)} {OUTSIDE_ROOTS}")
    if "\0" in path:
        raise PathNotAllowedError(f"{what} {shown(path.replace(chr(0), ''))} contains a NUL byte; remove it")
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = roots[0] / candidate
    if not any(resolves_inside(candidate, root.resolve()) for root in roots):
        raise PathNotAllowedError(f"{what} {shown(path)} {OUTSIDE_ROOTS}")
    resolved = candidate.resolve()
    if must_exist and not resolved.is_file():
        raise PathNotAllowedError(f"{what} {shown(path)} is not a file inside the allowed roots")
    return resolved


def bounded_lines(stream: BinaryIO, limit: int) -> Iterator[tuple[int, bytes | None]]:
    """``(line number, line)`` for each line, or ``(n, None)`` for a line over ``limit`` bytes,
    which is skipped in pieces of a megabyte, so a 50 MB line is never held in memory."""
    number = 0
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        number += 1
        if len(line.rstrip(b"\r\n")) > limit:
            while not line.endswith(b"\n"):
                line = stream.readline(_DRAIN_CHUNK)
                if not line:
                    break
            yield number, None
            continue
        yield number, line


def _too_big(what: str, limit: int) -> str:
    return f"{what} is over the {limit:,}-byte item limit; split it, or raise max_item_bytes"


def _item_id(value: Any, id_field: str | None, default: str) -> str:
    if id_field and isinstance(value, dict) and id_field in value and value[id_field] is not None:
        return str(value[id_field])[:200]
    return default


def read_jsonl(path: Path, limit: int, id_field: str | None) -> Iterator[RawItem]:
    """One item a non-blank line."""
    with open_regular(path) as stream:
        for number, line in bounded_lines(stream, limit):
            label = f"line {number}"
            if line is None:
                yield RawItem(label, error=_too_big(label, limit))
                continue
            if not line.strip():
                continue
            try:
                value = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                yield RawItem(label, error=f"{label} is not UTF-8 text; save the file as UTF-8")
                continue
            except json.JSONDecodeError as exc:
                yield RawItem(label, error=f"{label} is not JSON ({exc.msg} at column {exc.colno}); fix or remove it")
                continue
            yield RawItem(_item_id(value, id_field, label), value)


def read_csv(path: Path, limit: int, id_field: str | None) -> Iterator[RawItem]:
    """A header row, then one item a row (a dict by column name)."""
    with open_regular(path) as stream:

        def lines() -> Iterator[str]:
            for _, line in bounded_lines(stream, limit):
                yield _OVERSIZE + "\n" if line is None else line.decode("utf-8", errors="replace")

        reader = csv.reader(lines(), strict=True)
        header: list[str] | None = None
        row_number = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                row_number += 1
                label = f"row {row_number}"
                yield RawItem(label, error=f"{label} (line {reader.line_num}) is malformed CSV: {exc}; fix its quoting")
                continue
            if header is None:
                if _OVERSIZE in row:
                    raise ToolInputError(_too_big("the CSV header", limit))
                header = row
                continue
            if not row:
                continue
            row_number += 1
            label = f"row {row_number}"
            if any(_OVERSIZE in cell for cell in row):
                yield RawItem(label, error=_too_big(f"{label} (line {reader.line_num})", limit))
            elif len(row) != len(header):
                yield RawItem(
                    label,
                    error=f"{label} (line {reader.line_num}) has {len(row)} fields where the header has "
                    f"{len(header)}; fix its commas or quoting",
                )
            else:
                value = dict(zip(header, row, strict=True))
                yield RawItem(_item_id(value, id_field, label), value)


def glob_files(base: Path, pattern: str, roots: tuple[Path, ...], max_files: int) -> list[Path]:
    """The files ``pattern`` matches under ``base``, sorted, inside the roots, skipping tool folders."""
    if Path(pattern).is_absolute() or ".." in Path(pattern).parts:
        raise ToolInputError(f"glob {shown(pattern)} must be relative to the project, without '..'")
    resolved_roots = [r.resolve() for r in roots]
    found: list[Path] = []
    for path in base.glob(pattern):
        relative = path.relative_to(base)
        if any(part in SKIPPED_DIRS or part.startswith(".") for part in relative.parts[:-1]):
            continue
        if not path.is_file() or not any(resolves_inside(path, root) for root in resolved_roots):
            continue
        found.append(path)
        if len(found) > max_files:
            raise ToolInputError(f"glob {shown(pattern)} matches over {max_files:,} files; narrow it")
    return sorted(found)


def read_file_item(path: Path, limit: int) -> str:
    """A glob item's text. Raises :class:`ValueError` saying why it cannot be an item."""
    try:
        with open_regular(path) as stream:
            data = stream.read(limit + 1)
    except OSError as exc:
        raise ValueError(f"cannot read the file: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise ValueError(_too_big("the file", limit))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the file is not UTF-8 text (binary?); narrow the glob to text files") from None


def inline_items(values: list[Any], limit: int, id_field: str | None) -> Iterator[RawItem]:
    """An inline list: the index is the id unless ``id_field`` names one."""
    for index, value in enumerate(values):
        size = len(json.dumps(value, ensure_ascii=False).encode())
        if size > limit:
            yield RawItem(str(index), error=_too_big(f"item {index}", limit))
        else:
            yield RawItem(_item_id(value, id_field, str(index)), value)
