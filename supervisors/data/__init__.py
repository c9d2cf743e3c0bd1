"""The data supervisor: questions about a user's data files answered with SQL that DuckDB runs
read-only, and data sets profiled.

One module per external tool (:mod:`.query`, with the question → SQL step in :mod:`.sql_step`;
:mod:`.profile`), its config section in :mod:`.settings` (``[data]``). The internal tools are in
``caelum_mcp.tools.data``: sources, the guarded DuckDB session, the SQL guard, schema linking,
result checks, profiling and charts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from caelum_mcp.supervisors.base import ExternalTool, InternalTool, Supervisor
from caelum_mcp.tools.data.charts import chart_spec, render_png
from caelum_mcp.tools.data.profile import profile_table
from caelum_mcp.tools.data.schema_text import gather_facts
from caelum_mcp.tools.data.session import DataSession
from caelum_mcp.tools.data.sources import resolve_sources
from caelum_mcp.tools.data.sql_checks import judge
from caelum_mcp.tools.data.sql_guard import check_select

from .profile import ProfileDataInput, ProfileDataOutput, profile_data
from .query import QueryDataInput, QueryDataOutput, query_data, result_tokens
from .settings import DataSettings

__all__ = ["DataSettings", "DataSupervisor"]


class DataSupervisor(Supervisor):
    name = "data"
    description = "Answer questions about data files with SQL run read-only by DuckDB; profile data sets."
    settings_model = DataSettings

    def external_tools(self) -> Sequence[ExternalTool[Any, Any]]:
        return (
            ExternalTool(
                name="query_data",
                title="Query data files with SQL",
                description=(
                    "Answer a question about CSV/Parquet/JSON/Excel/SQLite/DuckDB files: a local LLM writes one "
                    "SELECT, DuckDB runs it read-only (no writes, no other files). Or pass your own `sql`. "
                    "Returns the SQL, columns, first rows and, with chart=true, a PNG chart."
                ),
                input_model=QueryDataInput,
                output_model=QueryDataOutput,
                handler=query_data,
                uses_roots=True,
                more_hint="raise `max_rows`, page with LIMIT … OFFSET in `sql`, or select fewer columns or aggregate",
                result_tokens=result_tokens,
            ),
            ExternalTool(
                name="profile_data",
                title="Profile a data set",
                description=(
                    "Per column: type, nulls, distinct, range, mean, quartiles, top values, mixed types, IQR "
                    "outliers; duplicate rows and candidate keys (computed by DuckDB), plus a grounded LLM "
                    "summary of anomalies."
                ),
                input_model=ProfileDataInput,
                output_model=ProfileDataOutput,
                handler=profile_data,
                uses_roots=True,
                more_hint="name the columns left out in `columns` (every name is in `column_names`), or one table",
            ),
        )

    def internal_tools(self) -> Sequence[InternalTool]:
        return (
            InternalTool("resolve_sources", resolve_sources),
            InternalTool("data_session", DataSession, "the read-only DuckDB session over the sources"),
            InternalTool("check_select", check_select),
            InternalTool("gather_facts", gather_facts),
            InternalTool("judge_result", judge),
            InternalTool("profile_table", profile_table),
            InternalTool("chart_spec", chart_spec),
            InternalTool("render_png", render_png),
        )
