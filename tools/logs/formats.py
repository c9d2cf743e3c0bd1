"""A log file's line format, detected from a sample, and each line's time, level, source and message.

The header of a line (time, level, pid, host, thread, component) is inferred from the file itself
(:mod:`.header`): the first lines are aligned field by field, whatever their separators and
timestamp forms. A few known formats say more than a header's shape can, and are used when they
fit at least :data:`DETECT_SHARE` of the sample:

- ``json``: JSON lines (also ``journalctl -o json``): the time, level, message and source are read
  from the usual keys (``timestamp``/``time``/``@timestamp``/``__REALTIME_TIMESTAMP``,
  ``level``/``severity``/``PRIORITY``, ``message``/``msg``/``MESSAGE``, ``logger``/``name``/
  ``SYSLOG_IDENTIFIER``);
- ``syslog-rfc5424`` (its structured data is header) and ``access-log`` (Apache/nginx common and
  combined: the message is the request and status, the level comes from the status);
- ``nginx-error`` (its ``*connection`` number is header).

Otherwise the inferred header reads the file, named after the known format that fits it too
(``syslog``, ``java``, ``apache-error``, ``python-logging``, ``logcat``...) or ``inferred``; a
known format reads it instead only where it finds clearly more levels (lines of several layouts in
one file). Where no header can be inferred, the older recognisers remain: ``generic`` (a known
timestamp near the start, a level, a ``source - `` or ``a|b|message`` prefix) and ``plain`` (no
timestamp; a level word near the start is still found).

journald's export format (``journalctl -o export``) is read by :mod:`.reading`, which turns each
entry into the same fields. A line that does not fit the file's format is a *continuation* of the
entry before it (a stack trace, a wrapped message) when it starts with white space, ``at ``,
``Caused by`` or ``...``; otherwise it is an entry of its own with no time.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache, partial
from typing import Any, NamedTuple

from .header import HeaderLayout, HeaderReader, infer_header
from .timestamps import SHAPES, SHAPES_BY_NAME, TimestampShape, from_epoch, parse_any

DETECT_SHARE = 0.6
LEVEL_MARGIN = 0.1  # of the sample: how many more levels a known format must read to be kept over inference
SAMPLE_LINES = 200

# canonical levels, most severe first
LEVELS: tuple[str, ...] = ("critical", "error", "warning", "info", "debug")
_LEVEL_WORDS = {
    "trace": "debug", "debug": "debug", "dbg": "debug", "fine": "debug", "finer": "debug", "finest": "debug",
    "verbose": "debug", "v": "debug", "d": "debug",
    "info": "info", "inf": "info", "information": "info", "notice": "info", "config": "info", "i": "info",
    "warn": "warning", "warning": "warning", "wrn": "warning", "w": "warning",
    "error": "error", "err": "error", "severe": "error", "e": "error",
    "critical": "critical", "crit": "critical", "fatal": "critical", "alert": "critical",
    "emerg": "critical", "emergency": "critical", "panic": "critical", "f": "critical", "a": "critical",
}  # fmt: skip
_SYSLOG_PRIORITY = ("critical", "critical", "critical", "error", "warning", "info", "info", "debug")
_LEVEL = (
    r"(?:TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|ERR|SEVERE|CRIT|CRITICAL|FATAL|ALERT|EMERG|FINE|FINER|FINEST"
    r"|CONFIG|Trace|Debug|Info|Information|Notice|Warn|Warning|Error|Severe|Critical|Fatal)"
)
_LOOSE_TS = r"(?P<ts>\d[\d/: ,.T+-]{6,32}?\d)"
_THREAD = r"\[(?:[^\[\]]|\[[^\]]*\])*\]"
_LOGGER = r"[A-Za-z_$][\w$]*(?:[.$][\w$]+)+"
# what follows a level in Java-style layouts: [thread], "- ", a dotted logger and its separator
_JAVA_TAIL = (
    rf"(?:(?P<thread>{_THREAD})\s+)?(?:-\s+)?"
    rf"(?:(?P<source>{_LOGGER})(?::\s|\s+-\s|\s+(?=\[))(?:\[[^\]]*\]\s+)?)?"
)
_CONTINUATION = re.compile(r"^(?:\s|at\s|Caused by\b|\.\.\.\s|Traceback\b|During handling\b)")


@lru_cache(maxsize=1024)
def canonical_level(word: str | None) -> str | None:
    """``word`` (``WARN``, ``err``, ``E``, ``3``) as one of :data:`LEVELS`, or None."""
    if not word:
        return None
    word = word.strip().strip("[]:").lower()
    if word.isdigit():
        number = int(word)
        return _SYSLOG_PRIORITY[number] if number < len(_SYSLOG_PRIORITY) else None
    return _LEVEL_WORDS.get(word)


class ParsedLine(NamedTuple):
    """One line's parts; ``message`` is the whole line when the format does not fit it."""

    # a tuple: one is made per line, and a frozen dataclass costs three times as much

    time: datetime | None
    level: str | None
    source: str | None
    message: str


