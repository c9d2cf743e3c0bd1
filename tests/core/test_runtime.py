"""The tool runtime: typed services, call_tool between supervisors, the call record, budgets.

A small supervisor defined here runs on the real runtime, app (pool, router, ledger, cache) and a
scripted model host; no model server and no MCP transport.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel, ConfigDict, Field

from caelum_mcp.core.errors import CaelumError, ToolInputError
from caelum_mcp.core.llm import LLMTask, TaskKind
from caelum_mcp.core.types import ChatMessage
from caelum_mcp.engine.budget import result_size
from caelum_mcp.serving.app import open_app
from caelum_mcp.serving.runtime import ToolRuntime, without_optional_nulls
from caelum_mcp.supervisors.base import ExternalTool, InternalTool, Supervisor, SupervisorEnv, ToolContext, ToolOutput

from .conftest import make_config, scripted_host


class EchoInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1)
    ask_model: bool = False
    delay_s: float = 0
    items: int = 0


class SampleSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: int = Field(default=3, ge=0, description="how many echoes are too many")


class EchoOutput(ToolOutput):
    text: str
    answer: str | None = None
    opened: str | None = None  # what the supervisor's lifespan yielded, read through ctx.state_as
    call_id: str
    has_pool_admin: bool
    state_dir: str
    threshold: int
    items: list[dict[str, Any]] = []


class OuterInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    child: str = "echo"
    child_args: dict[str, Any]


class OuterOutput(ToolOutput):
    child: dict[str, Any]


async def echo(args: EchoInput, ctx: ToolContext) -> EchoOutput:
    await ctx.report(1, 2, "echoing")
    if args.delay_s:
        await anyio.sleep(args.delay_s)
    answer = None
    if args.ask_model:
        task = LLMTask(name="echo", kind=TaskKind.GENERAL, messages=(ChatMessage(role="user", content=args.text),))
        answer = (await ctx.llm.run(task)).text
    items = [{"n": i, "file": f"src/module_{i}.py", "message": "x" * 60} for i in range(args.items)]
    return EchoOutput(
        text=args.text,
        answer=answer,
        call_id=ctx.call_id,
        has_pool_admin=ctx.pool_admin is not None,
        opened=ctx.state_as(SampleState).marker.name if isinstance(ctx.state, SampleState) else None,
        state_dir=str(ctx.state_dir),
        threshold=ctx.settings_as(SampleSettings).threshold,
        items=items,
    )


async def outer(args: OuterInput, ctx: ToolContext) -> OuterOutput:
    child = await ctx.call_tool(args.child, args.child_args)
    return OuterOutput(child=child.model_dump())


class SampleState:
    """What Sample's lifespan opens for the server's life."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker


class Sample(Supervisor):
    name = "sample"
    description = "A supervisor for the runtime's tests."
    settings_model = SampleSettings
    events: list[str] = []

    def external_tools(self) -> Sequence[ExternalTool[Any, Any]]:
        return (
            ExternalTool(
                "echo", "Echo", "Echo the text.", EchoInput, EchoOutput, echo, more_hint="ask for fewer `items`"
            ),
            ExternalTool("outer", "Outer", "Call another tool.", OuterInput, OuterOutput, outer),
        )

    def internal_tools(self) -> Sequence[InternalTool]:
        return (InternalTool("echo_text", echo),)

    @asynccontextmanager
    async def lifespan(self, env: SupervisorEnv) -> AsyncIterator[SampleState]:
        marker = env.state_dir / "open"
        marker.write_text("yes")
        self.events.append("opened")
        try:
            yield SampleState(marker)
        finally:
            marker.unlink()
            self.events.append("closed")


class Admin(Supervisor):
    name = "admin"
    description = "Declares pool_admin, as the ai supervisor does."
    pool_admin = True

    def external_tools(self) -> Sequence[ExternalTool[Any, Any]]:
        return (ExternalTool("admin_echo", "Admin echo", "Echo.", EchoInput, EchoOutput, echo),)


@asynccontextmanager
async def running(tmp_path: Path, *supervisors: Supervisor, **overrides: Any) -> AsyncIterator[ToolRuntime]:
    runtime = ToolRuntime(supervisors or (Sample(), Admin()))
    host = scripted_host("gpu-1", [("qwen3:8b", 8.0)], ['{"answer": "pong", "confidence": 0.9}'])
    config = make_config(tmp_path, embedded="off", **overrides)
    async with open_app(config, health_loop=False, extra_hosts=[host]) as state, runtime.serving(state):
        yield runtime


def roots(tmp_path: Path) -> tuple[Path, ...]:
    return (tmp_path,)


