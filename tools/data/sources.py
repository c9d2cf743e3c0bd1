"""What a user names as data, turned into files to register, all inside the allowed roots.

A source is one of:

- a file: one table (a SQLite or DuckDB file, or an ``.xlsx`` workbook: one table per table or sheet
  inside it, named when the session opens it);
- a folder: one table per data file directly inside it (hidden files and other formats skipped);
- a glob (``sales/*.parquet``, ``logs/**/*.ndjson``): one table over every file it matches, which
  must all be CSV, Parquet or JSON of one kind.

Relative paths are taken from the first allowed root. Every file is resolved (links followed) and
must stay inside the roots and be a regular file (a FIFO or device would block whoever opens it);
a glob match whose link leaves them is skipped and said so. The kind comes from the extension, and
for ``.db`` files from the file's first bytes.

A name is taken literally when a file or folder of that name exists, glob characters and all
(``[p]w.csv``, ``data{1}/x.csv``); only a spec that names nothing is expanded as a glob. The
session never hands DuckDB a name from here, only exact links to these resolved files, so DuckDB
cannot expand a name into a pattern either (see :mod:`.session`).
"""

from __future__ import annotations

import gzip
import mmap
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from caelum_mcp.core.errors import PathNotAllowedError
from caelum_mcp.tools.paths import resolve_project, resolve_within, shown

from .models import DataSourceError, QueryTimeoutError, SourceKind

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


def regular_file(path: Path, label: str) -> os.stat_result:
    """``path``'s status (links followed); a FIFO, socket or device is refused with a clear error.

    Opening a FIFO blocks until a writer appears, which would hang the reader and the call."""
    try:
        status = path.stat()
    except OSError as exc:
        raise DataSourceError(f"{shown(label)} cannot be read: {exc.strerror or type(exc).__name__}") from None
    if not stat.S_ISREG(status.st_mode):
        what = "a FIFO" if stat.S_ISFIFO(status.st_mode) else "a folder" if stat.S_ISDIR(status.st_mode) else None
        raise DataSourceError(
            f"{shown(label)} is {what or 'not a regular file'}; only regular data files are read ({FORMATS})"
        )
    return status


def line_over(path: Path, limit: int, should_stop: Callable[[], bool] = lambda: False) -> bool:
    """Whether a line of ``path`` (a text file, ``.gz`` read through) is longer than ``limit`` bytes.

    DuckDB's CSV reader spends minutes and gigabytes on a line of a few hundred megabytes, and
    does not stop when interrupted, so long lines are found here first. A plain file is looked at
    in blocks of ``limit / 2``: a line over ``limit`` holds a whole block with no newline, and a
    block with one costs a single ``memchr`` that stops at its first newline (a few bytes of
    each block are read, not the file). A ``.gz`` file is decompressed in such blocks.
    ``should_stop()`` is asked between blocks; when it says yes this raises QueryTimeoutError.
    """
    block = max(limit // 2, 1)
    if path.name.lower().endswith(".gz"):
        return _gzip_line_over(path, limit, block, should_stop)
    size = path.stat().st_size
    if size <= limit:
        return False
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        for start in range(0, size, block):
            if start % (block * 64) == 0 and should_stop():
                raise QueryTimeoutError(f"looking for long lines in {path.name} was stopped")
            end = min(start + block, size)
            if data.find(b"\n", start, end) != -1 or data.find(b"\r", start, end) != -1:
                continue
            lowest = max(0, start - limit)
            before = data.rfind(b"\n", lowest, start)
            if before == -1 and lowest > 0:
                return True
            line_start = before + 1 if before != -1 else 0
            after = data.find(b"\n", end, min(size, line_start + limit + 1))
            if after == -1 and min(size, line_start + limit + 1) - line_start > limit:
                return True
    return False


def _gzip_line_over(path: Path, limit: int, block: int, should_stop: Callable[[], bool]) -> bool:
    run = 0  # bytes since the last newline
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(block):
                if should_stop():
                    raise QueryTimeoutError(f"looking for long lines in {path.name} was stopped")
                chunk = chunk.replace(b"\r", b"\n")  # a CR alone ends a line too (old Mac files)
                first = chunk.find(b"\n")
                if first == -1:
                    run += len(chunk)
                else:  # lines wholly inside a chunk are shorter than the chunk, so under the limit
                    if run + first > limit:
                        return True
                    run = len(chunk) - chunk.rfind(b"\n") - 1
                if run > limit:
                    return True
    except (OSError, EOFError, gzip.BadGzipFile):
        return False  # DuckDB says what is wrong with the file, in its own words
    return False


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
    # Non-blocking, and only a regular file is read: a FIFO named `.db` must not block the open.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        head = os.read(fd, 16)
    except OSError:
        return None
    finally:
        os.close(fd)
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
    :class:`~caelum_mcp.core.errors.PathNotAllowedError` for a path outside the roots and
    :class:`DataSourceError` for anything else that cannot be used."""
    allowed = tuple(roots)
    files: list[SourceFile] = []
    notes: list[str] = []
    for spec in specs:
        text = spec.strip()
        if not text:
            raise DataSourceError("a source is empty; give a file, folder or glob inside the allowed roots")
        if _GLOB_CHARS.search(text) and not _names_something(text, allowed):
            found, skipped = _glob(text, allowed)
            files.append(found)
            if skipped:
                notes.append(f"{shown(found.label)}: {skipped} match(es) skipped (links leaving the allowed roots)")
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


def _names_something(text: str, roots: tuple[Path, ...]) -> bool:
    """Whether ``text`` names an existing file or folder inside the roots, read literally."""
    parent, _, leaf = text.rstrip("/").rpartition("/")
    try:
        folder = resolve_project(parent or ("/" if text.startswith("/") else "."), roots)
        return os.path.lexists(folder / leaf) if leaf not in ("", ".", "..") else True
    except PathNotAllowedError:
        return False


def _file(path: Path, roots: Sequence[Path]) -> SourceFile:
    regular_file(path, _label(path, roots))
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
    # A folder whose name holds glob characters is the folder itself when it exists.
    while first < len(parts) - 1 and _names_something("/".join(parts[: first + 1]), tuple(roots)):
        first = next((i for i, part in enumerate(parts) if i > first and _GLOB_CHARS.search(part)), len(parts) - 1)
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
    folder = _label(base, roots)
    label = pattern if folder == "." else f"{folder}/{pattern}"  # relative to its root, as a file's label is
    return SourceFile(kind=kind, paths=tuple(matches), label=label, name=table_name(name)), skipped
