"""``diagnose_logs``: error signatures ranked, a timeline, bursts that happen together, and
root-cause hypotheses that cite ``file:line`` evidence that exists.

The steps (:mod:`caelum_mcp.tools.logs.diagnosis`): the files are read and mined in a worker
thread; the clusters a local model should look at are split or merged (:mod:`.clusters`, cached
per template, skipped when no capable model is up); the signatures are ranked and analysed; then
a model proposes hypotheses (:mod:`.hypotheses`), of which only grounded ones are kept.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta
from pathlib import Path

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator

from caelum_mcp.core.errors import PathNotAllowedError, ToolInputError
from caelum_mcp.supervisors.base import ToolContext, ToolOutput
from caelum_mcp.supervisors.llm_steps import LLMStep, summary_of
from caelum_mcp.tools.logs import diagnosis
from caelum_mcp.tools.logs.diagnosis import LogDiagnosis
from caelum_mcp.tools.logs.reading import log_files
from caelum_mcp.tools.logs.refine import apply_decisions, candidates
from caelum_mcp.tools.logs.timestamps import parse_any
from caelum_mcp.tools.paths import NO_ROOTS, OUTSIDE_ROOTS, resolve_within, shown
from caelum_mcp.tools.safe_read import is_regular_file, off_loop

from .clusters import cluster_pass
from .hypotheses import Hypothesis, hypotheses
from .settings import InfrastructureSettings

LISTING_TIMEOUT_S = 60.0
READ_GRACE_S = 30.0
_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr|d|day|w|week)s?\s*(?:ago)?\s*$", re.IGNORECASE)
_UNIT_S = {
    "s": 1,
    "sec": 1,
    "m": 60,
    "min": 60,
    "h": 3600,
    "hr": 3600,
    "d": 86400,
    "day": 86400,
    "w": 604800,
    "week": 604800,
}


class DiagnoseInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(
        min_length=1, max_length=50, description="log files, folders or globs; rotated .1/.gz siblings are read too"
    )
    since: str | None = Field(default=None, max_length=64, description="ISO time, or back from now: '2h', '30m', '1d'")
    until: str | None = Field(default=None, max_length=64, description="same forms as since")
    focus: str | None = Field(default=None, max_length=300, description="what to look into, e.g. 'db timeouts'")
    max_signatures: int = Field(default=12, ge=1, le=100)
    hypotheses: bool = Field(default=True, description="ask a model for root-cause hypotheses")
    allow_claude: bool = True

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        if any(len(p) > 4096 or not p.strip() for p in value):
            raise ValueError("each path must be 1 to 4096 characters")
        return value


class DiagnoseOutput(LogDiagnosis, ToolOutput):
    summary: str | None = None
    hypotheses: list[Hypothesis] = Field(default_factory=list, description="each cites lines that exist")
    seconds: float
    cluster_pass: LLMStep | None = Field(default=None, description="the model pass over mined clusters")
    llm: LLMStep | None = Field(default=None, description="the hypotheses step")


def parse_when(value: str | None, name: str, now: datetime) -> datetime | None:
    """``since``/``until``: an ISO (or any log-style) time, or a duration back from ``now``."""
    if value is None or not value.strip():
        return None
    ago = _AGO.match(value)
    if ago:
        return now - timedelta(seconds=float(ago.group(1)) * _UNIT_S[ago.group(2).lower()])
    parsed = parse_any(value, now)
    if parsed is None:
        raise ToolInputError(
            f"{name}: {shown(value)} is not a time; give an ISO time (2024-05-01T10:00) or 90m, 2h, 1d"
        )
    return parsed


def resolve_logs(
    paths: list[str], roots: tuple[Path, ...], max_files: int, not_regular: list[str] | None = None
) -> tuple[list[tuple[Path, str]], int]:
    """The files ``paths`` name (with rotated siblings), each inside an allowed root, and the name
    each is shown by (relative to its root); and how many files a folder or glob matched that are
    links leading out of the roots (left out). FIFOs, sockets and devices (or links to them) are
    left out too, never opened; their names go to ``not_regular``."""
    if not roots:
        raise PathNotAllowedError(NO_ROOTS)
    found: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    skipped = 0
    for name in paths:
        root = _root_of(name, roots)
        target = Path(name).expanduser()
        target = target if target.is_absolute() else root / target
        if not set(name) & set("*?[") and not target.exists():
            resolve_within(root, target, must_exist=False)  # outside the roots: say that, not "missing"
            raise PathNotAllowedError(f"{shown(name)} does not exist; give a log file, a folder or a glob")
        for path in log_files(root, [name], max_files=max_files):
            if path != target and not path.exists():
                continue  # a dangling link in a folder: nothing to read, nothing to hide
            try:
                resolved = resolve_within(root, path)
            except PathNotAllowedError:
                if path == target:
                    raise
                skipped += 1  # a link in a folder that leads out of the roots: never read
                continue
            if resolved in seen:
                continue
            seen.add(resolved)
            if not is_regular_file(resolved):
                if not_regular is not None and not resolved.is_dir():
                    not_regular.append(_shown_name(path, root))
                continue
            found.append((resolved, _shown_name(path, root)))
    if not found:
        why = f" ({len(not_regular)} left out: not regular files, such as FIFOs)" if not_regular else ""
        raise PathNotAllowedError(f"no log files found for {', '.join(shown(p) for p in paths[:3])}{why}")
    return found[:max_files], skipped


def _root_of(name: str, roots: tuple[Path, ...]) -> Path:
    candidate = Path(name).expanduser()
    if not candidate.is_absolute():
        return roots[0]
    # the folder part before any glob character decides the root
    parts = candidate.parts
    first_glob = next((i for i, part in enumerate(parts) if set(part) & set("*?[")), len(parts))
    fixed = Path(*parts[:first_glob])
    for root in roots:
        if fixed == root or fixed.is_relative_to(root):
            resolve_within(root, fixed, must_exist=False)
            return root
    raise PathNotAllowedError(f"path {shown(name)} {OUTSIDE_ROOTS}")


def _shown_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


async def diagnose_logs(args: DiagnoseInput, ctx: ToolContext) -> DiagnoseOutput:
    settings = ctx.settings_as(InfrastructureSettings).logs
    started = time.perf_counter()
    now = datetime.now()
    since = parse_when(args.since, "since", now)
    until = parse_when(args.until, "until", now)
    if since and until and since > until:
        raise ToolInputError("since is after until; swap them")
    not_regular: list[str] = []
    files, skipped = await off_loop(
        lambda stop: resolve_logs(args.paths, ctx.roots, settings.max_files, not_regular),
        timeout_s=LISTING_TIMEOUT_S,
        what="finding the log files",
    )
    await ctx.report(0, 4, f"reading {len(files)} file(s)")
    deadline = time.monotonic() + settings.time_budget_s
    # A cancelled call sets ``stop``, which ends the reading within a line; the time limit on
    # top of the deadline is a backstop for a read that never returns (a hung network mount).
    collected = await off_loop(
        lambda stop: diagnosis.collect_logs(
            files, since=since, until=until, max_entries=settings.max_entries, deadline=deadline, stop=stop
        ),
        timeout_s=settings.time_budget_s + READ_GRACE_S,
        what="reading the logs",
    )
    message_templates, templates = await anyio.to_thread.run_sync(diagnosis.mine, collected)
    await ctx.report(1, 4, f"{collected.entries} entries, {len(templates)} templates")
    cluster_step = None
    if settings.model_pass and templates:
        found = candidates(collected.masked, message_templates, templates, collected.weights)
        if found:
            decisions, cluster_step = await cluster_pass(
                ctx, found, limit=settings.model_pass_clusters, allow_claude=args.allow_claude
            )
            if decisions:
                message_templates, templates, _, _ = apply_decisions(
                    decisions, collected.masked, message_templates, templates
                )
    await ctx.report(2, 4, "ranking signatures")
    report, names = await anyio.to_thread.run_sync(
        lambda: diagnosis.analyse(
            collected, message_templates, templates, focus=args.focus, max_signatures=args.max_signatures
        )
    )
    if skipped:
        report.notes.append(f"{skipped} file(s) left out: links that lead outside the allowed roots")
    if not_regular:
        listed = ", ".join(not_regular[:10]) + (f" and {len(not_regular) - 10} more" if len(not_regular) > 10 else "")
        kinds = "not regular files (a FIFO, socket or device) are never read"
        report.notes.append(f"{len(not_regular)} file(s) left out, {kinds}: {listed}")
    if since or until:
        undated = sum(1 for f in collected.files if f.entries and f.first is None)
        if undated:
            report.notes.append(f"{undated} file(s) have no timestamps: since/until could not filter them")
    found_hypotheses: list[Hypothesis] = []
    summary = None
    step = None
    if args.hypotheses and report.signatures:
        await ctx.report(3, 4, "asking for root-cause hypotheses")
        found_hypotheses, got = await hypotheses(
            ctx,
            report,
            args.focus,
            lambda file, line: diagnosis.signature_at(collected, message_templates, names, file, line),
            allow_claude=args.allow_claude,
        )
        step = got.step
        summary = summary_of(got.output, len(found_hypotheses))
    await ctx.report(4, 4, "done")
    return DiagnoseOutput(
        **report.model_dump(),
        summary=summary,
        hypotheses=found_hypotheses,
        seconds=round(time.perf_counter() - started, 3),
        cluster_pass=cluster_step,
        llm=step,
    )
