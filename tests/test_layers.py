"""The seams hold: caelum_mcp's layers import only the layers below them, and supervisors and internal
tools do not reach into the layers below or around them.

caelum_mcp is four layers (each package's docstring says what it holds): ``core`` (the kernel),
``embedded`` (the embedded models' child process), ``engine`` (pool, router, ledger, backends, the
config that builds them) and ``serving`` (MCP, the command line, the dashboard). :data:`LAYERS` is
the allow list of what each may import of caelum_mcp; :data:`CROSSINGS` the few imports that cross
on purpose, each with its reason.

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
LAYERS: dict[str, tuple[str, ...]] = {
    "core": (),
    "embedded": ("core",),
    "engine": ("core", "embedded", "tools.safe_read"),  # safe_read: the one way a file is opened
    "serving": ("core", "embedded", "engine", "supervisors", "tools"),
}
CROSSINGS = {
    ("caelum_mcp/engine/config/loading.py", "caelum_mcp.supervisors"): "a supervisor's own config section is "
    "validated when the config loads, by the model the supervisor declares (imported when a config "
    "is loaded, not at import: the supervisors import the config)",
}
CORE_BEHIND_THE_SEAM = (
    "caelum_mcp.serving",
    "caelum_mcp.embedded",
    "caelum_mcp.engine.router",
    "caelum_mcp.engine.pool",
    "caelum_mcp.engine.backends",
    "caelum_mcp.engine.ledger",
    "caelum_mcp.engine.embedding_service",
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


def test_each_layer_of_caelum_mcp_imports_only_what_its_allow_list_names() -> None:
    bad = []
    for layer, allowed in LAYERS.items():
        for path in sorted((ROOT / "caelum_mcp" / layer).rglob("*.py")):
            where = path.relative_to(ROOT).as_posix()
            for line, module in imports_of(path):
                name = module.removeprefix("caelum_mcp.")
                if not module.startswith("caelum_mcp.") or name == layer or name.startswith(layer + "."):
                    continue
                if any(name == a or name.startswith(a + ".") for a in allowed) or (where, module) in CROSSINGS:
                    continue
                bad.append(f"{where}:{line} ({layer}) imports {module}")
    assert not bad, "\n".join(bad)


def test_every_module_sits_in_a_layer_and_every_crossing_is_still_there() -> None:
    package = ROOT / "caelum_mcp"
    loose = sorted(p.name for p in package.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert not loose, f"modules outside the layers: {loose}"
    assert {p.name for p in package.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(LAYERS)
    for (where, module), why in CROSSINGS.items():
        assert why and module in {m for _, m in imports_of(ROOT / where)}, f"{where} no longer imports {module}"
