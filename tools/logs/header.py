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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache, partial
from operator import call as _call
from typing import NamedTuple, cast

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
# a field's forms after a time, tried in this order (the compiled layouts below reuse them)
_BRACKETED = r"\[(?:[^\[\]]|\[[^\[\]]*\]){0,200}\]|<[^<>\s]{1,64}>|\((?:[^()]|\([^()]*\)){0,120}\)"
_QUOTED = r"\"[^\"]{0,200}\""
_KEY_VALUE = r"[A-Za-z_][\w.-]{0,30}=(?:\"[^\"]{0,200}\"|[^\s|,;]*)"
_WORD = r"[^\s|,;]{1,200}"
_FIELD_REST = rf"(?P<br>{_BRACKETED})|(?P<q>{_QUOTED})|(?P<kv>{_KEY_VALUE})|(?P<w>{_WORD})"
_FIELD = re.compile(rf"(?P<ts>{_TIMESTAMP}){_BOUNDARY}|{_FIELD_REST}")
# a field that cannot start a time (most words) skips the timestamp alternatives: the cost of a
# line is mostly these matches
_FIELD_NO_TIME = re.compile(_FIELD_REST)
_TIME_INITIALS = frozenset("0123456789JFMASONDTW")
# what separates one field from the next; named by kind (" " is plain prose's own separator)
_SEPARATORS = (
    ("colon", r"\s*:(?:\s+|$)"),
    ("pipe", r"\s*\|\s*"),
    ("semi", r"\s*;\s*"),
    ("comma", r"\s*,\s*"),
    ("dash", r"\s+-(?:\s+|$)"),
    ("tab", r"\s*\t\s*"),
    ("spaces", r"\s{2,}"),
    ("space", r"\s"),
)
_SEPARATOR = re.compile("|".join(f"(?P<{name}>{pattern})" for name, pattern in _SEPARATORS))
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


# a Field from a tuple of its values, for a third of what Field(...) costs (a line makes a dozen)
_new_field: Callable[[tuple[str, str, str, int, str]], Field] = partial(tuple.__new__, Field)


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
    new_field = _new_field
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
        else:
            kind, key = _kind_and_key(group or "", text)
        if end + 1 < length and line[end] == " " and line[end + 1] not in _NOT_PLAIN_AFTER_SPACE:
            separator, after = "space", end + 1  # the common case, without a match
        else:
            sep = separator_at(line, end) if end < length else None
            if sep is None:
                separator, after = ("end" if end >= length else "none"), end
            else:
                separator, after = sep.lastgroup or "space", sep.end()
        append(new_field((kind, text, separator, after, key)))
        if separator == "none" and after == pos:
            break
        pos = after
    return fields


def _kind_and_key(form: str, text: str) -> tuple[str, str]:
    """The kind and key of a field that matched ``form`` (the group of :data:`_FIELD` it matched,
    or ``empty``); a word's text is without its trailing colon already."""
    if form == "w":
        return _kind_of_word(text), ""
    if form == "ts":
        return ("T" if not text.isdigit() or _is_epoch(text) else "W"), ""
    if form == "br":
        return _kind_of_bracketed(text[1:-1].strip()), ""
    if form == "kv":
        key, _, value = text.partition("=")
        value = value.strip('"')
        return (_kind_of_word(value) if value else "W"), key
    if form == "q":
        return (_kind_of_word(text[1:-1]) if len(text) > 2 else "W"), ""
    return "W", ""


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


MAX_SHAPES = 8  # compiled shapes a reader keeps (lines of other shapes are split field by field)
SHAPE_REPEATS = 2  # lines that must share a shape before it is compiled
LEARN_LINES = 512  # split lines after which a reader stops compiling shapes

