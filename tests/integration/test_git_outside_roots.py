"""``review_changes`` through the real MCP server on repositories that point git outside the allowed
roots (a ``.git`` file or link, ``core.worktree``, ``objects/info/alternates``): refused, and nothing
from outside comes back."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fakes.hostile_git import OUTSIDE_POINTERS, OUTSIDE_SECRET, OutsidePointer

from .test_development import session


@pytest.mark.slow  # a server per case
@pytest.mark.parametrize("build", OUTSIDE_POINTERS, ids=lambda b: b.__name__.strip("_"))
async def test_review_changes_refuses_a_repository_that_points_outside_the_roots(
    build: Callable[[Path], OutsidePointer], tmp_path: Path
) -> None:
    case = build(tmp_path / "case")
    args = {"project": str(case.project)}
    if case.head:
        args["head"] = case.head
    async with session(tmp_path, allowed_roots=[str(case.roots)]) as client:
        result = await client.call_tool("review_changes", args)
    text = json.dumps([getattr(c, "text", "") for c in result.content])
    assert result.is_error, text
    assert "outside the allowed roots" in text and "allowed_roots" in text
    assert "private_notes" not in text and OUTSIDE_SECRET not in text and str(case.outside) not in text
