"""Tool JSON schemas: compact for a model's context, portable across client schema dialects.

Every client reads ``tools/list`` into its model's context, and some map the schemas onto a
single-``type`` dialect (the OpenAPI subset behind Gemini function declarations). pydantic's
schemas are neither lean nor always portable, so :func:`compact_schema` rewrites them to pass the
MCP Inspector's ``--strict`` portability lint, which :func:`lint_portability` re-implements
(``core/json/schemaLint.ts``: rules type-union, untyped-schema, boolean-schema, remote-ref):

* ``title`` s go (pydantic repeats every field name as one); output schemas also lose
  ``default`` s, ``description`` s and ``additionalProperties: false``.
* A ``type`` array becomes ``anyOf`` single-type branches (the same set of documents).
* Input schemas: an optional argument whose default is ``null`` loses its ``null`` branch and
  the ``default: null`` (``{"type": "string"}``, not ``anyOf [string, null]``): for our tools an
  absent argument means exactly what ``null`` means, so the model is shown one way to say it. The
  server validates arguments with the pydantic model, which still accepts an explicit ``null``.
  A nullable argument with another default (``null`` then differs from absent) keeps its branch.
* Output schemas keep every ``null`` branch, as ``anyOf``: the SDK validates structured output
  against ``outputSchema`` client-side, so the schema must accept every document we send.
* An always-true sub-schema (``{}`` from a pydantic ``Any``, or a bare ``true``) is dropped
  where absence means the same (``items``, ``propertyNames``, ...), becomes ``true`` under
  ``additionalProperties`` and kin (the lint allows booleans there: ``dict[str, Any]`` stays a
  free-form object), and elsewhere becomes an ``anyOf`` of every JSON type, which accepts the
  same values but is typed. Prefer a real annotation over ``Any`` for model-visible fields.
  A bare ``false`` becomes ``{"not": {}}``.
* Remote ``$ref`` s are left alone (pydantic never emits them); the lint still reports them.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# Keywords whose values are schemas, as the Inspector's lint walks them; everything else is data.
_MAP_KEYWORDS = ("properties", "patternProperties", "dependentSchemas", "dependencies", "$defs", "definitions")
_LIST_KEYWORDS = ("allOf", "anyOf", "oneOf", "prefixItems")
_ONE_KEYWORDS = (
    "items",
    "contains",
    "not",
    "propertyNames",
    "if",
    "then",
    "else",
    "additionalProperties",
    "unevaluatedProperties",
    "additionalItems",
    "unevaluatedItems",
    "contentSchema",
)
_BOOLEAN_VALUED = frozenset({"additionalProperties", "unevaluatedProperties", "additionalItems", "unevaluatedItems"})
# Where leaving the keyword out means the same as an always-true sub-schema.
_DROPPABLE = frozenset({"items", "propertyNames", "then", "else", "contentSchema"})
_CONSTRAINING = frozenset(
    "type enum const multipleOf maximum exclusiveMaximum minimum exclusiveMinimum maxLength minLength pattern "
    "format contentMediaType contentEncoding contentSchema maxItems minItems uniqueItems maxContains minContains "
    "maxProperties minProperties required dependentRequired allOf anyOf oneOf not items prefixItems contains "
    "additionalItems unevaluatedItems properties patternProperties additionalProperties unevaluatedProperties "
    "propertyNames dependentSchemas dependencies $ref $dynamicRef $recursiveRef".split()
)
_JSON_TYPES = frozenset({"null", "boolean", "object", "array", "number", "string", "integer"})
_NULL = {"type": "null"}
_ANY_TYPES = ("string", "number", "boolean", "object", "array", "null")  # integer is a number
_MAX_DEPTH = 64
_DROP = object()

# Characters per token for JSON-ish text. English prose averages ~4 on BPE tokenizers (Claude,
# GPT, Gemini), but JSON's quotes, braces and snake_case names split into more, shorter tokens;
# 3.5 over-counts prose slightly and is close for schemas, so budgets based on it err high.
CHARS_PER_TOKEN = 3.5


def compact_schema(schema: Any, *, output: bool = False) -> Any:
    """``schema`` without what a model does not need, rewritten to pass the portability lint (see
    the module docstring). Validation keywords stay: an output schema accepts the same documents;
    an input schema the same, less an explicit ``null`` for arguments that default to ``null``."""
    return _compact(schema, None, output)


def _compact(node: Any, keyword: str | None, output: bool) -> Any:
    if isinstance(node, bool):
        return _boolean(node, keyword)
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title" and isinstance(value, str):
            continue
        if output and (key == "default" or (key == "description" and isinstance(value, str))):
            continue
        if output and key == "additionalProperties" and value is False:
            continue
        if key in _MAP_KEYWORDS and isinstance(value, dict):
            value = {name: _compact(sub, key, output) for name, sub in value.items()}
        elif key in _LIST_KEYWORDS and isinstance(value, list):
            value = [_compact(sub, key, output) for sub in value]
        elif key == "items" and isinstance(value, list):  # draft-7 tuple form: positions, never droppable
            value = [_compact(sub, "prefixItems", output) for sub in value]
        elif key in _ONE_KEYWORDS:
            value = _compact(value, key, output)
            if value is _DROP:
                continue
        out[key] = value
    out = _split_type_union(out)
    if keyword != "not" and not _constrains(out):
        if keyword in _DROPPABLE | _BOOLEAN_VALUED:
            return _boolean(True, keyword)
        out = {**out, **_any()}
    return out if output else _drop_null_default(out)


def _boolean(value: bool, keyword: str | None) -> Any:
    """The portable spelling of a boolean schema found under ``keyword``."""
    if keyword in _BOOLEAN_VALUED:
        return value
    if not value:
        return {"not": {}}
    if keyword in _DROPPABLE:
        return _DROP
    return {} if keyword == "not" else _any()


def _any() -> dict[str, Any]:
    return {"anyOf": [{"type": t} for t in _ANY_TYPES]}


def _split_type_union(schema: dict[str, Any]) -> dict[str, Any]:
    """``{"type": ["string", "null"]}`` -> ``{"anyOf": [{"type": "string"}, {"type": "null"}]}``."""
    types = schema.get("type")
    if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
        return schema
    unique = list(dict.fromkeys(types))
    rest = {k: v for k, v in schema.items() if k != "type"}
    if len(unique) == 1:
        return {"type": unique[0], **rest}
    branches = {"anyOf": [{"type": t} for t in unique]}
    if "anyOf" not in rest:
        return {**branches, **rest}
    return {**rest, "allOf": [*rest.get("allOf", []), branches]}


def _drop_null_default(schema: dict[str, Any]) -> dict[str, Any]:
    """An input that defaults to ``null``: absent says the same, so drop the ``null`` branch."""
    options = schema.get("anyOf")
    if "default" not in schema or schema["default"] is not None:
        return schema
    if not isinstance(options, list) or _NULL not in options:
        return schema
    kept = [o for o in options if o != _NULL]
    if not kept:
        return schema
    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
    only = kept[0]
    if len(kept) == 1 and isinstance(only, dict) and not set(only) & set(rest):
        return {**only, **rest}
    return {"anyOf": kept, **rest}


def _constrains(node: dict[str, Any]) -> bool:
    return any(k in _CONSTRAINING for k in node) or ("if" in node and ("then" in node or "else" in node))


def model_visible_size(tool: dict[str, Any]) -> tuple[int, int]:
    """(characters, estimated tokens) of what a model sees of ``tool`` (a ``tools/list`` entry):
    its name, description and input schema as compact JSON. Output schema and annotations are
    left out: clients give the model those, if at all, only with a result."""
    seen = {
        "name": tool.get("name", ""),
        "description": tool.get("description") or "",
        "inputSchema": tool.get("inputSchema", tool.get("input_schema", {})),
    }
    chars = len(json.dumps(seen, separators=(",", ":"), ensure_ascii=False))
    return chars, math.ceil(chars / CHARS_PER_TOKEN)


def lint_portability(schema: Any) -> list[str]:
    """The Inspector's ``--strict`` findings for one schema, as ``"<severity> <rule> at <path>: <what>"``."""
    findings: list[str] = []
    _walk(schema, "", None, 0, findings, _declares_id(schema, 0))
    return findings


