"""A damaged index or note file (garbage, or damaged pages) is moved aside and rebuilt: the tool
answers, says what happened, and the damaged file is kept beside the new one. It used to end in
"internal error, please report" on every call."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from .test_development import write
from .test_knowledge import PROJECT, call
from .test_platform import session

PAGE = 4096  # SQLite's default page size: the first page holds the header and the schema


def spoil(path: Path, how: str) -> bytes:
    """Overwrite ``path`` with garbage: all of it, or every page after the first (the file still
    opens; reading a table fails)."""
    data = path.read_bytes()
    keep = 0 if how == "whole file" else PAGE
    assert len(data) > keep, f"{path} has {len(data)} bytes"
    noise = random.Random(7).randbytes(len(data) - keep)
    spoiled = data[:keep] + noise
    path.write_bytes(spoiled)
    return spoiled


def only(folder: Path, pattern: str) -> Path:
    """The one file under ``folder`` matching ``pattern``."""
    paths = list(folder.rglob(pattern))
    assert len(paths) == 1, paths
    return paths[0]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["whole file", "pages after the first"])
async def test_a_damaged_index_and_note_file_are_moved_aside_and_rebuilt(tmp_path: Path, how: str) -> None:
    project = write(tmp_path / "work" / "svc", PROJECT)
    search = {"query": "refresh access token", "project": str(project)}
    async with session(tmp_path, []) as (client, _):
        before = await call(client, "search_knowledge", search)
        for i in range(40):  # enough notes for the file to span several pages
            await call(client, "memory", {"action": "remember", "text": f"note {i}: the staging database is {i}"})
    index_file = only(tmp_path, "indexes/*.sqlite3")
    notes_file = only(tmp_path, "memory.sqlite3")
    spoiled = {index_file: spoil(index_file, how), notes_file: spoil(notes_file, how)}

    async with session(tmp_path, []) as (client, _):
        out = await call(client, "search_knowledge", search)
        assert out["results"][0]["span"] == before["results"][0]["span"] == "service/oauth.py:1-3"
        assert out["index"]["files"] == 4 and out["index"]["changed"] == 4  # rebuilt from the files
        assert "search index of svc could not be read" in out["note"] and "rebuilt" in out["note"]
        again = await call(client, "search_knowledge", search)
        assert "moved aside" not in (again["note"] or "")  # said once

        listed = await call(client, "memory", {"action": "list"})
        assert listed["notes"] == [] and listed["total"] == 0
        assert "notes file could not be read" in listed["note"] and "moved aside" in listed["note"]
        await call(client, "memory", {"action": "remember", "text": "The staging database listens on 5433"})
        recalled = await call(client, "memory", {"action": "recall", "query": "staging database"})
        assert [n["text"] for n in recalled["notes"]] == ["The staging database listens on 5433"]
        assert "moved aside" not in (recalled["note"] or "")

    for path, garbage in spoiled.items():
        aside = only(path.parent, path.name + ".corrupt-*")
        assert str(aside) in (out["note"] + listed["note"])
        assert aside.read_bytes()[: len(garbage)] == garbage  # kept as it was, for recovery by hand