# a ParsedLine from a tuple of its values, without NamedTuple's __new__ (one is made per line)
_new_parsed: Callable[[tuple[datetime | None, str | None, str | None, str]], ParsedLine] = partial(
    tuple.__new__, ParsedLine
)


LineParser = Callable[[str], ParsedLine | None]


@dataclass(frozen=True)
class LineFormat:
    """A detected format: its name and how to parse one line (None: the line does not fit)."""

    name: str
    parse: LineParser


def _regex_format(name: str, pattern: str, shape: TimestampShape | None, reference: datetime) -> LineFormat:
    compiled = re.compile(pattern)

    def parse(line: str) -> ParsedLine | None:
        match = compiled.match(line)
        if match is None:
            return None
        parts = match.groupdict()
        ts_text = parts.get("ts")
        when = None
        if ts_text:
            ts_match = shape.pattern.fullmatch(ts_text) if shape else None
            when = shape.parse(ts_match, reference) if shape and ts_match else parse_any(ts_text, reference)
        level = canonical_level(parts.get("level"))
        if level is None and parts.get("pri"):
            level = _SYSLOG_PRIORITY[int(parts["pri"]) % 8]
        if level is None and parts.get("status"):
            level = _status_level(parts["status"])
        message = parts.get("msg") or ""
        if parts.get("request") is not None:
            message = f"{parts['request']} {parts.get('status', '')}".strip()
        return ParsedLine(when, level, parts.get("source"), message)

    return LineFormat(name, parse)


def _status_level(status: str) -> str:
    return "error" if status.startswith("5") else "warning" if status.startswith("4") else "info"


# formats that know more than a header's shape: an access log's message is its request and
# status, RFC 5424's structured data and nginx's ``*connection`` number are header
_SEMANTIC_FORMATS = frozenset(("syslog-rfc5424", "access-log", "nginx-error"))

