"""``diagnose_logs`` 's internal tool: read log files, mine their signatures, and analyse them.

Three steps, so that a caller can put a model pass between mining and analysis:

1. :func:`collect_logs` streams every file (:mod:`.reading`), keeps the entries inside
   ``since``/``until``, masks each message and stores per entry only its file, line, time, level
   and masked-message id (a few dozen bytes), plus the first and last example of each distinct
   masked message. It stops at ``max_entries`` or when ``deadline`` passes, and says so.
2. :func:`mine` groups the distinct masked messages into templates (:mod:`.mining`).
3. :func:`analyse` builds the signatures (template and level), ranks them, and computes the
   timeline and the bursts that happen together (:mod:`.analysis`).

:meth:`CollectedLogs.entry_at` finds the entry a ``file:line`` belongs to (the check of the
hypotheses' evidence).
"""

from __future__ import annotations

import math
import threading
import time
import zlib
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, Field

from . import analysis
from .formats import LEVELS
from .masking import mask_message
from .mining import DEFAULT_SPLIT_THRESHOLD, cluster_masked
from .reading import MAX_FILE_BYTES, MAX_LINE_BYTES, LogEntry, ReadLimits, ReadStats, read_entries

_EPOCH = datetime(1970, 1, 1)
EXAMPLE_CHARS = 160
TIMELINE_BUCKETS = 24
TIMELINE_SERIES = 5
ANALYSIS_BUCKETS = TIMELINE_BUCKETS * 8  # bursts are found on buckets this fine; the timeline merges them
GROUP_SIGNATURES = 6
MAX_EXAMPLES = 2


class LogFileSummary(BaseModel):
    file: str
    format: str = Field(description="the line format detected")
    entries: int = Field(description="entries kept (inside since/until)")
    first: datetime | None = None
    last: datetime | None = None
    error: str | None = Field(default=None, description="why the file could not be read")


class Example(BaseModel):
    file: str
    line: int
    text: str
    detail: str | None = Field(default=None, description="the last continuation line (e.g. the exception)")


class SignatureReport(BaseModel):
    id: str
    template: str = Field(description="the message with variable parts as <*>")
    level: str | None
    count: int
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    score: float
    why: str = Field(description="what ranked it: level, rarity, bursts, focus")
    sources: list[str] = Field(default_factory=list, description="loggers/programs that wrote it (top 3)")
    bursts: int = 0
    examples: list[Example] = Field(default_factory=list)


class TimelineSeries(BaseModel):
    signature: str
    counts: list[int]


class Timeline(BaseModel):
    start: datetime
    interval_s: int
    total: list[int] = Field(description="all entries per interval")
    series: list[TimelineSeries] = Field(description="the top signatures per interval")


class BurstWindow(BaseModel):
    start: datetime
    end: datetime
    counts: dict[str, int] = Field(description="entries of each signature in the window")


class BurstGroup(BaseModel):
    signatures: list[str]
    windows: list[BurstWindow]


class LogDiagnosis(BaseModel):
    files: list[LogFileSummary]
    entries: int
    filtered_out: int = Field(description="entries outside since/until")
    truncated: bool = Field(description="reading stopped at max_entries or the time budget")
    levels: dict[str, int]
    signatures_total: int
    signatures: list[SignatureReport] = Field(description="ranked, most important first")
    timeline: Timeline | None = None
    together: list[BurstGroup] = Field(default_factory=list, description="signatures that burst together")
    notes: list[str] = Field(default_factory=list)


@dataclass
class _Example:
    file: int
    line: int
    text: str
    detail: str


