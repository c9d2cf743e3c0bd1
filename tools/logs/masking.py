"""Replacing the variable parts of a log message with ``<*>`` before its template is mined.

Masking is what lets one configuration serve every log: whatever a system's ids look like, a token
that holds a digit is almost never part of the event's wording, and addresses, paths, URLs, host
names, dates, durations and data sizes are recognised by their shape. Each mask replaces one value
by one ``<*>``, so the lines of one event keep the same number of tokens even when a value is
written in several words (``Fri Jul 10 03:55:12 2005``, ``1190 bytes (1.16 KB)``, ``<1 sec>``).
Empty brackets become ``(<*>)``: an empty value is still a value.

The masks run in order (dates before numbers, paths before words); each is one compiled regular
expression applied by ``re.sub``, about 10 µs for a 100-character line.
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


# (name, pattern, replacement, a substring the text must hold for the mask to be tried): the
# substring test costs ~50 ns and spares most lines most masks. Names are listed by MASK_NAMES.
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
        r"<?\b\d+(?:\.\d+)?\s?(?:(?:bytes|[KMGT]i?B)(?:\s\(\d+(?:\.\d+)?\s?[KMGT]i?B\))?(?!\w)"
        r"|(?:ns|us|µs|ms|s|sec|secs|seconds?|mins?|minutes?|h|hrs?|hours?)\b>?)",
        WILDCARD,
        (),
    ),
    # ids, numbers, IPs, hex, versions: any word with a digit in it; but a name with one digit
    # inside a word is a name, not a value: jk2_init
    ("word with a digit", r"(?<![\w<])(?![A-Za-z]+\d[A-Za-z_]+[A-Za-z]\b(?![.:-]))[\w.:-]*\d[\w.:-]*", WILDCARD, ()),
    ("host name", rf"(?i)(?<![\w.-])(?:[a-z0-9-]+\.)+(?:{_TLDS})(?![\w.-])", WILDCARD, (".",)),
    ("empty value", r"(?<![\w>])(?:\(\)|\[\]|\{\})", _bracketed, ("()", "[]", "{}")),  # not a call: f()
)
_COMPILED = tuple((re.compile(pattern), replacement, needles) for _, pattern, replacement, needles in _MASKS)
_DIGIT = re.compile(r"\d")
MASK_NAMES: tuple[str, ...] = tuple(dict.fromkeys(name for name, _, _, _ in _MASKS))


def mask_message(message: str) -> str:
    """``message`` with every variable part replaced by ``<*>`` (see the module docstring)."""
    for pattern, replacement, needles in _COMPILED:
        if needles:
            if not any(n in message for n in needles):
                continue
        elif not _DIGIT.search(message):  # the masks without a needle all need a digit
            continue
        message = pattern.sub(replacement, message)
    return message
