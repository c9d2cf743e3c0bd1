"""Domain supervisors. Add a new one here: one module (or package) plus one line in SUPERVISORS."""

from __future__ import annotations

from caelum_mcp.supervisors.ai import AISupervisor
from caelum_mcp.supervisors.base import Supervisor
from caelum_mcp.supervisors.development import DevelopmentSupervisor

SUPERVISORS: tuple[type[Supervisor], ...] = (DevelopmentSupervisor, AISupervisor)

__all__ = ["SUPERVISORS", "Supervisor"]
