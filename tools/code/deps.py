"""Dependency check: declared dependencies, their problems, and a vulnerability audit with pip-audit.

The audit covers exact versions only: a lock file's packages when there is one, else the
declarations pinned with ``==``. pip-audit runs with ``--no-deps --disable-pip`` on a requirements
file we write (names and versions only, so index URLs and their tokens never reach it). Its
vulnerability service may be unreachable; then ``audit.status`` is ``"unavailable"`` with the
reason, and never an empty "no vulnerabilities" answer. pip-audit itself prints "No known
vulnerabilities found" even when it could not look a single package up, so a run in which every
package was skipped counts as unavailable too.
"""

from __future__ import annotations

import itertools
import json
import tempfile
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Literal

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from pydantic import Field

from caelum_mcp.core.types import Frozen

from ..paths import relative_posix, resolve_root
from ..process import CommandResult
from ..safe_read import ReadTimeoutError, is_regular_file, off_loop, read_text
from .analysers import last_line, run_python_analyser
from .manifests import (
    LOCK_FILES,
    MAX_MANIFEST_BYTES,
    DeclaredDependency,
    LockedPackage,
    LockFile,
    ManifestProblem,
    parse_lock,
    parse_pipfile,
    parse_pyproject,
    parse_requirements_file,
    redact_url_credentials,
    requirement_files,
)
from .models import AnalyzerError, Severity

IssueKind = Literal["unpinned", "duplicate", "conflict", "lock_mismatch", "unparseable"]
AuditStatus = Literal["ok", "partial", "unavailable", "skipped"]


class DependencyIssue(Frozen):
    kind: IssueKind
    package: str
    severity: Severity
    message: str
    sources: tuple[str, ...]


class Vulnerability(Frozen):
    package: str
    version: str
    id: str
    aliases: tuple[str, ...] = ()
    fix_versions: tuple[str, ...] = ()
    description: str = ""


class SkippedPackage(Frozen):
    name: str
    version: str | None
    reason: str


class AuditReport(Frozen):
    """The vulnerability audit. Only ``ok`` and ``partial`` carry an answer; read ``reason`` otherwise.

    ``partial``: some packages could not be looked up (see ``skipped``). ``not_audited`` names the
    declared packages without an exact version, which no audit can cover.
    """

    status: AuditStatus
    reason: str | None = None
    source: str | None = None
    audited: int = 0
    vulnerabilities: tuple[Vulnerability, ...] = ()
    skipped: tuple[SkippedPackage, ...] = ()
    not_audited: tuple[str, ...] = ()


class DependencyResult(Frozen):
    root: str
    manifests: tuple[str, ...]
    lock_files: tuple[LockFile, ...]
    dependencies: tuple[DeclaredDependency, ...]
    issues: tuple[DependencyIssue, ...]
    audit: AuditReport
    errors: tuple[AnalyzerError, ...] = Field(default=())


def _where(dep: DeclaredDependency) -> str:
    return f"{dep.source}:{dep.line}" if dep.line else dep.source


def _candidates(specifiers: SpecifierSet) -> set[Version]:
    """Versions at and just around every bound: enough to find a witness for any pair of ranges."""
    found = {Version("0"), Version("999999")}
    for spec in specifiers:
        try:
            base = Version(spec.version.removesuffix(".*"))
        except InvalidVersion:
            continue
        release = list(base.release)
        found |= {base, Version(".".join(map(str, [*release, 0, 1])))}
        for i in range(len(release)):
            found.add(Version(".".join(map(str, [*release[:i], release[i] + 1]))))
            if release[i] > 0:
                found.add(Version(".".join(map(str, [*release[:i], release[i] - 1, 999]))))
    return found


def specifiers_compatible(first: str, second: str) -> bool:
    """Whether some version satisfies both specifiers (checked on candidate versions; unknown -> True)."""
    try:
        a, b = SpecifierSet(first), SpecifierSet(second)
    except InvalidSpecifier:
        return True
    both = a & b
    return any(both.contains(v, prereleases=True) for v in _candidates(a) | _candidates(b))


