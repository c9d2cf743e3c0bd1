"""Tool schemas: compact, portable (the Inspector's --strict lint finds nothing) and still exact."""

from __future__ import annotations

import json
import math
from enum import StrEnum
from typing import Any, Literal

import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict, Field

from caelum_mcp.core.schemas import CHARS_PER_TOKEN, compact_schema, lint_portability, model_visible_size


class Tier(StrEnum):
    """Model tiers."""

    small = "small"
    large = "large"


class Item(BaseModel):
    name: str = Field(description="what it is")
    score: float | None = None
    line: int | None = Field(default=None, ge=1)


class ToolInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: str = Field(description="the project folder")
    task: Literal["analyze", "improve"] = Field(default="analyze", description="analyze | improve")
    paths: list[str] | None = Field(default=None, description="only these files")
    system: str | None = Field(default=None, description="optional system instructions")
    json_schema: dict[str, Any] | None = Field(default=None, description="optional JSON schema")
    tier: Tier | None = Field(default=None, description="model tier")
    max_tokens: int | None = Field(default=None, ge=16, le=32768)
    limit: int | None = Field(default=5, description="null: no limit")  # null differs from absent
    extra: Any = Field(default=None, description="anything")
    tags: tuple[str, ...] = ()
    item: Item | None = None


class ToolOutput(BaseModel):
    answer: str | None = Field(description="the answer text")
    data: dict[str, Any] | None
    items: list[Item]
    best: Item | None = None
    payload: Any = None
    tags: tuple[str, ...] = ()
    pair: tuple[str, int] | None = None
    counts: dict[str, int] = Field(default_factory=dict)
    tier: Tier | None = None


def walk(node: Any) -> list[dict[str, Any]]:
    """Every dict in ``node``, schemas and data alike."""
    if isinstance(node, dict):
        return [node, *(d for v in node.values() for d in walk(v))]
    if isinstance(node, list):
        return [d for v in node for d in walk(v)]
    return []


def accepts(schema: Any, doc: Any) -> bool:
    Draft202012Validator.check_schema(schema)
    return bool(Draft202012Validator(schema).is_valid(doc))


@pytest.fixture
def raw_input() -> dict[str, Any]:
    return ToolInput.model_json_schema()


@pytest.fixture
def raw_output() -> dict[str, Any]:
    return ToolOutput.model_json_schema(mode="serialization")


def test_pydantic_schemas_have_findings_and_compacted_have_none(
    raw_input: dict[str, Any], raw_output: dict[str, Any]
) -> None:
    assert any("untyped-schema" in f for f in lint_portability(raw_input))  # `extra: Any`
    assert lint_portability(compact_schema(raw_input)) == []
    assert lint_portability(compact_schema(raw_output, output=True)) == []


def test_input_schema_is_lean(raw_input: dict[str, Any]) -> None:
    schema = compact_schema(raw_input)
    props = schema["properties"]
    assert not any("title" in d and isinstance(d["title"], str) for d in walk(schema))
    assert not any(isinstance(d.get("type"), list) for d in walk(schema))
    # Optional with default null: absent means null, so one type and no `default: null`.
    assert props["system"] == {"type": "string", "description": "optional system instructions"}
    assert props["paths"] == {"items": {"type": "string"}, "type": "array", "description": "only these files"}
    assert props["json_schema"] == {
        "additionalProperties": True,
        "type": "object",
        "description": "optional JSON schema",
    }
    assert props["tier"] == {"$ref": "#/$defs/Tier", "description": "model tier"}
    assert props["max_tokens"] == {"maximum": 32768, "minimum": 16, "type": "integer"}
    assert props["item"] == {"$ref": "#/$defs/Item"}
    # Nullable with another default: null means something, so the branch stays.
    assert props["limit"]["anyOf"] == [{"type": "integer"}, {"type": "null"}]
    assert props["limit"]["default"] == 5
    # Any: typed, every JSON value but null (its default) still accepted.
    assert "null" not in json.dumps(props["extra"]["anyOf"])
    assert props["extra"]["description"] == "anything"
    assert props["tags"]["type"] == "array"
    assert schema["$defs"]["Tier"]["description"] == "Model tiers."  # input descriptions stay
    assert schema["additionalProperties"] is False  # extra="forbid" stays in inputs
    assert "required" in schema and schema["required"] == ["project"]


