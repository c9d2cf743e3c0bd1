"""Workflow conditions: ``when`` (run a step or skip it) and ``fail_if`` (judge its result).

A small language, parsed once when the config loads and never evaluated as Python::

    condition  := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | comparison
    comparison := operand (("==" | "!=" | "<" | "<=" | ">" | ">=") operand)?
    operand    := path | number | 'text' | "text" | true | false | null | "(" condition ")"

A path is dotted names into the run's context, as in templates: ``steps.tests.ok``,
``steps.lint.findings > 0``, ``inputs.review``, ``output.counts.high > 0``. A path that names
nothing is ``null``. A bare operand is judged by its truth (``0``, ``""``, ``null``, empty lists
are false). ``<``, ``<=``, ``>``, ``>=`` compare two numbers or two strings; anything else
compared that way is false.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from .templates import MISSING, lookup

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>-?\d+(?:\.\d+)?)
      | (?P<string>'[^']*'|"[^"]*")
      | (?P<op>==|!=|<=|>=|<|>)
      | (?P<paren>[()])
      | (?P<word>[A-Za-z_][\w-]*(?:\.[\w-]+)*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "true", "false", "null"}
_LITERALS = {"true": True, "false": False, "null": None}
MAX_CHARS = 500


class ConditionError(ValueError):
    """A condition that cannot be parsed; the message says where and what is expected."""


@dataclass(frozen=True)
class _Path:
    path: str


@dataclass(frozen=True)
class _Literal:
    value: Any


@dataclass(frozen=True)
class _Not:
    operand: Node


@dataclass(frozen=True)
class _Bool:
    op: str  # "and" | "or"
    left: Node
    right: Node


@dataclass(frozen=True)
class _Compare:
    op: str
    left: Node
    right: Node


Node: TypeAlias = _Path | _Literal | _Not | _Bool | _Compare


@dataclass(frozen=True)
class Condition:
    """A parsed condition; :meth:`holds` judges it against a context."""

    text: str
    tree: Node

    def holds(self, context: Mapping[str, Any]) -> bool:
        return bool(_evaluate(self.tree, context))

    def paths(self) -> list[str]:
        """The paths it reads (to check them against the workflow when the config loads)."""
        found: list[str] = []
        _collect(self.tree, found)
        return found


def parse(text: str) -> Condition:
    """Parse ``text``; raises :class:`ConditionError` naming the problem."""
    if len(text) > MAX_CHARS:
        raise ConditionError(f"a condition may be at most {MAX_CHARS} characters")
    tokens = _tokenize(text)
    parser = _Parser(text, tokens)
    tree = parser.parse_or()
    if parser.pos < len(tokens):
        raise ConditionError(f"{text!r}: unexpected {tokens[parser.pos][1]!r}; join conditions with and / or")
    return Condition(text, tree)


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ConditionError(f"{text!r}: cannot read {text[pos:].strip()[:20]!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    if not tokens:
        raise ConditionError("a condition cannot be empty")
    return tokens


class _Parser:
    def __init__(self, text: str, tokens: list[tuple[str, str]]) -> None:
        self.text = text
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take_word(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token == ("word", word):
            self.pos += 1
            return True
        return False

    def parse_or(self) -> Node:
        node = self.parse_and()
        while self.take_word("or"):
            node = _Bool("or", node, self.parse_and())
        return node

    def parse_and(self) -> Node:
        node = self.parse_not()
        while self.take_word("and"):
            node = _Bool("and", node, self.parse_not())
        return node

    def parse_not(self) -> Node:
        if self.take_word("not"):
            return _Not(self.parse_not())
        return self.parse_comparison()

    def parse_comparison(self) -> Node:
        left = self.parse_operand()
        token = self.peek()
        if token is not None and token[0] == "op":
            self.pos += 1
            return _Compare(token[1], left, self.parse_operand())
        return left

    def parse_operand(self) -> Node:
        token = self.peek()
        if token is None:
            raise ConditionError(f"{self.text!r}: ends where a value was expected")
        kind, value = token
        self.pos += 1
        if kind == "number":
            return _Literal(float(value) if "." in value else int(value))
        if kind == "string":
            return _Literal(value[1:-1])
        if kind == "paren" and value == "(":
            node = self.parse_or()
            if self.peek() != ("paren", ")"):
                raise ConditionError(f"{self.text!r}: a '(' is not closed")
            self.pos += 1
            return node
        if kind == "word" and value in _LITERALS:
            return _Literal(_LITERALS[value])
        if kind == "word" and value not in _KEYWORDS:
            return _Path(value)
        raise ConditionError(f"{self.text!r}: unexpected {value!r} where a value was expected")


def _evaluate(node: Node, context: Mapping[str, Any]) -> Any:
    if isinstance(node, _Literal):
        return node.value
    if isinstance(node, _Path):
        value = lookup(context, node.path, strict=False)
        return None if value is MISSING else value
    if isinstance(node, _Not):
        return not _evaluate(node.operand, context)
    if isinstance(node, _Bool):
        left = bool(_evaluate(node.left, context))
        if node.op == "and":
            return left and bool(_evaluate(node.right, context))
        return left or bool(_evaluate(node.right, context))
    return _compare(node.op, _evaluate(node.left, context), _evaluate(node.right, context))


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "==":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (left, right))
    strings = isinstance(left, str) and isinstance(right, str)
    if not (numbers or strings):
        return False
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    return bool(left >= right)


def _collect(node: Node, found: list[str]) -> None:
    if isinstance(node, _Path):
        found.append(node.path)
    elif isinstance(node, _Not):
        _collect(node.operand, found)
    elif isinstance(node, _Bool | _Compare):
        _collect(node.left, found)
        _collect(node.right, found)