async def test_registration_refuses_duplicates_and_untyped_results() -> None:
    with pytest.raises(ValueError, match="already registered"):
        ToolRuntime([Sample(), Sample()])

    class Loose(Supervisor):
        name = "loose"
        description = "returns a plain model"

        def external_tools(self) -> Sequence[ExternalTool[Any, Any]]:
            return (ExternalTool("loose", "Loose", "x", EchoInput, EchoInput, echo),)  # type: ignore[type-var]

    with pytest.raises(TypeError, match="ToolOutput"):
        ToolRuntime([Loose()])


async def test_typed_services_state_dir_lifespan_and_pool_admin_only_where_declared(tmp_path: Path) -> None:
    Sample.events = []
    async with running(tmp_path) as runtime:
        assert Sample.events == ["opened"]
        plain = await runtime.invoke("echo", {"text": "hi"}, roots=roots(tmp_path))
        admin = await runtime.invoke("admin_echo", {"text": "hi"}, roots=roots(tmp_path))
        assert isinstance(plain, EchoOutput) and isinstance(admin, EchoOutput)
        assert plain.has_pool_admin is False and admin.has_pool_admin is True
        assert Path(plain.state_dir) == tmp_path / "supervisors" / "sample"
        assert (Path(plain.state_dir) / "open").read_text() == "yes"
        assert Path(admin.state_dir) == tmp_path / "supervisors" / "admin"
        # each supervisor's handlers get what its own lifespan yielded, and nothing of another's
        assert plain.opened == "open" and admin.opened is None
    assert Sample.events == ["opened", "closed"]


async def test_state_as_gives_the_lifespans_state_typed_or_says_why_not(tmp_path: Path) -> None:
    seen: list[Any] = []

    async def needs_state(args: EchoInput, ctx: ToolContext) -> EchoOutput:
        seen.append(ctx.state_as(SampleState))
        return await echo(args, ctx)

    class Stateless(Supervisor):
        name = "stateless"
        description = "keeps nothing, so a handler asking for state is told why it has none"

        def external_tools(self) -> Sequence[ExternalTool[Any, Any]]:
            return (ExternalTool("needs_state", "Needs state", "x", EchoInput, EchoOutput, needs_state),)

    async with running(tmp_path, Sample(), Stateless()) as runtime:
        with pytest.raises(CaelumError, match="needs its supervisor's SampleState, which the running server opens"):
            await runtime.invoke("needs_state", {"text": "hi"}, roots=roots(tmp_path))
    assert seen == []
    wrong = ToolContext(llm=None, limits=None, roots=(), state_dir=tmp_path, state="a string")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="state is a str, not a SampleState"):
        wrong.state_as(SampleState)


async def test_call_tool_validates_reports_progress_and_records_the_child_under_the_parent(tmp_path: Path) -> None:
    seen: list[str] = []

    async def progress(value: float, total: float | None, message: str) -> None:
        seen.append(message)

    async with running(tmp_path) as runtime:
        state = runtime.require_state()
        with pytest.raises(ToolInputError, match="unknown argument `txt` \\(did you mean `text`\\?\\)"):
            await runtime.invoke("outer", {"child_args": {"txt": "x"}}, roots=roots(tmp_path))
        with pytest.raises(CaelumError, match=r"no tool named 'ech'.*did you mean 'echo'"):
            await runtime.invoke("outer", {"child": "ech", "child_args": {"text": "x"}}, roots=roots(tmp_path))

        result = await runtime.invoke(
            "outer", {"child_args": {"text": "ping", "ask_model": True}}, roots=roots(tmp_path), progress=progress
        )
        assert isinstance(result, OuterOutput)
        assert result.child["answer"] == '{"answer": "pong", "confidence": 0.9}'
        assert "echo: echoing" in seen  # the child's progress, through the parent

        ledger = state.ledger
        (parent,) = [c for c in ledger.tool_calls() if c.outcome == "ok"]
        assert parent.tool == "outer"
        (child,) = ledger.tool_calls(parent_id=parent.id)
        assert (child.tool, child.outcome, child.id) == ("echo", "ok", result.child["call_id"])
        (model_call,) = ledger.recent(5)
        assert model_call.call_id == child.id and model_call.host == "gpu-1"
        cost = ledger.call_cost(parent.id)  # the parent's cost includes its child's model calls
        assert cost.model_calls == 1 and cost.counterfactual_cost_usd == model_call.counterfactual_cost_usd
        failed = [c for c in ledger.tool_calls() if c.outcome == "error"]
        assert len(failed) == 2 and all(c.error for c in failed)


