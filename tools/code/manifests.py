"""Reading Python dependency declarations and lock files (no resolution, no network).

Declarations: ``pyproject.toml`` ([project] dependencies, optional-dependencies, PEP 735
dependency-groups, Poetry's tables), ``Pipfile``, and ``requirements*.txt`` / ``requirements/*.txt``
(following ``-r`` includes inside the project). Lock files: ``uv.lock``, ``poetry.lock``,
``pdm.lock`` and ``Pipfile.lock`` are read for exact versions.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from caelum_mcp.core.errors import PathNotAllowedError
from caelum_mcp.core.types import Frozen

from ..paths import relative_posix, resolve_within
from ..safe_read import read_text

LockKind = Literal["uv", "poetry", "pdm", "pipfile"]
LOCK_FILES: dict[str, LockKind] = {
    "uv.lock": "uv",
    "poetry.lock": "poetry",
    "pdm.lock": "pdm",
    "Pipfile.lock": "pipfile",
}
MAX_MANIFEST_BYTES = 5_000_000

_COMMENT = re.compile(r"(^|\s)#.*$")
_INCLUDE = re.compile(r"^(?:-r|--requirement)(?:\s*=\s*|\s*)(?P<target>\S+)")
_PATH_OR_URL = re.compile(r"^(?:\.{1,2}/|/|~|[A-Za-z][A-Za-z0-9+.\-]*://|\.$)")
_HASH_OPTION = re.compile(r"\s--hash[=\s]\S+")
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://)[^/@\s]+@", re.IGNORECASE)
_POETRY_VERSION = re.compile(r"^(?P<op>\^|~(?!=))?\s*(?P<version>\d+(?:\.\d+)*)$")


class DeclaredDependency(Frozen):
    """One requirement as written. ``name`` is canonical (PEP 503); ``pinned`` means ``==X`` exactly."""

    name: str
    requirement: str
    specifier: str
    extras: tuple[str, ...] = ()
    marker: str | None = None
    source: str
    line: int | None = None
    group: str
    pinned: bool
    kind: Literal["registry", "url", "path", "vcs", "editable"] = "registry"


class LockedPackage(Frozen):
    name: str
    version: str
    source: str


class LockFile(Frozen):
    """A lock file found in the project root; ``parsed`` is False when it could not be read."""

    file: str
    kind: LockKind
    packages: int
    parsed: bool


class ManifestProblem(Frozen):
    source: str
    line: int | None
    text: str
    reason: str


def redact_url_credentials(text: str) -> str:
    """``https://user:token@host`` -> ``https://***@host``: requirement URLs often carry tokens."""
    return _URL_CREDENTIALS.sub(lambda m: m.group("scheme") + "***@", text)


def _line_of(text: str, needle: str) -> int | None:
    index = text.find(needle)
    return text.count("\n", 0, index) + 1 if index >= 0 else None


def parse_requirement(
    raw: str, *, source: str, group: str, line: int | None, kind_hint: str | None = None
) -> DeclaredDependency:
    """A PEP 508 string as a :class:`DeclaredDependency` (raises ``InvalidRequirement``)."""
    req = Requirement(raw)
    specs = list(req.specifier)
    pinned = len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version
    kind: Literal["registry", "url", "path", "vcs", "editable"] = "registry"
    if kind_hint == "editable":
        kind = "editable"
    elif req.url:
        kind = "vcs" if req.url.split("+", 1)[0] in ("git", "hg", "svn", "bzr") else "url"
        kind = "path" if req.url.startswith("file:") else kind
    return DeclaredDependency(
        name=canonicalize_name(req.name),
        requirement=redact_url_credentials(raw.strip()),
        specifier=str(req.specifier),
        extras=tuple(sorted(req.extras)),
        marker=str(req.marker) if req.marker else None,
        source=source,
        line=line,
        group=group,
        pinned=pinned and kind == "registry",
        kind=kind,
    )


def poetry_constraint(value: str) -> str:
    """Poetry's ``^1.2`` / ``~1.2`` / ``1.2`` / ``*`` as a PEP 440 specifier ("" for any version)."""
    value = value.strip()
    if value in ("", "*"):
        return ""
    match = _POETRY_VERSION.match(value)
    if not match:
        return value  # already PEP 440-like: ">=1,<2", "==1.2.*", "!=1.3"
    version, op = match.group("version"), match.group("op")
    parts = [int(p) for p in version.split(".")]
    if op is None:
        return f"=={version}"
    if op == "~":
        upper = [parts[0], parts[1] + 1] if len(parts) > 1 else [parts[0] + 1]
    else:  # caret: bump the first non-zero component
        index = next((i for i, p in enumerate(parts) if p != 0), len(parts) - 1)
        upper = [*parts[:index], parts[index] + 1]
    return f">={version},<{'.'.join(map(str, upper))}"


