"""The model pass over mined templates: which clusters to split, and which to merge.

Statistics cannot tell ``cupsd startup succeeded`` / ``sdpd startup succeeded`` (two events, the
daemon's name is part of the wording) from ``session opened for user root`` / ``... user news``
(one event, the user is data) — a model that reads the words can. This module prepares the
question and applies the answers; the supervisor asks the model and caches each answer by the
template it is about, so a template costs at most one model call, ever.

- :func:`candidates`: templates worth asking about: those with a ``<*>`` slot that holds a few
  (2 to :data:`MAX_SLOT_VALUES`) distinct words (split candidates), and those with a neighbour of
  the same length that differs in at most :func:`max_differences` positions (merge candidates);
- :func:`apply_decisions`: a :class:`Decision` per template (slots to split on, the neighbour it
  is the same event as) applied to the mining result.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from .masking import WILDCARD

MAX_SLOT_VALUES = 8
MAX_NEIGHBOURS = 3


def max_differences(length: int) -> int:
    """How many positions two templates of ``length`` tokens may differ in and still be offered
    as the same event."""
    return max(1, length // 5)


@dataclass(frozen=True)
class Candidate:
    template: str
    count: int
    slot_values: dict[int, list[str]] = field(default_factory=dict)
    neighbours: list[str] = field(default_factory=list)


class Decision(BaseModel):
    """What to do with one template: split it by the words in ``split_slots`` (0-based token
    positions), and/or merge it into ``same_as`` (another template's text)."""

    template: str
    split_slots: list[int] = Field(default_factory=list)
    same_as: str | None = None


def candidates(
    masked: Sequence[str], message_templates: Sequence[int], templates: Sequence[str], weights: Sequence[int]
) -> list[Candidate]:
    """Templates worth asking a model about, most frequent first."""
    slot_words: dict[int, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    counts: Counter[int] = Counter()
    token_lists = [t.split() for t in templates]
    for message, t, weight in zip(masked, message_templates, weights, strict=True):
        counts[t] += weight
        shape = token_lists[t]
        for p, token in enumerate(message.split()):
            if p < len(shape) and shape[p] == WILDCARD and token != WILDCARD and WILDCARD not in token:
                slot_words[t][p].add(token)
    by_length: dict[int, list[int]] = defaultdict(list)
    for t, tokens in enumerate(token_lists):
        by_length[len(tokens)].append(t)
    found = []
    for t, tokens in enumerate(token_lists):
        slots = {
            p: sorted(words)[:MAX_SLOT_VALUES]
            for p, words in slot_words[t].items()
            if 2 <= len(words) <= MAX_SLOT_VALUES
        }
        neighbours = []
        limit = max_differences(len(tokens))
        for other in by_length[len(tokens)]:
            if other == t:
                continue
            differences = sum(a != b for a, b in zip(tokens, token_lists[other], strict=True))
            if differences <= limit:
                neighbours.append(templates[other])
            if len(neighbours) >= MAX_NEIGHBOURS:
                break
        if slots or neighbours:
            found.append(Candidate(templates[t], counts[t], slots, neighbours))
    found.sort(key=lambda c: -c.count)
    return found


def apply_decisions(
    decisions: Sequence[Decision], masked: Sequence[str], message_templates: Sequence[int], templates: Sequence[str]
) -> tuple[list[int], list[str], int, int]:
    """The mining result with ``decisions`` applied: the new template of each masked message, the
    new templates, and how many splits and merges took effect. A merge into a template that is
    not there, or of a different length, is ignored; split slots must be ``<*>`` slots."""
    index = {text: t for t, text in enumerate(templates)}
    target: dict[int, int] = {}
    split_on: dict[int, list[int]] = {}
    for decision in decisions:
        t = index.get(decision.template)
        if t is None:
            continue
        tokens = templates[t].split()
        slots = [p for p in decision.split_slots if 0 <= p < len(tokens) and tokens[p] == WILDCARD]
        if slots:
            split_on[t] = slots
        other = index.get(decision.same_as) if decision.same_as else None
        if other is not None and other != t and len(templates[other].split()) == len(tokens):
            target[t] = other
    merges = 0

    def root(t: int) -> int:
        seen = set()
        while t in target and t not in seen:
            seen.add(t)
            t = target[t]
        return t

    groups: dict[tuple[int, tuple[str, ...]], int] = {}
    shapes: list[list[str]] = []
    labels: list[int] = []
    for message, t in zip(masked, message_templates, strict=True):
        tokens = message.split()
        split_slots = split_on.get(t)
        key_words = tuple(tokens[p] if p < len(tokens) else "" for p in split_slots) if split_slots else ()
        key = (root(t), key_words)
        label = groups.get(key)
        if label is None:
            label = groups[key] = len(shapes)
            shapes.append(list(templates[t].split()) if not split_slots else list(tokens))
        shape = shapes[label]
        if len(shape) == len(tokens):
            for p, token in enumerate(tokens):
                if shape[p] != token and shape[p] != WILDCARD:
                    shape[p] = WILDCARD
        labels.append(label)
    merges = len({t for t in target if root(t) != t})
    splits = sum(len({k for k in groups if k[0] == t}) - 1 for t in split_on)
    return labels, [" ".join(s) for s in shapes], splits, merges
