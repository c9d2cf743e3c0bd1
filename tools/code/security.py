"""Security scan: bandit over the Python files plus the secrets check over every text file.

Bandit's own severities are kept except where bandit under-rates a flaw that is exploitable as
soon as the input is attacker-controlled (which bandit cannot see): SQL built from strings (B608),
``yaml.load`` without a safe loader (B506), ``eval`` (B307) and ``exec`` (B102) become ``high``;
hard-coded passwords (B105-B107) become ``medium`` and their values are redacted, since bandit
quotes them verbatim.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio
from pydantic import Field

from caelum_mcp.core.types import Frozen

from ..paths import relative_posix, resolve_root
from ..safe_read import is_regular_file, read_head, read_text
from .analysers import ANALYSER_TIMEOUT_S, first_line, run_python_analyser
from .files import select_files
from .incremental import PartStore, per_file, salt_for
from .models import AnalyzerError, Finding, Severity, severity_counts, sort_findings
from .secrets import MAX_SECRET_SCAN_BYTES, looks_binary, redact, scan_text

_BANDIT_SEVERITY: dict[str, Severity] = {"LOW": "low", "MEDIUM": "medium", "HIGH": "high"}
_SEVERITY_OVERRIDES: dict[str, Severity] = {
    "B608": "high",
    "B506": "high",
    "B307": "high",
    "B102": "high",
    "B105": "medium",
    "B106": "medium",
    "B107": "medium",
}
MAX_CONFIG_BYTES = 1 << 20
_PASSWORD_RULES = frozenset({"B105", "B106", "B107"})
_QUOTED_TAIL = re.compile(r":\s*'(?P<value>.*)'\s*$")
# Lock files are machine-written hashes and versions: slow to scan and never hold a hand-typed secret.
_NOT_SCANNED_FOR_SECRETS = frozenset(
    {
        "uv.lock",
        "poetry.lock",
        "Pipfile.lock",
        "package-lock.json",
        "yarn.lock",
        "pnpm-lock.yaml",
        "Cargo.lock",
        "go.sum",
    }
)


class SecurityResult(Frozen):
    """Security findings (bandit and secrets), most severe first; secrets appear redacted."""

    root: str
    python_files_scanned: int
    text_files_scanned: int
    findings: tuple[Finding, ...]
    counts: dict[str, int]
    errors: tuple[AnalyzerError, ...] = Field(default=())


def _bandit_config_args(root: Path) -> list[str]:
    """``-c <file>`` when the project configures bandit (bandit only reads config it is pointed at)."""
    pyproject = root / "pyproject.toml"
    if is_regular_file(pyproject):
        try:
            if "bandit" in tomllib.loads(read_text(pyproject, MAX_CONFIG_BYTES)).get("tool", {}):
                return ["-c", "pyproject.toml"]
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            pass
    for name in ("bandit.yaml", "bandit.yml", ".bandit.yaml", ".bandit.yml"):
        if is_regular_file(root / name):  # bandit would block reading a FIFO
            return ["-c", name]
    return []


def _bandit_finding(root: Path, item: dict[str, Any]) -> Finding:
    rule = str(item.get("test_id", "B000"))
    severity = _SEVERITY_OVERRIDES.get(rule) or _BANDIT_SEVERITY.get(str(item.get("issue_severity")), "medium")
    message = str(item.get("issue_text", "")).strip()
    if rule in _PASSWORD_RULES:
        message = _QUOTED_TAIL.sub(lambda m: ": " + redact(m.group("value")), message)
    line_range = item.get("line_range") or []
    end_line = max(line_range) if line_range else None
    column = item.get("col_offset")
    return Finding(
        tool="bandit",
        rule=rule,
        severity=severity,
        file=relative_posix(root, str(item.get("filename", ""))),
        line=int(item.get("line_number") or 1),
        end_line=int(end_line) if end_line else None,
        column=int(column) + 1 if isinstance(column, int) else None,
        message=f"{message} ({item.get('test_name', rule)})",
        confidence=str(item.get("issue_confidence", "")).lower() or None,
    )


class _BanditPart(Frozen):
    """Bandit's output for one file."""

    findings: tuple[Finding, ...] = ()
    errors: tuple[AnalyzerError, ...] = ()