@dataclass
class CollectedLogs:
    """What :func:`collect_logs` keeps: the files, the distinct masked messages with their counts,
    examples and sources, and per entry its file, line, time, level and message id."""

    files: list[LogFileSummary] = field(default_factory=list)
    masked: list[str] = field(default_factory=list)
    weights: list[int] = field(default_factory=list)
    examples: list[list[_Example]] = field(default_factory=list)
    sources: list[Counter[str]] = field(default_factory=list)
    entry_file: array[int] = field(default_factory=lambda: array("H"))
    entry_line: array[int] = field(default_factory=lambda: array("I"))
    entry_time: array[float] = field(default_factory=lambda: array("d"))
    entry_level: array[int] = field(default_factory=lambda: array("b"))
    entry_message: array[int] = field(default_factory=lambda: array("I"))
    file_ranges: list[tuple[int, int]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    filtered_out: int = 0
    truncated: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def entries(self) -> int:
        return len(self.entry_message)

    def raw_messages(self) -> list[str]:
        """Each kept entry's message as read; only kept with ``collect_logs(keep_messages=True)``
        (the benchmark's unmasked baseline)."""
        if len(self.raw) != self.entries:
            raise ValueError("messages were not kept: collect with keep_messages=True")
        return list(self.raw)

    def masked_messages(self) -> list[str]:
        """Each kept entry's masked message, in order."""
        return [self.masked[u] for u in self.entry_message]

    def entry_at(self, file: str, line: int) -> int | None:
        """The index of the entry (kept by the filters) that ``file:line`` belongs to — its first
        line or one of its continuation lines — or None."""
        for k, summary in enumerate(self.files):
            if summary.file != file:
                continue
            start, end = self.file_ranges[k]
            at = bisect_right(self.entry_line, line, start, end) - 1
            if at >= start and self.entry_line[at] <= line:
                nxt = self.entry_line[at + 1] if at + 1 < end else None
                if nxt is None or line < nxt:
                    return at
        return None


def _seconds(when: datetime) -> float:
    return (when - _EPOCH).total_seconds()


def _from_seconds(value: float) -> datetime | None:
    return None if math.isnan(value) else _EPOCH + timedelta(seconds=value)


def collect_logs(
    files: Sequence[tuple[Path, str]],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    max_entries: int = 1_000_000,
    deadline: float | None = None,
    keep_messages: bool = False,
    stop: threading.Event | None = None,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> CollectedLogs:
    """Read ``files`` (path, name shown) into a :class:`CollectedLogs`; see the module docstring.

    ``deadline`` is a ``time.monotonic()`` value; ``stop`` is set when the call is cancelled.
    Either ends the reading within a line or a chunk of one. Each file is read up to
    ``max_file_bytes`` (after decompression) and each line up to ``max_line_bytes``; what was cut
    is said in ``notes``.
    """
    out = CollectedLogs()
    ids: dict[str, int] = {}
    level_index = {name: i for i, name in enumerate(LEVELS)}
    # the latest entry of each distinct message after its first: made an example once, at the end
    latest: list[tuple[int, LogEntry] | None] = []

    def should_stop() -> bool:
        return (stop is not None and stop.is_set()) or (deadline is not None and time.monotonic() > deadline)

    limits = ReadLimits(max_bytes=max_file_bytes, max_line_bytes=max_line_bytes, should_stop=should_stop)
    for file_no, (path, shown) in enumerate(files):
        start = out.entries
        stats = ReadStats()
        if should_stop():
            out.truncated = True
            out.notes.append(f"stopped before {shown}: the time budget ran out or the call was cancelled")
            break
        try:
            fmt, stream = read_entries(path, limits=limits, stats=stats)
        except (OSError, EOFError, zlib.error) as exc:
            reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
            out.files.append(LogFileSummary(file=shown, format="unreadable", entries=0, error=reason))
            out.file_ranges.append((start, start))
            continue
        summary = LogFileSummary(file=shown, format=fmt, entries=0)
        first = last = None
        # lines of one burst share their time's object (the reader reuses it): its seconds too
        last_time: datetime | None = None
        last_seconds = math.nan
        masked, weights, examples, sources_of = out.masked, out.weights, out.examples, out.sources
        add_file, add_line, add_time = out.entry_file.append, out.entry_line.append, out.entry_time.append
        add_level, add_message = out.entry_level.append, out.entry_message.append
        try:
            for n, entry in enumerate(stream):
                when = entry.time
                if when is not None and ((since and when < since) or (until and when > until)):
                    out.filtered_out += 1
                    continue
                late = deadline is not None and n % 4096 == 0 and time.monotonic() > deadline
                if len(out.entry_message) >= max_entries or late:
                    out.truncated = True
                    break
                message = entry.message
                key = mask_message(message)
                uid = ids.get(key)
                if uid is None:
                    uid = ids[key] = len(masked)
                    masked.append(key)
                    weights.append(1)
                    examples.append([_Example(file_no, entry.line, message[:EXAMPLE_CHARS], entry.detail)])
                    sources_of.append(Counter())
                    latest.append(None)
                else:
                    weights[uid] += 1
                    latest[uid] = (file_no, entry)  # the first example and the latest are kept
                source = entry.source
                if source:
                    sources = sources_of[uid]
                    if source in sources or len(sources) < 5:
                        sources[source] += 1
                add_file(file_no)
                add_line(entry.line)
                if when is None:
                    add_time(math.nan)
                else:
                    if when is not last_time:
                        last_time, last_seconds = when, _seconds(when)
                        first = when if first is None or when < first else first
                        last = when if last is None or when > last else last
                    add_time(last_seconds)
                add_level(level_index.get(entry.level or "", -1))
                add_message(uid)
                if keep_messages:
                    out.raw.append(message)
        except (OSError, EOFError, zlib.error) as exc:
            why = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
            summary.error = f"read stopped: {why}"
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        out.notes += _read_notes(shown, stats, limits)
        if stats.stopped == "stopped":
            out.truncated = True
        summary.entries = out.entries - start
        summary.first, summary.last = first, last
        out.files.append(summary)
        out.file_ranges.append((start, out.entries))
        if out.truncated:
            out.notes.append(f"stopped reading at {shown}: the entry cap or the time budget was reached")
            break
    for uid, found in enumerate(latest):
        if found is not None:
            file_no, entry = found
            out.examples[uid].append(_Example(file_no, entry.line, entry.message[:EXAMPLE_CHARS], entry.detail))
    return out


def _read_notes(shown: str, stats: ReadStats, limits: ReadLimits) -> list[str]:
    notes = []
    if stats.lines_cut:
        cap = f"{limits.max_line_bytes / 1024:g} KiB"
        notes.append(f"{shown}: {stats.lines_cut} line(s) longer than {cap} were cut at that length")
    if stats.stopped == "byte cap":
        cap = f"{limits.max_bytes / 2**20:g} MiB"
        notes.append(f"{shown}: read only the first {cap} (after decompression); the rest was left out")
    return notes


def mine(collected: CollectedLogs, split_threshold: int = DEFAULT_SPLIT_THRESHOLD) -> tuple[list[int], list[str]]:
    """The template of each distinct masked message, and the templates."""
    return cluster_masked(collected.masked, collected.weights, split_threshold=split_threshold)


def analyse(
    collected: CollectedLogs,
    message_templates: Sequence[int],
    templates: Sequence[str],
    *,
    focus: str | None = None,
    max_signatures: int = 15,
) -> tuple[LogDiagnosis, dict[tuple[int, int], str]]:
    """Signatures (template and level), ranked, with the timeline and the bursts; see the module
    docstring. Also returns each signature's id by (template index, level index)."""
    keys: dict[tuple[int, int], int] = {}
    labels: list[int] = []
    for uid, entry_level in zip(collected.entry_message, collected.entry_level, strict=True):
        labels.append(keys.setdefault((message_templates[uid], entry_level), len(keys)))
    sig_keys = list(keys)
    counts = Counter(labels)
    total = len(labels)
    times = [_from_seconds(t) for t in collected.entry_time]
    stamped = [t for t in times if t is not None]
    buckets = analysis.make_buckets(min(stamped), max(stamped), ANALYSIS_BUCKETS) if stamped else None
    per_bucket = analysis.series(times, labels, buckets) if buckets else {}
    first_seen: dict[int, datetime] = {}
    last_seen: dict[int, datetime] = {}
    for when, label in zip(times, labels, strict=True):
        if when is not None:
            if label not in first_seen or when < first_seen[label]:
                first_seen[label] = when
            if label not in last_seen or when > last_seen[label]:
                last_seen[label] = when
    words = analysis.focus_words(focus)
    sources_of: dict[int, Counter[str]] = {}
    examples_of: dict[int, list[_Example]] = {}
    for uid, template_no in enumerate(message_templates):
        for level_no in range(-1, len(LEVELS)):
            sig = keys.get((template_no, level_no))
            if sig is None:
                continue
            sources_of.setdefault(sig, Counter()).update(collected.sources[uid])
            if uid < len(collected.examples):
                examples_of.setdefault(sig, []).extend(collected.examples[uid])
    scored = []
    all_bursts: list[analysis.Burst] = []
    n_buckets = buckets.count if buckets else 0
    for label, (template_no, level_no) in enumerate(sig_keys):
        template = templates[template_no]
        level = LEVELS[level_no] if level_no >= 0 else None
        hist = per_bucket.get(label, Counter())
        bursty = analysis.burstiness(hist, counts[label], n_buckets)
        found = analysis.bursts(hist, counts[label], n_buckets, label)
        all_bursts.extend(found)
        sources = [s for s, _ in sources_of.get(label, Counter()).most_common(3)]
        focused = bool(words) and analysis.matches_focus(words, template, *sources)
        value = analysis.score(level, template, counts[label], total, bursty, focused)
        scored.append((value, label, template, level, bursty, found, sources, focused))
    scored.sort(key=lambda s: (-s[0], s[1]))
    names = {s[1]: f"S{rank + 1}" for rank, s in enumerate(scored)}
    signatures = []
    for value, label, template, level, bursty, found, sources, focused in scored[:max_signatures]:
        examples = _pick_examples(examples_of.get(label, []), collected)
        signatures.append(
            SignatureReport(
                id=names[label],
                template=template,
                level=level,
                count=counts[label],
                first_seen=first_seen.get(label),
                last_seen=last_seen.get(label),
                score=round(value, 2),
                why=_why(level, template, counts[label], total, bursty, found, focused),
                sources=sources,
                bursts=len(found),
                examples=examples,
            )
        )
    shown = {names[s[1]] for s in scored[:max_signatures]}
    levels = Counter(LEVELS[lv] if lv >= 0 else "none" for lv in collected.entry_level)
    report = LogDiagnosis(
        files=collected.files,
        entries=total,
        filtered_out=collected.filtered_out,
        truncated=collected.truncated,
        levels=dict(levels.most_common()),
        signatures_total=len(sig_keys),
        signatures=signatures,
        timeline=_timeline(buckets, per_bucket, scored, names, labels, times) if buckets else None,
        together=_together(all_bursts, names, shown, per_bucket, buckets) if buckets else [],
        notes=list(collected.notes),
    )
    return report, {key: names[label] for key, label in keys.items()}


def signature_at(
    collected: CollectedLogs, message_templates: Sequence[int], names: dict[tuple[int, int], str], file: str, line: int
) -> str | None:
    """The id of the signature the entry at ``file:line`` belongs to, or None when no kept entry
    is there."""
    at = collected.entry_at(file, line)
    if at is None:
        return None
    return names.get((message_templates[collected.entry_message[at]], collected.entry_level[at]))


def _pick_examples(found: list[_Example], collected: CollectedLogs) -> list[Example]:
    seen: set[tuple[int, int]] = set()
    picked: list[Example] = []
    for ex in sorted(found, key=lambda e: (e.file, e.line)):
        if (ex.file, ex.line) in seen:
            continue
        seen.add((ex.file, ex.line))
        picked.append(Example(file=collected.files[ex.file].file, line=ex.line, text=ex.text, detail=ex.detail or None))
    if len(picked) > MAX_EXAMPLES:
        picked = [picked[0], picked[-1]]
    return picked


def _why(
    level: str | None, template: str, count: int, total: int, bursty: float, found: list[analysis.Burst], focused: bool
) -> str:
    parts = [level or ("no level, error words" if analysis.trouble_words(template) else "no level")]
    parts.append(f"{count} of {total} entries")
    if found:
        parts.append(f"{len(found)} burst(s), peak {max(b.peak for b in found)} per interval")
    elif bursty >= 0.5:
        parts.append("bunched in time")
    if focused:
        parts.append("matches the focus")
    return "; ".join(parts)


def _timeline(
    buckets: analysis.Buckets,
    per_bucket: dict[int, Counter[int]],
    scored: list[tuple[float, int, str, str | None, float, list[analysis.Burst], list[str], bool]],
    names: dict[int, str],
    labels: list[int],
    times: list[datetime | None],
) -> Timeline:
    # the analysis buckets are finer than the timeline's: merge runs of them into round intervals
    width = analysis.coarser(buckets, TIMELINE_BUCKETS)
    count = -(-buckets.count // width)

    def merged(hist: Counter[int]) -> list[int]:
        row = [0] * count
        for b, c in hist.items():
            row[b // width] += c
        return row

    total: Counter[int] = Counter()
    for hist in per_bucket.values():
        total.update(hist)
    series = [
        TimelineSeries(signature=names[s[1]], counts=merged(per_bucket.get(s[1], Counter())))
        for s in scored[:TIMELINE_SERIES]
    ]
    return Timeline(start=buckets.start, interval_s=buckets.interval_s * width, total=merged(total), series=series)


def _together(
    all_bursts: list[analysis.Burst],
    names: dict[int, str],
    shown: set[str],
    per_bucket: dict[int, Counter[int]],
    buckets: analysis.Buckets,
    limit: int = 5,
) -> list[BurstGroup]:
    """Groups of signatures that burst together, each with its windows (overlapping bursts merged)
    and the entries of each of its signatures in each window; at most :data:`GROUP_SIGNATURES`
    signatures, the best ranked, per group."""
    groups = []
    rank = {label: int(name[1:]) for label, name in names.items()}
    for group in analysis.bursts_together(all_bursts):
        labels = sorted({b.signature for b in group}, key=rank.__getitem__)[:GROUP_SIGNATURES]
        if not any(names[label] in shown for label in labels):
            continue
        spans: list[list[int]] = []
        for b in sorted(group, key=lambda b: b.first_bucket):
            if spans and b.first_bucket <= spans[-1][1] + 1:
                spans[-1][1] = max(spans[-1][1], b.last_bucket)
            else:
                spans.append([b.first_bucket, b.last_bucket])
        windows = []
        for first, last in spans[:3]:
            counts = {
                names[label]: sum(per_bucket[label].get(i, 0) for i in range(first, last + 1)) for label in labels
            }
            windows.append(
                BurstWindow(
                    start=buckets.at(first), end=buckets.at(last + 1), counts={k: v for k, v in counts.items() if v}
                )
            )
        groups.append(BurstGroup(signatures=[names[label] for label in labels], windows=windows))
        if len(groups) >= limit:
            break
    return groups