VALID_INPUTS: list[dict[str, Any]] = [
    {"project": "."},
    {"project": ".", "task": "improve", "paths": ["a.py"], "system": "s", "tier": "large", "max_tokens": 16},
    {"project": ".", "json_schema": {"type": "object"}, "limit": None, "extra": [1, {"a": 2}], "tags": ["x"]},
    {"project": ".", "item": {"name": "n", "score": 0.5, "line": 3}, "extra": 1.5},
]
INVALID_INPUTS: list[dict[str, Any]] = [
    {},
    {"project": 1},
    {"project": ".", "task": "refactor"},
    {"project": ".", "tier": "huge"},
    {"project": ".", "max_tokens": 8},
    {"project": ".", "max_tokens": 1.5},
    {"project": ".", "paths": "a.py"},
    {"project": ".", "json_schema": []},
    {"project": ".", "unknown": 1},
    {"project": ".", "item": {"score": 1}},
    {"project": ".", "item": {"name": "n", "line": 0}},
    {"project": ".", "tags": [1]},
]
EXPLICIT_NULLS: list[dict[str, Any]] = [
    {"project": ".", "system": None},
    {"project": ".", "tier": None},
    {"project": ".", "max_tokens": None},
    {"project": ".", "extra": None},
    {"project": ".", "item": {"name": "n", "score": None}},  # nested inputs follow the same rule
]


def test_input_schema_accepts_and_rejects_what_it_did(raw_input: dict[str, Any]) -> None:
    schema = compact_schema(raw_input)
    for doc in VALID_INPUTS:
        assert accepts(raw_input, doc) and accepts(schema, doc), doc
        ToolInput.model_validate(doc)
    for doc in INVALID_INPUTS:
        assert not accepts(raw_input, doc) and not accepts(schema, doc), doc
    for doc in EXPLICIT_NULLS:  # the documented narrowing; the pydantic model still takes them
        assert accepts(raw_input, doc) and not accepts(schema, doc), doc
        ToolInput.model_validate(doc)


def sample_outputs() -> list[dict[str, Any]]:
    docs = [
        ToolOutput(answer=None, data=None, items=[]),
        ToolOutput(
            answer="a",
            data={"k": None, "n": [1, None]},
            items=[Item(name="x"), Item(name="y", score=0.5, line=2)],
            best=Item(name="b", score=None),
            payload={"anything": [None, True]},
            tags=("t",),
            pair=("p", 1),
            counts={"high": 2},
            tier=Tier.small,
        ),
        ToolOutput(answer="a", data={}, items=[], payload=None),
        ToolOutput(answer="a", data={}, items=[], payload="text"),
    ]
    return [d.model_dump(mode="json") for d in docs]