def _subschemas(node: dict[str, Any], path: str) -> list[tuple[Any, str, str]]:
    """(child, path, keyword) for every sub-schema position, in the lint's order."""
    found: list[tuple[Any, str, str]] = []
    for key in _MAP_KEYWORDS:
        value = node.get(key)
        if isinstance(value, dict):
            found += [(value[name], _child(_child(path, key), name), key) for name in _js_keys(value)]
    for key in _LIST_KEYWORDS:
        value = node.get(key)
        if isinstance(value, list):
            found += [(sub, f"{_child(path, key)}[{i}]", key) for i, sub in enumerate(value)]
    for key in _ONE_KEYWORDS:
        if key not in node:
            continue
        value = node[key]
        if key == "items" and isinstance(value, list):
            found += [(sub, f"{_child(path, key)}[{i}]", key) for i, sub in enumerate(value)]
        else:
            found.append((value, _child(path, key), key))
    return found


def _walk(node: Any, path: str, keyword: str | None, depth: int, findings: list[str], has_ids: bool) -> None:
    if depth > _MAX_DEPTH:
        return
    where = path or "(root)"
    if isinstance(node, bool):
        if keyword not in _BOOLEAN_VALUED:
            findings.append(f"error boolean-schema at {where}: bare {str(node).lower()} where a schema is expected")
        return
    if not isinstance(node, dict):
        return
    types = node.get("type")
    if isinstance(types, list) and _portable_union(types):
        findings.append(f"warning type-union at {where}: type is an array {json.dumps(types)}")
    ref = node.get("$ref")
    if isinstance(ref, str) and ref and not ref.startswith("#") and not has_ids:
        findings.append(f"warning remote-ref at {where}: $ref points outside the document ({ref})")
    if not _constrains(node) and keyword != "not":
        findings.append(f"warning untyped-schema at {where}: no validation keyword, accepts any value")
    for child, child_path, child_keyword in _subschemas(node, path):
        _walk(child, child_path, child_keyword, depth + 1, findings, has_ids)


def _portable_union(types: list[Any]) -> bool:
    return bool(types) and all(isinstance(t, str) and t in _JSON_TYPES for t in types) and len(set(types)) == len(types)


def _declares_id(node: Any, depth: int) -> bool:
    if depth > _MAX_DEPTH or not isinstance(node, dict):
        return False
    if isinstance(node.get("$id"), str) and node["$id"]:
        return True
    return any(_declares_id(child, depth + 1) for child, _, _ in _subschemas(node, ""))


_IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]*")


def _child(parent: str, key: str) -> str:
    if _IDENTIFIER.fullmatch(key):
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{json.dumps(key, ensure_ascii=False)}]"


def _js_keys(mapping: dict[str, Any]) -> list[str]:
    """``Object.entries`` order: array-index keys ascending first, then the rest as inserted."""
    index = sorted((k for k in mapping if _ARRAY_INDEX.fullmatch(k) and int(k) < 2**32 - 1), key=int)
    return index + [k for k in mapping if k not in index]