_SYSLOG_TS = (
    r"(?:[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d(?:\.\d+)?"
    r"|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)"
)
_REGEX_FORMATS: tuple[tuple[str, str], ...] = (
    (
        "syslog-rfc5424",
        r"^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) \S+ (?P<source>\S+) \S+ \S+ (?:-|(?:\[(?:[^\]\\]|\\.)*\])+) ?(?P<msg>.*)$",
    ),
    (
        "access-log",
        r'^\S+ \S+ \S+ \[(?P<ts>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d{3}) \S+(?: "[^"]*" "[^"]*")?.*$',
    ),
    (
        "apache-error",
        r"^\[(?P<ts>[A-Z][a-z]{2} [A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d(?:\.\d+)? \d{4})\] "
        r"\[(?:(?P<source>[\w-]+):)?(?P<level>\w+)\] (?:\[pid \d+(?::tid \d+)?\] )?(?:\w+\d+: )?(?P<msg>.*)$",
    ),
    ("nginx-error", r"^(?P<ts>\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) \[(?P<level>\w+)\] \d+#\d+: (?:\*\d+ )?(?P<msg>.*)$"),
    (
        "python-logging",
        r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:,\d+)?) - (?P<source>\S+) - (?P<level>[A-Z]+) - (?P<msg>.*)$",
    ),
    ("python-logging", r"^(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL):(?P<source>[^:\s]*):(?P<msg>.*)$"),
    (
        "java",
        rf"^\[?{_LOOSE_TS}\]?\s+(?:\[?\d+\]?\s+)?(?:-\s+)?\[?(?P<level>{_LEVEL})\]?:?\s+{_JAVA_TAIL}(?P<msg>.*)$",
    ),
    ("java", rf"^{_LOOSE_TS}\s+(?P<thread>{_THREAD})\s+(?P<level>{_LEVEL})\s+(?P<source>\S+)\s+-\s+(?P<msg>.*)$"),
    (
        "syslog",
        rf"^(?:<(?P<pri>\d{{1,3}})>)?(?:\S+ +){{0,5}}?(?P<ts>{_SYSLOG_TS}) +\S+ "
        r"(?P<source>[^\s:\[]+(?:\([^)]*\))?(?: [\d.]+)?)(?:\[\d+\])?: ?(?P<msg>.*)$",
    ),
    (
        "logcat",
        r"^(?P<ts>\d\d-\d\d \d\d:\d\d:\d\d\.\d+) +\d+ +\d+ (?P<level>[VDIWEFA]) (?P<source>[^:]*?) *: ?(?P<msg>.*)$",
    ),
)


def _json_format(reference: datetime) -> LineFormat:
    def parse(line: str) -> ParsedLine | None:
        if not line.startswith("{"):
            return None
        try:
            record = json.loads(line)
        except ValueError:
            return None
        return parse_record(record, reference) if isinstance(record, dict) else None

    return LineFormat("json", parse)


_TIME_KEYS = ("timestamp", "@timestamp", "time", "ts", "asctime", "datetime", "date", "t", "__REALTIME_TIMESTAMP")
_LEVEL_KEYS = ("level", "levelname", "severity", "lvl", "loglevel", "log.level", "PRIORITY", "priority")
_MESSAGE_KEYS = ("message", "msg", "MESSAGE", "event", "log", "text")
_SOURCE_KEYS = ("logger", "logger_name", "name", "SYSLOG_IDENTIFIER", "_COMM", "component", "module", "source")


def parse_record(record: Mapping[str, Any], reference: datetime) -> ParsedLine:
    """A structured entry (a JSON line, a journald entry) as a :class:`ParsedLine`."""
    when = None
    for key in _TIME_KEYS:
        value = record.get(key)
        if value is None:
            continue
        if key == "__REALTIME_TIMESTAMP" or isinstance(value, int | float):
            try:
                when = from_epoch(float(value))
            except (TypeError, ValueError):
                when = None
        elif isinstance(value, str):
            when = parse_any(value, reference)
        if when is not None:
            break
    level = next((canonical_level(str(record[k])) for k in _LEVEL_KEYS if record.get(k) is not None), None)
    message = next((record[k] for k in _MESSAGE_KEYS if record.get(k) is not None), None)
    if isinstance(message, list):  # journald writes binary messages as byte arrays
        message = bytes(b for b in message if isinstance(b, int) and 0 <= b < 256).decode("utf-8", "replace")
    if message is None:
        rest = {k: v for k, v in record.items() if k not in _TIME_KEYS and k not in _LEVEL_KEYS}
        message = json.dumps(rest, separators=(",", ":"), default=str)
    source = next((str(record[k]) for k in _SOURCE_KEYS if isinstance(record.get(k), str)), None)
    return ParsedLine(when, level, source, str(message))


# generic -------------------------------------------------------------------------------------

_LEVEL_NEAR = re.compile(rf"^(?:\S+\s+){{0,3}}?\[?(?P<level>{_LEVEL}|(?<=\[)[a-z]+(?=\]))\]?:?(?:\s+|$)")
_TAIL = re.compile(_JAVA_TAIL)
_LEAD = " ,;|]-:\t"


