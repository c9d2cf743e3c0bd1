"""One health check's verdict, the thresholds verdicts are judged against, and helpers to judge.

A :class:`Check` is what the user reads: a name (``disk /``, ``gpu 0``, ``host gpu-1``,
``probe api``), a verdict, the reasons for it (empty when OK), a few figures, and a trend against
earlier runs when one moved. ``n/a`` means the check does not apply here (no GPU, no sensors),
never that it failed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Verdict = Literal["OK", "WARN", "CRIT", "n/a"]
Kind = Literal["host", "gpu", "pool", "probe"]
SEVERITY: dict[str, int] = {"n/a": 0, "OK": 1, "WARN": 2, "CRIT": 3}
Figure = float | int | str | None


class Check(BaseModel):
    name: str
    kind: Kind
    verdict: Verdict
    reasons: list[str] = Field(default_factory=list, description="why it is not OK (or why n/a)")
    figures: dict[str, Figure] = Field(default_factory=dict)
    trend: str | None = Field(default=None, description="how a figure moved since an earlier run")


def worst(verdicts: list[Verdict]) -> Verdict:
    """The most severe verdict (n/a only when every check is n/a)."""
    return max(verdicts, key=lambda v: SEVERITY[v], default="n/a")


Pair = tuple[float, float]


def _ordered(value: Pair) -> Pair:
    warn, crit = value
    if warn > crit:
        raise ValueError(f"the warning level {warn:g} is above the critical level {crit:g}; write [warn, crit]")
    return value


class Thresholds(BaseModel):
    """``[warn, crit]`` pairs; a reading at or above ``warn`` is WARN, at or above ``crit`` CRIT."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu_pct: Pair = (90.0, 98.0)
    load_per_cpu: Pair = Field(default=(1.5, 3.0), description="1-minute load average divided by the CPU count")
    memory_pct: Pair = (85.0, 95.0)
    swap_pct: Pair = (50.0, 80.0)
    disk_pct: Pair = (85.0, 95.0)
    inodes_pct: Pair = (85.0, 95.0)
    temperature_c: Pair = Field(default=(85.0, 95.0), description="CPU and board sensors (a sensor's own limits win)")
    gpu_memory_pct: Pair = (90.0, 98.0)
    gpu_temperature_c: Pair = (83.0, 92.0)
    probe_latency_ms: Pair = Field(default=(500.0, 900.0), description="default for probes without their own")
    pool_latency_ms: Pair = Field(default=(30_000.0, 90_000.0), description="a pool host's mean answer time")
    claude_budget_pct: Pair = Field(default=(80.0, 100.0), description="share of the daily Claude budget spent")

    @field_validator("*")
    @classmethod
    def _pair(cls, value: Pair) -> Pair:
        return _ordered(value)


def judge(value: float | None, limits: Pair) -> Verdict:
    """OK, WARN or CRIT for ``value`` against ``[warn, crit]``; n/a when there is no value."""
    if value is None:
        return "n/a"
    warn, crit = limits
    return "CRIT" if value >= crit else "WARN" if value >= warn else "OK"


def reason(label: str, value: float, limits: Pair, unit: str) -> str:
    """``"disk / 91 % used (WARN at 85 %, CRIT at 95 %)"`` style text for a reading over a limit."""
    warn, crit = limits
    sep = "" if unit in ("%", "°C") else " "
    return f"{label} {value:.4g}{sep}{unit} (WARN at {warn:g}{sep}{unit}, CRIT at {crit:g}{sep}{unit})"
