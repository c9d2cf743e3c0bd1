"""A log file's line header (time, level, pid, host, thread, component...) inferred from the file itself.

Known formats (:mod:`.formats`) recognise the layouts someone listed; this module reads any layout
whose lines start with the same kinds of fields. :func:`infer_header` aligns the first lines of a
file field by field and keeps the longest prefix of positions that behave like a header:

1. Each line's start is cut into *fields* (:func:`split_fields`): a timestamp in any common form
   (ISO 8601 with ``T``/``Z``, syslog's ``Jun 14 15:16:01``, ``2015-10-18 18:01:47,978``,
   ``17/06/09 20:10:40``, ``10/Oct/2000:13:55:36 +0000``, epoch seconds or milliseconds, a date
   and a time split over two fields...), a bracketed group (``[...]``, ``<...>``, ``(...)``), a
   quoted string, a ``key=value`` pair or a word, each with the separator that follows it
   (a space, several spaces, a tab, ``|``, ``,``, ``;``, `` - `` or a trailing ``:``).
2. Each field gets a kind: a time (``T``), a level (``L``: ``INFO``, ``[warn]``, ``level=error``,
   logcat's one-letter ``D``), a bracketed group (``B``) or a word (``W``: pids, hosts, names...).
3. Positions are *anchors* when most lines (:data:`ANCHOR_SHARE`) agree there: a time or a level
   in the same place, or a field separator that plain prose does not use (``|``, a tab, ``;``,
   `` - ``, ``,`` or a run of spaces) after it. The header runs to the last anchor; words between
   anchors (a host name, a pid) are header too. After it come the usual tails: bracketed threads
   and dotted logger names most lines have, then a ``component:`` whose colon most lines have a
   few fields on, or a `` - `` that ends a ``program *64 - `` prefix.

When lines disagree the header is kept out of the message as far as a line matches it, but no
word past the matching fields is cut. Only a bounded start of each line is looked at
(:data:`HEAD_CHARS`), so a long or binary line costs no more than a short one.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import NamedTuple

from .timestamps import SHAPES, from_epoch, parse_any

ANCHOR_SHARE = 0.7  # of header lines that must agree on a position's kind or separator
COLON_SHARE = 0.6  # of header lines with a ``component:`` within reach of the last anchor
DASH_SHARE = 0.6  # of header lines with a `` - `` ending a short prefix after the header
MIN_HEADER_LINES = 0.3  # share of the sample that must have a header at all
MAX_FIELDS = 14  # fields of a line looked at
HEAD_CHARS = 512  # characters of a line the header may span
_COLON_REACH = 4  # fields past the last anchor a ``component:`` may be
_TAIL_REACH = 3  # fields a `` - `` may end after the header
_LEAD_REACH = 7  # fields before the first anchor

_LEVEL_WORDS = frozenset(
    "trace debug dbg fine finer finest verbose info inf information notice warn warning wrn error err severe "
    "critical crit fatal alert emerg emergency panic".split()
)
_LEVEL_LETTERS = frozenset("VDIWEF")
_MON = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_DOW = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_CLOCK = r"\d{1,2}:\d\d(?::\d\d)?(?:[.,:]\d{1,9})?"
_ZONE = r"(?:\s?(?:Z|[+-]\d\d:?\d\d|UTC|GMT)(?![\w]))?"
# every way of writing a time at a field's start, longest first; a field boundary must follow
_TIMESTAMP = (
    r"(?:"
    rf"\d{{4}}-\d\d-\d\d[T ]{_CLOCK}{_ZONE}"
    rf"|\d{{4}}-\d\d-\d\d-\d\d\.\d\d\.\d\d(?:\.\d{{1,9}})?"
    rf"|\d{{4}}/\d\d/\d\d[ T:]{_CLOCK}{_ZONE}"
    rf"|{_DOW},? {_MON} +\d{{1,2}},? {_CLOCK}(?: \d{{4}})?{_ZONE}"
    rf"|{_DOW},? \d{{1,2}} {_MON} \d{{4}} {_CLOCK}{_ZONE}"
    rf"|\d{{1,2}}/{_MON}/\d{{4}}[: ]{_CLOCK}{_ZONE}"
    rf"|{_MON} +\d{{1,2}}(?: \d{{4}})? {_CLOCK}{_ZONE}"
    rf"|\d\d[/.-]\d\d[/.-]\d{{2,4}}[ T:,]{_CLOCK}{_ZONE}"
    rf"|\d{{8}}[-T ]?{_CLOCK}"
    r"|\d\d[01]\d[0-3]\d [0-2]\d[0-5]\d[0-5]\d"
    rf"|\d\d[-.]\d\d {_CLOCK}"
    rf"|\d{{4}}[-./]\d\d[-./]\d\d(?:_{_CLOCK})?"
    rf"|{_CLOCK}{_ZONE}"
    r"|1[0-9]\d{8}(?:\d{3}|\d{6}|\.\d{1,9})?"
    r")"
)
_BOUNDARY = r"(?=[\s|,;\]\)>\"]|:\s|:$|$)"
_FIELD_REST = (
    r"(?P<br>\[(?:[^\[\]]|\[[^\[\]]*\]){0,200}\]|<[^<>\s]{1,64}>|\((?:[^()]|\([^()]*\)){0,120}\))"
    r"|(?P<q>\"[^\"]{0,200}\")"
    r"|(?P<kv>[A-Za-z_][\w.-]{0,30}=(?:\"[^\"]{0,200}\"|[^\s|,;]*))"
    r"|(?P<w>[^\s|,;]{1,200})"
)
_FIELD = re.compile(rf"(?P<ts>{_TIMESTAMP}){_BOUNDARY}|{_FIELD_REST}")
# a field that cannot start a time (most words) skips the timestamp alternatives: the cost of a
# line is mostly these matches
_FIELD_NO_TIME = re.compile(_FIELD_REST)
_TIME_INITIALS = frozenset("0123456789JFMASONDTW")
# what separates one field from the next; named by kind (" " is plain prose's own separator)
_SEPARATOR = re.compile(
    r"(?P<colon>\s*:(?:\s+|$))|(?P<pipe>\s*\|\s*)|(?P<semi>\s*;\s*)|(?P<comma>\s*,\s*)"
    r"|(?P<dash>\s+-(?:\s+|$))|(?P<tab>\s*\t\s*)|(?P<spaces>\s{2,})|(?P<space>\s)"
)
_NOT_PLAIN_AFTER_SPACE = frozenset(" \t-:|,;")
_HEADER_SEPARATORS = frozenset(("pipe", "semi", "comma", "dash", "tab", "spaces"))
_MESSAGE_KEYS = frozenset(("msg", "message", "MESSAGE", "text", "event"))
_LOGGER = re.compile(r"[A-Za-z_$][\w$-]*(?:\.[A-Za-z_$][\w$-]*)+")
_EPOCH_SECONDS = (9.0e8, 2.2e9)
_PID_SUFFIX = re.compile(r"\[\d+\]$")


class Field(NamedTuple):
    """One field of a line's start: its kind (``T`` time, ``L`` level, ``B`` bracketed, ``W``
    word), its text, the separator after it and where the text after that separator starts."""

    # a tuple: every line makes a dozen of these, and a frozen dataclass costs twice as much
    kind: str
    text: str
    separator: str
    end: int
    key: str = ""


def _is_epoch(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    for scale in (1.0, 1e3, 1e6):
        if _EPOCH_SECONDS[0] <= value / scale <= _EPOCH_SECONDS[1]:
            return True
    return False


def _is_level(word: str) -> bool:
    if len(word) == 1:
        return word in _LEVEL_LETTERS
    if len(word) > 24 or not word[0].isalpha():
        return False
    lowered = word.lower()
    if lowered in _LEVEL_WORDS:
        return True
    # Apache 2.4's [core:error], syslog-ng's <kern.warn>
    if ":" in lowered and lowered.rpartition(":")[2] in _LEVEL_WORDS:
        return True
    return "." in lowered and lowered.rpartition(".")[2] in _LEVEL_WORDS


@lru_cache(maxsize=8192)
def _kind_of_word(word: str) -> str:
    # cached: a file's header words (levels, hosts, components) repeat on every line
    if not word:
        return "W"
    if word[0].isdigit():
        if _FIELD_TIME.fullmatch(word) and (not word.isdigit() or _is_epoch(word)):
            return "T"
        return "W"
    return "L" if _is_level(word) else "W"


_FIELD_TIME = re.compile(_TIMESTAMP)


_DELIMITERS = {"pipe": "|", "comma": ",", "semi": ";", "tab": "\t"}


def _kind_of_text(text: str) -> tuple[str, str]:
    """The kind and key of one delimited field's text (which may hold spaces)."""
    if not text:
        return "W", ""
    if text[0] in "[<(" and text[-1] in "]>)":
        inner = text[1:-1].strip()
        if inner and (_is_level(inner) or _FIELD_TIME.fullmatch(inner)):
            return _kind_of_word(inner), ""
        return "B", ""
    if text[0] == '"' and text[-1] == '"' and len(text) > 1:
        return _kind_of_word(text[1:-1]) if len(text) > 2 else "W", ""
    key, eq, value = text.partition("=")
    if eq and key.isidentifier() and " " not in key:
        return (_kind_of_word(value.strip('"')) if value else "W"), key
    return _kind_of_word(text), ""


