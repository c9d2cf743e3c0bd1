"""What a user names as data, turned into files to register, all inside the allowed roots.

A source is one of:

- a file: one table (a SQLite or DuckDB file, or an ``.xlsx`` workbook: one table per table or sheet
  inside it, named when the session opens it);
- a folder: one table per data file directly inside it (hidden files and other formats skipped);
- a glob (``sales/*.parquet``, ``logs/**/*.ndjson``): one table over every file it matches, which
  must all be CSV, Parquet or JSON of one kind.

Relative paths are taken from the first allowed root. Every file is resolved (links followed) and
must stay inside the roots; a glob match whose link leaves them is skipped and said so. The kind
comes from the extension, and for ``.db`` files from the file's first bytes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from caelum_mcp.errors import PathNotAllowedError
from caelum_mcp.tools.paths import resolve_project, resolve_within, shown

from .models import DataSourceError, SourceKind

MAX_FILES = 64  # per folder source; a folder with more is refused with the count
MAX_GLOB_PATHS = 1024  # paths a glob may match (one table over them all)
_GLOB_CHARS = re.compile(r"[*?\[]")
_SUFFIXES: dict[str, SourceKind] = {
    ".csv": SourceKind.CSV,
    ".tsv": SourceKind.CSV,
    ".tab": SourceKind.CSV,
    ".parquet": SourceKind.PARQUET,
    ".pq": SourceKind.PARQUET,
    ".json": SourceKind.JSON,
    ".ndjson": SourceKind.JSON,
    ".jsonl": SourceKind.JSON,
    ".xlsx": SourceKind.XLSX,
    ".xlsm": SourceKind.XLSX,
    ".sqlite": SourceKind.SQLITE,
    ".sqlite3": SourceKind.SQLITE,
    ".duckdb": SourceKind.DUCKDB,
    ".ddb": SourceKind.DUCKDB,
}
_SQLITE_MAGIC = b"SQLite format 3\x00"
_DUCKDB_MAGIC = b"DUCK"  # at offset 8 of a DuckDB database file
_SCANNABLE = frozenset({SourceKind.CSV, SourceKind.PARQUET, SourceKind.JSON})
FORMATS = "CSV/TSV, Parquet, JSON/NDJSON, .xlsx, SQLite or DuckDB"


@dataclass(frozen=True)
class SourceFile:
    """Files that become one table (or, for a database or workbook, the tables inside one file).

    ``label`` is what the result shows: the path relative to the first root when it is under it.
    ``name`` is the table name wanted (made unique when the session registers it).
    """

    kind: SourceKind
    paths: tuple[Path, ...]
    label: str
    name: str


@dataclass(frozen=True)
class ResolvedSources:
    files: tuple[SourceFile, ...]
    notes: tuple[str, ...] = ()


def kind_of(path: Path) -> SourceKind | None:
    """The data kind of ``path`` by its extension (``.gz`` looked through), ``.db`` by its header."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    if suffix in _SUFFIXES:
        kind = _SUFFIXES[suffix]
        return None if kind not in _SCANNABLE and path.name.lower().endswith(".gz") else kind
    if suffix == ".db":
        return _sniff_database(path)
    return None


def _sniff_database(path: Path) -> SourceKind | None:
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError:
        return None
    if head.startswith(_SQLITE_MAGIC):
        return SourceKind.SQLITE
    if head[8:12] == _DUCKDB_MAGIC:
        return SourceKind.DUCKDB
    return None


def table_name(text: str) -> str:
    """A plain SQL identifier from a file name: lower case, ``_`` for anything else, no leading digit."""
    name = re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "data"
    return f"t_{name}" if name[0].isdigit() else name


def _stem(path: Path) -> str:
    name = path.name
    for suffix in reversed(path.suffixes):
        name = name.removesuffix(suffix)
    return name or path.name


def _label(path: Path, roots: Sequence[Path]) -> str:
    for root in roots:
        if path == root or path.is_relative_to(root):
            return path.relative_to(root).as_posix() or "."
    return path.as_posix()


