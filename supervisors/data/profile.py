"""``profile_data``: a data set's profile computed by DuckDB, and a short grounded LLM summary.

The profile (:mod:`caelum_mcp.tools.data.profile`) is the result; the summary is extra. It is a
``summary`` task (tier small or larger), so with no capable model it is skipped at once and the
note says what to add. Each anomaly the model lists must cite a column that exists (or
``(table)`` for the table as a whole) and a figure that is in the profile of what it cites, as
must every number in its text; the rest are dropped and counted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from caelum_mcp.core.errors import CaelumError
from caelum_mcp.core.llm import GroundingResult, TaskKind
from caelum_mcp.engine.grounding import check_items, cited_list_schema, output_cap
from caelum_mcp.supervisors.base import ToolContext, ToolOutput
from caelum_mcp.supervisors.llm_steps import LLMStep, run_cited_list, summary_of
from caelum_mcp.tools.data.models import ColumnInfo, DataSourceError
from caelum_mcp.tools.data.profile import ColumnProfile, TableProfile, profile_table
from caelum_mcp.tools.data.session import open_session
from caelum_mcp.tools.data.sources import resolve_sources

from .settings import DataSettings, session_limits

TABLE = "(table)"
MAX_COLUMNS_ASKED = 2_000
MAX_ANOMALIES = 6
ANOMALIES = cited_list_schema(
    "anomalies",
    {
        "column": {"type": "string", "description": f"a column name from the profile, or {TABLE!r}"},
        "finding": {"type": "string", "description": "what looks wrong, in one sentence"},
        "figure": {"type": "number", "description": "the profile's number that shows it"},
    },
    ("column", "finding", "figure"),
    max_items=MAX_ANOMALIES,
    summary="two sentences on the data set's quality",
)
SYSTEM = (
    "You review a data set's profile and list what looks wrong: missing values, mixed types, outliers, "
    "duplicates, suspicious ranges. Cite each anomaly's column (or '(table)') and the profile's figure that "
    "shows it; use only numbers that appear in the profile."
)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


class ProfileDataInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="a file, folder or glob inside the allowed roots (formats as query_data)")
    table: str | None = Field(default=None, max_length=200, description="which table, when the source holds several")
    columns: list[Annotated[str, Field(max_length=300)]] | None = Field(
        default=None,
        max_length=MAX_COLUMNS_ASKED,
        description="show only these columns (names as in `column_names`); a wide table's profile is cut to "
        "its budget from the last column on, and this gets the rest",
    )
    summary: bool = Field(default=True, description="ask the LLM for a short summary of anomalies")
    allow_claude: bool = True


class Anomaly(BaseModel):
    column: str
    finding: str
    figure: float


class ProfileDataOutput(ToolOutput):
    profile: TableProfile
    column_names: list[str] = Field(
        default_factory=list, description="every column of the table, in order: pick some with `columns`"
    )
    other_tables: list[str] = Field(default_factory=list, description="the source's other tables (profile by name)")
    anomalies: list[Anomaly] = Field(default_factory=list, description="the LLM's grounded findings")
    summary: str | None = None
    notes: list[str] = Field(default_factory=list)
    llm: LLMStep | None = None


async def profile_data(args: ProfileDataInput, ctx: ToolContext) -> ProfileDataOutput:
    settings = ctx.settings_as(DataSettings)
    resolved = resolve_sources([args.source], ctx.roots)
    # The limit is the call's: every scan of every column shares it (a wide table cannot run for
    # profile_timeout_s per scan).
    limits = replace(
        session_limits(settings, timeout_s=settings.profile_timeout_s), call_budget_s=settings.profile_timeout_s
    )
    await ctx.report(0, 3, "loading the data")
    async with open_session(resolved, ctx.state_dir / "sessions", limits, materialize=True) as session:
        names = list(session.tables)
        name = _pick(names, args.table)
        await ctx.report(1, 3, f"profiling {name}")
        every = session.tables[name].columns
        wanted = _columns(every, args.columns)
        profile = await session.call(lambda s: profile_table(s, name, wanted))
        notes = list(session.notes)
    out = ProfileDataOutput(
        profile=profile,
        column_names=[c.name for c in every],
        other_tables=[n for n in names if n != name],
        notes=notes,
    )
    if args.summary:
        await ctx.report(2, 3, "summarising anomalies")
        await _summarise(out, ctx, args.allow_claude)
    await ctx.report(3, 3, "done")
    return out


def _columns(columns: Sequence[ColumnInfo], asked: Sequence[str] | None) -> list[str] | None:
    """The table's columns named in ``asked`` (case-insensitive, in the table's order; None: all);
    a name the table lacks is a :class:`DataSourceError` that lists the ones it has."""
    if asked is None:
        return None
    by_name = {c.name.lower(): c.name for c in columns}
    missing = [a for a in asked if a.lower() not in by_name]
    if missing:
        listed = ", ".join(c.name for c in columns[:60]) + (" …" if len(columns) > 60 else "")
        raise DataSourceError(
            f"no column {', '.join(repr(m[:100]) for m in missing[:5])} in the table; its columns: {listed}"
        )
    chosen = {a.lower() for a in asked}
    return [c.name for c in columns if c.name.lower() in chosen]


def _pick(names: list[str], wanted: str | None) -> str:
    if wanted is None:
        if len(names) == 1:
            return names[0]
        raise DataSourceError(f"the source holds {len(names)} tables ({', '.join(names[:30])}); name one with `table`")
    for name in names:
        if name.lower() == wanted.lower():
            return name
    raise DataSourceError(f"no table {wanted[:100]!r} in the source; its tables: {', '.join(names[:30])}")


def profile_text(profile: TableProfile) -> str:
    """The profile as compact lines for the model (the figures it may cite)."""
    lines = [
        f"table {profile.table}: {profile.rows} rows, {profile.duplicate_rows} duplicate rows, "
        f"candidate keys: {profile.candidate_keys or 'none'}"
    ]
    for c in profile.columns:
        parts = [f"{c.name} {c.type}", f"null {c.null_pct}%", f"distinct {c.distinct}", f"min {c.min}", f"max {c.max}"]
        if c.mean is not None:
            parts.append(f"mean {c.mean} q25 {c.q25} median {c.median} q75 {c.q75}")
        if c.outliers:
            parts.append(f"IQR outliers {c.outliers}")
        if c.parses_as:
            parts.append(f"text parsing as {c.parses_as}, {c.unparseable} unparseable {c.unparseable_examples[:3]}")
        if c.top_values:
            parts.append("top " + ", ".join(f"{t.value} x{t.count}" for t in c.top_values[:3]))
        lines.append("; ".join(str(p) for p in parts))
    return "\n".join(lines)[:12_000]


def _figures(profile: TableProfile, column: ColumnProfile | None) -> list[float]:
    """Every number the profile shows for ``column`` (or for the table), to check citations against."""
    if column is None:
        return [float(profile.rows), float(profile.duplicate_rows), float(len(profile.columns))]
    numbers: list[Any] = [column.null_pct, column.distinct, column.mean, column.q25, column.median, column.q75]
    numbers += [column.outliers, column.unparseable, column.min, column.max, *(column.outlier_bounds or [])]
    numbers += [t.count for t in column.top_values] + [t.value for t in column.top_values]
    numbers += [profile.rows, 100.0 - column.null_pct]
    found = []
    for value in numbers:
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float) and math.isfinite(value):
            found.append(float(value))
    return found


def _matches(value: float, figures: list[float]) -> bool:
    return any(abs(value - f) <= max(0.01 * abs(f), 0.051) for f in figures)


def check_anomalies(profile: TableProfile, output: Mapping[str, Any]) -> GroundingResult:
    """Each anomaly must cite an existing column (or the table) and figures its profile shows."""
    columns = {c.name.lower(): c for c in profile.columns}

    def one(_: int, item: Mapping[str, Any]) -> str | None:
        cited = str(item.get("column", "")).strip()
        if cited != TABLE and cited.lower() not in columns:
            return f"column {cited[:80]!r} does not exist"
        figures = _figures(profile, None if cited == TABLE else columns[cited.lower()])
        figure = item.get("figure")
        if not isinstance(figure, int | float) or not _matches(float(figure), figures):
            return f"figure {figure!r} is not in the profile of {cited[:80]}"
        for token in _NUMBER.findall(str(item.get("finding", ""))):
            number = float(token.replace(",", ""))
            if abs(number) > 3 and not _matches(number, figures):  # small counts ("two columns") pass
                return f"number {token} in the finding is not in the profile of {cited[:80]}"
        return None

    return check_items(output.get("anomalies") or [], one, label="anomaly")


async def _summarise(out: ProfileDataOutput, ctx: ToolContext, allow_claude: bool) -> None:
    profile = out.profile
    try:
        got = await run_cited_list(
            ctx,
            name="profile_summary",
            kind=TaskKind.SUMMARY,
            system=SYSTEM,
            user=profile_text(profile),
            schema=ANOMALIES,
            key="anomalies",
            check=lambda output: check_anomalies(profile, output),
            allow_claude=allow_claude,
            max_output_tokens=output_cap(MAX_ANOMALIES, 60),
        )
    except CaelumError as exc:  # the profile stands without its summary
        out.llm = LLMStep(status="failed", note=str(exc)[:300])
        return
    out.anomalies = [
        Anomaly(column=str(i["column"]), finding=str(i.get("finding", ""))[:300], figure=float(i["figure"]))
        for i in got.items
    ]
    out.summary = summary_of(got.output, got.step.kept)
    out.llm = got.step