@dataclass(frozen=True)
class _GenericLayout:
    shape: TimestampShape | None
    dash_source: bool
    pipe_fields: bool


def _generic_rest(line: str, shape: TimestampShape | None, reference: datetime) -> tuple[datetime | None, str] | None:
    if shape is None:
        return None, line
    match = shape.pattern.search(line, 0, 96)
    if match is None:
        return None
    return shape.parse(match, reference), line[match.end() :].lstrip(_LEAD)


def _generic_parts(rest: str) -> tuple[str | None, str | None, str]:
    """The level, source and message of what follows a timestamp."""
    level = source = None
    found = _LEVEL_NEAR.match(rest)
    if found is not None and canonical_level(found.group("level")):
        level = canonical_level(found.group("level"))
        rest = rest[found.end() :]
        tail = _TAIL.match(rest)
        if tail is not None and tail.end():
            source = tail.group("source")
            rest = rest[tail.end() :]
    return level, source, rest


def _dash_split(rest: str) -> tuple[str, str] | None:
    at = rest.find(" - ", 0, 64)
    if at <= 0 or rest.count(" ", 0, at) > 2:
        return None
    return rest[:at], rest[at + 3 :]


def _pipe_split(rest: str) -> tuple[str, str] | None:
    head, sep, message = rest.rpartition("|")
    return (head, message) if sep and head.count("|") >= 1 else None


def _generic_format(layout: _GenericLayout, reference: datetime) -> LineFormat:
    def parse(line: str) -> ParsedLine | None:
        found = _generic_rest(line, layout.shape, reference)
        if found is None:
            return None
        when, rest = found
        level, source, message = _generic_parts(rest)
        split = (_dash_split(message) if layout.dash_source else None) or (
            _pipe_split(message) if layout.pipe_fields else None
        )
        if split is not None:
            source, message = split[0].strip(_LEAD) or source, split[1].lstrip()
        return ParsedLine(when, level, source, message)

    name = "generic" if layout.shape else "plain"
    return LineFormat(name, parse)


def _detect_generic(sample: Sequence[str], reference: datetime) -> tuple[LineFormat, float]:
    shapes: Counter[str] = Counter()
    for line in sample:
        best = None
        for shape in SHAPES:
            match = shape.pattern.search(line, 0, 96)
            if match and (best is None or match.start() < best[1]):
                best = (shape.name, match.start())
        if best:
            shapes[best[0]] += 1
    chosen: TimestampShape | None = SHAPES_BY_NAME[shapes.most_common(1)[0][0]] if shapes else None
    rests = []
    for line in sample:
        found = _generic_rest(line, chosen, reference)
        if found is not None:
            rests.append(_generic_parts(found[1])[2])
    share = len(rests) / len(sample) if sample and chosen else 0.0
    dash = sum(_dash_split(r) is not None for r in rests)
    pipes = sum(_pipe_split(r) is not None for r in rests)
    enough = max(1, int(0.7 * len(rests)))
    layout = _GenericLayout(chosen, dash_source=dash >= enough, pipe_fields=pipes >= enough and dash < enough)
    return _generic_format(layout, reference), share


INFERRED = "inferred"


def inferred_format(layout: HeaderLayout, reference: datetime, name: str = INFERRED) -> LineFormat:
    """Lines read with a header layout inferred from their file (:mod:`.header`), under ``name``
    (a known format's when the file also fits one, so that a user sees a familiar name)."""
    reader = HeaderReader(layout, reference)

    def parse(line: str) -> ParsedLine | None:
        parts = reader.read(line)
        if parts is None:
            return None
        when, level, source, message = parts
        return _new_parsed((when, canonical_level(level), source, message))

    return LineFormat(name, parse)