def _satisfies(specifier: str, version: str) -> bool:
    try:
        return SpecifierSet(specifier).contains(Version(version), prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return True  # not comparable: do not claim a mismatch


def find_issues(deps: list[DeclaredDependency], locked: list[LockedPackage]) -> list[DependencyIssue]:
    issues: list[DependencyIssue] = []
    by_name: dict[str, list[DeclaredDependency]] = defaultdict(list)
    for dep in deps:
        by_name[dep.name].append(dep)
    for name, decls in sorted(by_name.items()):
        registry = [d for d in decls if d.kind == "registry"]
        for dep in registry:
            if not dep.specifier:
                app_file = dep.group in ("requirements", "pipfile:default", "pipfile:develop")
                issues.append(
                    DependencyIssue(
                        kind="unpinned",
                        package=name,
                        severity="medium" if app_file else "low",
                        message=f"{name} has no version constraint in {_where(dep)}; any release, "
                        "including a breaking or compromised one, will be installed",
                        sources=(_where(dep),),
                    )
                )
        for (source, group), same in itertools.groupby(
            sorted(decls, key=lambda d: (d.source, d.group)), key=lambda d: (d.source, d.group)
        ):
            repeated = list(same)
            if len(repeated) > 1 and len({d.marker for d in repeated}) == 1:
                issues.append(
                    DependencyIssue(
                        kind="duplicate",
                        package=name,
                        severity="low",
                        message=f"{name} is declared {len(repeated)} times in {source} ({group}): "
                        + ", ".join(d.requirement for d in repeated),
                        sources=tuple(_where(d) for d in repeated),
                    )
                )
        for a, b in itertools.combinations([d for d in registry if d.specifier], 2):
            if a.marker == b.marker and not specifiers_compatible(a.specifier, b.specifier):
                issues.append(
                    DependencyIssue(
                        kind="conflict",
                        package=name,
                        severity="high",
                        message=f"{name}{a.specifier} ({_where(a)}) and {name}{b.specifier} ({_where(b)}) "
                        "cannot both be satisfied",
                        sources=(_where(a), _where(b)),
                    )
                )
    issues.extend(_lock_mismatches(by_name, locked))
    unique = {(i.kind, i.package, i.message): i for i in issues}
    return list(unique.values())


def _lock_mismatches(
    by_name: dict[str, list[DeclaredDependency]], locked: list[LockedPackage]
) -> list[DependencyIssue]:
    issues: list[DependencyIssue] = []
    versions: dict[str, list[LockedPackage]] = defaultdict(list)
    for package in locked:
        versions[package.name].append(package)
    for name, packages in sorted(versions.items()):
        for dep in by_name.get(name, []):
            if dep.kind != "registry" or not dep.specifier or dep.marker:
                continue
            if not any(_satisfies(dep.specifier, p.version) for p in packages):
                issues.append(
                    DependencyIssue(
                        kind="lock_mismatch",
                        package=name,
                        severity="medium",
                        message=f"{packages[0].source} locks {name} "
                        f"{', '.join(p.version for p in packages)}, outside {dep.specifier} declared in {_where(dep)}; "
                        "re-lock",
                        sources=(packages[0].source, _where(dep)),
                    )
                )
    return issues


def interpret_pip_audit(
    run: CommandResult | AnalyzerError,
    *,
    source: str,
    not_audited: tuple[str, ...] = (),
    versions: dict[str, str] | None = None,
) -> AuditReport:
    """pip-audit's JSON report (or failure) as an :class:`AuditReport` that never hides a failed lookup.

    ``versions`` (canonical name -> version) fills in versions that pip-audit leaves out of skips.
    """
    versions = versions or {}
    if isinstance(run, AnalyzerError):
        return AuditReport(status="unavailable", reason=run.message, source=source, not_audited=not_audited)
    try:
        report = json.loads(run.stdout)
        entries = [e for e in report.get("dependencies", []) if isinstance(e, dict)]
    except (json.JSONDecodeError, AttributeError):
        reason = redact_url_credentials(last_line(run.stderr) or f"pip-audit exited {run.returncode} without a report")
        return AuditReport(
            status="unavailable", reason=f"pip-audit failed: {reason}", source=source, not_audited=not_audited
        )
    vulnerabilities: list[Vulnerability] = []
    skipped: list[SkippedPackage] = []
    audited = 0
    for entry in entries:
        name = str(entry.get("name", "?"))
        version = entry.get("version") or versions.get(canonicalize_name(name))
        if "skip_reason" in entry:
            skipped.append(SkippedPackage(name=name, version=version, reason=str(entry["skip_reason"])[:300]))
            continue
        audited += 1
        for vuln in entry.get("vulns", []):
            vulnerabilities.append(
                Vulnerability(
                    package=name,
                    version=str(version),
                    id=str(vuln.get("id", "?")),
                    aliases=tuple(vuln.get("aliases") or ()),
                    fix_versions=tuple(vuln.get("fix_versions") or ()),
                    description=str(vuln.get("description") or "")[:500],
                )
            )
    if audited == 0 and skipped:
        reason = (
            f"pip-audit could not look up any of the {len(skipped)} packages "
            f"(first: {skipped[0].name} {skipped[0].version}: {skipped[0].reason}); "
            "the vulnerability service is probably unreachable from here"
        )
        return AuditReport(
            status="unavailable", reason=reason, source=source, skipped=tuple(skipped), not_audited=not_audited
        )
    return AuditReport(
        status="partial" if skipped else "ok",
        reason=f"{len(skipped)} packages could not be looked up" if skipped else None,
        source=source,
        audited=audited,
        vulnerabilities=tuple(vulnerabilities),
        skipped=tuple(skipped),
        not_audited=not_audited,
    )


async def _audit(
    deps: list[DeclaredDependency], locked: list[LockedPackage], lock_source: str | None, timeout_s: float
) -> AuditReport:
    if locked:
        pins = {(p.name, p.version) for p in locked}
        source = lock_source or "lock file"
        not_audited: tuple[str, ...] = ()
    else:
        pins = {(d.name, d.specifier.removeprefix("===").removeprefix("==")) for d in deps if d.pinned}
        source = "pinned declarations"
        pinned_names = {name for name, _ in pins}
        not_audited = tuple(sorted({d.name for d in deps if d.kind == "registry" and d.name not in pinned_names}))
    if not pins:
        reason = "no lock file and no dependency pinned to an exact version: nothing can be audited"
        return AuditReport(
            status="skipped", reason=reason if deps else "no dependencies declared", not_audited=not_audited
        )
    with tempfile.TemporaryDirectory(prefix="caelum-audit-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text("".join(f"{name}=={version}\n" for name, version in sorted(pins)), "utf-8")
        args = ["-r", str(requirements), "--format", "json", "--progress-spinner", "off", "--no-deps", "--disable-pip"]
        run = await run_python_analyser("pip-audit", "pip_audit", args, cwd=Path(tmp), timeout_s=timeout_s)
    return interpret_pip_audit(run, source=source, not_audited=not_audited, versions=dict(sorted(pins)))


def _read_manifests(base: Path) -> tuple[list[str], list[DeclaredDependency | ManifestProblem], list[AnalyzerError]]:
    manifests: list[str] = []
    items: list[DeclaredDependency | ManifestProblem] = []
    errors: list[AnalyzerError] = []
    readers = [(base / "pyproject.toml", parse_pyproject), (base / "Pipfile", parse_pipfile)]
    for path, reader in readers:
        if is_regular_file(path) and not path.is_symlink() and path.stat().st_size <= MAX_MANIFEST_BYTES:
            manifests.append(path.name)
            try:
                items += reader(read_text(path, MAX_MANIFEST_BYTES), path.name)
            except (tomllib.TOMLDecodeError, OSError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                errors.append(AnalyzerError(tool="deps", message=f"cannot parse: {reason}", file=path.name))
    seen: set[Path] = set()  # shared, so a file that another one includes with -r is read once
    for path in requirement_files(base):
        manifests.append(relative_posix(base, path))
        try:
            items += parse_requirements_file(base, path, seen)
        except OSError as exc:
            errors.append(AnalyzerError(tool="deps", message=f"cannot read: {exc.strerror}", file=manifests[-1]))
    return manifests, items, errors


def _read_project(
    base: Path,
) -> tuple[
    list[str], list[DeclaredDependency | ManifestProblem], list[AnalyzerError], list[LockFile], list[LockedPackage]
]:
    """Every file :func:`dependency_check` reads, read with blocking calls (run it off the loop)."""
    manifests, items, errors = _read_manifests(base)
    lock_files: list[LockFile] = []
    locked: list[LockedPackage] = []
    for name, kind in LOCK_FILES.items():
        path = base / name
        if not is_regular_file(path) or path.is_symlink():
            continue
        try:
            packages = parse_lock(kind, read_text(path, MAX_MANIFEST_BYTES * 4), name)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, ValueError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            errors.append(AnalyzerError(tool="deps", message=f"cannot parse lock file: {reason}", file=name))
            lock_files.append(LockFile(file=name, kind=kind, packages=0, parsed=False))
            continue
        lock_files.append(LockFile(file=name, kind=kind, packages=len(packages), parsed=True))
        locked += packages
    return manifests, items, errors, lock_files, locked


async def dependency_check(root: str | Path, *, audit: bool = True, audit_timeout_s: float = 60) -> DependencyResult:
    """Declared dependencies of the Python project under ``root``, their problems, and an audit.

    ``audit=False`` skips pip-audit (``audit.status == "skipped"``).
    """
    base = resolve_root(root)
    try:
        manifests, items, errors, lock_files, locked = await off_loop(
            lambda stop: _read_project(base), what="reading the dependency manifests"
        )
    except ReadTimeoutError as exc:
        manifests, items, lock_files, locked = [], [], [], []
        errors = [AnalyzerError(tool="deps", message=str(exc))]
    deps = [i for i in items if isinstance(i, DeclaredDependency)]
    issues = [
        DependencyIssue(
            kind="unparseable",
            package=p.text[:100],
            severity="low",
            message=f"{p.source}:{p.line or '?'}: {p.reason}",
            sources=(p.source,),
        )
        for p in items
        if isinstance(p, ManifestProblem)
    ]
    issues += find_issues(deps, locked)
    if audit:
        lock_source = ", ".join(lock.file for lock in lock_files if lock.parsed and lock.packages) or None
        report = await _audit(deps, locked, lock_source, audit_timeout_s)
    else:
        report = AuditReport(status="skipped", reason="audit disabled by the caller")
    return DependencyResult(
        root=str(base),
        manifests=tuple(manifests),
        lock_files=tuple(lock_files),
        dependencies=tuple(deps),
        issues=tuple(issues),
        audit=report,
        errors=tuple(errors),
    )
