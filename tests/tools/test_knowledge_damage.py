"""Which SQLite errors mean a damaged store (moved aside and rebuilt) and which do not, and how a
store file is moved aside with its WAL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from caelum_mcp.tools.knowledge.memory import MemoryStore
from caelum_mcp.tools.knowledge.store import KnowledgeStore, is_damaged_store, set_aside


def test_garbage_is_damage_and_a_busy_lock_is_not(tmp_path: Path) -> None:
    garbage = tmp_path / "index.sqlite3"
    garbage.write_bytes(b"not a database at all " * 400)
    with pytest.raises(sqlite3.DatabaseError) as raised:
        KnowledgeStore(garbage)
    assert is_damaged_store(raised.value)

    good = MemoryStore(tmp_path / "memory.sqlite3")
    holder = sqlite3.connect(tmp_path / "memory.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        locked = sqlite3.connect(tmp_path / "memory.sqlite3", timeout=0)
        with pytest.raises(sqlite3.OperationalError) as busy:
            locked.execute("BEGIN IMMEDIATE")
        assert not is_damaged_store(busy.value)  # waiting is the answer, not a new file
        locked.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        good.close()
    assert not is_damaged_store(ValueError("x"))


def test_a_store_of_another_layout_is_damage(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite3"
    store = KnowledgeStore(path)
    store.set_meta("schema", "0")
    store.close()
    with pytest.raises(sqlite3.DatabaseError) as raised:
        KnowledgeStore(path)
    assert is_damaged_store(raised.value) and "schema 0" in str(raised.value)


def test_set_aside_renames_the_file_and_its_wal_together(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite3"
    store = MemoryStore(path)
    store.remember("kept in the WAL", [], "global")
    # a second process's copy of the files while the writer is open: the note is only in the -wal
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("memory.sqlite3", "memory.sqlite3-wal"):
        (copy / name).write_bytes((tmp_path / name).read_bytes())
    store.close()
    aside = set_aside(copy / "memory.sqlite3")
    MemoryStore(copy / "memory.sqlite3").close()  # a fresh file under the old name, damaged again at once
    second = set_aside(copy / "memory.sqlite3")
    assert aside != second and aside.name.startswith("memory.sqlite3.corrupt-")
    assert not (copy / "memory.sqlite3").exists() and not (copy / "memory.sqlite3-wal").exists()
    assert aside.with_name(aside.name + "-wal").exists()
    recovered = MemoryStore(aside)
    try:
        assert [n.text for n in recovered.recent(["global"], [], limit=5, offset=0)] == ["kept in the WAL"]
    finally:
        recovered.close()