def split_delimited(line: str, delimiter: str, limit: int = MAX_FIELDS) -> list[Field]:
    """The first ``limit`` fields of ``line`` cut at ``delimiter`` (a key of the delimiters:
    ``pipe``, ``comma``, ``semi``, ``tab``) only, so that a field may hold spaces; quotes are
    kept whole."""
    char = _DELIMITERS[delimiter]
    fields: list[Field] = []
    size = min(len(line), HEAD_CHARS)
    pos = len(line) - len(line.lstrip(" \t"))
    while pos < size and len(fields) < limit:
        search_from = pos
        if line[pos] == '"':
            closing = line.find('"', pos + 1, size)
            search_from = closing + 1 if closing > 0 else pos
        at = line.find(char, search_from, size)
        if at < 0:
            text = line[pos:].strip()[:HEAD_CHARS]
            kind, key = _kind_of_text(text)
            fields.append(Field(kind, text, "end", len(line), key))
            break
        text = line[pos:at].strip()
        after = at + 1
        while after < len(line) and line[after] == " ":
            after += 1
        kind, key = _kind_of_text(text)
        fields.append(Field(kind, text, delimiter, after, key))
        pos = after
    return fields


def split_fields(line: str, limit: int = MAX_FIELDS, delimiter: str = "") -> list[Field]:
    """The first ``limit`` fields of ``line`` (see the module docstring); looks at most at
    :data:`HEAD_CHARS` characters. With a ``delimiter`` only it separates fields
    (:func:`split_delimited`)."""
    if delimiter:
        return split_delimited(line, delimiter, limit)
    fields: list[Field] = []
    append = fields.append
    length = len(line)
    size = min(length, HEAD_CHARS)
    pos = length - len(line.lstrip(" \t"))
    with_time, without_time, separator_at = _FIELD.match, _FIELD_NO_TIME.match, _SEPARATOR.match
    while pos < size and len(fields) < limit:
        match = (with_time if line[pos] in _TIME_INITIALS else without_time)(line, pos, size)
        if match is None:  # a separator character where a field should start: an empty field
            sep = separator_at(line, pos, size)
            if sep is None or sep.end() == pos:
                break
            append(Field("W", "", sep.lastgroup or "space", sep.end()))
            pos = sep.end()
            continue
        key = ""
        group = match.lastgroup
        text = match.group()
        end = match.end()
        if group == "w":
            if text[-1] == ":" and len(text) > 1:
                text = text[:-1]
                end -= 1
            kind = _kind_of_word(text)
        elif group == "ts":
            kind = "T" if not text.isdigit() or _is_epoch(text) else "W"
        elif group == "br":
            kind = _kind_of_bracketed(text[1:-1].strip())
        elif group == "kv":
            key, _, value = text.partition("=")
            value = value.strip('"')
            kind = _kind_of_word(value) if value else "W"
        else:
            kind = _kind_of_word(text[1:-1]) if len(text) > 2 else "W"
        if end + 1 < length and line[end] == " " and line[end + 1] not in _NOT_PLAIN_AFTER_SPACE:
            separator, after = "space", end + 1  # the common case, without a match
        else:
            sep = separator_at(line, end) if end < length else None
            if sep is None:
                separator, after = ("end" if end >= length else "none"), end
            else:
                separator, after = sep.lastgroup or "space", sep.end()
        append(Field(kind, text, separator, after, key))
        if separator == "none" and after == pos:
            break
        pos = after
    return fields


