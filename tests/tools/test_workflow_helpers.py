"""Workflow templates, conditions and configured commands (plain functions, real subprocesses)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from caelum_mcp.core.errors import PathNotAllowedError
from caelum_mcp.tools.process import RUN_MARKER_VAR
from caelum_mcp.tools.workflow import conditions, templates
from caelum_mcp.tools.workflow.commands import program_search_path, run_workflow_command, server_program_folders

CONTEXT = {
    "project": "/work/p",
    "inputs": {"base": "v1.2", "n": 3, "unset": None, "flag": True},
    "steps": {"lint": {"ok": False, "findings": 12, "output": {"counts": {"high": 2}, "files": ["a.py", "b.py"]}}},
}


def test_a_whole_placeholder_keeps_its_type_and_an_unset_input_drops_the_argument() -> None:
    rendered = templates.render(
        {
            "project": "{{ project }}",
            "n": "{{inputs.n}}",
            "files": "{{ steps.lint.output.files }}",
            "first": "{{ steps.lint.output.files.0 }}",
            "base": "{{ inputs.unset }}",
            "label": "lint found {{ steps.lint.findings }} (ok={{ steps.lint.ok }})",
        },
        CONTEXT,
    )
    assert rendered == {
        "project": "/work/p",
        "n": 3,
        "files": ["a.py", "b.py"],
        "first": "a.py",
        "label": "lint found 12 (ok=false)",
    }


def test_a_placeholder_that_names_nothing_says_what_is_missing() -> None:
    with pytest.raises(templates.TemplateError, match="nothing is called 'nope'"):
        templates.render("{{ steps.lint.output.nope }}", CONTEXT)


def test_command_arguments_stay_one_argument_and_inputs_cannot_become_options() -> None:
    context = {**CONTEXT, "inputs": {"x": "a b; $(rm -rf ~)", "opt": "-rf", "base": "v1"}}
    assert templates.render_argv(["{{ inputs.x }}", "--base={{ inputs.base }}"], context) == [
        "a b; $(rm -rf ~)",
        "--base=v1",
    ]
    with pytest.raises(templates.TemplateError, match="read as an option"):
        templates.render_argv(["{{ inputs.opt }}"], context)
    with pytest.raises(templates.TemplateError, match="not one value"):
        templates.render_argv(["{{ steps.lint.output }}"], context)


@pytest.mark.parametrize(
    "argv",
    [
        ["{{ inputs.p }}/x"],  # a partial template: "--exec=sh/x"
        ["{{ inputs.p }}"],
        ["{{inputs.empty}}{{ inputs.p }}"],  # the dash comes from the second value
        ["{{ steps.lint.output.name }}.txt"],  # an earlier step's output is no safer than an input
    ],
)
def test_a_value_that_would_start_an_argument_with_a_dash_is_refused(argv: list[str]) -> None:
    context = {**CONTEXT, "inputs": {"p": "--exec=sh", "empty": ""}, "steps": {"lint": {"output": {"name": "-rf"}}}}
    with pytest.raises(templates.TemplateError, match=r"argument 1 .* would start with '-'.*read as an option"):
        templates.render_argv(argv, context)


def test_a_dash_the_template_itself_writes_is_an_option_on_purpose() -> None:
    context = {**CONTEXT, "inputs": {"p": "-x", "d": "dir"}}
    assert templates.render_argv(["--opt={{ inputs.p }}", "-j{{ inputs.p }}", "{{ inputs.d }}/-x"], context) == [
        "--opt=-x",
        "-j-x",
        "dir/-x",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("steps.lint.ok", False),
        ("not steps.lint.ok", True),
        ("steps.lint.findings > 10 and inputs.flag", True),
        ("steps.lint.output.counts.high >= 3 or inputs.base == 'v1.2'", True),
        ("steps.lint.output.counts.medium > 0", False),  # missing is null, and null > 0 is false
        ("steps.lint.output.counts.medium == null", True),
        ("inputs.base > 3", False),  # a string and a number do not compare
        ("(steps.lint.ok or inputs.flag) and not (inputs.n != 3)", True),
        ('inputs.base != "v1.2"', False),
    ],
)
def test_conditions(text: str, expected: bool) -> None:
    assert conditions.parse(text).holds(CONTEXT) is expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "cannot be empty"),
        ("steps.lint.ok and", "ends where a value"),
        ("(steps.lint.ok", "not closed"),
        ("steps.lint.ok steps.x.ok", "unexpected"),
        ("__import__('os')", "unexpected"),
        ("a ; b", "cannot read"),
    ],
)
def test_bad_conditions_are_refused(text: str, problem: str) -> None:
    with pytest.raises(conditions.ConditionError, match=problem):
        conditions.parse(text)


async def test_a_command_runs_in_the_project_with_a_clean_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub").mkdir()
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-not-for-commands")
    monkeypatch.setenv("EXTRA_SETTING", "yes")
    code = (
        "import os, sys; env = os.environ.get; "
        "print(os.getcwd(), sys.argv[1], env('ANTHROPIC_API_KEY'), env('EXTRA_SETTING'))"
    )
    out = await run_workflow_command(
        [sys.executable, "-c", code, "a b; echo hi"],
        project=tmp_path,
        cwd="sub",
        timeout_s=30,
        pass_env=["EXTRA_SETTING"],
    )
    assert out.ok, out
    assert out.stdout_tail.strip() == f"{tmp_path / 'sub'} a b; echo hi None yes"


async def test_a_command_that_fails_times_out_or_is_missing_says_so(tmp_path: Path) -> None:
    failed = await run_workflow_command([sys.executable, "-c", "raise SystemExit(3)"], project=tmp_path, timeout_s=30)
    assert (failed.ok, failed.exit_code) == (False, 3)
    slow = await run_workflow_command(
        [sys.executable, "-c", "import time; time.sleep(30)"], project=tmp_path, timeout_s=0.5
    )
    assert slow.timed_out and slow.exit_code is None and "timed out" in (slow.error or "")
    missing = await run_workflow_command(["no-such-program-xyz"], project=tmp_path, timeout_s=5)
    assert missing.error is not None and missing.error.startswith("program 'no-such-program-xyz' not found")
    with pytest.raises(PathNotAllowedError):
        await run_workflow_command(["ls"], project=tmp_path, cwd="../..", timeout_s=5)


def plant_venv(project: Path, *names: str) -> Path:
    """A project ``.venv`` as a hostile repository ships it: a ``python`` (so the project looks like
    it has a virtualenv) and scripts named like real programs that write ``marker`` when run."""
    bin_dir = project / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    marker = project / "planted-ran"
    for name in names:
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\necho planted >> '{marker}'\necho 'planted {name}'\n")
        script.chmod(0o755)
    return marker


async def test_a_programs_name_finds_the_servers_program_not_the_projects_venv(tmp_path: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    marker = plant_venv(project, "ruff", "planted-only-here")
    ruff = await run_workflow_command(["ruff", "--version"], project=project, timeout_s=60)
    assert ruff.ok, ruff
    assert ruff.stdout_tail.startswith("ruff ") and "planted" not in ruff.stdout_tail
    assert ruff.program is not None and Path(ruff.program).parent in {Path(f) for f in server_program_folders()}
    only_there = await run_workflow_command(["planted-only-here"], project=project, timeout_s=10)
    assert only_there.exit_code is None and "write their path, e.g. .venv/bin/NAME" in (only_there.error or "")
    assert not marker.exists()
    # named by its path, a project's program is what the config asked for
    on_purpose = await run_workflow_command([".venv/bin/planted-only-here"], project=project, timeout_s=10)
    assert on_purpose.ok and marker.exists()


async def test_path_entries_inside_the_project_or_relative_are_not_searched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = (tmp_path / "p").resolve()
    tools = project / "tools"
    tools.mkdir(parents=True)
    (tools / "planted-tool").write_text("#!/bin/sh\necho planted\n")
    (tools / "planted-tool").chmod(0o755)
    outside = tmp_path / "outside-bin"
    outside.mkdir()
    monkeypatch.setenv("PATH", os.pathsep.join([str(tools), "tools", ".", str(outside), "/usr/bin", "/bin"]))
    search = program_search_path(project).split(os.pathsep)
    assert search[: len(server_program_folders())] == server_program_folders()
    assert str(tools) not in search and "tools" not in search and "." not in search
    assert str(outside) in search and "/usr/bin" in search
    out = await run_workflow_command(["planted-tool"], project=project, cwd="tools", timeout_s=10)
    assert out.exit_code is None and "not found" in (out.error or "")


async def test_a_command_never_gets_a_secret_even_when_its_step_lists_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {
        "ANTHROPIC_API_KEY": "sk-ant-api03-notforcommands",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "GITHUB_TOKEN": "ghp_notforcommands0123456789abcdefghij",
        "CAELUM_FOO": "caelum-setting",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("EXTRA_SETTING", "yes")
    code = "import json, os; print(json.dumps(dict(os.environ)))"
    out = await run_workflow_command(
        [sys.executable, "-c", code], project=tmp_path, timeout_s=30, pass_env=[*secrets, "EXTRA_SETTING"]
    )
    assert out.ok, out
    seen = json.loads(out.stdout_tail)
    assert seen["EXTRA_SETTING"] == "yes"
    assert not set(secrets) & set(seen)
    assert not any(value in out.stdout_tail for value in secrets.values())
    assert {n for n in seen if n.startswith("CAELUM_")} == {RUN_MARKER_VAR}  # the run's own kill marker only
    assert "VIRTUAL_ENV" not in seen
