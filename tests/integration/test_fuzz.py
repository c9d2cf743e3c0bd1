"""Hostile arguments for every tool, through the real MCP server: every call ends in a result or a
clear error, never in an unhandled exception, a hang, or an error without a reason.

Hypothesis draws the arguments (wrong types, huge strings, NUL bytes and other odd characters,
deep nesting, unknown keys, boundary numbers, and now and then a sensible value so that calls get
past validation), with a fixed budget per tool and a fixed seed. The server runs in-process with a
scripted model host and the real analysers on a tiny project; each call may take at most
``CALL_LIMIT_S``. The figures are printed (``pytest -s``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.types import CallToolResult, TextContent

from caelum_mcp.backends.scripted import ScriptedBackend
from caelum_mcp.hosts import Host
from caelum_mcp.supervisors import SUPERVISORS

from .test_development import _git, make_server, write

pytestmark = pytest.mark.slow

EXAMPLES_PER_TOOL = 60
CALL_LIMIT_S = 60
MAX_ERROR_CHARS = 2_500
# What an error that escaped the tools' own handling looks like (the SDK prefixes every tool error
# with "Error executing tool <name>:", so that part says nothing).
INTERNAL = (
    "internal error",
    "Traceback",
    "validation error for",
    "RecursionError",
    "KeyError",
    "TypeError",
    "ValueError",
    "AttributeError",
    "IndexError",
    "UnicodeEncodeError",
)

HUGE = "A" * 5_000_000
RECURSIVE_SCHEMA = {
    "type": "object",
    "properties": {"a": {"$ref": "#/$defs/a"}},
    "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
}
DANGLING_SCHEMA = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}


Served = tuple[BlockingPortal, Client, str, dict[str, tuple[list[str], list[str]]]]


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


odd_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8", categories=["Cc", "Cs", "Zs", "So"]), max_size=20),
    st.sampled_from(["", ".", "..", "../..", "/", "/etc/passwd", "~", "a\0b", "\ud800", "work/../../x", "-rf", "--"]),
    st.text(min_size=1, max_size=3).map(lambda t: t * 100_000),
)
boundary_numbers = st.one_of(
    st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63), 10**100]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(),
)
leaf = st.one_of(st.none(), st.booleans(), boundary_numbers, odd_text)
hostile = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.text(max_size=10), inner, max_size=5),
    ),
    max_leaves=20,
)


def sensible(field: str, project: str) -> st.SearchStrategy[Any]:
    """Values that get past validation, so the fuzz reaches the tools' own code."""
    by_field: dict[str, list[Any]] = {
        "project": [project, "proj", "."],
        "task": ["analyze", "improve", "security_scan", "performance", "comprehensive"],
        "paths": [["a.py"], ["."], ["nope.py"], ["../x"], ["proj/app.log"], [f"{project}/app.log"]],
        "selection": [["tests"], ["tests/test_a.py::test_a"], ["nope"]],
        "prompt": ["Say hi.", "x" * 1000],
        "tier": ["micro", "small", "full", "large", "code", "embedding"],
        "json_schema": [RECURSIVE_SCHEMA, DANGLING_SCHEMA, {"type": "object"}],
        "host": ["gpu-1", "nope"],
        "base": ["HEAD", "HEAD~5", "--output=/tmp/x"],
        "head": ["HEAD", "nope", "-p"],
        # the other supervisors' arguments
        "query": ["where is eval used?", "f"],
        "question": ["what does f do?", "how many rows?"],
        "sources": [["proj/data.csv"], [f"{project}/data.csv"], [f"{project}/*.csv"], ["a.py"]],
        "source": ["proj/data.csv", f"{project}/data.csv", "a.py"],
        "sql": ["SELECT 1", "SELECT * FROM data", "COPY data TO '/tmp/x.csv'"],
        "action": ["remember", "recall", "forget", "list"],
        "text": ["the build uses make", "x" * 1000],
        "workflow": ["pre-commit", "security-review", "release-check", "nope"],
        "models": [["qwen3:8b"], ["nope"]],
    }
    return st.sampled_from(by_field.get(field, [True, False, 1, 50, "x"]))


def arguments(fields: list[str], required: list[str], project: str) -> st.SearchStrategy[dict[str, Any]]:
    """Sensible calls (all required fields), mixed ones, ones with unknown keys, and none at all."""
    fine = st.fixed_dictionaries(
        {f: sensible(f, project) for f in required},
        optional={f: sensible(f, project) for f in fields if f not in required},
    )
    mixed = st.fixed_dictionaries({}, optional={f: st.one_of(hostile, sensible(f, project)) for f in fields})
    unknown = st.dictionaries(st.text(min_size=1, max_size=12), hostile, max_size=2)
    return st.one_of(fine, mixed, st.builds(lambda a, b: {**a, **b}, mixed, unknown), st.just({}))


