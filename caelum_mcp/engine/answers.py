"""Reading a model's answer: the output schema checked up front, the JSON found, validated, scored.

- :func:`task_schema` is the schema every model gets: the task's own (or a free-text one) plus a
  ``confidence`` field; before anything runs it is checked to be usable at all — valid JSON
  schema, every ``$ref`` resolving inside it (nothing is ever fetched), no loop of references
  that validation would follow forever — or :class:`~caelum_mcp.core.errors.InvalidSchemaError` names
  the problem;
- :func:`with_schema_instruction` puts it into a local model's system prompt;
- :func:`parse_answer` finds the JSON object in a reply and validates it, returning the reason
  when it is not valid (the router's repair message);
- :func:`self_reported` reads the model's own confidence, :func:`strip_confidence` removes the
  field the router added.
"""

from __future__ import annotations

import copy
import json
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from caelum_mcp.core.errors import InvalidSchemaError
from caelum_mcp.core.lazy_imports import lazy_module
from caelum_mcp.core.llm import LLMTask
from caelum_mcp.core.types import ChatMessage

if TYPE_CHECKING:
    import jsonschema
    import jsonschema.exceptions
    import referencing
    import referencing.exceptions
    import referencing.jsonschema
else:  # loaded with the first schema check, not with the server
    jsonschema = lazy_module("jsonschema")
    referencing = lazy_module("referencing")

_SCHEMA_ECHO_CHARS = 200

# No minimum/maximum: grammar-constrained decoders do not enforce them, and a model that answers
# "confidence": 90 has still answered; the value is normalised in ``_self_reported``.
CONFIDENCE_FIELD = {
    "type": "number",
    "description": "how sure you are that this answer is correct, from 0 to 1",
}
TEXT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}


def task_schema(output_schema: Any) -> tuple[dict[str, Any], Any]:
    """The schema the models get (the task's, plus the confidence field) and its validator;
    raises InvalidSchemaError when the task's schema cannot be used."""
    if output_schema is not None and not isinstance(output_schema, dict):
        raise InvalidSchemaError("the output schema must be a JSON object (a dict)")
    schema = copy.deepcopy(output_schema or TEXT_SCHEMA)
    if schema.get("type") == "object":
        props = schema.setdefault("properties", {})
        required = schema.get("required", [])
        # Anything else is the caller's mistake, which the check below reports as it is.
        if isinstance(props, dict) and isinstance(required, list) and "confidence" not in props:
            props["confidence"] = CONFIDENCE_FIELD
            schema["required"] = [*required, "confidence"]
    return schema, validator_for(schema)


def with_schema_instruction(messages: tuple[ChatMessage, ...], schema: dict[str, Any]) -> tuple[ChatMessage, ...]:
    """The task's messages with the JSON instruction (and the schema) added to the system prompt."""
    instruction = "Reply with one JSON object only, no prose, matching this JSON schema:\n" + json.dumps(
        schema, separators=(",", ":")
    )
    msgs = list(messages)
    if msgs and msgs[0].role == "system":
        msgs[0] = ChatMessage(role="system", content=msgs[0].content + "\n\n" + instruction)
    else:
        msgs.insert(0, ChatMessage(role="system", content=instruction))
    return tuple(msgs)


def strip_confidence(task: LLMTask, output: dict[str, Any] | None) -> dict[str, Any] | None:
    """Drop the confidence field the router added (keep it if the caller's schema has one)."""
    if output is None:
        return None
    original = (task.output_schema or TEXT_SCHEMA).get("properties", {})
    return {k: v for k, v in output.items() if k != "confidence" or "confidence" in original}


def self_reported(output: dict[str, Any] | None) -> float | None:
    """The model's own confidence, read as a fraction (90 and 0.9 both mean 0.9)."""
    value = output.get("confidence") if output else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if 1 < value <= 100:
        value = value / 100
    return min(1.0, max(0.0, float(value)))


def parse_answer(text: str, validator: Any) -> tuple[dict[str, Any] | None, str | None]:
    """The JSON object in ``text`` validated by ``validator``, or the reason it is not valid.

    The schema was checked before the run; should validating still fail for the schema's sake,
    that is InvalidSchemaError, not a fault of the reply.
    """
    candidate = extract_json(text)
    if candidate is None:
        return None, "no JSON object found in the reply"
    try:
        data = json.loads(candidate)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg} at position {exc.pos})"
    except RecursionError:
        return None, "invalid JSON (nested too deeply)"
    if not isinstance(data, dict):
        return None, "the reply is JSON but not an object"
    try:
        violation = jsonschema.exceptions.best_match(validator.iter_errors(data))
    except (RecursionError, referencing.exceptions.Unresolvable) as exc:
        raise InvalidSchemaError(f"the output schema cannot be used: {_schema_problem(exc)}") from None
    if violation is not None:
        where = "/".join(str(p) for p in violation.absolute_path) or "(root)"
        return None, f"schema violation at {where}: {violation.message[:300]}"
    return data, None


# Keywords whose subschemas apply to the same instance: a loop of references through these alone
# never reaches the end of the instance, so validation would recurse until Python gives up.
_IN_PLACE_ONE = ("not", "if", "then", "else")
_IN_PLACE_MANY = ("allOf", "anyOf", "oneOf")
# Keywords holding subschemas (for the walk over every subschema).
_SUBSCHEMA_ONE = (
    *_IN_PLACE_ONE,
    "additionalProperties",
    "additionalItems",
    "items",
    "contains",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "contentSchema",
)
_SUBSCHEMA_MANY = (*_IN_PLACE_MANY, "prefixItems", "items")
_SUBSCHEMA_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies")
# Validators for schemas already checked, by their JSON text: supervisors send the same few.
_VALIDATORS: dict[str, Any] = {}
_VALIDATOR_CACHE_SIZE = 256


