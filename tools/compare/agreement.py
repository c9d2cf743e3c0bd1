"""How far several models' answers to one prompt agree: plain functions, no model, no MCP.

- JSON answers (:func:`json_agreement`) are compared field by field: every leaf (``a.b``,
  ``items`` as a whole list) gets its majority value, and each model the share of fields where it
  gives that value.
- Text answers are compared by a similarity matrix: cosine of embedding vectors when the caller
  has them (:func:`cosine_matrix`), otherwise cosine of word counts (:func:`word_overlap_matrix`:
  lower-cased words without the commonest English ones, so paraphrases that share their content
  words score high and answers naming different things low).
- :func:`majority` turns a similarity matrix into the majority (the answers close to the most
  central one, the medoid) and the outliers (the rest); with fewer than three answers there is no
  majority to speak of and nobody is an outlier.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Two answers at or above this similarity say the same thing (embeddings are denser, so stricter).
EMBEDDING_THRESHOLD = 0.8
WORD_THRESHOLD = 0.5
# A model agreeing with the majority on fewer fields than this share is an outlier.
FIELD_THRESHOLD = 0.5
_WORD = re.compile(r"\w+", re.UNICODE)
# Words that carry no content of their own: "Lyon is the capital" must not match "Paris is the capital".
STOP_WORDS = frozenset(
    "a an and are as at be but by do does for from has have i if in into is it its no not of on or so "
    "that the their there these this those to was we were what when which who will with you your".split()
)
_ABSENT = "<absent>"


@dataclass(frozen=True)
class FieldVote:
    """One JSON field: its majority value (as compact JSON), how many gave it, who did not."""

    field: str
    value: str
    agreeing: int
    dissenting: tuple[str, ...]


@dataclass(frozen=True)
class Agreement:
    """Per answer: its agreement score in [0, 1]; the overall score; the majority and outliers."""

    scores: dict[str, float]
    overall: float | None
    majority: tuple[str, ...]
    outliers: tuple[str, ...]
    fields: tuple[FieldVote, ...] = ()


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Leaves of a JSON value by dotted path, each as canonical compact JSON (lists whole)."""
    if isinstance(value, Mapping):
        out: dict[str, str] = {}
        for key in sorted(value):
            out.update(flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return out if out else {prefix or "$": "{}"}
    return {prefix or "$": json.dumps(_normal(value), sort_keys=True, separators=(",", ":"))}


def _normal(value: Any) -> Any:
    """Strings compared without case and outer spaces; numbers as numbers (1 == 1.0)."""
    if isinstance(value, str):
        return " ".join(value.split()).casefold()
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def json_agreement(answers: Mapping[str, Mapping[str, Any]]) -> Agreement:
    """Field-by-field agreement of JSON answers (model name -> answer object)."""
    names = list(answers)
    flat = {name: flatten(answer) for name, answer in answers.items()}
    fields = sorted({path for leaves in flat.values() for path in leaves})
    votes: list[FieldVote] = []
    hits: Counter[str] = Counter()
    for path in fields:
        given = {name: flat[name].get(path, _ABSENT) for name in names}
        value, count = Counter(given.values()).most_common(1)[0]
        agreeing = [n for n in names if given[n] == value]
        hits.update(agreeing)
        votes.append(FieldVote(path, value, count, tuple(n for n in names if n not in agreeing)))
    scores = {n: (hits[n] / len(fields) if fields else 1.0) for n in names}
    overall = sum(v.agreeing for v in votes) / (len(votes) * len(names)) if votes and names else None
    if len(names) < 3:
        return Agreement(scores, overall, (), (), tuple(votes))
    majority = tuple(n for n in names if scores[n] >= FIELD_THRESHOLD)
    outliers = tuple(n for n in names if scores[n] < FIELD_THRESHOLD)
    return Agreement(scores, overall, majority, outliers, tuple(votes))


def word_overlap_matrix(texts: Sequence[str]) -> list[list[float]]:
    """Cosine similarity of the texts' lower-cased word counts."""
    bags = [Counter(w for w in (w.casefold() for w in _WORD.findall(t)) if w not in STOP_WORDS) for t in texts]
    return [[_bag_cosine(a, b) for b in bags] for a in bags]


def cosine_matrix(vectors: Sequence[Sequence[float]]) -> list[list[float]]:
    """Cosine similarity of embedding vectors (0 for an all-zero vector)."""
    norms = [math.sqrt(sum(x * x for x in v)) for v in vectors]
    out = []
    for i, a in enumerate(vectors):
        row = []
        for j, b in enumerate(vectors):
            denom = norms[i] * norms[j]
            row.append(sum(x * y for x, y in zip(a, b, strict=True)) / denom if denom else 0.0)
        out.append(row)
    return out


def majority(names: Sequence[str], matrix: Sequence[Sequence[float]], threshold: float) -> Agreement:
    """Scores (mean similarity to the other answers), the overall mean, the majority (answers at
    least ``threshold`` similar to the medoid, the medoid included) and the outliers."""
    n = len(names)
    if n == 0:
        return Agreement({}, None, (), ())
    if n == 1:
        return Agreement({names[0]: 1.0}, None, (), ())
    scores = {names[i]: sum(matrix[i][j] for j in range(n) if j != i) / (n - 1) for i in range(n)}
    pairs = [matrix[i][j] for i in range(n) for j in range(i + 1, n)]
    overall = sum(pairs) / len(pairs)
    if n < 3:
        return Agreement(_rounded(scores), round(overall, 3), (), ())
    medoid = max(range(n), key=lambda i: (scores[names[i]], -i))
    close = tuple(names[i] for i in range(n) if i == medoid or matrix[i][medoid] >= threshold)
    if len(close) * 2 <= n:  # no answer is shared by more than half: nobody is the odd one out
        return Agreement(_rounded(scores), round(overall, 3), (), ())
    return Agreement(_rounded(scores), round(overall, 3), close, tuple(name for name in names if name not in close))


def _bag_cosine(a: Counter[str], b: Counter[str]) -> float:
    if not a or not b:
        return 1.0 if not a and not b else 0.0
    dot = sum(count * b[word] for word, count in a.items())
    return dot / (math.sqrt(sum(c * c for c in a.values())) * math.sqrt(sum(c * c for c in b.values())))


def _rounded(scores: Mapping[str, float]) -> dict[str, float]:
    return {name: round(value, 3) for name, value in scores.items()}