async def test_cancelling_the_parent_cancels_the_child(tmp_path: Path) -> None:
    async with running(tmp_path) as runtime:
        with anyio.move_on_after(0.3) as scope:
            await runtime.invoke("outer", {"child_args": {"text": "x", "delay_s": 30}}, roots=roots(tmp_path))
        assert scope.cancelled_caught
        calls = runtime.require_state().ledger
        (parent,) = calls.tool_calls()
        (child,) = calls.tool_calls(parent_id=parent.id)
        assert (parent.outcome, child.outcome) == ("cancelled", "cancelled")


async def test_call_tool_nesting_is_bounded(tmp_path: Path) -> None:
    nested: dict[str, Any] = {"child": "echo", "child_args": {"text": "bottom"}}
    for _ in range(6):
        nested = {"child": "outer", "child_args": nested}
    async with running(tmp_path) as runtime:
        with pytest.raises(CaelumError, match="nested deeper than 4"):
            await runtime.invoke("outer", nested, roots=roots(tmp_path))


async def test_results_are_fitted_to_the_budget_with_counts_and_a_way_to_more(tmp_path: Path) -> None:
    async with running(tmp_path) as runtime:
        small = await runtime.invoke("echo", {"text": "hi", "items": 3}, roots=roots(tmp_path))
        assert runtime.fit("echo", small, 4000) == small.model_dump(mode="json", exclude={"omitted", "more"})

        big = await runtime.invoke("echo", {"text": "hi", "items": 5000}, roots=roots(tmp_path))
        data = runtime.fit("echo", big, 4000)
        assert result_size(data) <= 4000
        kept = len(data["items"])
        assert 0 < kept < 5000 and data["omitted"] == {"items": 5000 - kept}
        assert data["items"] == [item.copy() for item in big.model_dump(mode="json")["items"][:kept]]
        assert "fewer `items`" in data["more"]
        EchoOutput.model_validate(data)  # still a valid result for the output schema
        assert json.loads(json.dumps(data)) == data


async def test_a_supervisor_owns_its_config_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import caelum_mcp.supervisors
    from caelum_mcp.core.errors import ConfigError
    from caelum_mcp.engine.config import load_config

    monkeypatch.setattr(caelum_mcp.supervisors, "SUPERVISORS", (Sample, Admin))
    config = load_config(environ={"CAELUM_SAMPLE__THRESHOLD": "7"}, overrides={"data_dir": str(tmp_path)})
    assert config.section("sample", SampleSettings).threshold == 7
    assert load_config(environ={}).section("sample", SampleSettings).threshold == 3  # no section: defaults
    with pytest.raises(ConfigError, match=r"`sample.threshold` = -1: .*greater than or equal to 0.*too many"):
        load_config(environ={"CAELUM_SAMPLE__THRESHOLD": "-1"})
    with pytest.raises(ConfigError, match=r"unknown key `sample.thresold`: did you mean `threshold`"):
        load_config(environ={}, overrides={"sample": {"thresold": 1}})
    with pytest.raises(ConfigError, match=r"unknown key `sampel`: did you mean `sample`"):
        load_config(environ={}, overrides={"sampel": {"threshold": 1}})
    async with running(tmp_path, **{"sample.threshold": 9}) as runtime:
        result = await runtime.invoke("echo", {"text": "hi"}, roots=roots(tmp_path))
    assert isinstance(result, EchoOutput) and result.threshold == 9


class _Cell(BaseModel):
    value: float | None = None
    note: str | None = None


class _Inner(BaseModel):
    sql: str | None = Field(description="required, may be null")
    error: str | None = None


class _Shaped(ToolOutput):
    error: str | None = None
    inner: _Inner
    cells: list[_Cell] = Field(default_factory=list)
    rows: list[list[Any]] = Field(default_factory=list)
    by_name: dict[str, _Cell | None] = Field(default_factory=dict)


def test_nested_optional_null_fields_are_dropped_and_required_ones_and_null_cells_kept() -> None:
    out = _Shaped(
        inner=_Inner(sql=None), cells=[_Cell(value=1.5), _Cell(note="x")], rows=[[1, None]], by_name={"a": None}
    )
    data = without_optional_nulls(out, out.model_dump(mode="json"))
    assert data["inner"] == {"sql": None}  # the output schema requires `sql`
    assert data["error"] is None  # the top level keeps every field
    assert data["cells"] == [{"value": 1.5}, {"note": "x"}]
    assert data["rows"] == [[1, None]] and data["by_name"] == {"a": None}  # positions and plain dicts keep their nulls
    assert _Shaped.model_validate(data) == out  # what was dropped was each field's default
