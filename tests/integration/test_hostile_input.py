"""Hostile input gets short, clear errors that name the argument and reveal nothing outside the roots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.types import CallToolResult, TextContent

from .test_development import make_server, write


def text_of(result: CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, TextContent))


async def call_all(tmp_path: Path, calls: list[tuple[str, dict[str, Any]]]) -> list[CallToolResult]:
    server, _ = make_server(tmp_path)
    async with Client(server) as client:
        return [await client.call_tool(tool, args) for tool, args in calls]


async def test_a_huge_argument_gets_a_short_error(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    huge = "A" * 5_000_000
    results = await call_all(
        tmp_path,
        [
            ("analyze_and_improve_code", {"project": huge}),
            ("run_project_tests", {"project": huge}),
            ("review_changes", {"project": huge}),
            ("pool_status", {"host": huge}),
        ],
    )
    for result in results:
        assert result.is_error
        assert len(text_of(result)) < 500, text_of(result)[:300]


@pytest.mark.parametrize(
    ("tool", "args", "field"),
    [
        ("analyze_and_improve_code", {"project": "p\0q"}, "project"),
        ("analyze_and_improve_code", {"project": ".", "paths": ["a\0.py"]}, "paths"),
        ("review_changes", {"project": ".", "base": "HEAD\0"}, "base"),
        ("review_changes", {"project": ".", "head": "\0"}, "head"),
        ("run_project_tests", {"project": ".", "selection": ["t\0"]}, "selection"),
        ("delegate_task", {"prompt": "hi", "model": "qwen\0"}, "model"),
        ("delegate_task", {"prompt": "hi\ud800"}, "prompt"),
    ],
)
async def test_nul_bytes_and_invalid_characters_name_the_field(
    tmp_path: Path, tool: str, args: dict[str, Any], field: str
) -> None:
    (tmp_path / "work").mkdir()
    (result,) = await call_all(tmp_path, [(tool, args)])
    message = text_of(result)
    assert result.is_error and f"{field}:" in message, message
    assert "NUL byte" in message or "invalid character" in message, message


async def test_paths_outside_the_roots_reveal_neither_existence_nor_link_targets(tmp_path: Path) -> None:
    write(tmp_path / "work" / "proj", {"a.py": "x = 1\n"})
    (tmp_path / "private" / "real").mkdir(parents=True)
    (tmp_path / "work" / "link").symlink_to(tmp_path / "private" / "real", target_is_directory=True)
    probes = [str(tmp_path / "private" / "real"), str(tmp_path / "private" / "missing"), "link", "../private/real"]
    results = await call_all(tmp_path, [("analyze_and_improve_code", {"project": p}) for p in probes])
    answers = set()
    for probe, result in zip(probes, results, strict=True):
        message = text_of(result)
        assert result.is_error and "outside the allowed roots" in message, message
        answers.add(message.replace(repr(probe), "<project>"))
        assert "real" not in message.replace(probe, "")  # where the link points is not said
    assert len(answers) == 1  # existing or not, by name or by link: the same answer
