"""The infrastructure supervisor: is my setup healthy, and what went wrong in these logs?

``check_system_health`` (:mod:`.health`) reads this machine, its GPUs, the pool's hosts (through
the ai supervisor's ``pool_status``) and the configured probes, and judges them; a model summarises
only when something is not OK. ``diagnose_logs`` (:mod:`.diagnose`) mines log files into ranked
signatures with a timeline and co-occurring bursts, and asks a model for grounded root-cause
hypotheses. The internal tools are ``caelum_mcp.tools.system`` and ``caelum_mcp.tools.logs``;
the ``[infrastructure]`` config section is :class:`.settings.InfrastructureSettings`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from caelum_mcp.supervisors.base import ExternalTool, InternalTool, Supervisor
from caelum_mcp.tools.logs.diagnosis import analyse, collect_logs, mine
from caelum_mcp.tools.logs.refine import apply_decisions, candidates
from caelum_mcp.tools.system.gpu import read_gpus
from caelum_mcp.tools.system.host import read_host
from caelum_mcp.tools.system.probes import run_probes

from .diagnose import DiagnoseInput, DiagnoseOutput, diagnose_logs
from .health import HealthInput, HealthOutput, check_system_health
from .settings import InfrastructureSettings

__all__ = ["InfrastructureSettings", "InfrastructureSupervisor"]


class InfrastructureSupervisor(Supervisor):
    name = "infrastructure"
    description = "Check the health of this machine, its GPUs, the model pool and services; diagnose logs."
    settings_model = InfrastructureSettings

    def external_tools(self) -> Sequence[ExternalTool[Any, Any]]:
        return (
            ExternalTool(
                name="check_system_health",
                title="Check system health",
                description=(
                    "OK/WARN/CRIT with reasons for CPU, load, memory, disks, network, temperatures, GPUs, each "
                    "model-pool host and the configured service probes, with trends against earlier runs. "
                    "A model summarises only when something is not OK."
                ),
                input_model=HealthInput,
                output_model=HealthOutput,
                handler=check_system_health,
                idempotent=False,
                open_world=True,
            ),
            ExternalTool(
                name="diagnose_logs",
                title="Diagnose log files",
                description=(
                    "Mine log files (plain, .gz, rotated; syslog, JSON, journald, access/error, Python, Java) "
                    "into ranked error signatures with a timeline and bursts that happen together, plus "
                    "root-cause hypotheses citing file:line evidence that exists."
                ),
                input_model=DiagnoseInput,
                output_model=DiagnoseOutput,
                handler=diagnose_logs,
                uses_roots=True,
                idempotent=False,
                more_hint="narrow with `since`/`until` or `focus`, or lower `max_signatures`",
            ),
        )

    def internal_tools(self) -> Sequence[InternalTool]:
        return (
            InternalTool("read_host", read_host),
            InternalTool("read_gpus", read_gpus),
            InternalTool("run_probes", run_probes),
            InternalTool("collect_logs", collect_logs),
            InternalTool("mine_templates", mine),
            InternalTool("refine_clusters", apply_decisions, "apply a model's split/merge decisions to clusters"),
            InternalTool("cluster_candidates", candidates, "mined clusters worth a model's look"),
            InternalTool("analyse_logs", analyse),
        )