async def _bandit_per_file(
    root: Path, targets: list[str], timeout_s: float, store: PartStore | None
) -> tuple[list[Finding], list[AnalyzerError]]:
    """Bandit over ``targets``, reusing each unchanged file's stored output (see ``incremental``)."""

    async def analyse(subset: list[str]) -> tuple[dict[str, _BanditPart], list[AnalyzerError]]:
        found, errs = await _run_bandit(root, subset, timeout_s)
        by_file: dict[str, tuple[list[Finding], list[AnalyzerError]]] = defaultdict(lambda: ([], []))
        for finding in found:
            by_file[finding.file][0].append(finding)
        failures = []
        for error in errs:
            if error.file:
                by_file[error.file][1].append(error)
            else:
                failures.append(error)
        return {rel: _BanditPart(findings=tuple(f), errors=tuple(e)) for rel, (f, e) in by_file.items()}, failures

    salt = salt_for("bandit", root, ["pyproject.toml"])
    parts, failures = await per_file(store, "bandit", salt, root, targets, _BanditPart, analyse)
    findings = [finding for part in parts.values() for finding in part.findings]
    return findings, [*failures, *(error for part in parts.values() for error in part.errors)]


async def _run_bandit(root: Path, targets: list[str], timeout_s: float) -> tuple[list[Finding], list[AnalyzerError]]:
    if not targets:
        return [], []
    config_args = await anyio.to_thread.run_sync(_bandit_config_args, root)
    args = ["-f", "json", "-q", *config_args, "--", *targets]
    run = await run_python_analyser("bandit", "bandit", args, cwd=root, timeout_s=timeout_s)
    if isinstance(run, AnalyzerError):
        return [], [run]
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        # Exit 0/1 mean "clean"/"issues found"; anything else without JSON is bandit failing.
        detail = first_line(run.stderr) or f"bandit exited {run.returncode} without a JSON report"
        return [], [AnalyzerError(tool="bandit", message=detail)]
    findings = [_bandit_finding(root, item) for item in report.get("results", []) if isinstance(item, dict)]
    errors = [
        AnalyzerError(
            tool="bandit",
            message=str(err.get("reason", "could not scan the file")),
            file=relative_posix(root, str(err.get("filename", ""))) or None,
        )
        for err in report.get("errors", [])
        if isinstance(err, dict)
    ]
    return findings, errors


def _scan_secrets(root: Path, targets: list[str]) -> tuple[list[Finding], int, list[AnalyzerError]]:
    findings: list[Finding] = []
    errors: list[AnalyzerError] = []
    scanned = 0
    for rel in targets:
        if rel.rsplit("/", 1)[-1] in _NOT_SCANNED_FOR_SECRETS:
            continue
        try:
            head = read_head(root / rel, MAX_SECRET_SCAN_BYTES)
        except OSError as exc:
            errors.append(AnalyzerError(tool="secrets", message=f"could not read: {exc.strerror}", file=rel))
            continue
        data = head.data
        if head.truncated or looks_binary(data[:8192]):
            continue
        scanned += 1
        findings.extend(scan_text(rel, data.decode("utf-8", errors="replace")))
    return findings, scanned, errors


async def security_scan(
    root: str | Path,
    files: Iterable[str | Path] | None = None,
    *,
    timeout_s: float = ANALYSER_TIMEOUT_S,
    store: PartStore | None = None,
) -> SecurityResult:
    """Scan the project (``files=None``) or the given files/directories for security problems.

    Bandit covers Python code; the secrets check covers every text file up to 1 MB (lock files
    excepted). A bandit failure, or a file bandit cannot parse, is recorded in ``errors`` and the
    secrets findings are still returned. Paths must be inside ``root``. With a ``store``, bandit
    runs only on the files whose content it has not seen.
    """
    base = resolve_root(root)
    chosen = await select_files(base, files, ("",))
    python_files = [f for f in chosen if f.endswith(".py")]
    bandit_findings: list[Finding] = []
    bandit_errors: list[AnalyzerError] = []
    secrets: tuple[list[Finding], int, list[AnalyzerError]] = ([], 0, [])

    async def bandit_task() -> None:
        found, errs = await _bandit_per_file(base, python_files, timeout_s, store)
        bandit_findings.extend(found)
        bandit_errors.extend(errs)

    async def secrets_task() -> None:
        nonlocal secrets
        secrets = await anyio.to_thread.run_sync(_scan_secrets, base, chosen)

    async with anyio.create_task_group() as tg:
        tg.start_soon(bandit_task)
        tg.start_soon(secrets_task)
    findings = [*bandit_findings, *secrets[0]]
    return SecurityResult(
        root=str(base),
        python_files_scanned=len(python_files),
        text_files_scanned=secrets[1],
        findings=sort_findings(findings),
        counts=severity_counts(findings),
        errors=(*bandit_errors, *secrets[2]),
    )