@lru_cache(maxsize=8192)
def _kind_of_bracketed(inner: str) -> str:
    if inner and _is_level(inner):
        return "L"
    if inner and inner[0].isdigit() and _FIELD_TIME.fullmatch(inner):
        return "T" if not inner.isdigit() or _is_epoch(inner) else "B"
    if inner[:3].isalpha() and _FIELD_TIME.fullmatch(inner):
        return "T"
    return "B"


@dataclass(frozen=True)
class HeaderLayout:
    """What :func:`infer_header` found: per header position the kind it must have (``T``/``L``,
    or ``""`` for any field), the separator it must be followed by and the ``key=`` it must have
    (``""``: any); ``colon_reach`` is how many fields past the header a ``component:`` may end it
    (0: none), ``dash_reach`` the same for a `` - `` ending a short prefix; ``share`` is how much
    of the sample matches the layout; ``delimiter`` the only separator of fields, if one is
    (``pipe``, ``comma``, ``semi``, ``tab``)."""

    kinds: tuple[str, ...]
    separators: tuple[str, ...]
    colon_reach: int = 0
    dash_reach: int = 0
    share: float = 0.0
    delimiter: str = ""
    keys: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return len(self.kinds)

    @property
    def first_strong(self) -> int:
        """The first position that must hold a time or a level (-1: none must)."""
        return next((i for i, kind in enumerate(self.kinds) if kind), -1)

    def describe(self) -> str:
        """The header as ``time level word <sep> ...`` for a format name shown to a user."""
        names = {"T": "time", "L": "level", "": "field"}
        seps = {"pipe": "|", "comma": ",", "semi": ";", "tab": "\\t", "dash": "-", "colon": ":", "spaces": " "}
        parts = []
        for kind, sep in zip(self.kinds, self.separators, strict=True):
            parts.append(names.get(kind, "field") + seps.get(sep, ""))
        if self.colon_reach:
            parts.append("source:")
        elif self.dash_reach:
            parts.append("source -")
        return " ".join(parts)