def _poetry_table(table: Any, *, source: str, group: str, text: str) -> Iterable[DeclaredDependency | ManifestProblem]:
    if not isinstance(table, dict):
        return
    for name, spec in table.items():
        if str(name).lower() == "python":
            continue
        line = _line_of(text, f"\n{name} =") or _line_of(text, f"{name} =")
        if isinstance(spec, str):
            raw = f"{name}{poetry_constraint(spec)}"
        elif isinstance(spec, dict) and isinstance(spec.get("version"), str):
            raw = f"{name}{poetry_constraint(spec['version'])}"
        elif isinstance(spec, dict) and any(k in spec for k in ("git", "path", "url")):
            yield DeclaredDependency(
                name=canonicalize_name(str(name)),
                requirement=redact_url_credentials(f"{name} {spec}"),
                specifier="",
                source=source,
                line=line,
                group=group,
                pinned=False,
                kind="vcs" if "git" in spec else ("path" if "path" in spec else "url"),
            )
            continue
        else:
            yield ManifestProblem(source=source, line=line, text=str(name), reason="unrecognised Poetry dependency")
            continue
        try:
            yield parse_requirement(raw, source=source, group=group, line=line)
        except InvalidRequirement as exc:
            yield ManifestProblem(source=source, line=line, text=raw, reason=str(exc))


def parse_pyproject(text: str, source: str) -> list[DeclaredDependency | ManifestProblem]:
    data = tomllib.loads(text)
    found: list[DeclaredDependency | ManifestProblem] = []
    project = data.get("project", {})
    groups: list[tuple[str, Any]] = [("main", project.get("dependencies"))]
    groups += [(f"extra:{k}", v) for k, v in (project.get("optional-dependencies") or {}).items()]
    groups += [(f"group:{k}", v) for k, v in (data.get("dependency-groups") or {}).items()]
    for group, entries in groups:
        for raw in entries if isinstance(entries, list) else []:
            if not isinstance(raw, str):
                continue  # {include-group = "..."} entries of PEP 735
            line = _line_of(text, f'"{raw}"') or _line_of(text, f"'{raw}'")
            try:
                found.append(parse_requirement(raw, source=source, group=group, line=line))
            except InvalidRequirement as exc:
                found.append(ManifestProblem(source=source, line=line, text=raw, reason=str(exc)))
    poetry = data.get("tool", {}).get("poetry", {})
    found += _poetry_table(poetry.get("dependencies"), source=source, group="poetry:main", text=text)
    found += _poetry_table(poetry.get("dev-dependencies"), source=source, group="poetry:dev", text=text)
    for name, group_table in (poetry.get("group") or {}).items():
        if isinstance(group_table, dict):
            found += _poetry_table(group_table.get("dependencies"), source=source, group=f"poetry:{name}", text=text)
    return found


def parse_pipfile(text: str, source: str) -> list[DeclaredDependency | ManifestProblem]:
    data = tomllib.loads(text)
    found: list[DeclaredDependency | ManifestProblem] = []
    for table, group in (("packages", "pipfile:default"), ("dev-packages", "pipfile:develop")):
        for name, spec in (data.get(table) or {}).items():
            version = spec if isinstance(spec, str) else (spec.get("version", "*") if isinstance(spec, dict) else "*")
            raw = f"{name}{'' if version == '*' else version}"
            line = _line_of(text, f"{name} =")
            try:
                found.append(parse_requirement(raw, source=source, group=group, line=line))
            except InvalidRequirement as exc:
                found.append(ManifestProblem(source=source, line=line, text=raw, reason=str(exc)))
    return found


