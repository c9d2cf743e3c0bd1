"""Workflow definitions: the ``[workflows.NAME]`` config sections, checked when the config loads.

A workflow is named steps. Each step calls a registered external tool (``tool`` + ``args``) or
runs a command (``command``, an argument list; never a shell). Its arguments are templates
(:mod:`caelum_mcp.tools.workflow.templates`) filled in from the workflow's ``inputs``, the project
and earlier steps' results. ``needs`` orders steps into a graph: a step starts when every step it
needs has ended, independent steps run in parallel (at most ``max_parallel`` at once), and a step
with ``writes = true`` runs alone. ``when`` (a condition, :mod:`caelum_mcp.tools.workflow.conditions`)
decides whether a step runs; ``fail_if`` judges its result; ``on_failure`` says whether a failure
stops the workflow (no new step starts) or lets it continue; ``timeout_s`` bounds the step.

Everything that can be checked without running is checked here, so a bad file is refused at
start with the key and the fix: unknown ``needs``, cycles, placeholders that name nothing or a step
that is not certain to have ended, conditions that do not parse, a program name that is templated
(the program is fixed in the config; only its arguments may come from inputs), a placeholder in the
code a shell or an interpreter runs (``sh -c "… {{ inputs.msg }}"``:
:func:`~caelum_mcp.tools.workflow.commands.inline_script_problem`), environment names that look
like secrets (:func:`~caelum_mcp.tools.workflow.commands.is_secret_looking_env_name`; ``env``
holds bare names, so no value can carry a secret in either). :data:`BUILTIN_WORKFLOWS`
(``pre-commit``, ``security-review``, ``release-check``) are there without any config; a section
of the same name replaces one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator, model_validator

from caelum_mcp.tools.workflow import conditions, templates
from caelum_mcp.tools.workflow.commands import inline_script_problem, is_secret_looking_env_name
from caelum_mcp.tools.workflow.conditions import Condition

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MAX_STEPS = 50
Scalar = str | int | float | bool


class InputSpec(BaseModel):
    """One input a caller may give (``inputs={...}`` in ``run_workflow``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    default: Scalar | None = None
    required: bool = False


class StepSpec(BaseModel):
    """One step: a tool call or a command, with its place in the graph and its rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tool: str | None = Field(default=None, description="a registered external tool, e.g. run_project_tests")
    args: dict[str, Any] = Field(default_factory=dict, description="the tool's arguments (templates)")
    command: tuple[str, ...] | None = Field(
        default=None, min_length=1, max_length=200, description="an argument list, e.g. ['ruff', 'check', '.']"
    )
    cwd: str | None = Field(default=None, description="the command's folder, inside the project")
    env: tuple[str, ...] = Field(default=(), description="environment variables the command also gets")
    needs: tuple[str, ...] = Field(default=(), description="steps that must end before this one starts")
    writes: bool = Field(default=False, description="changes files: runs alone, never beside another step")
    timeout_s: float = Field(default=600, gt=0, le=3600)
    on_failure: Literal["stop", "continue"] = "stop"
    when: str | None = Field(default=None, description="run only when this condition holds")
    fail_if: str | None = Field(default=None, description="fail the step when this holds of its `output`")

    @model_validator(mode="after")
    def _one_kind(self) -> StepSpec:
        if (self.tool is None) == (self.command is None):
            raise ValueError("give either `tool` (with `args`) or `command` (an argument list), not both or neither")
        if self.command is None and (self.cwd is not None or self.env):
            raise ValueError("`cwd` and `env` are for command steps")
        if self.command is not None and self.args:
            raise ValueError("`args` are for tool steps; a command's arguments are the list itself")
        if self.command is not None and list(templates.paths_in(self.command[0])):
            raise ValueError("the program (the command's first item) must be written out, not templated")
        script_problem = inline_script_problem(self.command or ())
        if script_problem:
            raise ValueError(script_problem)
        try:
            templates.check_syntax(self.args)
            templates.check_syntax(list(self.command or ()))
        except templates.TemplateError as exc:
            raise ValueError(str(exc)) from None
        for text in (self.when, self.fail_if):
            if text is not None:
                try:
                    conditions.parse(text)
                except conditions.ConditionError as exc:
                    raise ValueError(str(exc)) from None
        return self

    @field_validator("env")
    @classmethod
    def _env_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        bad = [n for n in names if not (n.isascii() and n.isidentifier())]
        if bad:
            raise ValueError(f"not environment variable names: {', '.join(repr(n[:60]) for n in bad)}")
        secret = [n for n in names if is_secret_looking_env_name(n)]
        if secret:
            raise ValueError(
                f"secrets are never passed to workflow commands: {', '.join(secret)} looks like one "
                "(its name holds KEY, TOKEN, SECRET, PASSWORD, CREDENTIAL, AUTH or the like, or starts with "
                "CAELUM_); remove it from env, and let the program read its credentials itself"
            )
        return names

    @property
    def kind(self) -> Literal["tool", "command"]:
        return "tool" if self.tool is not None else "command"

    @property
    def target(self) -> str:
        """The tool's name, or the command's program."""
        return self.tool if self.tool is not None else (self.command or ("",))[0]

    def condition(self, which: Literal["when", "fail_if"]) -> Condition | None:
        text = self.when if which == "when" else self.fail_if
        return None if text is None else conditions.parse(text)


class WorkflowSpec(BaseModel):
    """A named workflow: its inputs, its steps (in the order shown) and how many run at once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    steps: dict[str, StepSpec] = Field(min_length=1, max_length=MAX_STEPS)
    max_parallel: int = Field(default=4, ge=1, le=32, description="steps running at once, at most")
    summary: bool = Field(default=True, description="ask the LLM for a summary citing the step results")

    @field_validator("steps", "inputs")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = [k for k in value if not NAME.match(k)]
        if bad:
            raise ValueError(f"names must be letters, digits, '-' or '_' (at most 64): {', '.join(map(repr, bad))}")
        return value

    @model_validator(mode="after")
    def _graph(self) -> WorkflowSpec:
        for step_id, step in self.steps.items():
            unknown = [n for n in step.needs if n not in self.steps]
            if unknown:
                raise ValueError(f"step {step_id!r} needs {', '.join(map(repr, unknown))}, which is not a step here")
        order = topological_order(self.steps)  # raises on a cycle
        ancestors = _ancestors(self.steps, order)
        for step_id, step in self.steps.items():
            uses = {
                "args": [*templates.paths_in(step.args), *templates.paths_in(list(step.command or ()))],
                "when": conditions.parse(step.when).paths() if step.when else [],
                "fail_if": conditions.parse(step.fail_if).paths() if step.fail_if else [],
            }
            for where, paths in uses.items():
                for path in paths:
                    problem = self._path_problem(path, ancestors[step_id], in_fail_if=where == "fail_if")
                    if problem:
                        raise ValueError(f"step {step_id!r}, {where}: {path!r} {problem}")
        return self

    def _path_problem(self, path: str, ancestors: set[str], *, in_fail_if: bool) -> str | None:
        parts = path.split(".")
        root = parts[0]
        if root == "project":
            return None
        if root == "output":
            return None if in_fail_if else "is the step's own result, which only fail_if can read"
        if root == "inputs":
            if len(parts) < 2 or parts[1] not in self.inputs:
                known = ", ".join(self.inputs) or "none are declared"
                return f"names an input not declared under inputs ({known})"
            return None
        if root == "steps":
            if len(parts) < 3 or parts[1] not in ancestors:
                return "must name a step this one needs (directly or through others), and a field of it"
            return None
        return "must start with project, inputs or steps (and output, in fail_if)"

    def input_values(self, given: Mapping[str, Scalar] | None) -> dict[str, Scalar | None]:
        """The inputs of a run: ``given`` over the defaults. Raises ValueError for an unknown or a
        missing required input."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.inputs))
        if unknown:
            known = ", ".join(self.inputs) or "none"
            raise ValueError(f"unknown input(s) {', '.join(map(repr, unknown))}; this workflow takes: {known}")
        values: dict[str, Scalar | None] = {}
        for name, spec in self.inputs.items():
            if name in given:
                values[name] = given[name]
            elif spec.required:
                raise ValueError(f"input {name!r} is required: {spec.description or 'give it in inputs'}")
            else:
                values[name] = spec.default
        return values


class WorkflowsSettings(RootModel[dict[str, WorkflowSpec]]):
    """``[workflows.NAME]`` sections: the user's workflows, each replacing a built-in of its name."""

    root: dict[str, WorkflowSpec] = Field(default_factory=dict)

    @field_validator("root")
    @classmethod
    def _names(cls, value: dict[str, WorkflowSpec]) -> dict[str, WorkflowSpec]:
        bad = [k for k in value if not NAME.match(k)]
        if bad:
            raise ValueError(f"workflow names must be letters, digits, '-' or '_': {', '.join(map(repr, bad))}")
        return value

    def workflows(self) -> dict[str, WorkflowSpec]:
        """The built-ins, then the configured workflows (a configured one replaces its namesake)."""
        return {**BUILTIN_WORKFLOWS, **self.root}


def topological_order(steps: Mapping[str, StepSpec]) -> list[str]:
    """Step ids with every step after the steps it needs (definition order among equals).
    Raises ValueError naming a cycle."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(step_id: str, trail: list[str]) -> None:
        if state.get(step_id) == 2:
            return
        if state.get(step_id) == 1:
            cycle = [*trail[trail.index(step_id) :], step_id]
            raise ValueError(f"`needs` makes a cycle: {' -> '.join(cycle)}")
        state[step_id] = 1
        for need in steps[step_id].needs:
            visit(need, [*trail, step_id])
        state[step_id] = 2
        order.append(step_id)

    for step_id in steps:
        visit(step_id, [])
    return order


def _ancestors(steps: Mapping[str, StepSpec], order: Iterable[str]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for step_id in order:
        mine: set[str] = set()
        for need in steps[step_id].needs:
            mine |= {need, *found[need]}
        found[step_id] = mine
    return found


def _builtin(raw: dict[str, Any]) -> WorkflowSpec:
    return WorkflowSpec.model_validate(raw)


_PROJECT = "{{ project }}"
PRE_COMMIT_TESTS_S = 1200

# The built-ins, written as a user would write them in caelum.toml (caelum.example.toml shows them
# in TOML, to copy and change).
BUILTIN_WORKFLOWS: dict[str, WorkflowSpec] = {
    "pre-commit": _builtin(
        {
            "description": "lint, security and tests in parallel, then a review of the uncommitted change",
            "inputs": {"review": {"default": True, "description": "review the change (needs a git work tree)"}},
            "steps": {
                "lint": {
                    "tool": "analyze_and_improve_code",
                    "args": {"project": _PROJECT, "task": "performance", "llm_review": False},
                    "fail_if": "output.counts_by_tool.ruff > 0",
                    "on_failure": "continue",
                },
                # Reports the whole project's findings without failing the commit on them: most predate
                # the change (a security tool's own test fixtures, reviewed SQL), and a gate that no
                # commit can pass is ignored. New findings on the changed lines are the review's;
                # security-review is the strict one.
                "security": {
                    "tool": "analyze_and_improve_code",
                    "args": {"project": _PROJECT, "task": "security_scan", "llm_review": False},
                    "on_failure": "continue",
                },
                # The tool's own limit comes first, so that a slow suite keeps the results it had; a
                # whole suite on a loaded 2-core machine took 14 min, far over the tool's default 300 s.
                "tests": {
                    "tool": "run_project_tests",
                    "args": {"project": _PROJECT, "timeout_s": PRE_COMMIT_TESTS_S},
                    "timeout_s": PRE_COMMIT_TESTS_S + 60,
                    "fail_if": "not output.passed",
                    "on_failure": "continue",
                },
                "review": {
                    "tool": "review_changes",
                    "args": {"project": _PROJECT},
                    "needs": ["lint", "security", "tests"],
                    "when": "inputs.review",
                    "on_failure": "continue",
                },
            },
        }
    ),
    "security-review": _builtin(
        {
            "description": "the security scan with an LLM review of its findings, and a review of the change",
            "inputs": {"base": {"description": "review base..HEAD instead of the uncommitted change"}},
            "steps": {
                "scan": {
                    "tool": "analyze_and_improve_code",
                    "args": {"project": _PROJECT, "task": "security_scan"},
                    "fail_if": "output.counts.high > 0",
                    "on_failure": "continue",
                },
                "change": {
                    "tool": "review_changes",
                    "args": {"project": _PROJECT, "base": "{{ inputs.base }}"},
                    "on_failure": "continue",
                },
            },
        }
    ),
    "release-check": _builtin(
        {
            "description": "tests and the full analysis; if both pass, a review of what changed since `base`",
            "inputs": {"base": {"description": "the last release (a tag or commit); default: the uncommitted change"}},
            "steps": {
                "tests": {
                    "tool": "run_project_tests",
                    "args": {"project": _PROJECT},
                    "fail_if": "not output.passed",
                    "on_failure": "continue",
                },
                "analysis": {
                    "tool": "analyze_and_improve_code",
                    "args": {"project": _PROJECT, "task": "comprehensive", "llm_review": False},
                    "fail_if": "output.counts.high > 0",
                    "on_failure": "continue",
                },
                "changes": {
                    "tool": "review_changes",
                    "args": {"project": _PROJECT, "base": "{{ inputs.base }}"},
                    "needs": ["tests", "analysis"],
                    "when": "steps.tests.ok and steps.analysis.ok",
                    "on_failure": "continue",
                },
            },
        }
    ),
}
