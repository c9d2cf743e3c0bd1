"""The seams hold: supervisors and internal tools do not reach into the layers below or around them.

A supervisor gets typed services through its ToolContext; importing the composition root, the
router, the pool, a backend or MCP objects would let it bypass them (the way supervisors once
reached through ``ctx.router.pool``). Internal tools are plain functions: they know nothing of
supervisors, models or MCP. Checked on the source, import by import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE_BEHIND_THE_SEAM = (
    "caelum_mcp.app",
    "caelum_mcp.server",
    "caelum_mcp.runtime",
    "caelum_mcp.router",
    "caelum_mcp.pool",
    "caelum_mcp.backends",
    "caelum_mcp.embedded",
    "caelum_mcp.ledger",
    "caelum_mcp.cli",
)
TRANSPORTS = ("mcp", "httpx", "httpx2", "anthropic", "starlette", "uvicorn")
FORBIDDEN = {
    "supervisors": CORE_BEHIND_THE_SEAM + TRANSPORTS,
    "tools": (*CORE_BEHIND_THE_SEAM, *TRANSPORTS, "caelum_mcp.supervisors"),
}


def imports_of(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_behind_its_seam(folder: str) -> None:
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for line, module in imports_of(path):
            if any(module == f or module.startswith(f + ".") for f in FORBIDDEN[folder]):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "\n".join(bad)