def parse_requirements_file(
    root: Path, path: Path, seen: set[Path] | None = None
) -> list[DeclaredDependency | ManifestProblem]:
    """A pip requirements file; ``-r`` includes are followed when they stay inside ``root``."""
    seen = seen if seen is not None else set()
    if path in seen:
        return []
    seen.add(path)
    source = relative_posix(root, path)
    found: list[DeclaredDependency | ManifestProblem] = []
    text = read_text(path, MAX_MANIFEST_BYTES)  # an include may name a FIFO or a huge file
    logical: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        logical.append((start, pending + raw))
        pending = ""
    for number, raw in logical:
        line = _HASH_OPTION.sub("", _COMMENT.sub("", raw)).strip()
        if not line:
            continue
        include_match = _INCLUDE.match(line)
        if include_match:
            target = include_match.group("target")
            try:
                include = resolve_within(root, path.parent / target)
            except PathNotAllowedError as exc:
                found.append(ManifestProblem(source=source, line=number, text=line, reason=str(exc)))
                continue
            try:
                found += parse_requirements_file(root, include, seen)
            except OSError as exc:
                reason = f"{target} not read: {exc.strerror}"
                found.append(ManifestProblem(source=source, line=number, text=line, reason=reason))
            continue
        kind_hint = None
        if line.startswith(("-e ", "--editable")):
            kind_hint = "editable"
            line = line.removeprefix("--editable").removeprefix("-e").strip().lstrip("=").strip()
        elif line.startswith("-"):
            continue  # index, find-links, constraint and other pip options are not dependencies
        try:
            found.append(parse_requirement(line, source=source, group="requirements", line=number, kind_hint=kind_hint))
        except InvalidRequirement as exc:
            local = _local_or_url(line, source=source, line=number, editable=kind_hint == "editable")
            found.append(
                local or ManifestProblem(source=source, line=number, text=redact_url_credentials(line), reason=str(exc))
            )
    return found


def _local_or_url(text: str, *, source: str, line: int, editable: bool) -> DeclaredDependency | None:
    """A bare path or URL line (``./pkg``, ``git+https://...#egg=x``); named from ``#egg=`` or its last segment."""
    if not _PATH_OR_URL.match(text):
        return None
    egg = re.search(r"[#&]egg=([A-Za-z0-9_.\-]+)", text)
    stem = re.split(r"[#?@]", text.rstrip("/").rsplit("/", 1)[-1])[0].removesuffix(".git")
    name = egg.group(1) if egg else stem or "unknown"
    kind: Literal["registry", "url", "path", "vcs", "editable"]
    if editable:
        kind = "editable"
    elif re.match(r"^(git|hg|svn|bzr)\+", text):
        kind = "vcs"
    else:
        kind = "url" if "://" in text else "path"
    return DeclaredDependency(
        name=canonicalize_name(name),
        requirement=redact_url_credentials(text),
        specifier="",
        source=source,
        line=line,
        group="requirements",
        pinned=False,
        kind=kind,
    )


def parse_lock(kind: LockKind, text: str, source: str) -> list[LockedPackage]:
    """Exact versions from a lock file; local, editable and VCS entries (no registry version) are left out."""
    packages: list[LockedPackage] = []
    if kind == "pipfile":
        data = json.loads(text)
        for section in ("default", "develop"):
            for name, entry in (data.get(section) or {}).items():
                version = entry.get("version", "") if isinstance(entry, dict) else ""
                if isinstance(version, str) and version.startswith("=="):
                    packages.append(LockedPackage(name=canonicalize_name(name), version=version[2:], source=source))
        return packages
    data = tomllib.loads(text)
    for entry in data.get("package", []):
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("version"):
            continue
        origin = entry.get("source")
        if isinstance(origin, dict) and (
            any(k in origin for k in ("editable", "virtual", "path", "directory", "git", "url"))
            or origin.get("type") in ("directory", "file", "git", "url")
        ):
            continue
        packages.append(
            LockedPackage(name=canonicalize_name(str(entry["name"])), version=str(entry["version"]), source=source)
        )
    return packages


def requirement_files(root: Path) -> list[Path]:
    """Requirement files by the usual names, in the root and in ``requirements/`` (not deeper)."""
    candidates = [*root.glob("requirements*.txt"), *root.glob("*-requirements.txt"), *root.glob("requirements*.in")]
    folder = root / "requirements"
    if folder.is_dir() and not folder.is_symlink():
        candidates += [*folder.glob("*.txt"), *folder.glob("*.in")]
    chosen: list[Path] = []
    for path in sorted(set(candidates)):
        try:
            resolved = resolve_within(root, path)
        except PathNotAllowedError:
            continue
        if resolved.is_file() and resolved.stat().st_size <= MAX_MANIFEST_BYTES:
            chosen.append(resolved)
    return chosen
