"""Replacing the variable parts of a log message with ``<*>`` before its template is mined.

Masking is what lets one configuration serve every log: whatever a system's ids look like, a token
that holds a digit is almost never part of the event's wording, and addresses, paths, URLs, host
names, dates, durations and data sizes are recognised by their shape. Each mask replaces one value
by one ``<*>``, so the lines of one event keep the same number of tokens even when a value is
written in several words (``Fri Jul 10 03:55:12 2005``, ``1190 bytes (1.16 KB)``, ``<1 sec>``).
Empty brackets become ``(<*>)``: an empty value is still a value.

The masks run in order (dates before numbers, paths before words); each is one compiled regular
expression applied by ``re.sub``, about 10 µs for a 100-character line. Most of a log's words
repeat, so a message is masked word by word, each distinct word once (:data:`_WORDS`), wherever
that gives what masking the whole message gives: only a date or a size written over a space can
match across one, and a message that may hold one (:data:`_OVER_SPACE`) is masked whole.
"""

from __future__ import annotations

import re
from collections.abc import Callable

WILDCARD = "<*>"

_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*"
_WEEKDAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*"
_TLDS = (
    "com|net|org|edu|gov|mil|int|io|info|biz|cn|de|uk|jp|fr|ru|br|in|it|nl|au|ca|es|se|ch|kr|tw|hk|"
    "local|lan|internal|localdomain"
)


def _bracketed(match: re.Match[str]) -> str:
    pair = match.group(0)
    return pair[0] + WILDCARD + pair[1]


# (name, pattern, replacement, the substrings one of which the text must hold for the mask to be
# tried): the substring test costs ~50 ns and spares most lines most masks. Names are listed by MASK_NAMES.
_SIZE_UNIT = r"(?:bytes|[KMGT]i?B)"
_DURATION_UNIT = r"(?:ns|us|µs|ms|s|sec|secs|seconds?|mins?|minutes?|h|hrs?|hours?)"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MASKS: tuple[tuple[str, str, str | Callable[[re.Match[str]], str], tuple[str, ...]], ...] = (
    (
        "date",
        rf"\b(?:{_WEEKDAY},?\s+)?{_MONTH}\s+\d{{1,2}}(?:,?\s+(?:\d{{4}}\s+)?\d{{1,2}}:\d\d(?::\d\d)?(?:\s+\d{{4}})?)\b",
        WILDCARD,
        _MONTHS,
    ),
    ("date", r"\b\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?", WILDCARD, ("-",)),
    ("url", r"\b[A-Za-z][\w+.-]*://[^\s\"'<>]+", WILDCARD, ("://",)),
    ("path", r"(?<![\w.~-])(?:~|\.{1,2})?(?:/[\w.@%+~-]+)+/?", WILDCARD, ("/",)),
    ("path", r"\b[A-Za-z]:\\[^\s\"'<>|]*", WILDCARD, (":\\",)),  # Windows: C:\Windows\system32
    ("host:port", r"\b[\w.-]+\.\w+:\d+\b", WILDCARD, (":",)),
    (
        "size or duration",
        rf"<?\b\d+(?:\.\d+)?\s?(?:{_SIZE_UNIT}(?:\s\(\d+(?:\.\d+)?\s?[KMGT]i?B\))?(?!\w)|{_DURATION_UNIT}\b>?)",
        WILDCARD,
        (),
    ),
    # ids, numbers, IPs, hex, versions: any word with a digit in it; but a name with one digit
    # inside a word is a name, not a value: jk2_init
    ("word with a digit", r"(?<![\w<])(?![A-Za-z]+\d[A-Za-z_]+[A-Za-z]\b(?![.:-]))[\w.:-]*\d[\w.:-]*", WILDCARD, ()),
    ("host name", rf"(?i)(?<![\w.-])(?:[a-z0-9-]+\.)+(?:{_TLDS})(?![\w.-])", WILDCARD, (".",)),
    ("empty value", r"(?<![\w>])(?:\(\)|\[\]|\{\})", _bracketed, ("()", "[]", "{}")),  # not a call: f()
)


def _gate(needles: tuple[str, ...]) -> str | re.Pattern[str] | None:
    """What a text must hold for a mask to be tried: its one needle, a search for any of its
    needles, or None for a digit."""
    if len(needles) == 1:
        return needles[0]
    return re.compile("|".join(re.escape(n) for n in needles)) if needles else None


_COMPILED = tuple((re.compile(pattern), replacement, _gate(needles)) for _, pattern, replacement, needles in _MASKS)
_DIGIT = re.compile(r"\d")
MASK_NAMES: tuple[str, ...] = tuple(dict.fromkeys(name for name, _, _, _ in _MASKS))

# What a mask can match across white space: the first date always has a space after its month;
# the second one where its date and time are apart; a size or a duration where its number and unit
# are ("35 ms", "1190 bytes (1.16 KB)"). No other mask matches white space, every lookaround of
# theirs reads white space as it reads a string's end, and ``<*>`` holds none, so where none of
# these is found in the message as written, each word masks alone to what it masks to in the
# message. (A size's characters are never a ``<*>`` the masks before it wrote, and those masks
# never start a ``<*>`` right after a letter, so it is found in the message as written.) Each
# pattern starts at the white space: a search then costs ~2 µs, the month names' alternation
# is looked for only in messages with a month's name.
_MONTH_NAME = re.compile("|".join(_MONTHS))
_DATE_OVER_SPACE = re.compile(rf"{_MONTH}\s+\d")
_OVER_SPACE = re.compile(rf"\s(?:(?<=\d\s)(?:{_SIZE_UNIT}(?!\w)|{_DURATION_UNIT}\b)|(?<=-\d\d\s)\d\d:|(?<=[sB]\s)\(\d)")
_WORDS: dict[str, str] = {}  # each word (what lies between two spaces) masked alone, as masked
_WORDS_KEPT = 50_000  # words remembered before the memory starts over (a few MB)
_WORD_CHARS = 200  # longer words are masked each time: they seldom repeat


def mask_message(message: str) -> str:
    """``message`` with every variable part replaced by ``<*>`` (see the module docstring)."""
    if _OVER_SPACE.search(message) is not None or (
        _MONTH_NAME.search(message) is not None and _DATE_OVER_SPACE.search(message) is not None
    ):
        return mask_whole_message(message)
    words = message.split(" ")
    masked = list(map(_WORDS.get, words))
    if None in masked:
        for index, word in enumerate(words):
            if masked[index] is None:
                masked[index] = found = mask_whole_message(word)
                if len(word) <= _WORD_CHARS:
                    if len(_WORDS) >= _WORDS_KEPT:
                        _WORDS.clear()
                    _WORDS[word] = found
    return " ".join(masked)  # type: ignore[arg-type]  # no None is left


def mask_whole_message(message: str) -> str:
    """Every mask applied to the whole of ``message``, in order: what :func:`mask_message` gives,
    without masking word by word (slower; a check of it)."""
    # the masks without a needle all need a digit, and a mask only takes digits away
    digit = _DIGIT.search(message) is not None
    for pattern, replacement, gate in _COMPILED:
        if gate is None:
            if not digit:
                continue
        elif isinstance(gate, str):
            if gate not in message:
                continue
        elif gate.search(message) is None:
            continue
        message = pattern.sub(replacement, message)
    return message
