"""Reading log files: plain, gzip-compressed and rotated, streamed line by line.

:func:`log_files` turns what a caller names (files, folders, glob patterns) into the files to
read, with each file's rotated predecessors (``app.log.1``, ``app.log.2.gz``,
``app.log-20240101.gz``) before it, oldest first, so entries come in time order.
:func:`read_entries` streams one file's entries: the format is detected from its first lines
(:mod:`.formats`), continuation lines (stack traces) are folded into their entry, and journald
export files (``journalctl -o export``) are read entry by entry. Compression is recognised by the
file's first bytes, not its name. Nothing is read whole into memory; a line longer than
:data:`MAX_LINE_CHARS` is cut.
"""

from __future__ import annotations

import glob
import gzip
import io
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from .formats import SAMPLE_LINES, LineFormat, ParsedLine, detect_format, is_continuation, parse_record

MAX_LINE_CHARS = 4_000
MAX_DETAIL_CHARS = 400  # continuation text kept with an entry (the end of a stack trace matters most)
_GZIP_MAGIC = b"\x1f\x8b"
_ROTATED = re.compile(r"^(?P<base>.+?)(?:[.-](?P<n>\d{1,3})|[.-](?P<date>\d{8}(?:\d{2,6})?))(?P<gz>\.gz)?$")
_GLOB_CHARS = frozenset("*?[")


@dataclass(slots=True)
class LogEntry:
    """One log entry: where it starts (``line``, 1-based) and its parsed parts. ``extra_lines``
    counts the continuation lines folded into it; ``detail`` holds the last of them."""

    line: int
    time: datetime | None
    level: str | None
    source: str | None
    message: str
    extra_lines: int = 0
    detail: str = field(default="")


def log_files(root: Path, names: Sequence[str], *, rotated: bool = True, max_files: int = 200) -> list[Path]:
    """The files ``names`` stand for under ``root``, oldest rotation first, without repeats.

    A name may be a file, a folder (its files, not recursively) or a glob pattern. Files outside
    ``root`` are the caller's to refuse (resolve each one with ``caelum_mcp.tools.paths``).
    """
    found: list[Path] = []
    for name in names:
        if _GLOB_CHARS & set(name):
            pattern = name if Path(name).is_absolute() else str(root / name)
            matches = [Path(p) for p in sorted(glob.glob(pattern)) if Path(p).is_file()]
            found.extend(_by_rotation(matches))
            continue
        path = Path(name) if Path(name).is_absolute() else root / name
        if path.is_dir():
            found.extend(_by_rotation([p for p in sorted(path.iterdir()) if p.is_file()]))
        elif rotated:
            found.extend(_with_rotations(path))
        else:
            found.append(path)
    unique = list(dict.fromkeys(found))
    return unique[:max_files]


def _rotation_key(path: Path) -> tuple[str, int, str]:
    """Sort key: files of one base name together; numbered rotations highest (oldest) first,
    dated ones oldest first, the live file last."""
    match = _ROTATED.match(path.name)
    if match is None:
        return (path.name, 2, "")
    if match.group("n") is not None:
        return (match.group("base"), 0, f"{999 - int(match.group('n')):04d}")
    return (match.group("base"), 1, match.group("date") or "")