# A form's pattern must match where split_fields' alternation picks that form: the forms tried
# before it must not match there. Each guard below says so for less than those forms' whole
# patterns cost (compiling a time pattern per field costs milliseconds); where one is stricter
# than needed, the line is left to the splitter, never read differently.
_TIME_GATE = "(?=[" + re.escape("".join(sorted(_TIME_INITIALS))) + "])"
# where no time starts: a time starts with a day's or month's name or with a run of digits that
# one of :data:`_TIMESTAMP`'s forms continues (``12/``, ``12:``, ``2015-``, ``081109 ``...); runs
# of 1 to 7 digits are told apart by the character after them, longer ones are left to the splitter
_NO_TIME = (
    f"(?:(?![0-9])(?!{_DOW}|{_MON})"
    r"|(?=[0-9](?:"
    r"(?![\d/:])"  # 1 digit: not 1/Oct/2000 nor 1:05
    r"|:(?!\d\d)"  # 1 digit and a colon: not 1:05 (task 1: done)
    r"|\d(?![\d/.:-])"  # 2 digits: not 17/06/09, 06-14 15:16, 12:30
    r"|\d:(?!\d\d)"
    r"|\d[.-](?!\d\d[/.\- ])"  # 127.0.0.1 (not 10.30 17:02 nor 18.10.2015)
    r"|\d\d(?!\d)"
    r"|\d\d\d(?![\d/.-])"  # 4 digits: not 2015-, 2015/, 2015.
    r"|\d{4}(?!\d)"
    r"|\d{5}(?![\d ])"  # 6 digits: not 081109 203615
    r"|\d{6}(?!\d)"
    r")))"
)
_FORM_PATTERNS = {
    "ts": f"{_TIME_GATE}{_TIMESTAMP}{_BOUNDARY}",
    "br": f"(?=[\\[<(])(?:{_BRACKETED})",  # no time starts with a bracket
    "q": f'(?="){_QUOTED}',
    "kv": f"{_NO_TIME}{_KEY_VALUE}",
}
# a word is cut as split_fields cuts it: ``w`` a word that does not end with a colon (the
# splitter's 200 characters at most, taken whole), ``wc`` one whose colon the splitter leaves to
# the separator (at most 199 characters before it, so that the word is not cut at its limit);
# neither a time, a bracketed group, a quoted string nor a key=value starts there
# (a key=value's value may be empty, so its key alone says whether one starts; no key is followed
# by more than 30 of its characters, so the possessive key gives up nothing it would match with)
_NOT_WORD_BEFORE = f'{_NO_TIME}(?![\\[<("])(?![A-Za-z_][\\w.-]{{0,30}}+=)'
_WORD_FORMS = {
    "w": r"[^\s|,;]{1,200}+(?<!:)",
    "wc": r"[^\s|,;]{1,199}(?=:(?![^\s|,;]))",  # the longest start before a colon that ends it
}
_SEPARATOR_NAMES = tuple(name for name, _ in _SEPARATORS)
_SEPARATOR_PATTERNS = dict(_SEPARATORS)
_ANY_SEPARATOR = "|".join(pattern for _, pattern in _SEPARATORS)
# split_fields' shortcut for a plain space: a space before a character no separator starts with
_PLAIN_SPACE = " (?=[^" + re.escape("".join(sorted(_NOT_PLAIN_AFTER_SPACE))) + "])"


def _first_of(names: Sequence[str], patterns: dict[str, str], name: str) -> str:
    """A pattern that matches where ``name``'s alternative is the first of ``names`` to match,
    as in an alternation of them: the ones before it must not match there; atomic, so that a
    later field cannot make it match differently."""
    earlier = [patterns[other] for other in names[: names.index(name)]]
    guard = f"(?!{'|'.join(earlier)})" if earlier else ""
    return f"{guard}(?>{patterns[name]})"


def _field_pattern(form: str, index: int) -> str:
    if form == "empty":  # no field starts here (every field starts elsewhere): the separator alone
        return rf"(?=[\s|,;])(?P<f{index}>)"
    if form in _WORD_FORMS:
        return f"{_NOT_WORD_BEFORE}(?P<f{index}>(?>{_WORD_FORMS[form]}))"
    return f"(?P<f{index}>(?>{_FORM_PATTERNS[form]}))"


def _separator_pattern(separator: str, index: int, after_field: bool) -> str:
    if separator == "end":
        return rf"(?P<s{index}>)\Z"
    if separator == "none":  # nothing separates the field from the next one
        return rf"(?!\Z)(?!{_ANY_SEPARATOR})(?P<s{index}>)"
    first = _first_of(_SEPARATOR_NAMES, _SEPARATOR_PATTERNS, separator)
    if not after_field:  # an empty field's separator: the separators alone are tried
        return f"(?P<s{index}>{first})"
    # after a field, split_fields takes a plain space before it tries the separators
    if separator == "space":
        return f"(?P<s{index}>{_PLAIN_SPACE}|(?!{_PLAIN_SPACE}){first})"
    return f"(?!{_PLAIN_SPACE})(?P<s{index}>{first})"


def _kind_of_time(text: str) -> str:
    return "T" if not text.isdigit() or _is_epoch(text) else "W"


