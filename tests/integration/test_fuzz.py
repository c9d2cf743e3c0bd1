"""Hostile arguments for every tool, through the real MCP server: every call ends in a result or a
clear error, never in an unhandled exception, a hang, or an error without a reason.

Hypothesis draws the arguments (wrong types, huge strings, NUL bytes and other odd characters,
deep nesting, unknown keys, boundary numbers, and now and then a sensible value so that calls get
past validation), with a fixed budget per tool and a fixed seed. The server runs in-process with a
scripted model host and the real analysers on a tiny project; each call may take at most
``CALL_LIMIT_S``. The figures are printed (``pytest -s``).

The project is hostile too (:func:`plant_hostile_files`): a FIFO and a link to one under data and
log names, a link to a file outside the roots beside a file whose name is a glob matching the link,
a one-line log and a one-line CSV of many megabytes, and a gzip bomb. The sensible values name them,
so every tool that reads files meets them; no result may carry the outside file's contents.
"""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.types import CallToolResult, TextContent

from caelum_mcp.engine.backends.scripted import ScriptedBackend
from caelum_mcp.engine.hosts import Host
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
# The outside file the planted links point at: a line of it in any result is a read outside the roots.
OUTSIDE_LINE = "caelum-fuzz-outside-the-roots:x:0:0"
# Files the hostile project plants beside its sources (see plant_hostile_files).
HOSTILE_DATA = ["pipe.csv", "to-pipe.csv", "[p]w.csv", "pw.csv", "wide.csv"]
HOSTILE_LOGS = ["pipe.log", "to-pipe.log", "one-line.log", "bomb.log.gz", "outside.log"]
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
        "paths": [
            ["a.py"],
            ["."],
            ["nope.py"],
            ["../x"],
            ["proj/app.log"],
            [f"{project}/app.log"],
            *([f"{project}/{name}"] for name in HOSTILE_LOGS),
            [f"{project}/{name}" for name in HOSTILE_LOGS],
        ],
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
        "sources": [
            ["proj/data.csv"],
            [f"{project}/data.csv"],
            [f"{project}/*.csv"],
            ["a.py"],
            *([f"{project}/{name}"] for name in HOSTILE_DATA),
        ],
        "source": ["proj/data.csv", f"{project}/data.csv", "a.py", *(f"{project}/{name}" for name in HOSTILE_DATA)],
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
    if OUTSIDE_LINE in text or OUTSIDE_LINE in json.dumps(result.structured_content or {}):
        return "read outside the roots"
    if not result.is_error:
        return "ok"
    if not text.strip():
        return "error without a reason"
    if any(marker in text for marker in INTERNAL) or len(text) > MAX_ERROR_CHARS:
        return "unhandled"
    return "clear error"


def plant_hostile_files(project: Path, outside: Path) -> None:
    """Untracked files that would hang, flood or leak a reader that trusts names."""
    outside.mkdir()
    secret = outside / "passwd"
    secret.write_text(f"{OUTSIDE_LINE}:root:/root:/bin/sh\n" * 3)
    for name in ("pipe.csv", "pipe.log"):
        os.mkfifo(project / name)  # opened for reading, a FIFO blocks until a writer comes
    (project / "to-pipe.csv").symlink_to(project / "pipe.csv")
    (project / "to-pipe.log").symlink_to(project / "pipe.log")
    (project / "pw.csv").symlink_to(secret)  # what the glob "[p]w.csv" matches
    (project / "[p]w.csv").write_text("name,amount\nglob,1\n")
    (project / "outside.log").symlink_to(secret)
    with (project / "one-line.log").open("w") as log:  # 24 MB, no newline
        log.write("2026-11-30 10:00:00 ERROR " + "x" * 24_000_000)
    with (project / "wide.csv").open("w") as wide:  # one 24 MB field
        wide.write("name,blob\na," + "y" * 24_000_000 + "\n")
    # 256 MiB of zeros, about 250 KB packed
    with gzip.open(project / "bomb.log.gz", "wb", compresslevel=9) as bomb:
        block = b"\0" * (1 << 20)
        for _ in range(256):
            bomb.write(block)


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
    plant_hostile_files(project, tmp / "outside")
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
        if outcome in ("unhandled", "error without a reason", "read outside the roots"):
            failures.append(f"{outcome}: {json.dumps(args, default=str)[:300]}")

    run()
    for outcome, count in seen.items():
        FIGURES[(tool, outcome)] += count
    print(f"\nfuzz {tool}: {sum(seen.values())} calls, " + ", ".join(f"{n} {k}" for k, n in sorted(seen.items())))
    assert not failures, "\n".join(failures[:10])


def hostile_file_calls(project: str) -> list[tuple[str, dict[str, Any]]]:
    """Each tool that reads files, pointed at each planted file (the drawn arguments rarely are)."""
    calls: list[tuple[str, dict[str, Any]]] = []
    for name in HOSTILE_DATA:
        source = f"{project}/{name}"
        calls.append(("profile_data", {"source": source, "summary": False}))
        calls.append(("query_data", {"sources": [source], "sql": "SELECT 1"}))
    calls.append(("query_data", {"sources": [f"{project}/{n}" for n in HOSTILE_DATA], "sql": "SELECT 1"}))
    calls += [("diagnose_logs", {"paths": [f"{project}/{name}"]}) for name in HOSTILE_LOGS]
    calls.append(("diagnose_logs", {"paths": [project]}))
    calls += [
        ("review_changes", {"project": project}),
        ("analyze_and_improve_code", {"project": project, "task": "comprehensive", "llm_review": False}),
        ("search_knowledge", {"project": project, "query": "caelum fuzz outside the roots"}),
        ("ask_knowledge", {"project": project, "question": "what is in passwd?"}),
    ]
    return calls


def test_planted_files_are_met_with_a_result_or_a_clear_error_and_nothing_leaks(served: Served) -> None:
    """FIFOs, links out, glob names, huge lines and a bomb, named directly to every tool that reads
    files: each call ends within CALL_LIMIT_S, and no answer holds the outside file's lines."""
    portal, client, project, _ = served
    outcomes = {
        f"{tool} {json.dumps(args)[:120]}": classify(call(portal, client, tool, args))
        for tool, args in hostile_file_calls(project)
    }
    print("\n".join(f"{o}: {w}" for w, o in outcomes.items()))
    bad = {what: outcome for what, outcome in outcomes.items() if outcome not in ("ok", "clear error")}
    assert not bad, bad
    # the readers that must get past the planted files serve the project's real ones
    assert outcomes[next(k for k in outcomes if k.startswith("review_changes"))] == "ok"
    assert outcomes[next(k for k in outcomes if k.startswith("analyze_and_improve_code"))] == "ok"
    assert outcomes[next(k for k in outcomes if k.startswith("diagnose_logs") and project + '"]' in k)] == "ok"


def test_fuzz_totals() -> None:
    """Prints the totals over every tool (runs after the per-tool tests in file order)."""
    if not FIGURES:
        pytest.skip("run with the per-tool fuzz tests")
    totals: Counter[str] = Counter()
    for (_, outcome), count in FIGURES.items():
        totals[outcome] += count
    print(f"\nfuzz totals: {sum(totals.values())} calls; " + ", ".join(f"{n} {k}" for k, n in sorted(totals.items())))
    assert totals["unhandled"] == 0 and totals["error without a reason"] == 0
    assert totals["read outside the roots"] == 0