def _dominant(values: Sequence[str]) -> tuple[str, float]:
    if not values:
        return "", 0.0
    value, count = Counter(values).most_common(1)[0]
    return value, count


def infer_header(sample: Sequence[str]) -> HeaderLayout | None:
    """The header layout most of ``sample`` (a file's first lines) share, or None when the lines
    have no header that can be told apart from their messages (see the module docstring).

    Lines are first cut at every separator; when most of them have one delimiter (``|``, ``,``,
    ``;``, a tab) after their first field, they are cut again at that delimiter only, so that a
    field may hold spaces (``IPC Server handler``), and the reading whose header ends further
    into the lines wins."""
    lines = [line for line in sample if line.strip()]
    if not lines:
        return None
    split = [split_fields(line) for line in lines]
    layout = _infer(split, "")
    leading = _dominant([fields[0].separator for fields in split if fields])
    if leading[0] in _DELIMITERS and leading[1] >= ANCHOR_SHARE * len(split):
        delimited_split = [split_delimited(line, leading[0]) for line in lines]
        delimited = _infer(delimited_split, leading[0])
        # the reading that cuts further into the lines wins; a tie goes to the delimiter
        if delimited is not None and (
            layout is None or _mean_cut(delimited, delimited_split) >= _mean_cut(layout, split)
        ):
            layout = delimited
    return layout


def _mean_cut(layout: HeaderLayout, split: list[list[Field]]) -> float:
    """Where ``layout`` ends the header, in characters, on average over the lines."""
    total = 0
    for fields in split:
        cut = match_header(layout, fields)[1]
        total += fields[cut - 1].end if cut else 0
    return total / max(1, len(split))