def resolve_sources(specs: Sequence[str], roots: Sequence[Path]) -> ResolvedSources:
    """Every source in ``specs`` as :class:`SourceFile` s, in order; raises
    :class:`~caelum_mcp.errors.PathNotAllowedError` for a path outside the roots and
    :class:`DataSourceError` for anything else that cannot be used."""
    allowed = tuple(roots)
    files: list[SourceFile] = []
    notes: list[str] = []
    for spec in specs:
        text = spec.strip()
        if not text:
            raise DataSourceError("a source is empty; give a file, folder or glob inside the allowed roots")
        if _GLOB_CHARS.search(text):
            found, skipped = _glob(text, allowed)
            files.append(found)
            if skipped:
                notes.append(f"{shown(text)}: {skipped} match(es) skipped (links leaving the allowed roots)")
            continue
        parent, _, leaf = text.rstrip("/").rpartition("/")
        if not leaf or leaf in (".", ".."):
            files += _folder(resolve_project(text, allowed), allowed)
            continue
        folder = resolve_project(parent or ("/" if text.startswith("/") else "."), allowed)
        path = resolve_within(folder, leaf)
        if path.is_dir():
            files += _folder(resolve_project(text, allowed), allowed)
        else:
            files.append(_file(path, allowed))
    return ResolvedSources(tuple(files), tuple(notes))


def _file(path: Path, roots: Sequence[Path]) -> SourceFile:
    kind = kind_of(path)
    if kind is None:
        raise DataSourceError(f"{shown(_label(path, roots))} is not a data file this tool reads ({FORMATS})")
    return SourceFile(kind=kind, paths=(path,), label=_label(path, roots), name=table_name(_stem(path)))


def _folder(folder: Path, roots: Sequence[Path]) -> list[SourceFile]:
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
    found = []
    for entry in entries:
        try:
            path = resolve_within(folder, entry.name)
        except PathNotAllowedError:
            continue  # a link leaving the folder: not part of it
        if kind_of(path) is not None:
            found.append(_file(path, roots))
    if not found:
        raise DataSourceError(f"folder {shown(_label(folder, roots))} holds no data files ({FORMATS})")
    if len(found) > MAX_FILES:
        raise DataSourceError(
            f"folder {shown(_label(folder, roots))} holds {len(found)} data files, more than {MAX_FILES}; "
            "name the files, or a glob that combines them into one table"
        )
    return found


def _glob(text: str, roots: Sequence[Path]) -> tuple[SourceFile, int]:
    parts = text.split("/")
    first = next(i for i, part in enumerate(parts) if _GLOB_CHARS.search(part))
    prefix = "/".join(parts[:first]) or ("/" if text.startswith("/") else ".")
    pattern = "/".join(parts[first:])
    if ".." in parts[first:]:
        raise DataSourceError(f"glob {shown(text)}: `..` is not allowed after the first wildcard")
    base = resolve_project(prefix, tuple(roots))
    matches: list[Path] = []
    skipped = 0
    # Stop walking past the cap (a `**` over a big tree), then sort what was found.
    found = list(islice(base.glob(pattern), MAX_GLOB_PATHS + 1))
    if len(found) > MAX_GLOB_PATHS:
        raise DataSourceError(f"glob {shown(text)} matches more than {MAX_GLOB_PATHS} paths; make it narrower")
    for candidate in sorted(found):
        if candidate.name.startswith(".") or not candidate.is_file():
            continue
        try:
            matches.append(resolve_within(base, candidate.relative_to(base)))
        except PathNotAllowedError:
            skipped += 1
    if not matches:
        raise DataSourceError(f"glob {shown(text)} matches no files")
    kinds = {kind_of(m) for m in matches}
    if len(kinds) != 1 or None in kinds:
        names = sorted(str(k) for k in kinds if k is not None)
        raise DataSourceError(
            f"glob {shown(text)} matches files of several kinds ({', '.join(names) or 'unknown'}); "
            "make it match one kind (e.g. `*.parquet`)"
        )
    kind = kinds.pop()
    assert kind is not None
    if kind not in _SCANNABLE:
        raise DataSourceError(f"glob {shown(text)}: {kind} files cannot be combined into one table; name each file")
    leaf = _GLOB_CHARS.split(_stem(Path(parts[-1])))[0].strip("_-. ")
    name = leaf or (parts[first - 1] if first > 0 else "") or base.name
    return SourceFile(kind=kind, paths=tuple(matches), label=text, name=table_name(name)), skipped
