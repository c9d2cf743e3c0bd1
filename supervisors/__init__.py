"""Domain supervisors. Add a new one here: one module (or package) plus one line in SUPERVISORS."""

from __future__ import annotations

from caelum_mcp.supervisors.ai import AISupervisor
from caelum_mcp.supervisors.base import Supervisor
from caelum_mcp.supervisors.data import DataSupervisor
from caelum_mcp.supervisors.development import DevelopmentSupervisor
from caelum_mcp.supervisors.infrastructure import InfrastructureSupervisor
from caelum_mcp.supervisors.knowledge import KnowledgeSupervisor
from caelum_mcp.supervisors.workflow import WorkflowSupervisor

SUPERVISORS: tuple[type[Supervisor], ...] = (
    DevelopmentSupervisor,
    AISupervisor,
    KnowledgeSupervisor,
    WorkflowSupervisor,
    DataSupervisor,
    InfrastructureSupervisor,
)

__all__ = ["SUPERVISORS", "Supervisor"]