def _infer(split: list[list[Field]], delimiter: str) -> HeaderLayout | None:
    # lines with no time or level near their start (stack traces, wrapped text) do not vote
    voting = [fields for fields in split if any(f.kind in "TL" for f in fields[:8])]
    if len(voting) < MIN_HEADER_LINES * len(split) or len(voting) < 2:
        voting = split  # no time or level: only separators can make a header
    total = len(voting)
    kinds: list[str] = []
    separators: list[str] = []
    keys: list[str] = []
    last_anchor = -1
    ended = False  # by a ``component:`` or a ``LEVEL:`` most lines have
    for position in range(MAX_FIELDS):
        present = [fields[position] for fields in voting if len(fields) > position]
        if len(present) < ANCHOR_SHARE * total:
            break
        kind, kind_count = _dominant([f.kind for f in present])
        sep, sep_count = _dominant([f.separator for f in present])
        strong = kind in ("T", "L") and kind_count >= ANCHOR_SHARE * total
        separated = sep in _HEADER_SEPARATORS and sep_count >= ANCHOR_SHARE * total
        key, key_count = _dominant([f.key for f in present])
        if key in _MESSAGE_KEYS and key_count >= ANCHOR_SHARE * total:
            break  # logfmt's msg="...": the message itself
        keyed = bool(key) and key_count >= ANCHOR_SHARE * total
        separated = separated or keyed
        colon = sep == "colon" and sep_count >= COLON_SHARE * total
        if colon and not strong:
            break  # the component: the colon tail below finds it line by line
        if not (strong or separated):
            # words may lead up to the first anchor (a label, a record number, a host) or sit
            # between anchors; more of them than that are the message
            if position - last_anchor > (_LEAD_REACH if last_anchor < 0 else _COLON_REACH):
                break
            kinds.append("")
            separators.append("")
            keys.append("")
            continue
        kinds.append(kind if strong else "")
        # a time or a level is found by its kind; padding after it (``INFO  [``) may vary
        separators.append(sep if separated and not strong and not keyed else "")
        keys.append(key if keyed else "")
        last_anchor = position
        if colon:
            ended = True
            break
    size = last_anchor + 1
    if size == 0:
        return None
    kinds, separators, keys = kinds[:size], separators[:size], keys[:size]
    # the tails: threads in brackets and dotted logger names most lines carry
    while not ended and size < MAX_FIELDS:
        present = [fields[size] for fields in voting if len(fields) > size + 1]
        if len(present) < ANCHOR_SHARE * total:
            break
        bracketed = sum(f.kind == "B" for f in present)
        logger = sum(f.kind == "W" and f.separator != "colon" and bool(_LOGGER.fullmatch(f.text)) for f in present)
        if max(bracketed, logger) < ANCHOR_SHARE * total:
            break
        kinds.append("")
        separators.append("")
        keys.append("")
        size += 1
    colon_reach = dash_reach = 0
    if not ended:
        # a component sits right after the header or after a host: most lines put the colon at
        # the same place, one field later at most (a component with a space: ``syslogd 1.4.1:``)
        offset, with_colon = _dominant([str(_reach(fields, size, "colon")) for fields in voting])
        with_dash = sum(_reach(fields, size, "dash") > 0 for fields in voting)
        if offset in ("1", "2") and with_colon >= COLON_SHARE * total:
            colon_reach = int(offset) + 1
        elif with_dash >= DASH_SHARE * total:
            dash_reach = _TAIL_REACH
    layout = HeaderLayout(tuple(kinds), tuple(separators), colon_reach, dash_reach, 0.0, delimiter, tuple(keys))
    matched = sum(match_header(layout, fields)[0] > 0 for fields in split)
    share = matched / len(split)
    return HeaderLayout(layout.kinds, layout.separators, colon_reach, dash_reach, share, delimiter, tuple(keys))


def _reach(fields: Sequence[Field], start: int, separator: str, reach: int = 0) -> int:
    """1 + the index past ``start`` of the first field followed by ``separator`` within ``reach``
    fields (default: as far as such a field is looked for), or 0."""
    reach = reach or (_COLON_REACH if separator == "colon" else _TAIL_REACH)
    for offset, field in enumerate(fields[start : start + reach]):
        if field.separator == separator:
            return offset + 1
        if field.separator in ("colon", "dash") or field.kind in ("T", "L"):
            return 0
    return 0