@lru_cache(maxsize=8192)
def _kind_of_bracketed_text(text: str) -> str:
    # cached by the whole text: a file's threads and components repeat on every line
    return _kind_of_bracketed(text[1:-1].strip())


def _kind_of_quoted(text: str) -> str:
    return _kind_of_word(text[1:-1]) if len(text) > 2 else "W"


def _kind_of_pair(text: str) -> str:
    kind, key = _kind_and_key("kv", text)
    return kind + key


# a field's kind (and key) from its text, by form: one string, the kind's letter first
_KIND_OF_FORM: dict[str, Callable[[str], str]] = {
    "ts": _kind_of_time,
    "br": _kind_of_bracketed_text,
    "q": _kind_of_quoted,
    "kv": _kind_of_pair,
    "w": _kind_of_word,
    "wc": _kind_of_word,
    "empty": lambda text: "W",
}


class CompiledShape:
    """One regular expression for the lines whose first fields have the same forms and
    separators: where it matches, the fields are the first ones :func:`split_fields` would cut,
    for the cost of one match. The forms are the groups of :data:`_FIELD` (a word as ``w`` or
    ``wc``, see :data:`_WORD_FORMS`) or ``empty``; a ``complete`` shape has all of a line's
    fields (the line ends after the last), else the line may go on."""

    def __init__(self, forms: tuple[str, ...], separators: tuple[str, ...], complete: bool) -> None:
        self.forms = forms
        self.separators = separators
        self.complete = complete
        pieces = [r"[ \t]*+"]
        for index, (form, separator) in enumerate(zip(forms, separators, strict=True)):
            pieces.append(_field_pattern(form, index))
            pieces.append(_separator_pattern(separator, index, after_field=form != "empty"))
        if complete:
            pieces.append(r"\Z")
        self.pattern = re.compile("".join(pieces))
        groups = self.pattern.groupindex
        #: the groups of the fields' texts (``several``: more than one, as match.group gives them)
        self.text_groups = tuple(groups[f"f{i}"] for i in range(len(forms)))
        self.several = len(forms) > 1
        #: the group each field's separator is, whose end is where the next field starts
        self.end_groups = tuple(groups[f"s{i}"] for i in range(len(forms)))
        #: each field's kind letter followed by its key (``key=value`` fields only), from its text
        self.kind_of = tuple(_KIND_OF_FORM[form] for form in forms)

    def match(self, line: str) -> tuple[re.Match[str], tuple[str, ...]] | None:
        """The match and the fields' texts, or None where the shape does not fit ``line`` (at
        most :data:`HEAD_CHARS` characters long)."""
        match = self.pattern.match(line)
        if match is None:
            return None
        if not self.several:
            return match, (match.group(self.text_groups[0]),)
        return match, match.group(*self.text_groups)

    def kinds(self, texts: tuple[str, ...]) -> tuple[str, ...]:
        """Each field's kind letter followed by its key (``key=value`` fields only)."""
        return tuple([kind_of(text) for kind_of, text in zip(self.kind_of, texts, strict=True)])

    def fields(self, line: str) -> list[Field] | None:
        """``line``'s first fields, as :func:`split_fields` cuts them, or None where the shape
        does not fit."""
        found = self.match(line)
        if found is None:
            return None
        match, texts = found
        return [
            Field(kind[0], text, separator, match.end(group), kind[1:])
            for kind, text, separator, group in zip(
                self.kinds(texts), texts, self.separators, self.end_groups, strict=True
            )
        ]


class _Plan(NamedTuple):
    """What a shape's lines with the same kinds give: the header's fields (``cut``, 0: the line
    does not fit the header, -1: the shape's fields cannot tell), the group the message starts
    after, the time fields, the level field (-1: none) and the fields a source may be, last first
    (with whether each is a ``key=value``)."""

    cut: int
    message_after: int = 0
    times: tuple[int, ...] = ()
    level: int = -1
    sources: tuple[tuple[int, bool], ...] = ()


@lru_cache(maxsize=256)
def compiled_shape(forms: tuple[str, ...], separators: tuple[str, ...], complete: bool) -> CompiledShape:
    """The :class:`CompiledShape` of these forms and separators (cached: every file of a layout
    has the same few)."""
    return CompiledShape(forms, separators, complete)


