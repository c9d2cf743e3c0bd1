"""Workflow templates, conditions and configured commands (plain functions, real subprocesses)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from caelum_mcp.errors import PathNotAllowedError
from caelum_mcp.tools.workflow import conditions, templates
from caelum_mcp.tools.workflow.commands import run_workflow_command

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
    assert missing.error == "program 'no-such-program-xyz' not found on PATH"
    with pytest.raises(PathNotAllowedError):
        await run_workflow_command(["ls"], project=tmp_path, cwd="../..", timeout_s=5)
