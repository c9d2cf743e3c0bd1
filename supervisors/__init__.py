"""Domain supervisors. Add a new one here: one file plus one line."""

from __future__ import annotations

from caelum_mcp.supervisors.ai import AISupervisor
from caelum_mcp.supervisors.base import Supervisor

SUPERVISORS: tuple[type[Supervisor], ...] = (AISupervisor,)

__all__ = ["SUPERVISORS", "Supervisor"]