def match_header(layout: HeaderLayout, fields: Sequence[Field]) -> tuple[int, int]:
    """How much of a line's ``fields`` the header takes: (the layout positions this line matches,
    the fields cut, tails included). A line that does not reach the layout's first time or level
    matches nothing: (0, 0)."""
    position = taken = 0
    while position < layout.size and taken < len(fields):
        kind, sep = layout.kinds[position], layout.separators[position]
        field = fields[taken]
        if kind and field.kind != kind:
            break
        if layout.keys and layout.keys[position] and field.key != layout.keys[position]:
            break
        if sep and field.separator != sep:
            # a field with a space of its own (``chrome.exe *64 - ``): its separator comes later
            for extra in (1, 2):
                ahead = fields[taken + 1 : taken + extra + 1]
                if len(ahead) == extra and ahead[-1].separator == sep and all(f.kind not in "TL" for f in ahead):
                    taken += extra
                    break
            else:
                break
        position += 1
        taken += 1
    if position <= layout.first_strong:
        return 0, 0
    cut = taken
    if position == layout.size:
        if layout.colon_reach:
            cut += _reach(fields, taken, "colon", layout.colon_reach)
        elif layout.dash_reach:
            cut += _reach(fields, taken, "dash")
    return position, cut


@dataclass(frozen=True)
class HeaderParts:
    """A line's header read with a layout: the time, level word, source and message."""

    time: datetime | None
    level: str | None
    source: str | None
    message: str


class HeaderReader:
    """Reads lines with one :class:`HeaderLayout`: the message is what follows the header fields a
    line matches; times are parsed in the shape the first one had."""

    def __init__(self, layout: HeaderLayout, reference: datetime) -> None:
        self.layout = layout
        self.reference = reference
        self._limit = min(MAX_FIELDS, layout.size + max(layout.colon_reach, layout.dash_reach) + 2)
        self._shape: int | None = None

    def read(self, line: str) -> HeaderParts | None:
        """The line's parts, or None when its first field does not fit the header."""
        fields = split_fields(line, self._limit, self.layout.delimiter)
        matched, cut = match_header(self.layout, fields)
        if matched == 0:
            return None
        # a level right after the header is header too, though too few lines have one to make it
        # part of the layout: when unsure, the header is kept out of the message
        if (
            cut < len(fields)
            and fields[cut].kind == "L"
            and fields[cut].separator != "end"
            and all(f.kind != "L" for f in fields[:cut])
        ):
            cut += 1
        header = fields[:cut]
        message = line[header[-1].end :] if header else line
        message = _unwrap(message)
        times = [f.text.strip("[]") for f in header if f.kind == "T"]
        level = next((f.text.strip("[]<>()\"' ") for f in header if f.kind == "L"), None)
        if level is not None and "=" in level:
            level = level.partition("=")[2].strip('"')
        source = None
        for field in reversed(header):
            text = (field.text.partition("=")[2] if field.key else field.text).strip('"')
            if field.kind == "W" and any(c.isalpha() for c in text):
                source = _PID_SUFFIX.sub("", text) or text
                break
        return HeaderParts(self._time(" ".join(times)) if times else None, level, source, message)

    def _time(self, text: str) -> datetime | None:
        if "=" in text:
            text = " ".join(part.partition("=")[2].strip('"') for part in text.split())
        if self._shape is not None:
            match = SHAPES[self._shape].pattern.fullmatch(text)
            if match:
                return SHAPES[self._shape].parse(match, self.reference)
        for index, shape in enumerate(SHAPES):
            match = shape.pattern.fullmatch(text)
            if match:
                self._shape = index
                return shape.parse(match, self.reference)
        if text.replace(".", "", 1).isdigit():
            return from_epoch(float(text))
        # a date and a time in fields of their own that no single shape writes: the time alone
        return parse_any(text, self.reference)


def _unwrap(message: str) -> str:
    message = message.strip()
    key, eq, _ = message[:12].partition("=")
    if eq and key in _MESSAGE_KEYS:
        message = message[len(key) + 1 :]
    if len(message) > 1 and message[0] == message[-1] == '"' and '"' not in message[1:-1]:
        return message[1:-1]
    if message[:1] in "|,;" and message:
        return message[1:].lstrip()
    return message