def _read_ahead(layout: HeaderLayout, reference: datetime, name: str, lines: Sequence[str]) -> tuple[LineFormat, int]:
    """:func:`inferred_format` after reading ``lines`` (a file's first non-empty lines), and how
    many levels it read there. Its parse gives those readings again while the same lines come, in
    order, and reads on from where it stopped, so a file costs its sample's lines once, with what
    a fresh format gives; a line other than the sample's next one brings a fresh format to that
    point first."""
    fmt = inferred_format(layout, reference, name)
    ahead = [fmt.parse(line) for line in lines]
    position = 0
    live = fmt.parse

    def parse(line: str) -> ParsedLine | None:
        nonlocal position, live
        if position < len(lines):
            if line == lines[position]:
                position += 1
                return ahead[position - 1]
            live = inferred_format(layout, reference, name).parse
            for earlier in lines[:position]:
                live(earlier)
            position = len(lines)
        return live(line)

    return LineFormat(name, parse), sum(parsed is not None and parsed.level is not None for parsed in ahead)


def detect_format(sample: Sequence[str], reference: datetime) -> LineFormat:
    """The format that fits ``sample`` (a file's first non-empty lines) best; see the module docstring."""
    lines = [line for line in sample if line.strip()][:SAMPLE_LINES]
    if not lines:
        return _generic_format(_GenericLayout(None, False, False), reference)
    json_format = _json_format(reference)
    json_share = _share(json_format, lines)
    if json_share >= DETECT_SHARE:
        return json_format
    candidates: list[tuple[LineFormat, float]] = [(json_format, json_share)]
    known: LineFormat | None = None
    for name, pattern in _REGEX_FORMATS:
        shape, matched = _common_shape(pattern, lines)
        fmt = _regex_format(name, pattern, shape, reference)
        share = matched / len(lines)  # what _share gives: such a format reads every line it matches
        candidates.append((fmt, share))
        if share >= DETECT_SHARE:
            # the first that fits is the known format; the others' shares only count where no
            # format fits (the last resort below), so they are not measured here
            known = fmt
            break
    if known is not None and known.name in _SEMANTIC_FORMATS:
        return known
    layout = infer_header(lines)
    if layout is not None and layout.share >= DETECT_SHARE:
        if known is None:
            return inferred_format(layout, reference, INFERRED)
        # a known format stays only where it reads more levels: lines of several layouts in one
        # file, where the layout most lines share misses the others' level
        inferred, inferred_levels = _read_ahead(layout, reference, known.name, lines)
        if _levels(known, lines) <= inferred_levels + LEVEL_MARGIN * len(lines):
            return inferred
    if known is not None:
        return known
    candidates.append(_detect_generic(lines, reference))
    best, share = max(candidates, key=lambda c: c[1])
    if share > 0:
        return best
    return _generic_format(_GenericLayout(None, False, False), reference)


def _levels(fmt: LineFormat, lines: Sequence[str]) -> int:
    """How many of ``lines`` ``fmt`` reads a level from."""
    count = 0
    for line in lines:
        parsed = fmt.parse(line)
        count += parsed is not None and parsed.level is not None
    return count


def _share(fmt: LineFormat, lines: Sequence[str]) -> float:
    return sum(fmt.parse(line) is not None for line in lines) / len(lines)


def _common_shape(pattern: str, lines: Sequence[str]) -> tuple[TimestampShape | None, int]:
    """The timestamp shape most of the ``ts`` groups of ``pattern`` in ``lines`` have, and how
    many of ``lines`` ``pattern`` matches."""
    compiled = re.compile(pattern)
    counts: Counter[str] = Counter()
    matched = 0
    for line in lines:
        match = compiled.match(line)
        if match is None:
            continue
        matched += 1
        ts = match.groupdict().get("ts")
        if ts:
            for shape in SHAPES:
                if shape.pattern.fullmatch(ts):
                    counts[shape.name] += 1
                    break
    return (SHAPES_BY_NAME[counts.most_common(1)[0][0]] if counts else None), matched


def is_continuation(line: str) -> bool:
    """Whether a line that does not fit its file's format continues the entry before it."""
    return bool(_CONTINUATION.match(line))
