"""Fit a tool result into a token budget, cutting the least important data first.

Claude Code rejects an MCP tool result over 25,000 tokens, and a large one crowds out the rest of the
conversation anyway, so every result is fitted to a budget (about 4,000 tokens by default, 20,000 at
most) before it is returned. Results arrive as JSON-able dicts whose lists are sorted
most-important-first. What can be cut is a list (items from its end) or a string over 100 characters
(its end, replaced by a marker). The biggest is cut first, only as far as needed, and never far below
the next biggest, so two oversized sections are both kept in part rather than one wiped out for the
other. When a list or string inside the biggest list makes up at least half of it, that inner one is
cut instead, and a list's first item is cut inside rather than dropped: dropping an outer item would
lose far more than needed. Whatever is under a field named in ``protect`` is cut last.
``Fitted.omitted`` says what was left out, by path, for the caller to report.

Sizes are measured once, item by item; each cut is arithmetic on them (exact: the estimate is linear
in the text), so a 5 MB result is fitted without re-serializing it per removed item. When even the
skeleton (keys, numbers, short strings, empty lists) is over the budget, the smallest result this can
make is returned, and ``Fitted.tokens`` shows it is over.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass, field
from heapq import heapify, heappop, heappush, heapreplace
from typing import Any

_MIN_CUT_CHARS = 100  # shorter strings are never cut: the marker would take most of the saving
_MARKER_WEIGHT = 84  # about the weight of '" … [1234567 characters cut]"'
_COMMA = 4  # the weight of ","
_BRACKETS = 8  # the weight of "[]"
_LETTERS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_NON_ASCII = bytes(range(128, 256))


def _weight(text: str) -> int:
    # In sixths of a token, so that sizes are integers and add up (a list weighs its items plus
    # brackets and commas), counted per character class of the UTF-8 text: an ASCII letter 2 (3 a
    # token), a space 1 (it joins the word after it), a digit or any other ASCII character 4 (1.5
    # a token), a byte of a non-ASCII character 3 (CJK: 1.5 tokens a character). Measured with the
    # Claude tokenizer that is published (the anthropic SDK's, up to 0.34), compact numeric JSON
    # runs 1.5-2.1 characters a token (a 40-column SELECT *: 2.0), paths 2.9, prose 3.4, code
    # 3.8; a flat 3 characters a token under-counted numbers by a third, where these weights count
    # 1.0-1.4 times the real tokens of numeric JSON, 1.2 of prose, 1.3 of code, 1.4 of paths, 1.7
    # of findings' sentences; only lists of one-digit numbers (1.2 characters a token: 0.83) and
    # hex digests (0.98) stay under. ``translate`` and ``count`` run in C: a few milliseconds for
    # megabytes.
    if text.isascii():
        data = text.encode("ascii")
        non_ascii = 0
    else:
        data = text.encode("utf-8", "surrogatepass")
        non_ascii = len(data) - len(data.translate(None, _NON_ASCII))
    letters = len(data) - len(data.translate(None, _LETTERS))
    spaces = text.count(" ")
    # 2 letters + 1 spaces + 3 non-ASCII bytes + 4 everything else
    return 4 * len(data) - 2 * letters - 3 * spaces - non_ascii


def _tokens(weight: int) -> int:
    return -(-weight // 6)


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


def _cuttable(value: Any) -> bool:
    """Whether ``value`` is, or may hold, something to cut: a container, or a string over the minimum."""
    return isinstance(value, dict | list | tuple) or (isinstance(value, str) and len(value) > _MIN_CUT_CHARS)


def estimate_tokens(text: str) -> int:
    """A conservative (upper-side) token count of ``text``, the one every result is measured by:
    per character class (see ``_weight``), so that numeric JSON, about 2 characters a token, is
    not under-counted."""
    return _tokens(_weight(text))


def result_size(data: Any) -> int:
    """Estimated tokens of ``data`` as compact JSON."""
    return estimate_tokens(_dumps(data))


# Significant digits a float keeps in a result: 15 is the most that every decimal survives a trip
# through a double with (``0.1 + 0.2`` reads 0.3 again), so no data value is changed. Fewer cut real
# digits: at 10, a DuckDB SUM of money, 1035681023.49, came back as 1035681023.0.
FLOAT_DIGITS = 15


def round_floats(value: Any) -> Any:
    """JSON data ``value`` with its floats at :data:`FLOAT_DIGITS` significant digits: ``0.1 + 0.2``
    is 0.3 and an average 33.3333333333333, not 17 digits whose last ones are binary noise, while a
    value of up to 15 digits (every DECIMAL(15, 2)) is returned as it was. A new value; ``value`` is
    not modified."""
    if isinstance(value, dict):
        return {key: round_floats(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [round_floats(item) for item in value]
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{FLOAT_DIGITS}g}")
    return value


@dataclass(frozen=True, slots=True)
class Fitted:
    """A result fitted to a budget; ``data`` is the input itself when it already fitted."""

    data: dict[str, Any]
    omitted: dict[str, int]  # "findings": items cut; "output_tail (characters)": characters cut
    tokens: int  # of ``data`` as compact JSON; over the budget only when nothing more could be cut


def fit_to_budget(data: dict[str, Any], budget_tokens: int, *, protect: Collection[str] = ()) -> Fitted:
    """``data`` cut to at most ``budget_tokens`` (see the module docstring); ``data`` is not modified.

    ``protect`` names top-level fields whose lists and strings are cut only when nothing else is left.
    """
    weight = _weight(_dumps(data))
    limit = max(budget_tokens, 0) * 6
    if weight <= limit:
        return Fitted(data, {}, _tokens(weight))
    cutter = _Cutter(frozenset(protect))
    copy = dict(data)
    for key, value in data.items():
        if _cuttable(value):
            cutter.put(copy, key, str(key), str(key), None, 0)
    weight = cutter.cut(weight, limit)
    return Fitted(copy, cutter.omitted(), _tokens(weight))


@dataclass(eq=False, slots=True)
class _Piece(ABC):
    """Something that can be cut, in the working copy: its size, where it sits, how much it lost."""

    path: str
    protected: bool
    weight: int
    parent: _List | None  # the nearest list around it
    index: int  # which of the parent's items holds it
    left_out: int = field(default=0, kw_only=True)  # items or characters

    @abstractmethod
    def exhausted(self) -> bool:
        """Whether nothing more can be cut from it."""

    @abstractmethod
    def cut(self, remove: int) -> int:
        """Cut at least ``remove`` (weight units) if it can; update ``weight`` and return what went."""

    def alive(self) -> bool:
        """Whether it is still in the copy: no list around it has lost the item holding it."""
        piece: _Piece = self
        while piece.parent is not None:
            if piece.index >= len(piece.parent.items):
                return False
            piece = piece.parent
        return True


@dataclass(eq=False, slots=True)
class _List(_Piece):
    items: list[Any]
    sizes: list[int]  # each item's weight
    children: list[_Piece] = field(default_factory=list)  # pieces whose nearest list this is

    def exhausted(self) -> bool:
        return not self.items

    def live_children(self) -> list[_Piece]:
        # Dropped or spent pieces never come back: forget them, so that later calls scan fewer.
        self.children = [c for c in self.children if c.index < len(self.items) and not c.exhausted()]
        return self.children

    def cut(self, remove: int) -> int:
        # The first item stays while something inside it can still be cut (see ``_dominant``).
        least = 1 if any(c.index == 0 for c in self.live_children()) else 0
        keep, removed = len(self.items), 0
        while keep > least and removed < remove:
            keep -= 1
            removed += self.sizes[keep] + (_COMMA if keep else 0)  # the item and the comma before it
        self.left_out += len(self.items) - keep
        del self.items[keep:], self.sizes[keep:]
        self.weight -= removed
        return removed


@dataclass(eq=False, slots=True)
class _Text(_Piece):
    container: Any  # the dict or list holding it, at ``key``
    key: Any
    text: str  # as it was
    full: int  # its weight as it was
    keep: int  # characters kept; 0 once nothing more can be cut

    def exhausted(self) -> bool:
        return self.keep == 0

    def cut(self, remove: int) -> int:
        target = self.weight - remove
        keep = min(self.keep - 1, max(0, (target - _MARKER_WEIGHT) * len(self.text) // self.full))
        while True:
            short = (self.text[:keep] + " " if keep else "") + f"… [{len(self.text) - keep} characters cut]"
            weight = _weight(_dumps(short))
            if weight <= target or keep == 0:
                break
            keep = max(0, keep - max(1, (weight - target) // 2))
        if weight >= self.weight:  # only the marker is left and it saves nothing
            self.keep = 0
            return 0
        self.container[self.key], self.keep, self.left_out = short, keep, len(self.text) - keep
        removed, self.weight = self.weight - weight, weight
        return removed


class _Cutter:
    """Copies the input, noting every piece, then cuts pieces until the copy fits."""

    def __init__(self, protect: frozenset[str]) -> None:
        self.protect = protect
        self.roots: list[_Piece] = []  # pieces inside no list
        self.touched: dict[int, _Piece] = {}  # by id, in the order of their first cut

    def put(self, into: Any, key: Any, path: str, top: str, parent: _List | None, index: int) -> None:
        """Replace ``into[key]``, still the input's container or long string, by a copy; note its pieces."""
        value = into[key]
        piece: _Piece | None = None
        if isinstance(value, dict):
            into[key] = copy = dict(value)
            for name, item in value.items():
                if _cuttable(item):
                    self.put(copy, name, f"{path}.{name}", top, parent, index)
        elif isinstance(value, list | tuple):
            into[key] = items = list(value)
            sizes = [_weight(_dumps(item)) for item in items]
            weight = _BRACKETS + sum(sizes) + _COMMA * max(len(items) - 1, 0)
            piece = node = _List(path, top in self.protect, weight, parent, index, items, sizes)
            for i, item in enumerate(value):
                if _cuttable(item):
                    self.put(items, i, f"{path}[{i}]", top, node, i)
        else:
            weight = _weight(_dumps(value))
            piece = _Text(path, top in self.protect, weight, parent, index, into, key, value, weight, len(value))
        if piece is not None:
            (parent.children if parent is not None else self.roots).append(piece)

    def cut(self, weight: int, limit: int) -> int:
        """Cut pieces until ``weight`` (the copy's) is within ``limit`` or nothing is left; the new weight."""
        heap = [(p.protected, -p.weight, i, p) for i, p in enumerate(self.roots)]
        heapify(heap)
        while weight > limit and (top := _settle(heap)) is not None:
            _, _, i, _ = heappop(heap)
            after = _settle(heap)
            floor = after.weight * 7 // 8 if after is not None and after.protected == top.protected else 0
            piece = _dominant(top)
            removed = piece.cut(max(1, min(weight - limit, top.weight - floor)))
            self.touched.setdefault(id(piece), piece)
            weight -= removed
            while piece.parent is not None:  # the lists around it shrink by as much
                piece.parent.sizes[piece.index] -= removed
                piece.parent.weight -= removed
                piece = piece.parent
            heappush(heap, (top.protected, -top.weight, i, top))
        return weight

    def omitted(self) -> dict[str, int]:
        """What the cuts left out, by path; pieces inside items that were dropped later are not listed."""
        return {
            p.path if isinstance(p, _List) else f"{p.path} (characters)": p.left_out
            for p in self.touched.values()
            if p.left_out and p.alive()
        }


def _settle(heap: list[tuple[bool, int, int, _Piece]]) -> _Piece | None:
    """The biggest piece left, once spent pieces and stale sizes are cleared off the top of ``heap``."""
    while heap:
        protected, negative, i, piece = heap[0]
        if piece.exhausted():
            heappop(heap)
        elif -negative != piece.weight:
            heapreplace(heap, (protected, -piece.weight, i, piece))
        else:
            return piece
    return None


def _dominant(piece: _Piece) -> _Piece:
    """The piece to cut for ``piece``: the innermost one making up at least half of it, or the biggest
    inside a list's only item."""
    while isinstance(piece, _List):
        inner = max(piece.live_children(), key=lambda c: c.weight, default=None)
        if inner is None or (len(piece.items) > 1 and 2 * inner.weight < piece.weight):
            break
        piece = inner
    return piece
