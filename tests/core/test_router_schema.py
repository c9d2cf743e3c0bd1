"""Output schemas that cannot be used fail fast with a clear InvalidSchemaError, before any model call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from caelum_mcp.core.errors import CaelumError, InvalidSchemaError, NoHostAvailableError, ToolInputError
from caelum_mcp.core.llm import LLMTask, TaskKind
from caelum_mcp.core.types import ChatMessage
from caelum_mcp.engine.backends.scripted import ScriptedReply
from caelum_mcp.engine.ledger import Ledger
from caelum_mcp.engine.pool import Pool
from caelum_mcp.engine.router import Router

from .conftest import backend_of, make_config, scripted_host, scripted_pool

FULL = [("qwen3:8b", 8.0)]


def task(schema: dict[str, Any]) -> LLMTask:
    return LLMTask(
        name="t",
        kind=TaskKind.GENERAL,
        messages=(ChatMessage(role="user", content="Answer."),),
        output_schema=schema,
        allow_claude=False,
    )


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        (
            {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
            "loop without end",
        ),
        (
            {
                "type": "object",
                "properties": {"x": {"$ref": "#/$defs/a"}},
                "$defs": {
                    "a": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/b"}]},
                    "b": {"allOf": [{"$ref": "#/$defs/a"}]},
                },
            },
            "loop without end",
        ),
        ({"type": "object", "$ref": "#"}, "loop without end"),
        ({"type": "object", "properties": {"x": {"$ref": "#/$defs/missing"}}}, "points nowhere"),
        ({"type": "object", "properties": {"x": {"$ref": "https://example.com/schema.json"}}}, "points nowhere"),
        ({"type": "object", "properties": {"x": {"type": "strin"}}}, "not valid JSON schema at properties/x/type"),
        ({"type": "object", "required": "x"}, "not valid JSON schema at required"),
    ],
)
async def test_an_unusable_schema_is_refused_before_any_model_call(
    schema: dict[str, Any], problem: str, tmp_path: Path
) -> None:
    host = scripted_host("gpu-1", FULL)
    pool = await scripted_pool(host)
    with Ledger(tmp_path / "l.db") as ledger:
        router = Router(pool, ledger, make_config(tmp_path))
        with pytest.raises(InvalidSchemaError, match=problem) as info:
            await router.run(task(schema))
        assert len(str(info.value)) < 400
        assert isinstance(info.value, ToolInputError) and isinstance(info.value, CaelumError)
        assert backend_of(host).requests == [] and ledger.recent() == []


async def test_legitimately_recursive_schemas_still_work(tmp_path: Path) -> None:
    tree = {
        "type": "object",
        "properties": {"node": {"$ref": "#/$defs/node"}},
        "required": ["node"],
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                "required": ["name"],
            }
        },
    }
    answer = {"node": {"name": "root", "children": [{"name": "leaf", "children": []}]}, "confidence": 0.9}
    pool = await scripted_pool(scripted_host("gpu-1", FULL, [ScriptedReply(json.dumps(answer), logprob=-0.05)]))
    with Ledger(tmp_path / "l.db") as ledger:
        result = await Router(pool, ledger, make_config(tmp_path)).run(task(tree))
    assert result.output == {"node": answer["node"]}


def test_an_unknown_host_name_is_not_echoed_in_full() -> None:
    with pytest.raises(NoHostAvailableError) as info:
        Pool().get("x" * 100_000)
    assert len(str(info.value)) < 300 and "xxxx" in str(info.value)
