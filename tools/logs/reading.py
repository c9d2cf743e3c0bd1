"""Reading log files: plain, gzip-compressed and rotated, streamed line by line.

:func:`log_files` turns what a caller names (files, folders, glob patterns) into the files to
read, with each file's rotated predecessors (``app.log.1``, ``app.log.2.gz``,
``app.log-20240101.gz``) before it, oldest first, so entries come in time order.
:func:`read_entries` streams one file's entries: the format is detected from its first lines
(:mod:`.formats`), continuation lines (stack traces) are folded into their entry, and journald
export files (``journalctl -o export``) are read entry by entry. Compression is recognised by the
file's first bytes, not its name.

A log may be hostile (a gzip bomb, a 2 GiB line, a FIFO named ``.log``), so reading is bounded:
only regular files are opened, nothing is read whole into memory, a line is kept up to
:data:`MAX_LINE_BYTES` (and :data:`MAX_LINE_CHARS` characters) and the rest of it skipped, a file
is read up to :data:`MAX_FILE_BYTES` after decompression, and a ``should_stop`` check (deadline,
cancellation) is asked as it goes (:class:`ReadLimits`); :class:`ReadStats` says what was cut.
"""

from __future__ import annotations

import glob
import gzip
import io
import re
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Literal

from ..safe_read import open_regular
from .formats import SAMPLE_LINES, LineFormat, ParsedLine, detect_format, is_continuation, parse_record