def test_output_schema_accepts_every_document_we_send(raw_output: dict[str, Any]) -> None:
    schema = compact_schema(raw_output, output=True)
    for doc in sample_outputs():
        assert accepts(schema, doc), doc
    assert schema["properties"]["answer"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert schema["properties"]["best"] == {"anyOf": [{"$ref": "#/$defs/Item"}, {"type": "null"}]}
    assert schema["properties"]["data"]["anyOf"][0] == {"additionalProperties": True, "type": "object"}
    for key in ("title", "description", "default"):
        assert not any(key in d for d in walk(schema)), key  # no property has these names


def test_output_schema_still_rejects_wrong_documents(raw_output: dict[str, Any]) -> None:
    schema = compact_schema(raw_output, output=True)
    good = sample_outputs()[1]
    for change in (
        {"answer": 5},
        {"items": [{"score": 1}]},
        {"tier": "huge"},
        {"pair": ["p", "q"]},
        {"counts": {"a": "b"}},
    ):
        doc = {**good, **change}
        assert not accepts(raw_output, doc) and not accepts(schema, doc), change


def test_type_unions_are_split() -> None:
    old = {
        "type": "object",
        "properties": {"a": {"type": ["string", "null"], "maxLength": 3}, "b": {"type": ["integer"]}},
    }
    for output in (False, True):
        schema = compact_schema(old, output=output)
        assert lint_portability(schema) == []
        assert schema["properties"]["a"] == {"anyOf": [{"type": "string"}, {"type": "null"}], "maxLength": 3}
        assert schema["properties"]["b"] == {"type": "integer"}
        for doc, ok in (({"a": None}, True), ({"a": "abc"}, True), ({"a": "abcd"}, False), ({"b": 1.5}, False)):
            assert accepts(schema, doc) is ok is accepts(old, doc)
    # A type union on a schema that has an `anyOf` of its own keeps both, through `allOf`.
    both = compact_schema({"type": ["string", "null"], "anyOf": [{"minLength": 1}, {"type": "null"}]})
    assert lint_portability(both) == []
    assert [accepts(both, v) for v in ("", "a", None, 1)] == [False, True, True, False]


def test_boolean_and_empty_subschemas_become_portable() -> None:
    old: dict[str, Any] = {
        "type": "object",
        "properties": {"any": True, "never": False, "free": {}, "list": {"type": "array", "items": {}}},
        "additionalProperties": {},
        "patternProperties": {"^x": {"not": True}},
    }
    assert {f.split(" at ")[0] for f in lint_portability(old)} == {"error boolean-schema", "warning untyped-schema"}
    schema = compact_schema(old)
    assert lint_portability(schema) == []
    assert schema["additionalProperties"] is True
    assert "items" not in schema["properties"]["list"]
    docs = [{"any": None}, {"any": [1]}, {"never": 1}, {"free": {"a": 1}}, {"list": [1, None]}, {"x1": 1}, {"z": 2}]
    assert [accepts(schema, d) for d in docs] == [accepts(old, d) for d in docs] == [1, 1, 0, 1, 1, 0, 1]


def test_data_is_not_rewritten() -> None:
    old = {
        "type": "object",
        "properties": {"title": {"type": "string", "default": {"title": "kept", "type": ["a", "b"]}}},
        "examples": [{"title": "kept"}],
        "enum": [{"type": ["x", "null"]}],
    }
    schema = compact_schema(old)
    assert schema["properties"]["title"]["default"] == {"title": "kept", "type": ["a", "b"]}
    assert schema["examples"] == [{"title": "kept"}]
    assert schema["enum"] == [{"type": ["x", "null"]}]


@pytest.mark.parametrize("output", [False, True])
def test_compact_is_idempotent(raw_input: dict[str, Any], raw_output: dict[str, Any], output: bool) -> None:
    schema = compact_schema(raw_output if output else raw_input, output=output)
    assert compact_schema(schema, output=output) == schema


def test_lint_rules_and_paths() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": ["string", "null"]}, "b c": {"description": "x"}, "d": True},
        "anyOf": [{"type": "object"}, {"$ref": "https://example.com/s.json"}],
        "not": {},
        "items": [{"if": {"const": 1}}, {"if": {"const": 1}, "then": {"type": "string"}}],
        "additionalProperties": False,
    }
    assert lint_portability(schema) == [
        'warning type-union at properties.a: type is an array ["string", "null"]',
        'warning untyped-schema at properties["b c"]: no validation keyword, accepts any value',
        "error boolean-schema at properties.d: bare true where a schema is expected",
        "warning remote-ref at anyOf[1]: $ref points outside the document (https://example.com/s.json)",
        "warning untyped-schema at items[0]: no validation keyword, accepts any value",  # `if` without `then`
    ]
    assert lint_portability({"$id": "urn:x", "$ref": "other.json"}) == []  # embedded ids: maybe bundled
    assert lint_portability({"type": ["string", "string"]}) == []  # not a portable union: not this rule
    assert lint_portability(True) == ["error boolean-schema at (root): bare true where a schema is expected"]


def test_model_visible_size_counts_name_description_and_input_schema() -> None:
    tool: dict[str, Any] = {
        "name": "delegate_task",
        "description": "Run a prompt on the local pool.",
        "inputSchema": compact_schema(ToolInput.model_json_schema()),
    }
    seen = json.dumps(
        {"name": tool["name"], "description": tool["description"], "inputSchema": tool["inputSchema"]},
        separators=(",", ":"),
    )
    chars, tokens = model_visible_size(tool)
    assert chars == len(seen)
    assert tokens == math.ceil(chars / CHARS_PER_TOKEN)
    assert 3 <= CHARS_PER_TOKEN <= 4
    extra = {"outputSchema": ToolOutput.model_json_schema(), "annotations": {"readOnlyHint": True}, "title": "T"}
    assert model_visible_size({**tool, **extra}) == (chars, tokens)
    assert model_visible_size({"name": "x", "inputSchema": {"type": "object"}})[0] == len(
        '{"name":"x","description":"","inputSchema":{"type":"object"}}'
    )
