"""``check_system_health``: this machine, its GPUs, the pool's hosts and the configured probes.

Everything is read at once (psutil in a worker thread, NVML or ``nvidia-smi``, ``pool_status``
through ``call_tool``, every probe in parallel with its own timeout), judged against the
``[infrastructure.thresholds]``, and compared with an earlier snapshot for trends. Only when a
check is WARN or CRIT is a model asked for a summary (task kind ``summary``), whose actions must
name checks that are not OK; when all is well no model is called.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field

from caelum_mcp.core.llm import TaskKind
from caelum_mcp.engine.grounding import check_items, cited_list_schema, output_cap
from caelum_mcp.supervisors.base import ToolContext, ToolOutput
from caelum_mcp.supervisors.llm_steps import LLMStep, run_cited_list, summary_of
from caelum_mcp.tools.system.checks import SEVERITY, Check, Thresholds, Verdict, judge, reason, worst
from caelum_mcp.tools.system.gpu import gpu_checks, read_gpus
from caelum_mcp.tools.system.host import host_checks, read_host
from caelum_mcp.tools.system.probes import probe_checks, run_probes
from caelum_mcp.tools.system.snapshots import SnapshotStore, describe_trend

from .settings import InfrastructureSettings

ACTIONS = cited_list_schema(
    "actions",
    {
        "check": {"type": "string", "description": "the name of a check that is not OK, as listed"},
        "action": {"type": "string", "description": "what to do about it, one sentence"},
    },
    ("check", "action"),
    max_items=5,
    summary="two sentences: what is wrong and how urgent",
)
SYSTEM = (
    "You are an SRE reading a health report of a developer's machine and its local LLM servers. "
    "Say what is wrong and how urgent, then give at most five concrete actions, each naming one of "
    "the checks listed as WARN or CRIT exactly as written."
)


class HealthInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    summarize: bool = Field(default=True, description="ask a model to summarise when something is not OK")
    allow_claude: bool = True


class HealthOutput(ToolOutput):
    verdict: Verdict = Field(description="the worst verdict of all checks")
    counts: dict[str, int]
    checks: list[Check] = Field(description="CRIT first, then WARN, OK and n/a")
    summary: str | None = None
    actions: list[dict[str, str]] = Field(default_factory=list, description="what to do, per check")
    seconds: float
    llm: LLMStep | None = None


async def check_system_health(args: HealthInput, ctx: ToolContext) -> HealthOutput:
    settings = ctx.settings_as(InfrastructureSettings)
    limits = settings.thresholds
    started = time.perf_counter()
    await ctx.report(0, 3, "reading host, GPUs, pool and probes")
    parts: dict[str, list[Check]] = {}

    async def host() -> None:
        reading = await anyio.to_thread.run_sync(read_host, settings.host_sample_s)
        parts["host"] = host_checks(reading, limits)

    async def gpus() -> None:
        parts["gpu"] = gpu_checks(await read_gpus(timeout_s=settings.gpu_timeout_s), limits)

    async def pool() -> None:
        parts["pool"] = await pool_checks(ctx, limits)

    async def probes() -> None:
        results = await run_probes(settings.probes, workdir=ctx.state_dir)
        parts["probe"] = probe_checks(settings.probes, results, limits)

    async with anyio.create_task_group() as tg:
        for part in (host, gpus, pool, probes):
            tg.start_soon(part)
    checks = [c for kind in ("host", "gpu", "pool", "probe") for c in parts.get(kind, [])]
    await ctx.report(1, 3, "comparing with earlier runs")
    checks = await anyio.to_thread.run_sync(add_trends, ctx.state_dir / "health.sqlite3", checks)
    checks.sort(key=lambda c: -SEVERITY[c.verdict] if c.verdict != "n/a" else 0)
    verdict = worst([c.verdict for c in checks])
    counts = {v: sum(c.verdict == v for c in checks) for v in ("CRIT", "WARN", "OK", "n/a")}
    summary: str | None = None
    actions: list[dict[str, str]] = []
    step: LLMStep | None = None
    troubled = [c for c in checks if c.verdict in ("WARN", "CRIT")]
    if troubled and args.summarize:
        await ctx.report(2, 3, f"{len(troubled)} check(s) not OK: summarising")
        summary, actions, step = await summarise(ctx, checks, troubled, args.allow_claude)
    await ctx.report(3, 3, f"health: {verdict}")
    return HealthOutput(
        verdict=verdict,
        counts={k: v for k, v in counts.items() if v},
        checks=checks,
        summary=summary,
        actions=actions,
        seconds=round(time.perf_counter() - started, 3),
        llm=step,
    )


async def pool_checks(ctx: ToolContext, limits: Thresholds) -> list[Check]:
    """One check per pool host and one for Claude, from the ai supervisor's ``pool_status``."""
    try:
        status = (await ctx.call_tool("pool_status", {})).model_dump()
    except Exception as exc:  # the pool is one part of the report: its failure is a finding
        return [Check(name="pool", kind="pool", verdict="n/a", reasons=[f"pool_status failed: {exc}"[:200]])]
    checks = [_host_check(host, limits) for host in status.get("hosts", [])]
    if not checks:
        checks.append(Check(name="pool", kind="pool", verdict="n/a", reasons=["no model hosts configured"]))
    checks.append(_claude_check(status.get("claude") or {}, limits))
    return checks


