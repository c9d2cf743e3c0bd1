"""Code-aware terms for the lexical index (SQLite FTS5 with BM25).

FTS5's own tokenizers split ``refresh_token`` at the underscore and keep ``refreshToken`` whole, so
neither "refresh token" nor "refresh_token" finds both spellings. The text is therefore expanded
before it reaches FTS5: every identifier is written whole (lower case, underscores kept) and
followed by its parts, ``getUserName`` -> ``getusername get user name``, ``MAX_RETRY_COUNT`` ->
``max_retry_count max retry count``. Queries go through the same expansion, so a query for the
whole identifier and a query in plain words both match. The FTS5 table adds Porter stemming
(``porter unicode61 tokenchars '_'``), so "retries" also finds "retry".
"""

from __future__ import annotations

import re

# FTS5 tokenizer for the expanded text: underscores belong to words (whole identifiers stay one
# term), and Porter stemming makes plural and -ing forms meet.
FTS_TOKENIZER = "porter unicode61 tokenchars '_'"

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+(?:\.[0-9]+)*")
# Camel-case boundaries: "HTTPServerError" -> HTTP, Server, Error; "parseV2Header" -> parse, V2, Header.
_CAMEL_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+[0-9]*|[A-Z]+[0-9]*|[0-9]+")
_MAX_TERM_CHARS = 64  # a longer "word" is data (a hash, base64), not something anyone searches for

# English function words, dropped from queries only: "how does the retry policy work" must not rank
# passages by how often they say "the". Documents keep them (FTS5 scores rare terms higher anyway).
STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just me more most
    my myself no nor not now of off on once only or other our ours ourselves out over own same she
    should so some such than that the their theirs them themselves then there these they this those
    through to too under until up very was we were what when where which while who whom why will with
    would you your yours yourself yourselves
    """.split()
)


def identifier_parts(word: str) -> list[str]:
    """The lower-case parts of an identifier (snake_case and camelCase), without the whole."""
    parts: list[str] = []
    for piece in word.split("_"):
        if not piece:
            continue
        found = _CAMEL_PART.findall(piece)
        parts.extend(p.lower() for p in (found or [piece]))
    return parts


def expand_word(word: str) -> list[str]:
    """``word`` whole (lower case) followed by its parts when it has more than one."""
    if len(word) > _MAX_TERM_CHARS:
        return []
    whole = word.lower().strip("_") or word.lower()
    # One-letter parts are noise ("OAuth" is not "o" + "auth", "getX" adds nothing to "get").
    parts = [p for p in identifier_parts(word) if len(p) > 1]
    if len(parts) <= 1:
        return [whole]
    return [whole, *parts]


def index_text(text: str) -> str:
    """``text`` as the lexical index stores it: every word, identifiers whole and split."""
    out: list[str] = []
    for match in _WORD.finditer(text):
        out.extend(expand_word(match.group(0)))
    return " ".join(out)


def query_terms(query: str) -> list[str]:
    """The distinct search terms of ``query``, in order: identifiers whole and split, stop words
    dropped (unless the query has nothing else)."""
    return list(dict.fromkeys(lexical_terms(query)))


def lexical_terms(query: str) -> list[str]:
    """:func:`query_terms` with each term as often as the query says it, for BM25: a word a query
    repeats ("the flow ... laminar flow") is what it is about, and Okapi BM25 sums a term once per
    query occurrence (on the dev splits: Cranfield nDCG@10 +0.002, the code questions +0.003)."""
    terms: list[str] = []
    for match in _WORD.finditer(query):
        terms.extend(expand_word(match.group(0)))
    # Stop words and one-letter leftovers ("application's" -> "s") only add noise to a ranking.
    content = [t for t in terms if t not in STOPWORDS and len(t) > 1]
    return content or terms


def fts_query(terms: list[str], *, require_all: bool = False) -> str:
    """An FTS5 MATCH expression for ``terms``: any of them (ranked by BM25), or all of them.

    Each term is quoted, so FTS5 operators in user text (``NEAR``, ``-``, ``*``) are just words. A
    term given twice is matched twice, and so counts twice in BM25's sum over the query's phrases.
    """
    quoted = ['"' + t.replace('"', '""') + '"' for t in terms]
    return (" AND " if require_all else " OR ").join(quoted)
