"""What a project is made of: languages and their size, entry points, and how its tests are laid out.

Files come from :func:`~caelum_mcp.tools.code.files.list_project_files` (git's view, or a walk
honouring .gitignore). ``code_lines`` counts non-blank lines that are not only a line comment
(docstrings and block comments count as code: telling them apart needs a parser per language).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import anyio

from caelum_mcp.core.types import Frozen

from ..paths import resolve_root
from ..safe_read import NotRegularFileError, read_head
from .files import list_project_files
from .languages import LINE_COMMENT, language_for
from .secrets import looks_binary

EntryKind = Literal[
    "python_package_main", "python_main_guard", "console_script", "gui_script", "go_main", "node_main", "node_bin"
]

TEST_DIR_NAMES = frozenset({"tests", "test", "__tests__", "spec", "specs", "testing"})
_PY_MAIN_GUARD = re.compile(r"^if\s+__name__\s*==\s*['\"]__main__['\"]\s*:", re.MULTILINE)
_GO_PACKAGE_MAIN = re.compile(r"^package\s+main\b", re.MULTILINE)
_GO_FUNC_MAIN = re.compile(r"^func\s+main\s*\(\s*\)", re.MULTILINE)
_OTHER_TEST_FILE = re.compile(
    r"(?:\.(?:test|spec)\.(?:[cm]?js|jsx|ts|tsx)$|_test\.go$|Tests?\.(?:java|kt|cs)$|_spec\.rb$)"
)
_EXAMPLES = 5
_MAX_CONFIG_BYTES = 1 << 20


class LanguageStats(Frozen):
    """Files of one language; ``lines``/``code_lines`` cover the files that were read (not skipped)."""

    language: str
    files: int
    lines: int
    code_lines: int


class EntryPoint(Frozen):
    """A way the project is started. ``target`` is e.g. ``pkg.cli:main`` for a console script."""

    kind: EntryKind
    name: str
    file: str
    target: str | None = None


class TestLayout(Frozen):
    test_dirs: tuple[str, ...]
    python_test_files: int
    other_test_files: int
    conftest_files: int
    pytest_configured: bool


class SkippedGroup(Frozen):
    reason: str
    count: int
    examples: tuple[str, ...] = ()


class ProjectStructure(Frozen):
    root: str
    listing_source: Literal["git", "walk"]
    files_total: int
    files_analysed: int
    languages: tuple[LanguageStats, ...]
    other_files: int
    entry_points: tuple[EntryPoint, ...]
    tests: TestLayout
    skipped: tuple[SkippedGroup, ...]
    skipped_count: int
    truncated: bool


@dataclass
class _Tally:
    files: Counter[str] = field(default_factory=Counter)
    lines: Counter[str] = field(default_factory=Counter)
    code: Counter[str] = field(default_factory=Counter)
    skipped: defaultdict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    entries: list[EntryPoint] = field(default_factory=list)
    other: int = 0


def _count_lines(text: str, markers: tuple[str, ...]) -> tuple[int, int]:
    lines = text.splitlines()
    code = 0
    for line in lines:
        stripped = line.strip()
        if stripped and not (markers and stripped.startswith(markers)):
            code += 1
    return len(lines), code


def _pyproject_entries(rel: str, text: str) -> list[EntryPoint]:
    data = tomllib.loads(text)
    project: dict[str, Any] = data.get("project", {})
    poetry: dict[str, Any] = data.get("tool", {}).get("poetry", {})
    found: list[EntryPoint] = []
    tables: tuple[tuple[Any, EntryKind], ...] = (
        (project.get("scripts"), "console_script"),
        (project.get("gui-scripts"), "gui_script"),
        (poetry.get("scripts"), "console_script"),
    )
    for table, kind in tables:
        if isinstance(table, dict):
            for name, target in table.items():
                spec = (
                    target
                    if isinstance(target, str)
                    else (target.get("reference") if isinstance(target, dict) else None)
                )
                found.append(EntryPoint(kind=kind, name=str(name), file=rel, target=str(spec) if spec else None))
    return found


def _package_json_entries(rel: str, text: str) -> list[EntryPoint]:
    data = json.loads(text)
    if not isinstance(data, dict):
        return []
    package = str(data.get("name") or PurePosixPath(rel).parent.name or "package")
    found: list[EntryPoint] = []
    if isinstance(data.get("main"), str):
        found.append(EntryPoint(kind="node_main", name=package, file=rel, target=data["main"]))
    bins = data.get("bin")
    if isinstance(bins, str):
        found.append(EntryPoint(kind="node_bin", name=package.rsplit("/", 1)[-1], file=rel, target=bins))
    elif isinstance(bins, dict):
        found.extend(EntryPoint(kind="node_bin", name=str(k), file=rel, target=str(v)) for k, v in bins.items())
    return found


def _inspect(rel: str, language: str | None, text: str, tally: _Tally) -> None:
    name = PurePosixPath(rel).name
    if language == "Python":
        if name == "__main__.py":
            package = ".".join(PurePosixPath(rel).parent.parts) or "."
            tally.entries.append(EntryPoint(kind="python_package_main", name=package, file=rel))
        elif _PY_MAIN_GUARD.search(text):
            tally.entries.append(EntryPoint(kind="python_main_guard", name=PurePosixPath(rel).stem, file=rel))
    elif language == "Go" and _GO_PACKAGE_MAIN.search(text) and _GO_FUNC_MAIN.search(text):
        tally.entries.append(EntryPoint(kind="go_main", name=str(PurePosixPath(rel).parent), file=rel))
    try:
        if name == "pyproject.toml":
            tally.entries.extend(_pyproject_entries(rel, text))
        elif name == "package.json":
            tally.entries.extend(_package_json_entries(rel, text))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, ValueError):
        tally.skipped[f"unparseable {name}"].append(rel)


def _analyse(root: Path, files: tuple[str, ...], max_files: int, max_file_bytes: int, tally: _Tally) -> None:
    for rel in files[max_files:]:
        tally.skipped["over the max_files limit"].append(rel)
    for rel in files[:max_files]:
        language = language_for(rel)
        name = PurePosixPath(rel).name
        if language is None:
            tally.other += 1
        else:
            tally.files[language] += 1
        if language is None and name not in ("package.json", "pyproject.toml"):
            continue
        try:
            # the size check first, so a big file is not read; the cap on the read holds if it grows
            if os.stat(root / rel).st_size > max_file_bytes:
                tally.skipped["larger than max_file_bytes"].append(rel)
                continue
            head = read_head(root / rel, max_file_bytes)
        except NotRegularFileError:
            tally.skipped["not a regular file (FIFO, socket or device)"].append(rel)
            continue
        except OSError:
            tally.skipped["unreadable"].append(rel)
            continue
        if head.truncated:
            tally.skipped["larger than max_file_bytes"].append(rel)
            continue
        data = head.data
        if looks_binary(data[:8192]):
            tally.skipped["binary content"].append(rel)
            continue
        text = data.decode("utf-8", errors="replace")
        if language is not None:
            total, code = _count_lines(text, LINE_COMMENT.get(language, ()))
            tally.lines[language] += total
            tally.code[language] += code
        _inspect(rel, language, text, tally)


def _pytest_configured(root: Path, files: set[str]) -> bool:
    if "pytest.ini" in files:
        return True
    for name, marker in (
        ("pyproject.toml", "[tool.pytest.ini_options]"),
        ("setup.cfg", "[tool:pytest]"),
        ("tox.ini", "[pytest]"),
    ):
        if name in files:
            try:
                if marker in read_head(root / name, _MAX_CONFIG_BYTES).data.decode("utf-8", errors="replace"):
                    return True
            except OSError:
                continue
    return False


def _test_layout(root: Path, files: tuple[str, ...]) -> TestLayout:
    dirs: set[str] = set()
    python_tests = other_tests = conftests = 0
    for rel in files:
        parts = rel.split("/")
        for i, part in enumerate(parts[:-1]):
            if part in TEST_DIR_NAMES:
                dirs.add("/".join(parts[: i + 1]))
                break
        name = parts[-1]
        if name == "conftest.py":
            conftests += 1
        elif name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py")):
            python_tests += 1
        elif _OTHER_TEST_FILE.search(name):
            other_tests += 1
    return TestLayout(
        test_dirs=tuple(sorted(dirs)),
        python_test_files=python_tests,
        other_test_files=other_tests,
        conftest_files=conftests,
        pytest_configured=_pytest_configured(root, set(files)),
    )


async def project_structure(
    root: str | Path, *, max_files: int = 5000, max_file_bytes: int = 2_000_000
) -> ProjectStructure:
    """Describe the project under ``root``: languages, lines, entry points, tests, and what was skipped.

    At most ``max_files`` files are analysed (in path order) and files over ``max_file_bytes`` are
    not read; both are reported in ``skipped`` with a few examples, never silently dropped.
    """
    if max_files < 0 or max_file_bytes < 0:
        raise ValueError("max_files and max_file_bytes must not be negative")
    base = resolve_root(root)
    listing = await list_project_files(base)
    tally = _Tally()
    await anyio.to_thread.run_sync(_analyse, base, listing.files, max_files, max_file_bytes, tally)
    tests = await anyio.to_thread.run_sync(_test_layout, base, listing.files)
    skipped = [SkippedGroup(reason=reason, count=count) for reason, count in sorted(listing.excluded.items())]
    skipped += [
        SkippedGroup(reason=reason, count=len(paths), examples=tuple(paths[:_EXAMPLES]))
        for reason, paths in sorted(tally.skipped.items())
    ]
    languages = sorted(tally.files, key=lambda lang: (-tally.code[lang], -tally.files[lang], lang))
    return ProjectStructure(
        root=str(base),
        listing_source=listing.source,
        files_total=len(listing.files),
        files_analysed=min(len(listing.files), max_files),
        languages=tuple(
            LanguageStats(language=lang, files=tally.files[lang], lines=tally.lines[lang], code_lines=tally.code[lang])
            for lang in languages
        ),
        other_files=tally.other,
        entry_points=tuple(sorted(tally.entries, key=lambda e: (e.file, e.kind, e.name))),
        tests=tests,
        skipped=tuple(skipped),
        skipped_count=sum(group.count for group in skipped),
        truncated=listing.truncated or len(listing.files) > max_files,
    )
