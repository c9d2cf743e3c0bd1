"""The data supervisor's own config section, ``[data]`` in ``caelum.toml``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from caelum_mcp.tools.data.session import SessionLimits


class DataSettings(BaseModel):
    """``[data]``: the guards' limits and the question → SQL step's budget."""

    model_config = ConfigDict(extra="forbid")

    query_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="a query_data call's DuckDB work (its sources opened, every query tried) is stopped after this",
    )
    profile_timeout_s: float = Field(
        default=120.0, gt=0, le=3600, description="a profile_data call's DuckDB work (every scan) is stopped after this"
    )
    memory_limit: str = Field(
        default="2GB", pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$", description="DuckDB's memory limit"
    )
    max_temp_size: str = Field(
        default="4GB",
        pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        description="what DuckDB may spill to the session's private folder",
    )
    threads: int = Field(default=0, ge=0, le=256, description="DuckDB threads (0: every core)")
    max_copied_rows: int = Field(
        default=1_000_000, ge=1, le=100_000_000, description="rows of one SQLite table or Excel sheet copied in"
    )
    max_copied_mb: int = Field(
        default=1024, ge=1, le=1_048_576, description="MiB of data one SQLite table or Excel sheet may copy in"
    )
    max_line_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=256,
        le=256 * 1024 * 1024,
        description="a CSV line longer than this is refused before DuckDB reads it (DuckDB's own default)",
    )
    schema_chars: int = Field(default=6_000, ge=500, le=60_000, description="the tables' description for the model")
    repair_rounds: int = Field(default=2, ge=0, le=2, description="rounds that feed DuckDB's error back")


def session_limits(
    settings: DataSettings, *, timeout_s: float, max_rows: int = 50, rows_tokens: int = 2_500
) -> SessionLimits:
    return SessionLimits(
        timeout_s=timeout_s,
        max_rows=max_rows,
        rows_tokens=rows_tokens,
        memory_limit=settings.memory_limit,
        max_temp_size=settings.max_temp_size,
        threads=settings.threads,
        max_copied_rows=settings.max_copied_rows,
        max_copied_bytes=settings.max_copied_mb * 1024 * 1024,
        max_line_bytes=settings.max_line_bytes,
    )
