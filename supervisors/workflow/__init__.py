"""The workflow supervisor: named multi-step workflows from the config, run and remembered.

- :mod:`.definitions`: the ``[workflows.NAME]`` sections and the built-ins (``pre-commit``,
  ``security-review``, ``release-check``), checked when the config loads;
- :mod:`.engine`: the step graph, run in parallel where it may;
- :mod:`.store`: the runs and their steps in SQLite (``runs.sqlite3`` in the state folder);
- :mod:`.run`: ``run_workflow`` (with :mod:`.summary`); :mod:`.history`: ``workflow_history``.

Steps call the other supervisors' tools through ``ctx.call_tool``, so a workflow composes them
without importing them; configured commands run through
:mod:`caelum_mcp.tools.workflow.commands`. When the server starts, runs left ``running`` by a
server that died are marked ``interrupted`` (and can be resumed).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio

from caelum_mcp.supervisors.base import ExternalTool, InternalTool, Supervisor, SupervisorEnv
from caelum_mcp.tools.workflow.commands import run_workflow_command
from caelum_mcp.tools.workflow.conditions import parse as parse_condition
from caelum_mcp.tools.workflow.templates import render

from .definitions import BUILTIN_WORKFLOWS, WorkflowsSettings
from .history import HistoryInput, HistoryOutput, workflow_history
from .run import RunWorkflowInput, RunWorkflowOutput, owner_alive, run_workflow
from .store import RunStore, WorkflowState

__all__ = ["BUILTIN_WORKFLOWS", "WorkflowSupervisor", "WorkflowsSettings"]

log = logging.getLogger(__name__)


class WorkflowSupervisor(Supervisor):
    name = "workflow"
    description = "Run named multi-step workflows over the other tools and commands; keep their history."
    settings_model = WorkflowsSettings
    settings_section = "workflows"

    def external_tools(self) -> Sequence[ExternalTool[Any, Any]]:
        return (
            ExternalTool(
                name="run_workflow",
                title="Run a workflow",
                description=(
                    "Run a named workflow on a project: its steps (tools such as lint, security scan, tests, "
                    "review, or configured commands) in parallel where they may, with progress per step, then "
                    "a summary citing step results. Built-ins: pre-commit, security-review, release-check. "
                    "Stored; `resume` a run id to reuse the steps it completed."
                ),
                input_model=RunWorkflowInput,
                output_model=RunWorkflowOutput,
                handler=run_workflow,
                read_only=False,
                idempotent=False,
                uses_roots=True,
                more_hint="see one step's output with workflow_history(run_id, step)",
            ),
            ExternalTool(
                name="workflow_history",
                title="Workflow run history",
                description=(
                    "Past workflow runs: what ran and failed, step durations, flaky steps (passed and failed on "
                    "the same input) and cost per run; filter by project, workflow, status, dates."
                ),
                input_model=HistoryInput,
                output_model=HistoryOutput,
                handler=workflow_history,
                uses_roots=True,
                more_hint="narrow with `workflow`, `status`, `since`, or lower `limit`",
            ),
        )

    def internal_tools(self) -> Sequence[InternalTool]:
        return (
            InternalTool("run_workflow_command", run_workflow_command),
            InternalTool("render_template", render),
            InternalTool("parse_condition", parse_condition),
        )

    @asynccontextmanager
    async def lifespan(self, env: SupervisorEnv) -> AsyncIterator[WorkflowState]:
        def tidy() -> list[str]:
            with RunStore(env.state_dir, check=True) as store:  # a damaged store is moved aside here
                interrupted = store.mark_interrupted(owner_alive)
                store.prune_outputs()
            return interrupted

        try:
            interrupted = await anyio.to_thread.run_sync(tidy)
        except Exception:  # the other supervisors' tools serve regardless; run_workflow says what is wrong
            log.exception("the workflow run store in %s could not be tidied at start", env.state_dir)
            interrupted = []
        if interrupted:
            log.warning("workflow runs interrupted by a server that stopped: %s", ", ".join(interrupted))
        yield WorkflowState(env.state_dir)