def validator_for(schema: dict[str, Any]) -> Any:
    """A validator for ``schema``, after checking that it can be used at all: valid JSON schema,
    every local ``$ref`` resolves, no loop of in-place references, and a trial validation ends.
    Raises InvalidSchemaError with a short message naming the problem."""
    try:
        key = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidSchemaError(f"the output schema is not JSON: {_schema_problem(exc)}") from None
    cached = _VALIDATORS.get(key)
    if cached is not None:
        return cached
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise InvalidSchemaError(
            f"the output schema is not valid JSON schema at {where}: {exc.message[:200]}"
        ) from None
    except RecursionError:
        raise InvalidSchemaError("the output schema is nested too deeply") from None
    _check_references(schema)
    validator = cls(schema)
    trials: tuple[object, ...] = ({}, [], "", 0, None)
    for trial in trials:
        try:
            validator.is_valid(trial)
        except (RecursionError, referencing.exceptions.Unresolvable) as exc:
            raise InvalidSchemaError(f"the output schema cannot be used: {_schema_problem(exc)}") from None
    if len(_VALIDATORS) >= _VALIDATOR_CACHE_SIZE:
        _VALIDATORS.clear()
    _VALIDATORS[key] = validator
    return validator


def _schema_problem(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "its references loop without end"
    if isinstance(exc, referencing.exceptions.Unresolvable):
        return f"a $ref points nowhere ({_echo_ref(getattr(exc, 'ref', '') or str(exc))})"
    return f"{type(exc).__name__}: {str(exc)[:_SCHEMA_ECHO_CHARS]}"


def _echo_ref(ref: str) -> str:
    return ref if len(ref) <= _SCHEMA_ECHO_CHARS else ref[: _SCHEMA_ECHO_CHARS - 1] + "…"


def _subschemas(node: dict[str, Any]) -> Iterator[Any]:
    for key in _SUBSCHEMA_ONE:
        yield node.get(key)
    for key in _SUBSCHEMA_MANY:
        value = node.get(key)
        if isinstance(value, list):
            yield from value
    for key in _SUBSCHEMA_MAP:
        value = node.get(key)
        if isinstance(value, dict):
            yield from value.values()


def _in_place(node: dict[str, Any], root: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The subschemas applied to the same instance as ``node``, its local ``$ref`` target included."""
    for key in _IN_PLACE_ONE:
        value = node.get(key)
        if isinstance(value, dict):
            yield value
    for key in _IN_PLACE_MANY:
        value = node.get(key)
        if isinstance(value, list):
            yield from (v for v in value if isinstance(v, dict))
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        target = _resolve_local(ref, root)
        if isinstance(target, dict):
            yield target


def _resolve_local(ref: str, root: dict[str, Any]) -> Any:
    """The target of a ``#/json/pointer`` or ``#anchor`` reference in ``root``; None when missing."""
    fragment = urllib.parse.unquote(ref[1:])
    if not fragment or fragment.startswith("/"):
        target: Any = root
        for raw in fragment.split("/")[1:]:
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                return None
        return target
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("$anchor") == fragment or node.get("$dynamicAnchor") == fragment:
                return node
            stack.extend(_subschemas(node))
    return None


def _resolves(ref: str, root: dict[str, Any]) -> bool:
    """Whether ``ref`` points at something inside ``root``: a local pointer or anchor, or a URI that
    one of its ``$id``s names (a schema elsewhere would need fetching, which never happens)."""
    if ref.startswith("#"):
        return _resolve_local(ref, root) is not None
    try:
        resource = referencing.jsonschema.specification_with(
            str(root.get("$schema", "")), default=referencing.jsonschema.DRAFT202012
        ).create_resource(root)
        registry: referencing.Registry[Any] = referencing.Registry().with_resource(resource.id() or "", resource)
        registry.crawl().resolver(base_uri=resource.id() or "").lookup(ref)
    except (referencing.exceptions.Unresolvable, referencing.exceptions.CannotDetermineSpecification):
        return False
    return True


def _check_references(root: dict[str, Any]) -> None:
    """Every ``$ref`` resolves inside the schema (nothing is ever fetched), and no subschema reaches
    itself through in-place keywords and references alone."""
    nodes: list[dict[str, Any]] = []
    stack: list[Any] = [root]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if not isinstance(node, dict) or id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        ref = node.get("$ref")
        if isinstance(ref, str) and not _resolves(ref, root):
            raise InvalidSchemaError(f"the output schema cannot be used: a $ref points nowhere ({_echo_ref(ref)})")
        stack.extend(_subschemas(node))
    # Depth-first search for a cycle over in-place edges (white/grey/black colouring).
    colour: dict[int, int] = {}
    for start in nodes:
        if colour.get(id(start)):
            continue
        path: list[tuple[dict[str, Any], Iterator[dict[str, Any]]]] = [(start, _in_place(start, root))]
        colour[id(start)] = 1
        while path:
            node, children = path[-1]
            child = next(children, None)
            if child is None:
                colour[id(node)] = 2
                path.pop()
            elif colour.get(id(child)) == 1:
                raise InvalidSchemaError(
                    "the output schema cannot be used: its references loop without end "
                    "(a $ref that leads back to itself through $ref, allOf, anyOf, oneOf, not or if/then/else)"
                )
            elif not colour.get(id(child)):
                colour[id(child)] = 1
                path.append((child, _in_place(child, root)))


def extract_json(text: str) -> str | None:
    """The outermost {...} in a reply, tolerating code fences and prose around it."""
    start = text.find("{")
    end = text.rfind("}")
    if start == -1 or end <= start:
        return None
    return text[start : end + 1]