def _by_rotation(paths: Sequence[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: (str(p.parent), *_rotation_key(p)))


def _with_rotations(path: Path) -> list[Path]:
    siblings = []
    if path.parent.is_dir():
        for candidate in path.parent.glob(glob.escape(path.name) + "[.-]*"):
            match = _ROTATED.match(candidate.name)
            if match and match.group("base") == path.name and candidate.is_file():
                siblings.append(candidate)
    return [*_by_rotation(siblings), path]


def open_binary(path: Path) -> BinaryIO:
    """``path`` opened for reading, decompressed when it is gzip (by its first bytes)."""
    raw = path.open("rb")
    if raw.peek(2)[:2] == _GZIP_MAGIC if isinstance(raw, io.BufferedReader) else False:
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def _lines(stream: BinaryIO) -> Iterator[str]:
    for raw in stream:
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        yield text[:MAX_LINE_CHARS]


def read_entries(path: Path, reference: datetime | None = None) -> tuple[str, Iterator[LogEntry]]:
    """The detected format name and a stream of ``path`` 's entries (the file stays open until
    the stream is exhausted or closed). ``reference`` dates year-less times (default: the file's
    modification time)."""
    when = reference or datetime.fromtimestamp(path.stat().st_mtime)
    with open_binary(path) as stream:
        head = stream.readline()
        if head.startswith((b"__CURSOR=", b"__REALTIME_TIMESTAMP=")):
            return "journald-export", _journald_entries(path, when)
        sample = [head.decode("utf-8", "replace").rstrip("\r\n")]
        for raw in stream:
            sample.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
            if len(sample) >= SAMPLE_LINES:
                break
    fmt = detect_format(sample, when)
    return fmt.name, _text_entries(path, fmt)


def _text_entries(path: Path, fmt: LineFormat) -> Iterator[LogEntry]:
    current: LogEntry | None = None
    timed = fmt.name not in ("plain", "python-logging")
    with open_binary(path) as stream:
        for number, line in enumerate(_lines(stream), start=1):
            if not line.strip():
                continue
            parsed: ParsedLine | None = fmt.parse(line)
            # inside a stack trace (a continuation seen already) every unparsed line continues it:
            # Python's closing "ValueError: ..." line does not start with white space
            continues = parsed is None and (
                is_continuation(line)
                or (timed and not _starts_like_time(line))
                or bool(current and current.extra_lines)
            )
            if continues and current is not None:
                current.extra_lines += 1
                current.detail = line.strip()[:MAX_DETAIL_CHARS]
                continue
            if current is not None:
                yield current
            if parsed is None:
                parsed = ParsedLine(None, None, None, line)
            current = LogEntry(number, parsed.time, parsed.level, parsed.source, parsed.message)
    if current is not None:
        yield current


_TIME_START = re.compile(r"^[\[(]?\d")


def _starts_like_time(line: str) -> bool:
    # An unparsed line that starts with a digit is more likely a new entry in an odd shape than a
    # continuation: keep it as its own entry.
    return bool(_TIME_START.match(line))


def _journald_entries(path: Path, reference: datetime) -> Iterator[LogEntry]:
    """``journalctl -o export``: ``KEY=value`` lines, binary fields as ``KEY\\n<u64 size><bytes>\\n``,
    entries separated by an empty line."""
    with open_binary(path) as stream:
        number = 0
        start = 1
        fields: dict[str, str] = {}
        while True:
            raw = stream.readline()
            if not raw:
                break
            number += 1
            line = raw.rstrip(b"\n")
            if not line:
                if fields:
                    yield _journald_entry(fields, start, reference)
                fields, start = {}, number + 1
                continue
            key, eq, value = line.partition(b"=")
            if eq:
                fields[key.decode("ascii", "replace")] = value.decode("utf-8", "replace")[:MAX_LINE_CHARS]
                continue
            size_bytes = stream.read(8)
            if len(size_bytes) < 8:
                break
            (size,) = struct.unpack("<Q", size_bytes)
            data = stream.read(min(size, 1 << 20))
            if size > len(data):
                stream.seek(size - len(data), io.SEEK_CUR)
            stream.read(1)  # the newline after the data
            fields[key.decode("ascii", "replace")] = data.decode("utf-8", "replace")[:MAX_LINE_CHARS]
            number += data.count(b"\n") + 1
        if fields:
            yield _journald_entry(fields, start, reference)


def _journald_entry(fields: dict[str, str], line: int, reference: datetime) -> LogEntry:
    parsed = parse_record(fields, reference)
    return LogEntry(line, parsed.time, parsed.level, parsed.source, parsed.message)