def field_forms(line: str, fields: Sequence[Field]) -> tuple[str, ...] | None:
    """The form of each of ``fields`` (:func:`split_fields` of ``line``), as
    :class:`CompiledShape` names them, or None for a line longer than :data:`HEAD_CHARS`."""
    length = len(line)
    if length > HEAD_CHARS:
        return None
    forms = []
    pos = length - len(line.lstrip(" \t"))
    for field in fields:
        if not field.text:
            forms.append("empty")
        else:
            match = (_FIELD if line[pos] in _TIME_INITIALS else _FIELD_NO_TIME).match(line, pos, length)
            if match is None:
                return None
            form = match.lastgroup or ""
            if form == "w" and len(field.text) < len(match.group()):
                form = "wc"
            forms.append(form)
        pos = field.end
    return tuple(forms)


class _Beyond(Exception):
    """A decision looked at a field past the ones a shape holds."""


class _UnknownField:
    # stands for a field past a shape's: reading it means the shape cannot decide the line
    def __getattr__(self, name: str) -> str:
        raise _Beyond(name)


_UNKNOWN = cast(Field, _UnknownField())


class HeaderParts(NamedTuple):
    """A line's header read with a layout: the time, level word, source and message."""

    # a tuple: one is made per line, and a frozen dataclass costs three times as much

    time: datetime | None
    level: str | None
    source: str | None
    message: str


# a HeaderParts from a tuple of its values, without NamedTuple's __new__ (one is made per line)
_new_parts: Callable[[tuple[datetime | None, str | None, str | None, str]], HeaderParts] = partial(
    tuple.__new__, HeaderParts
)