def _host_check(host: dict[str, Any], limits: Thresholds) -> Check:
    name = f"pool {host.get('name')}"
    loaded = [m for m in host.get("models", []) if m.get("loaded")]
    figures: dict[str, Any] = {
        "breaker": host.get("breaker"),
        "latency_ms": host.get("latency_ewma_ms"),
        "in_flight": host.get("in_flight"),
        "models": len(host.get("models", [])),
        "loaded": ", ".join(_model_label(m) for m in loaded[:4]) or None,
    }
    if not host.get("enabled", True):
        return Check(name=name, kind="pool", verdict="n/a", reasons=["disabled (set_host_enabled)"], figures=figures)
    error = host.get("last_error") or "no answer"
    if host.get("breaker") == "open":
        return Check(name=name, kind="pool", verdict="CRIT", reasons=[f"circuit open: {error}"[:200]], figures=figures)
    if not host.get("healthy"):
        return Check(name=name, kind="pool", verdict="CRIT", reasons=[f"unhealthy: {error}"[:200]], figures=figures)
    reasons = []
    verdicts: list[Verdict] = ["OK"]
    if host.get("breaker") == "half_open":
        verdicts.append("WARN")
        reasons.append("probing after failures (half-open)")
    if host.get("outlier"):
        verdicts.append("WARN")
        reasons.append("far slower than its peers: no new work until it recovers")
    latency = host.get("latency_ewma_ms")
    if latency is not None and judge(latency, limits.pool_latency_ms) != "OK":
        verdicts.append(judge(latency, limits.pool_latency_ms))
        reasons.append(reason("mean answer time", latency, limits.pool_latency_ms, "ms"))
    return Check(name=name, kind="pool", verdict=worst(verdicts), reasons=reasons, figures=figures)


def _model_label(model: dict[str, Any]) -> str:
    size = model.get("size_bytes")
    return f"{model.get('name')} ({size / 1e9:.1f} GB)" if size else str(model.get("name"))


def _claude_check(claude: dict[str, Any], limits: Thresholds) -> Check:
    if not claude.get("configured") or not claude.get("enabled"):
        why = (
            "Claude is switched off ([claude] enabled = false)" if claude.get("configured") else "no ANTHROPIC_API_KEY"
        )
        return Check(name="claude", kind="pool", verdict="n/a", reasons=[why])
    budget = claude.get("daily_budget_usd")
    spent = float(claude.get("spent_today_usd") or 0.0)
    figures: dict[str, Any] = {"spent_today_usd": round(spent, 4), "budget_usd": budget, "model": claude.get("model")}
    if not budget:
        return Check(name="claude", kind="pool", verdict="OK", figures=figures)
    share = round(100 * spent / budget, 1)
    figures["budget_used_pct"] = share
    verdict = judge(share, limits.claude_budget_pct)
    reasons = [reason("daily Claude budget used", share, limits.claude_budget_pct, "%")] if verdict != "OK" else []
    return Check(name="claude", kind="pool", verdict=verdict, reasons=reasons, figures=figures)


def add_trends(path: Any, checks: list[Check]) -> list[Check]:
    """``checks`` with trends against an earlier snapshot; this run is saved as the next one.
    Blocking (SQLite): run it in a worker thread."""
    store = SnapshotStore(path)
    now = time.time()
    baseline = store.baseline(now)
    figures = {
        f"{c.name}.{key}": float(value)
        for c in checks
        for key, value in c.figures.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    store.save(figures, now)
    if baseline is None:
        return checks
    words = baseline.age_words(now)
    out = []
    for check in checks:
        moved = [
            text
            for key, value in check.figures.items()
            if isinstance(value, int | float)
            and (
                text := describe_trend(f"{check.name}.{key}", baseline.figures.get(f"{check.name}.{key}"), value, words)
            )
        ]
        out.append(check.model_copy(update={"trend": "; ".join(moved[:2])}) if moved else check)
    return out


async def summarise(
    ctx: ToolContext, checks: list[Check], troubled: list[Check], allow_claude: bool
) -> tuple[str | None, list[dict[str, str]], LLMStep]:
    names = {c.name for c in troubled}
    lines = []
    for c in checks:
        if c.verdict in ("WARN", "CRIT"):
            detail = "; ".join(c.reasons) + (f"; trend: {c.trend}" if c.trend else "")
            lines.append(f"- {c.name} [{c.verdict}]: {detail}")
    fine = ", ".join(c.name for c in checks if c.verdict == "OK")
    user = "Checks not OK:\n" + "\n".join(lines) + (f"\n\nOK: {fine}" if fine else "")
    got = await run_cited_list(
        ctx,
        name="health_summary",
        kind=TaskKind.SUMMARY,
        system=SYSTEM,
        user=user,
        schema=ACTIONS,
        key="actions",
        check=lambda out: check_items(
            out.get("actions") or [],
            lambda _, item: (
                None
                if item.get("check") in names
                else f"{str(item.get('check'))[:60]!r} is not a check that is WARN or CRIT"
            ),
        ),
        allow_claude=allow_claude,
        max_output_tokens=output_cap(5, 50),
    )
    actions = [{"check": str(a["check"]), "action": str(a.get("action", ""))[:300]} for a in got.items]
    return summary_of(got.output, len(actions)), actions, got.step
