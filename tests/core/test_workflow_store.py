"""The run store's own repairs: a file SQLite cannot read, a damaged step output."""

from __future__ import annotations

from pathlib import Path

from caelum_mcp.supervisors.workflow.store import RunStore


def test_a_foreign_file_is_moved_aside_and_a_notice_is_kept_until_taken(tmp_path: Path) -> None:
    (tmp_path / "runs.sqlite3").write_bytes(b"garbage" * 100)
    with RunStore(tmp_path):
        (moved,) = tmp_path.glob("runs.sqlite3.corrupt-*")
        assert moved.read_bytes() == b"garbage" * 100
    with RunStore(tmp_path, check=True) as store:  # the rebuilt store is whole and keeps the notice
        (notice,) = store.take_notices()
        assert str(moved) in notice
        assert store.take_notices() == []


def test_a_damaged_step_output_reads_as_pruned(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        ref = store.save_output("abc", "lint", {"ok": True})
        assert store.load_output(ref) == {"ok": True}
        (tmp_path / ref).write_text("{not json")
        assert store.load_output(ref) is None