class HeaderReader:
    """Reads lines with one :class:`HeaderLayout`: the message is what follows the header fields a
    line matches; times are parsed in the shape the first one had.

    A line is cut into fields by a :class:`CompiledShape` (one regular expression) where one
    fits, else by :func:`split_fields`; the shapes are those of the lines read so far
    (:data:`MAX_SHAPES`), each as long as the header needs. Both give the same fields, so
    ``compiled=False`` changes the speed only."""

    def __init__(self, layout: HeaderLayout, reference: datetime, *, compiled: bool = True) -> None:
        self.layout = layout
        self.reference = reference
        self._limit = min(MAX_FIELDS, layout.size + max(layout.colon_reach, layout.dash_reach) + 2)
        self._shape: int | None = None
        self._last_time_text: str | None = None
        self._last_time: datetime | None = None
        # the delimited reading cuts with str.find already; only the field splitter is compiled
        self._learning = compiled and not layout.delimiter
        self._shapes: list[tuple[CompiledShape, dict[tuple[str, ...], _Plan]]] = []
        self._seen: Counter[tuple[tuple[str, ...], tuple[str, ...], bool]] = Counter()
        self._unlearned = 0

    def read(self, line: str) -> HeaderParts | None:
        """The line's parts, or None when its first field does not fit the header."""
        if self._shapes and len(line) <= HEAD_CHARS:
            for shape, plans in self._shapes:
                match = shape.pattern.match(line)
                if match is None:
                    continue
                texts = match.group(*shape.text_groups) if shape.several else (match.group(shape.text_groups[0]),)
                # what the header takes depends on the fields' kinds and keys only: the shape
                # fixes their separators and how many there are
                kinds = tuple(map(_call, shape.kind_of, texts))
                plan = plans.get(kinds)
                if plan is None:
                    plan = plans[kinds] = self._plan(shape, line)
                if plan.cut > 0:
                    return self._planned_parts(line, match, texts, plan)
                if plan.cut == 0:
                    return None
                break
        fields = split_fields(line, self._limit, self.layout.delimiter)
        if self._learning:
            self._learn(line, fields)
        return self._parts(line, fields, self._cut(fields))

    def _plan(self, shape: CompiledShape, line: str) -> _Plan:
        """The :class:`_Plan` of the lines of ``shape`` whose kinds are ``line``'s."""
        fields = shape.fields(line)
        if fields is None:  # never: the line was matched
            return _Plan(-1)
        cut = self._decide(fields, shape.complete)
        if cut <= 0:
            return _Plan(cut)
        header = fields[:cut]
        kinds = [f.kind for f in header]
        return _Plan(
            cut,
            shape.end_groups[cut - 1],
            tuple(i for i, kind in enumerate(kinds) if kind == "T"),
            next((i for i, kind in enumerate(kinds) if kind == "L"), -1),
            tuple((i, bool(header[i].key)) for i in reversed(range(cut)) if kinds[i] == "W"),
        )

    def _planned_parts(self, line: str, match: re.Match[str], texts: tuple[str, ...], plan: _Plan) -> HeaderParts:
        """:meth:`_parts` of a line a compiled shape matched, by its plan."""
        message = _unwrap(line[match.end(plan.message_after) :])
        level = _level_word(texts[plan.level]) if plan.level >= 0 else None
        source = None
        for index, keyed in plan.sources:
            source = _source_of(texts[index], keyed)
            if source is not None:
                break
        times = plan.times
        if not times:
            return _new_parts((None, level, source, message))
        text = texts[times[0]].strip("[]") if len(times) == 1 else " ".join([texts[i].strip("[]") for i in times])
        return _new_parts((self._time(text), level, source, message))

    def _cut(self, fields: list[Field]) -> int:
        """How many of ``fields`` are header (0: the line does not fit the header)."""
        matched, cut = match_header(self.layout, fields)
        if matched == 0:
            return 0
        # a level right after the header is header too, though too few lines have one to make it
        # part of the layout: when unsure, the header is kept out of the message
        if (
            cut < len(fields)
            and fields[cut].kind == "L"
            and fields[cut].separator != "end"
            and all(f.kind != "L" for f in fields[:cut])
        ):
            cut += 1
        return cut

    def _decide(self, first: list[Field], complete: bool) -> int:
        """:meth:`_cut` of a line whose first fields are ``first`` (all of them when
        ``complete``), or -1 when it depends on fields past those."""
        if complete:
            return self._cut(first)
        try:
            # fields past the first stand for any: the decision must not read them
            return self._cut(first + [_UNKNOWN] * (self._limit - len(first)))
        except _Beyond:
            return -1

    def _learn(self, line: str, fields: list[Field]) -> None:
        """Compiles the shape of ``line``'s first fields, as many as decide its header, once
        :data:`SHAPE_REPEATS` lines have had it."""
        self._unlearned += 1
        if len(self._shapes) >= MAX_SHAPES or self._unlearned > LEARN_LINES:
            self._learning = False
            self._seen.clear()
            return
        forms = field_forms(line, fields)
        if not forms:
            return
        separators = tuple(f.separator for f in fields)
        count = next((n for n in range(1, len(fields)) if self._decide(fields[:n], False) >= 0), len(fields))
        key = (forms[:count], separators[:count], count < self._limit and count == len(fields))
        if key[2] and self._decide(fields[:count], False) >= 0:
            key = (key[0], key[1], False)
        self._seen[key] += 1
        if self._seen[key] != SHAPE_REPEATS:
            return
        shape = compiled_shape(*key)
        if shape.fields(line) == fields[:count]:  # it reads this very line as the splitter does
            self._shapes.append((shape, {}))

    def _parts(self, line: str, fields: list[Field], cut: int) -> HeaderParts | None:
        if cut == 0:
            return None
        header = fields[:cut]
        message = line[header[-1].end :] if header else line
        message = _unwrap(message)
        times = [f.text.strip("[]") for f in header if f.kind == "T"]
        level = next((_level_word(f.text) for f in header if f.kind == "L"), None)
        source = None
        for field in reversed(header):
            if field.kind == "W":
                source = _source_of(field.text, bool(field.key))
                if source is not None:
                    break
        return HeaderParts(self._time(" ".join(times)) if times else None, level, source, message)

    def _time(self, text: str) -> datetime | None:
        # lines in a burst share their time's text: the last one's reading is reused (the same
        # text read again right away is read with the same shape, so the result is the same)
        if text == self._last_time_text:
            return self._last_time
        when = self._read_time(text)
        self._last_time_text, self._last_time = text, when
        return when

    def _read_time(self, text: str) -> datetime | None:
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


@lru_cache(maxsize=1024)
def _level_word(text: str) -> str:
    """The level a level field's text (``[WARN]``, ``level=error``) names; cached: a file has few."""
    level = text.strip("[]<>()\"' ")
    if "=" in level:
        level = level.partition("=")[2].strip('"')
    return level


@lru_cache(maxsize=4096)
def _source_of(text: str, keyed: bool) -> str | None:
    """The source a word field (a ``key=value`` one when ``keyed``) names, or None when it has no
    letter (a pid, a number); cached: a file's hosts and programs repeat."""
    text = (text.partition("=")[2] if keyed else text).strip('"')
    if any(c.isalpha() for c in text):
        return _PID_SUFFIX.sub("", text) or text
    return None


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
