"""Signatures ranked, a timeline of the top ones, and the bursts that happen together.

Inputs are plain: each entry's time (or None) and signature index, and each signature's level and
count. Times are put in :func:`nice_interval` buckets over the whole span.

- **Rank.** ``score = level_weight * (0.4 + 0.6 * rarity) * (1 + burstiness) * focus``, where the
  level weight is critical 8, error 5, warning 3, info 1, debug 0.3 (no level: 2.5 when the words
  say error/fail/exception/denied/refused/timeout, else 1); rarity is ``1 - log(count) /
  log(entries)`` (1 for a one-off); burstiness is how far the busiest bucket is above the
  signature's average, on a log scale from 0 (even) to 1 (all in one bucket), for signatures seen
  at least 3 times; ``focus`` is 3 when a focus word is in the template or source.
- **Bursts.** A bucket is a burst of a signature when it holds at least 3 of its entries and more
  than its mean plus 3 standard deviations (Poisson: ``mean + 3·sqrt(mean)``). Consecutive burst
  buckets are one burst.
- **Together.** Signatures whose bursts overlap (within one bucket) are grouped, connected
  components of that relation; a group lists its windows.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

LEVEL_WEIGHTS = {"critical": 8.0, "error": 5.0, "warning": 3.0, "info": 1.0, "debug": 0.3}
_TROUBLE = re.compile(
    r"(?i)\b(?:errors?|fail\w*|fatal|exception|panic|denied|refused|timed? ?out|timeout|abort\w*|crash\w*"
    r"|unreachable|invalid|cannot|can't|unable)\b"
)
_NICE_SECONDS = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800
)  # fmt: skip
BURST_MIN = 3


def nice_interval(span_s: float, buckets: int) -> int:
    """The smallest round interval (1 s, 5 s, 1 min, 15 min, 1 h, 1 d, ...) that covers ``span_s``
    in at most ``buckets`` buckets."""
    for seconds in _NICE_SECONDS:
        if span_s / seconds < buckets:
            return seconds
    return int(math.ceil(span_s / buckets / 86400) * 86400)


def trouble_words(text: str) -> bool:
    """Whether ``text`` says something went wrong (used when a line has no level)."""
    return bool(_TROUBLE.search(text))


def level_weight(level: str | None, template: str) -> float:
    if level is None:
        return 2.5 if trouble_words(template) else 1.0
    return LEVEL_WEIGHTS.get(level, 1.0)


@dataclass(frozen=True)
class Buckets:
    """Uniform time buckets: ``start`` and ``interval_s``; ``count`` buckets cover every entry."""

    start: datetime
    interval_s: int
    count: int

    def index(self, when: datetime) -> int:
        return min(self.count - 1, max(0, int((when - self.start).total_seconds() // self.interval_s)))

    def at(self, index: int) -> datetime:
        return self.start + timedelta(seconds=index * self.interval_s)


def make_buckets(first: datetime, last: datetime, target: int) -> Buckets:
    span = max((last - first).total_seconds(), 1.0)
    interval = nice_interval(span, target)
    # start on a round multiple of the interval, so buckets read as 10:00, 10:15, ...
    epoch = datetime(2000, 1, 1)
    offset = (first - epoch).total_seconds() % interval
    start = first - timedelta(seconds=offset)
    count = int((last - start).total_seconds() // interval) + 1
    return Buckets(start, interval, max(count, 1))


def coarser(buckets: Buckets, target: int) -> int:
    """How many of ``buckets`` to merge so that at most ``target`` remain, each a round interval
    (a multiple of the fine one from the same list as :func:`nice_interval`)."""
    for seconds in _NICE_SECONDS:
        if seconds >= buckets.interval_s and seconds % buckets.interval_s == 0:
            width = seconds // buckets.interval_s
            if -(-buckets.count // width) <= target:
                return width
    return max(1, -(-buckets.count // target))


def series(times: Sequence[datetime | None], labels: Sequence[int], buckets: Buckets) -> dict[int, Counter[int]]:
    """Per signature, its entries per bucket (entries without a time are left out)."""
    counts: dict[int, Counter[int]] = defaultdict(Counter)
    for when, label in zip(times, labels, strict=True):
        if when is not None:
            counts[label][buckets.index(when)] += 1
    return counts


def burstiness(per_bucket: Counter[int], total: int, buckets: int) -> float:
    """0 (even) to 1 (all in one bucket); 0 for signatures seen fewer than :data:`BURST_MIN` times."""
    if total < BURST_MIN or buckets < 2 or not per_bucket:
        return 0.0
    mean = total / buckets
    peak = max(per_bucket.values())
    return max(0.0, min(1.0, math.log(peak / mean) / math.log(buckets)))


@dataclass(frozen=True)
class Burst:
    signature: int
    first_bucket: int
    last_bucket: int
    peak: int
    count: int


def bursts(per_bucket: Counter[int], total: int, buckets: int, signature: int) -> list[Burst]:
    """The bursts of one signature (see the module docstring)."""
    if total < BURST_MIN or buckets < 3:
        return []
    mean = total / buckets
    threshold = max(BURST_MIN, mean + 3 * math.sqrt(mean))
    hot = sorted(b for b, c in per_bucket.items() if c >= threshold and c > mean)
    found: list[Burst] = []
    for b in hot:
        if found and b == found[-1].last_bucket + 1:
            last = found[-1]
            peak = max(last.peak, per_bucket[b])
            found[-1] = Burst(signature, last.first_bucket, b, peak, last.count + per_bucket[b])
        else:
            found.append(Burst(signature, b, b, per_bucket[b], per_bucket[b]))
    return found


def bursts_together(all_bursts: Sequence[Burst]) -> list[list[Burst]]:
    """Groups of bursts of different signatures that overlap within one bucket, largest first;
    a group holds every burst of its signatures that overlaps another of the group."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    linked: set[int] = set()
    ordered = sorted(range(len(all_bursts)), key=lambda i: all_bursts[i].first_bucket)
    for pos, i in enumerate(ordered):
        a = all_bursts[i]
        for j in ordered[pos + 1 :]:
            b = all_bursts[j]
            if b.first_bucket > a.last_bucket + 1:
                break
            if a.signature != b.signature:
                parent[find(i)] = find(j)
                linked.update((i, j))
    groups: dict[int, list[Burst]] = defaultdict(list)
    for i in linked:
        groups[find(i)].append(all_bursts[i])
    result = [sorted(g, key=lambda b: (b.first_bucket, b.signature)) for g in groups.values()]
    result = [g for g in result if len({b.signature for b in g}) > 1]
    return sorted(result, key=lambda g: (-len({b.signature for b in g}), g[0].first_bucket))


def score(level: str | None, template: str, count: int, entries: int, bursty: float, focused: bool) -> float:
    rarity = 1.0 if count <= 1 or entries <= 1 else max(0.0, 1 - math.log(count) / math.log(entries))
    value = level_weight(level, template) * (0.4 + 0.6 * rarity) * (1 + bursty)
    return value * (3.0 if focused else 1.0)


def focus_words(focus: str | None) -> tuple[str, ...]:
    """The words of a focus phrase worth matching (3+ letters, lower case)."""
    if not focus:
        return ()
    return tuple(dict.fromkeys(w for w in re.findall(r"[a-z0-9_]{3,}", focus.lower())))


def matches_focus(words: Sequence[str], *texts: str | None) -> bool:
    haystack = " ".join(t for t in texts if t).lower()
    return any(w in haystack for w in words)
