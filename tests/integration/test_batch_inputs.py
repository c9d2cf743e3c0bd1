"""run_batch's parts without a server: templates, streamed inputs, and the concurrency that fills a pool."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import psutil
import pytest

from caelum_mcp.core.errors import ToolInputError
from caelum_mcp.supervisors.batch_inputs import Template, bounded_lines, read_csv, read_jsonl
from caelum_mcp.supervisors.batch_runner import (
    _RUNNING_HERE,
    MAX_OVERSUBSCRIBE,
    fill_concurrency,
    owner_gone,
    owner_identity,
)
from caelum_mcp.supervisors.batch_store import BatchRow, BatchStore


def test_template_substitutes_fields_and_never_evaluates() -> None:
    template = Template("{{id}}: {{ item.a.b }} / {{ item.n }} / {{ item.tags }}")
    item = {"a": {"b": "deep {{ id }}"}, "n": 3, "tags": ["x", "y"]}
    assert template.render("k1", item) == 'k1: deep {{ id }} / 3 / ["x", "y"]'  # an item's braces stay text
    with pytest.raises(KeyError, match=r"no field 'c'.*its fields: a, n, tags"):
        Template("{{ item.c }}").render("k", item)
    with pytest.raises(KeyError, match=r"needs item\.n to be an object"):
        Template("{{ item.n.x }}").render("k", item)
    for bad in ("{{ item | upper }}", "{{ __import__('os') }}", "{{ 7*7 }} {{ item }}"):
        with pytest.raises(ToolInputError, match="is not known"):
            Template(bad)
    with pytest.raises(ToolInputError, match="must use the item"):
        Template("the same question for every {{ id }}")


def test_a_line_over_the_limit_is_skipped_in_pieces_never_held_whole() -> None:
    data = b'{"a": 1}\n' + b"x" * (50 * 1024 * 1024) + b'\n{"a": 2}\n'
    stream = io.BytesIO(data)
    tracemalloc.start()
    try:
        lines = [(n, line) for n, line in bounded_lines(stream, 100_000)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines == [(1, b'{"a": 1}\n'), (2, None), (3, b'{"a": 2}\n')]
    assert peak < 4 * 1024 * 1024  # a megabyte piece at a time, not the 50 MB line


def test_jsonl_and_csv_rows_get_ids_and_their_own_errors(tmp_path: Path) -> None:
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"key": "a1", "v": 1}\n\n[1, 2\n"plain"\n' + '"' + "z" * 300 + '"\n')
    items = list(read_jsonl(jsonl, 200, "key"))
    assert [(i.item_id, i.value) for i in items[:1]] == [("a1", {"key": "a1", "v": 1})]
    assert items[1].item_id == "line 3" and "not JSON" in (items[1].error or "")
    assert items[2].value == "plain" and items[2].item_id == "line 4"
    assert items[3].item_id == "line 5" and "over the 200-byte item limit" in (items[3].error or "")
    table = tmp_path / "in.csv"
    table.write_text('id,text\nr1,"multi\nline"\nr2,' + "w" * 300 + '\nr3,"open"quote\nr4,ok\n')
    rows = list(read_csv(table, 200, "id"))
    assert rows[0].item_id == "r1" and rows[0].value == {"id": "r1", "text": "multi\nline"}
    assert rows[1].item_id == "row 2" and "over the 200-byte item limit" in (rows[1].error or "")
    assert rows[2].item_id == "row 3" and "malformed CSV" in (rows[2].error or "")
    assert rows[3].value == {"id": "r4", "text": "ok"}


def test_concurrency_keeps_every_host_busy_under_the_pools_rule() -> None:
    # 4 slots at 0.2 s, 2 at 0.4 s, 2 at 0.8 s: the fast host needs 16 requests (its queue's wait
    # reaching the slow host's 0.8 s) before the pool sends the slow one anything.
    assert fill_concurrency([(4, 200.0), (2, 400.0), (2, 800.0)]) == 16 + 4 + 2
    assert fill_concurrency([(4, None), (2, None)]) == 6  # nothing measured yet: the slots
    assert fill_concurrency([(2, 10.0), (1, 10_000.0)]) == 2 * MAX_OVERSUBSCRIBE + 1
    assert fill_concurrency([(3, 50.0)]) == 3


def test_a_batch_is_taken_over_only_when_its_runner_is_gone() -> None:
    def row(pid: int, started: float, batch_id: str = "b1") -> BatchRow:
        return BatchRow(
            id=batch_id,
            created=0.0,
            finished=None,
            status="running",
            spec={},
            source="",
            total=0,
            concurrency=1,
            results="",
            owner_pid=pid,
            owner_started=started,
            note=None,
        )

    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(child.stdout)
    parent = psutil.Process(os.getppid())
    assert owner_gone(row(dead, 0.0))
    assert not owner_gone(row(parent.pid, parent.create_time()))  # another live server runs it
    assert owner_gone(row(parent.pid, parent.create_time() - 3600))  # the pid was reused by another process
    me, started = owner_identity()
    assert owner_gone(row(me, started, "not-here"))  # this process, but its runner ended (a server stopped)
    _RUNNING_HERE.add("here")
    try:
        assert not owner_gone(row(me, started, "here"))
    finally:
        _RUNNING_HERE.discard("here")


def test_a_store_sqlite_cannot_read_is_moved_aside_and_a_new_one_serves(tmp_path: Path) -> None:
    (tmp_path / "batches.sqlite3").write_bytes(b"\x00garbage" * 2000)
    store = BatchStore(tmp_path)
    try:
        assert store.moved_aside is not None and store.moved_aside.read_bytes().startswith(b"\x00garbage")
        assert store.moved_aside.name.startswith("batches.sqlite3.corrupt-")
        store.create("b1", {"template": "t"}, "inline", tmp_path / "r.jsonl", 2, (1, 0.0))
        assert store.add_items("b1", [("a", "1", None), ("b", None, "too big")]) == 2
        assert store.counts("b1").pending == 2
    finally:
        store.close()
