"""Grouping masked log messages into templates ("signatures"), with one configuration for every log.

:func:`mine_templates` is the miner the product uses. It is statistical, after Brain (Yu et al.,
"Brain: Log Parsing with Bidirectional Parallel Tree", IEEE TSC 2023), and needs no per-system
setting:

1. Messages are masked (:mod:`.masking`), split on whitespace and grouped by token count.
2. In each length group, every (position, token) pair is counted. A message's *root* is its
   largest set of pairs that share one count (ties: the higher count). The constant words of one
   event appear in exactly the lines of that event, so they share a count; words shared with other
   events are more frequent, variable values less. Messages with the same root start one group.
3. In a group, a position whose tokens differ is a variable when it holds at least
   ``split_threshold`` distinct values; with fewer it names different events (``user=root`` /
   ``user=guest``; ``startup`` / ``shutdown``), and the group is split by it.

Identical masked messages are mined once, with their count as weight, so a log of a million lines
with a few thousand distinct masked messages costs little more than those few thousand.

:class:`Drain3Miner` runs Drain3 (the ``drain3`` package, defaults) over the same masked messages;
``bench/logs.py`` measures both on the Loghub samples (the statistical miner is the more accurate
there, which is why it is the default).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .masking import WILDCARD, mask_message

DEFAULT_SPLIT_THRESHOLD = 4


@dataclass(frozen=True)
class MinedTemplates:
    """The result of mining: ``labels[i]`` is the index in ``templates`` of message ``i``;
    ``counts[k]`` how many messages template ``k`` holds. Templates are in first-seen order."""

    labels: list[int]
    templates: list[str]
    counts: list[int]


def mine_templates(
    messages: Sequence[str], *, split_threshold: int = DEFAULT_SPLIT_THRESHOLD, masked: bool = False
) -> MinedTemplates:
    """Group ``messages`` into templates (see the module docstring). With ``masked`` the messages
    are taken as already masked."""
    unique: dict[str, int] = {}
    line_to_unique: list[int] = []
    for message in messages:
        key = message if masked else mask_message(message)
        line_to_unique.append(unique.setdefault(key, len(unique)))
    weights = Counter(line_to_unique)
    keys = list(unique)
    labels, templates = cluster_masked(keys, [weights[i] for i in range(len(keys))], split_threshold=split_threshold)
    counts = [0] * len(templates)
    line_labels = [labels[u] for u in line_to_unique]
    for label in line_labels:
        counts[label] += 1
    return MinedTemplates(labels=line_labels, templates=templates, counts=counts)


def cluster_masked(
    masked: Sequence[str], weights: Sequence[int], *, split_threshold: int = DEFAULT_SPLIT_THRESHOLD
) -> tuple[list[int], list[str]]:
    """Templates for distinct masked messages, each seen ``weights[i]`` times: the template index
    of each message, and the templates (numbered in the order of the messages)."""
    if split_threshold < 2:
        raise ValueError("split_threshold must be at least 2")
    token_lists = [message.split() for message in masked]
    keys = _cluster(list(zip(token_lists, weights, strict=True)), split_threshold)
    return _number(keys, token_lists)


def _cluster(items: Sequence[tuple[list[str], int]], split_threshold: int) -> list[tuple[int, ...]]:
    """A cluster key for each item (token list, weight)."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, (tokens, _) in enumerate(items):
        by_length[len(tokens)].append(i)
    keys: list[tuple[int, ...]] = [()] * len(items)
    next_key = 0
    for length, members in by_length.items():
        for group in _root_groups(items, members, length):
            for sub in _split(items, group, length, split_threshold):
                for i in sub:
                    keys[i] = (next_key,)
                next_key += 1
    return keys


def _root_groups(items: Sequence[tuple[list[str], int]], members: list[int], length: int) -> list[list[int]]:
    counters: list[Counter[str]] = [Counter() for _ in range(length)]
    for i in members:
        tokens, weight = items[i]
        for position, token in enumerate(tokens):
            counters[position][token] += weight
    roots: dict[tuple[tuple[int, str], ...], list[int]] = defaultdict(list)
    for i in members:
        tokens = items[i][0]
        by_count: dict[int, list[int]] = defaultdict(list)
        for position, token in enumerate(tokens):
            if token != WILDCARD:
                by_count[counters[position][token]].append(position)
        if not by_count:
            roots[()].append(i)
            continue
        _, positions = max(by_count.items(), key=lambda kv: (len(kv[1]), kv[0]))
        roots[tuple((p, tokens[p]) for p in positions)].append(i)
    return list(roots.values())


def _split(
    items: Sequence[tuple[list[str], int]], group: list[int], length: int, split_threshold: int
) -> Iterable[list[int]]:
    if len(group) == 1:
        return (group,)
    split_at = []
    for position in range(length):
        values = {items[i][0][position] for i in group}
        if 1 < len(values) < split_threshold:
            split_at.append(position)
    if not split_at:
        return (group,)
    parts: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i in group:
        tokens = items[i][0]
        parts[tuple(tokens[p] for p in split_at)].append(i)
    return parts.values()


def _number(keys: list[tuple[int, ...]], token_lists: list[list[str]]) -> tuple[list[int], list[str]]:
    """Templates numbered in first-seen order, each with its constant words and ``<*>`` elsewhere."""
    index: dict[tuple[int, ...], int] = {}
    shapes: list[list[str]] = []
    labels: list[int] = []
    for key, tokens in zip(keys, token_lists, strict=True):
        k = index.get(key)
        if k is None:
            k = index[key] = len(shapes)
            shapes.append(list(tokens))
        else:
            shape = shapes[k]
            for p, token in enumerate(tokens):
                if shape[p] != token:
                    shape[p] = WILDCARD
        labels.append(k)
    return labels, [" ".join(shape) for shape in shapes]


class Drain3Miner:
    """Drain3 with its default settings over the same masked messages, for comparison."""

    def __init__(self) -> None:
        # imported here: only the benchmark and tests use Drain3
        from drain3 import TemplateMiner
        from drain3.template_miner_config import TemplateMinerConfig

        logging.getLogger("drain3").setLevel(logging.WARNING)
        self._miner = TemplateMiner(config=TemplateMinerConfig())  # defaults, without looking for drain3.ini

    def mine(self, messages: Sequence[str], *, masked: bool = False) -> MinedTemplates:
        ids: list[int] = []
        for message in messages:
            result = self._miner.add_log_message(message if masked else mask_message(message))
            ids.append(int(result["cluster_id"]))
        order: dict[int, int] = {}
        labels = [order.setdefault(i, len(order)) for i in ids]
        clusters = {c.cluster_id: c for c in self._miner.drain.clusters}
        templates = [clusters[i].get_template() for i in order]
        return MinedTemplates(labels=labels, templates=templates, counts=[clusters[i].size for i in order])


def grouping_accuracy(truth: Sequence[object], predicted: Sequence[object]) -> float:
    """Grouping accuracy (Zhu et al., "Tools and Benchmarks for Automated Log Parsing", ICSE-SEIP
    2019): the share of lines whose predicted group holds exactly the lines of their true group."""
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} true labels but {len(predicted)} predicted")
    if not truth:
        return 1.0
    true_groups: dict[object, set[int]] = defaultdict(set)
    found_groups: dict[object, set[int]] = defaultdict(set)
    for i, (t, p) in enumerate(zip(truth, predicted, strict=True)):
        true_groups[t].add(i)
        found_groups[p].add(i)
    correct = sum(1 for t, p in zip(truth, predicted, strict=True) if true_groups[t] == found_groups[p])
    return correct / len(truth)