MAX_LINE_CHARS = 4_000
MAX_LINE_BYTES = 64 * 1024  # of one raw line; the rest of a longer line is skipped, counted as cut
MAX_FILE_BYTES = 1 << 30  # read from one file, after decompression (a gzip bomb stops here)
_SKIP_CHUNK_BYTES = 1 << 20
_STOP_CHECK_LINES = 256
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
    ``root`` are the caller's to refuse (resolve each one with ``caelum_mcp.tools.paths``), and so
    are FIFOs, sockets and devices, which are listed so that the caller can say it left them out
    (:func:`open_binary` never opens them).
    """
    found: list[Path] = []
    for name in names:
        if _GLOB_CHARS & set(name):
            pattern = name if Path(name).is_absolute() else str(root / name)
            matches = [Path(p) for p in sorted(glob.glob(pattern)) if not Path(p).is_dir()]
            found.extend(_by_rotation(matches))
            continue
        path = Path(name) if Path(name).is_absolute() else root / name
        if path.is_dir():
            found.extend(_by_rotation([p for p in sorted(path.iterdir()) if not p.is_dir()]))
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


@dataclass(frozen=True)
class ReadLimits:
    """How much of one log file is read: bytes after decompression, bytes of one line, and a
    ``should_stop`` check (a deadline, a cancelled call) asked between lines and between the
    chunks of a long one."""

    max_bytes: int = MAX_FILE_BYTES
    max_line_bytes: int = MAX_LINE_BYTES
    should_stop: Callable[[], bool] | None = None


@dataclass
class ReadStats:
    """What reading one file did: bytes read (after decompression), lines cut at the line cap,
    and why it stopped early, if it did (``"byte cap"`` or ``"stopped"``)."""

    bytes_read: int = 0
    lines_cut: int = 0
    stopped: Literal["byte cap", "stopped"] | None = None


def open_binary(path: Path) -> BinaryIO:
    """``path`` opened for reading, decompressed when it is gzip (by its first bytes).

    Only a regular file is opened (:func:`caelum_mcp.tools.safe_read.open_regular`): a FIFO or a
    link to one raises :class:`~caelum_mcp.tools.safe_read.NotRegularFileError` instead of
    blocking. Read it through :func:`bounded_lines`: a gzip bomb decompresses without end.
    """
    raw = open_regular(path)
    if isinstance(raw, io.BufferedReader) and raw.peek(2)[:2] == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def bounded_lines(stream: BinaryIO, limits: ReadLimits, stats: ReadStats) -> Iterator[bytes]:
    """The raw lines of ``stream`` (newline kept), each at most ``limits.max_line_bytes``: the rest
    of a longer line is read in chunks and dropped (counted in ``stats.lines_cut``). Stops once
    ``limits.max_bytes`` have been read or ``limits.should_stop()`` says so (``stats.stopped``)."""
    checked = 0
    should_stop, max_bytes, max_line_bytes = limits.should_stop, limits.max_bytes, limits.max_line_bytes
    readline = stream.readline
    while stats.stopped is None:
        if should_stop is not None:
            checked += 1
            if checked % _STOP_CHECK_LINES == 0 and should_stop():
                stats.stopped = "stopped"
                return
        room = max_bytes - stats.bytes_read
        if room <= 0:
            if stream.read(1):
                stats.stopped = "byte cap"
            return
        raw = readline(max_line_bytes if max_line_bytes < room else room)
        if not raw:
            return
        stats.bytes_read += len(raw)
        if raw[-1:] != b"\n" and len(raw) == max_line_bytes and _skip_rest_of_line(stream, limits, stats):
            stats.lines_cut += 1
        yield raw


def _skip_rest_of_line(stream: BinaryIO, limits: ReadLimits, stats: ReadStats) -> bool:
    """Read past the rest of an over-long line; whether there was a rest (the line was cut)."""
    cut = False
    while True:
        room = limits.max_bytes - stats.bytes_read
        if room <= 0:
            if stream.read(1):
                stats.stopped = "byte cap"
            return cut
        if limits.should_stop is not None and limits.should_stop():
            stats.stopped = "stopped"
            return cut
        rest = stream.readline(min(_SKIP_CHUNK_BYTES, room))
        if not rest:
            return cut
        stats.bytes_read += len(rest)
        cut = cut or rest != b"\n"
        if rest.endswith(b"\n"):
            return cut


def _decoded(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").rstrip("\r\n")[:MAX_LINE_CHARS]


def read_entries(
    path: Path,
    reference: datetime | None = None,
    *,
    limits: ReadLimits | None = None,
    stats: ReadStats | None = None,
) -> tuple[str, Iterator[LogEntry]]:
    """The detected format name and a stream of ``path`` 's entries (the file stays open until
    the stream is exhausted or closed). ``reference`` dates year-less times (default: the file's
    modification time). Reading is bounded by ``limits`` (default :class:`ReadLimits`); what it
    did is counted in ``stats``. Raises :class:`OSError` for a file that cannot be read, including
    one that is not a regular file."""
    limits = limits or ReadLimits()
    stats = stats if stats is not None else ReadStats()
    when = reference or datetime.fromtimestamp(path.stat().st_mtime)
    with open_binary(path) as stream:
        # the sample has its own count: the entries pass reads these lines again
        sample_limits = ReadLimits(min(limits.max_bytes, SAMPLE_LINES * limits.max_line_bytes), limits.max_line_bytes)
        sample: list[str] = []
        for raw in bounded_lines(stream, sample_limits, ReadStats()):
            if not sample and raw.startswith((b"__CURSOR=", b"__REALTIME_TIMESTAMP=")):
                return "journald-export", _journald_entries(path, when, limits, stats)
            sample.append(_decoded(raw))
            if len(sample) >= SAMPLE_LINES:
                break
    fmt = detect_format(sample, when)
    return fmt.name, _text_entries(path, fmt, limits, stats)


def _text_entries(path: Path, fmt: LineFormat, limits: ReadLimits, stats: ReadStats) -> Iterator[LogEntry]:
    current: LogEntry | None = None
    timed = fmt.name not in ("plain", "python-logging")
    parse = fmt.parse
    with open_binary(path) as stream:
        for number, raw in enumerate(bounded_lines(stream, limits, stats), start=1):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")[:MAX_LINE_CHARS]  # as _decoded, without a call
            if not line or line.isspace():  # as line.strip() would be empty, without the copy
                continue
            parsed: ParsedLine | None = parse(line)
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


def _journald_entries(path: Path, reference: datetime, limits: ReadLimits, stats: ReadStats) -> Iterator[LogEntry]:
    """``journalctl -o export``: ``KEY=value`` lines, binary fields as ``KEY\\n<u64 size><bytes>\\n``,
    entries separated by an empty line."""
    with open_binary(path) as stream:
        lines = bounded_lines(stream, limits, stats)
        number = 0
        start = 1
        fields: dict[str, str] = {}
        for raw in lines:
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
            if stats.bytes_read + 8 + size + 1 > limits.max_bytes:
                stats.stopped = "byte cap"  # a field claiming more than is left to read
                break
            data = stream.read(min(size, 1 << 20))
            if size > len(data):
                _skip(stream, size - len(data))
            stream.read(1)  # the newline after the data
            stats.bytes_read += 8 + size + 1
            fields[key.decode("ascii", "replace")] = data.decode("utf-8", "replace")[:MAX_LINE_CHARS]
            number += data.count(b"\n") + 1
        if fields:
            yield _journald_entry(fields, start, reference)


def _skip(stream: BinaryIO, count: int) -> None:
    # in chunks: a gzip stream decompresses what it skips
    while count > 0:
        got = stream.read(min(count, _SKIP_CHUNK_BYTES))
        if not got:
            return
        count -= len(got)


def _journald_entry(fields: dict[str, str], line: int, reference: datetime) -> LogEntry:
    parsed = parse_record(fields, reference)
    return LogEntry(line, parsed.time, parsed.level, parsed.source, parsed.message)