def classify(result: CallToolResult | BaseException) -> str:
    if isinstance(result, BaseException):
        return "unhandled"
    text = " ".join(c.text for c in result.content if isinstance(c, TextContent))
    if not result.is_error:
        return "ok"
    if not text.strip():
        return "error without a reason"
    if any(marker in text for marker in INTERNAL) or len(text) > MAX_ERROR_CHARS:
        return "unhandled"
    return "clear error"


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[BlockingPortal, Client, str, dict[str, list[str]]]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    project = write(
        tmp / "work" / "proj",
        {
            "a.py": "import os\n\n\ndef f(x):\n    return eval(x)\n",
            "tests/test_a.py": "def test_a():\n    assert 1\n",
            "data.csv": "name,amount\na,1\nb,2\n",
            "app.log": "2026-11-30 10:00:00 ERROR db timeout after 30 s\n2026-11-30 10:00:01 INFO retry\n",
        },
    )
    _git(project, "init", "-q")
    _git(project, "add", "-A")
    _git(project, "commit", "-q", "-m", "start")
    (project / "a.py").write_text("import os\nimport sys\n\n\ndef f(x):\n    return eval(x)\n")  # a change to review
    # its answer has the "a" the hostile schemas' $refs describe, so validating it follows them
    model = ScriptedBackend([("qwen3:8b", 8.0)], '{"answer": "ok", "a": {"a": 1}, "confidence": 0.9}', name="gpu-1")
    server, _ = make_server(tmp, [Host(name="gpu-1", backend=model)])
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(Client(server)) as client:
        listed = portal.call(client.list_tools)
        fields = {
            t.name: (list(t.input_schema.get("properties", {})), list(t.input_schema.get("required", [])))
            for t in listed.tools
        }
        yield portal, client, str(project), fields


def call(portal: BlockingPortal, client: Client, tool: str, args: dict[str, Any]) -> CallToolResult | BaseException:
    async def one() -> CallToolResult:
        with anyio.fail_after(CALL_LIMIT_S):
            return await client.call_tool(tool, args)

    try:
        return portal.call(one)
    except BaseException as exc:  # a hang (TimeoutError) or anything the client saw blow up
        return exc


# Every registered tool, so a new supervisor's tools are fuzzed without anyone remembering to.
TOOLS = [tool.name for cls in SUPERVISORS for tool in cls().external_tools()]
FIGURES: Counter[tuple[str, str]] = Counter()


@pytest.mark.parametrize("tool", TOOLS)
def test_hostile_arguments_get_a_result_or_a_clear_error(served: Served, tool: str) -> None:
    portal, client, project, fields = served
    seen: Counter[str] = Counter()
    failures: list[str] = []

    @seed(20261130)
    @settings(
        max_examples=EXAMPLES_PER_TOOL,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(args=arguments(*fields[tool], project))
    @example(args={"project": HUGE})
    @example(args={"project": "a\0b", "paths": ["x\0y"], "selection": ["\0"], "base": "a\0b", "host": "h\0"})
    @example(args={"prompt": "hi", "json_schema": RECURSIVE_SCHEMA})
    @example(args={"prompt": "hi", "json_schema": DANGLING_SCHEMA})
    @example(args={"prompt": nested(200), "project": nested(200), "host": nested(200)})
    @example(args={"project": project, "max_findings": 10**100, "timeout_s": float("nan")})
    def run(args: dict[str, Any]) -> None:
        outcome = classify(call(portal, client, tool, args))
        seen[outcome] += 1
        if outcome in ("unhandled", "error without a reason"):
            failures.append(f"{outcome}: {json.dumps(args, default=str)[:300]}")

    run()
    for outcome, count in seen.items():
        FIGURES[(tool, outcome)] += count
    print(f"\nfuzz {tool}: {sum(seen.values())} calls, " + ", ".join(f"{n} {k}" for k, n in sorted(seen.items())))
    assert not failures, "\n".join(failures[:10])


def test_fuzz_totals() -> None:
    """Prints the totals over every tool (runs after the per-tool tests in file order)."""
    if not FIGURES:
        pytest.skip("run with the per-tool fuzz tests")
    totals: Counter[str] = Counter()
    for (_, outcome), count in FIGURES.items():
        totals[outcome] += count
    print(f"\nfuzz totals: {sum(totals.values())} calls; " + ", ".join(f"{n} {k}" for k, n in sorted(totals.items())))
    assert totals["unhandled"] == 0 and totals["error without a reason"] == 0
