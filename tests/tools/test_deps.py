"""dependency_check(): manifests and lock files read, problems found, and an audit that never
reports "no vulnerabilities" when it could not look."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from caelum_mcp.tools.code.deps import dependency_check, interpret_pip_audit, specifiers_compatible
from caelum_mcp.tools.code.manifests import poetry_constraint
from caelum_mcp.tools.process import CommandResult

from .conftest import WriteProject, line_of

PYPROJECT = """
[project]
name = "demo"
version = "0.1"
dependencies = [
    "requests>=2.0",
    "flask",
    "pydantic>=2,<3",
]

[project.optional-dependencies]
test = ["pytest>=8", "pydantic<2"]

[tool.poetry.dependencies]
python = "^3.11"
httpx = "^0.27"
"""

REQUIREMENTS = """
# application pins
requests==2.19.0 \\
    --hash=sha256:0000
urllib3==1.24.1  # old
jinja2
jinja2
-r requirements-dev.txt
-e ./localpkg
git+https://user:s3cretT0ken@example.invalid/org/lib.git#egg=lib
--index-url https://user:s3cretT0ken@pypi.example.invalid/simple
"""

UV_LOCK = """
version = 1

[[package]]
name = "demo"
version = "0.1"
source = { editable = "." }

[[package]]
name = "requests"
version = "1.0.0"
source = { registry = "https://pypi.org/simple" }
"""


def _project(write_project: WriteProject, **extra: str) -> Path:
    files: dict[str, str | bytes] = {
        "pyproject.toml": PYPROJECT,
        "requirements.txt": REQUIREMENTS,
        "requirements-dev.txt": "pytest==7.0.0\nblack>=23\n",
    }
    files.update(extra)
    return write_project(files)


async def test_reads_declarations_from_every_manifest(write_project: WriteProject) -> None:
    root = _project(write_project)
    result = await dependency_check(root, audit=False)
    assert result.manifests == ("pyproject.toml", "requirements-dev.txt", "requirements.txt")
    deps = {(d.name, d.source, d.group): d for d in result.dependencies}
    assert deps[("requests", "pyproject.toml", "main")].specifier == ">=2.0"
    assert deps[("requests", "pyproject.toml", "main")].line == line_of(root, "pyproject.toml", '"requests>=2.0"')
    assert deps[("pydantic", "pyproject.toml", "extra:test")].specifier == "<2"
    assert deps[("httpx", "pyproject.toml", "poetry:main")].specifier == "<0.28,>=0.27"
    pinned = deps[("requests", "requirements.txt", "requirements")]
    assert pinned.pinned and pinned.line == 2  # the --hash continuation line is part of it
    assert deps[("pytest", "requirements-dev.txt", "requirements")].pinned  # read once, not again via -r
    assert sum(1 for d in result.dependencies if d.source == "requirements-dev.txt") == 2
    assert deps[("localpkg", "requirements.txt", "requirements")].kind == "editable"
    assert deps[("lib", "requirements.txt", "requirements")].kind == "vcs"
    assert "s3cretT0ken" not in result.model_dump_json()  # credentials in URLs are redacted
    assert result.audit.status == "skipped" and result.audit.reason


async def test_finds_unpinned_duplicate_and_conflicting_specs(write_project: WriteProject) -> None:
    root = _project(write_project)
    result = await dependency_check(root, audit=False)
    issues = {(i.kind, i.package): i for i in result.issues}
    assert issues[("unpinned", "flask")].severity == "low"  # a library range in pyproject
    assert issues[("unpinned", "jinja2")].severity == "medium"  # an application requirements file
    assert issues[("duplicate", "jinja2")].sources == ("requirements.txt:5", "requirements.txt:6")
    conflict = issues[("conflict", "pydantic")]
    assert conflict.severity == "high"
    assert f"pyproject.toml:{line_of(root, 'pyproject.toml', 'pydantic>=2,<3')}" in conflict.sources
    assert ("conflict", "pytest") in issues  # >=8 in the extra, ==7.0.0 in requirements-dev.txt
    assert ("conflict", "requests") not in issues  # >=2.0 and ==2.19.0 agree
    assert ("conflict", "black") not in issues


async def test_lock_files_are_read_and_checked_against_declarations(write_project: WriteProject) -> None:
    root = _project(write_project, **{"uv.lock": UV_LOCK, "poetry.lock": "not [valid toml"})
    result = await dependency_check(root, audit=False)
    locks = {lock.file: lock for lock in result.lock_files}
    assert locks["uv.lock"].parsed and locks["uv.lock"].packages == 1  # the editable project is left out
    assert not locks["poetry.lock"].parsed
    assert [e.file for e in result.errors] == ["poetry.lock"]
    mismatch = [i for i in result.issues if i.kind == "lock_mismatch"]
    assert mismatch and all(i.package == "requests" and "1.0.0" in i.message for i in mismatch)


async def test_audit_is_unavailable_with_a_reason_when_the_service_cannot_be_reached(
    write_project: WriteProject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # All of pip-audit's traffic goes to a closed loopback port: the real "service unreachable" case,
    # without touching any other network.
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no answers cached by earlier runs
    root = write_project({"requirements.txt": "requests==2.19.0\nurllib3==1.24.1\n"})
    result = await dependency_check(root, audit_timeout_s=60)
    audit = result.audit
    assert audit.status == "unavailable"
    assert audit.reason and "pip-audit" in audit.reason
    assert audit.vulnerabilities == () and audit.audited == 0


@pytest.mark.skipif(
    os.environ.get("CAELUM_NETWORK_TESTS") != "1",
    reason="reaches pip-audit's real vulnerability service; tests stay on loopback unless CAELUM_NETWORK_TESTS=1",
)
async def test_audit_answer_is_real_or_unavailable_never_silently_empty(write_project: WriteProject) -> None:
    root = write_project({"requirements.txt": "urllib3==1.24.1\n"})  # known-vulnerable release
    result = await dependency_check(root, audit_timeout_s=60)
    audit = result.audit
    if audit.status in ("ok", "partial"):
        assert audit.audited >= 1 and audit.vulnerabilities, audit
    else:
        assert audit.status == "unavailable" and audit.reason, audit


async def test_nothing_pinned_means_nothing_audited_and_says_so(write_project: WriteProject) -> None:
    root = write_project({"requirements.txt": "requests>=2\nflask\n"})
    result = await dependency_check(root)
    assert result.audit.status == "skipped"
    assert "nothing can be audited" in (result.audit.reason or "")
    assert result.audit.not_audited == ("flask", "requests")


async def test_project_without_python_dependencies(tmp_path: Path) -> None:
    result = await dependency_check(tmp_path)
    assert result.dependencies == () and result.issues == () and result.manifests == ()
    assert result.audit.status == "skipped"


def _pip_audit_run(report: dict[str, object], returncode: int = 0) -> CommandResult:
    return CommandResult(
        argv=("pip-audit",),
        returncode=returncode,
        stdout=json.dumps(report),
        stderr="",
        truncated=False,
        timed_out=False,
        duration_s=0.5,
    )


def test_interprets_a_report_with_vulnerabilities() -> None:
    # The shape pip-audit 2.x prints with --format json.
    report = {
        "dependencies": [
            {
                "name": "urllib3",
                "version": "1.24.1",
                "vulns": [
                    {
                        "id": "PYSEC-2019-133",
                        "fix_versions": ["1.24.2"],
                        "aliases": ["CVE-2019-11324"],
                        "description": "The urllib3 library before 1.24.2 mishandles certain cases.",
                    }
                ],
            },
            {"name": "idna", "version": "3.7", "vulns": []},
            {
                "name": "private-lib",
                "skip_reason": "Dependency not found on PyPI and could not be audited: private-lib (1.0)",
            },
        ],
        "fixes": [],
    }
    audit = interpret_pip_audit(_pip_audit_run(report, 1), source="requirements.txt", versions={"private-lib": "1.0"})
    assert audit.status == "partial" and audit.audited == 2
    assert [(v.package, v.id, v.fix_versions) for v in audit.vulnerabilities] == [
        ("urllib3", "PYSEC-2019-133", ("1.24.2",))
    ]
    assert audit.skipped[0].name == "private-lib" and audit.skipped[0].version == "1.0"


def test_all_packages_skipped_is_unavailable_not_clean() -> None:
    report = {
        "dependencies": [{"name": "requests", "skip_reason": "Dependency not found on PyPI and could not be audited"}],
        "fixes": [],
    }
    audit = interpret_pip_audit(_pip_audit_run(report), source="requirements.txt")
    assert audit.status == "unavailable" and audit.reason and "could not look up" in audit.reason


def test_crashed_pip_audit_is_unavailable_with_the_cause() -> None:
    run = CommandResult(
        argv=("pip-audit",),
        returncode=1,
        stdout="",
        stderr="Traceback ...\nrequests.exceptions.ConnectionError: https://user:tok@osv.example/ unreachable\n",
        truncated=False,
        timed_out=False,
        duration_s=1.0,
    )
    audit = interpret_pip_audit(run, source="uv.lock")
    assert audit.status == "unavailable"
    assert audit.reason and "ConnectionError" in audit.reason and "tok@" not in audit.reason


@pytest.mark.parametrize(
    ("first", "second", "compatible"),
    [
        (">=2,<3", "<2", False),
        (">=8", "==7.0.0", False),
        (">=2.0", "==2.19.0", True),
        ("==1.2.*", ">=1.2.5", True),
        (">1.0", "<1.0.1", True),
        ("~=1.4", "<1.4.5", True),
        ("!=1.0", "==1.0", False),
        (">=3", "<=2.9", False),
    ],
)
def test_specifier_compatibility(first: str, second: str, compatible: bool) -> None:
    assert specifiers_compatible(first, second) is compatible


def test_poetry_constraints_become_pep440() -> None:
    assert poetry_constraint("^1.2.3") == ">=1.2.3,<2"
    assert poetry_constraint("^0.27") == ">=0.27,<0.28"
    assert poetry_constraint("~1.2.3") == ">=1.2.3,<1.3"
    assert poetry_constraint("1.2.3") == "==1.2.3"
    assert poetry_constraint("*") == ""
    assert poetry_constraint(">=1,<2") == ">=1,<2"
