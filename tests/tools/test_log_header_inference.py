"""The line header inferred from a file itself, on layouts no known format lists: fields separated by
``|``, ``,``, ``;`` or tabs, ISO 8601 times with ``T``/``Z``, epoch times, bracketed levels,
``key=value`` pairs and reordered fields; a level too few lines carry is still kept out of the
message; hostile lines cost a bounded time."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from caelum_mcp.tools.logs.formats import detect_format
from caelum_mcp.tools.logs.reading import read_entries

REF = datetime(2024, 6, 1)
HOSTS = ("alpha", "bravo", "charlie", "delta")


def parts(lines: list[str], index: int = 0) -> tuple[datetime | None, str | None, str | None, str]:
    parsed = detect_format(lines, REF).parse(lines[index])
    assert parsed is not None, lines[index]
    return parsed.time, parsed.level, parsed.source, parsed.message


def test_pipe_separated_header_without_spaces_is_cut_off_and_a_pipe_in_the_message_stays() -> None:
    lines = [
        f"2024-05-01T10:00:{i:02d}.250Z|{('WARN', 'INFO')[i % 2]}|{HOSTS[i % 4]}|db.pool|{4000 + i}|"
        + ("query failed | retrying" if i % 2 == 0 else f"pool size {i}")
        for i in range(12)
    ]
    assert parts(lines) == (datetime(2024, 5, 1, 10, 0, 0, 250000), "warning", "db.pool", "query failed | retrying")
    assert parts(lines, 1)[3] == "pool size 1"


def test_comma_separated_epoch_milliseconds_and_a_quoted_message_with_commas() -> None:
    lines = [
        f'{1714557600000 + 1500 * i},{("ERROR", "INFO")[i % 2]},IPC Server handler {i},"connection lost, retry {i}"'
        for i in range(10)
    ]
    when, level, source, message = parts(lines)
    assert (when, level, message) == (datetime(2024, 5, 1, 10, 0), "error", "connection lost, retry 0")
    assert source == "IPC Server handler 0"


def test_tab_separated_header_with_host_words_that_vary() -> None:
    lines = [f"{1714557600 + i}\t{HOSTS[i % 4]}\tINFO\tscheduler\tjob {i} done" for i in range(8)]
    assert parts(lines, 3) == (datetime(2024, 5, 1, 10, 0, 3), "info", "scheduler", "job 3 done")


def test_reordered_fields_level_first_then_an_iso_time_with_an_offset() -> None:
    lines = [f"WARN  2024-05-01T12:00:{i:02d}+02:00 {HOSTS[i % 4]} billing.Invoice: total {i} EUR" for i in range(8)]
    assert parts(lines) == (datetime(2024, 5, 1, 10, 0, 0), "warning", "billing.Invoice", "total 0 EUR")


def test_bracketed_access_log_time_and_bracketed_level_then_a_component() -> None:
    lines = [
        f"[01/May/2024:10:00:{i:02d} +0000] [notice] {HOSTS[i % 4]} mod_x[{300 + i}]: child {i} started"
        for i in range(6)
    ]
    assert parts(lines) == (datetime(2024, 5, 1, 10, 0, 0), "info", "mod_x", "child 0 started")


def test_key_value_pairs_with_the_message_last() -> None:
    lines = [
        f"ts=2024-05-01T10:00:{i:02d}Z level={('warn', 'debug')[i % 2]} host={HOSTS[i % 4]} caller=db.go:{40 + i} "
        f'msg="pool exhausted after {i} tries"'
        for i in range(8)
    ]
    assert parts(lines) == (datetime(2024, 5, 1, 10, 0, 0), "warning", "db.go:40", "pool exhausted after 0 tries")


def test_semicolons_and_a_day_first_date() -> None:
    lines = [
        f"{1 + i:02d}.05.2024 10:00:00;ERROR;{HOSTS[i % 4]};payments;card declined for order {i}" for i in range(6)
    ]
    assert parts(lines, 2) == (datetime(2024, 5, 3, 10, 0), "error", "payments", "card declined for order 2")


def test_a_level_too_few_lines_carry_is_still_kept_out_of_the_message() -> None:
    # only every third line has a level after the component: not part of the layout, still header
    lines = [
        f"2024-05-01T10:00:{i:02d}Z|web|" + ("ERROR|request failed" if i % 3 == 0 else f"request {i} served")
        for i in range(12)
    ]
    assert parts(lines, 0)[1:] == ("error", "web", "request failed")
    assert parts(lines, 1)[1:] == (None, "web", "request 1 served")


def test_words_after_the_header_are_not_cut_when_few_lines_agree_on_a_component() -> None:
    # a colon in some messages is not a ``component:``: no message word is cut
    lines = [
        f"2024-05-01T10:00:{i:02d}Z|INFO|" + ("Retry policy: backoff" if i % 4 == 0 else f"worker {i} started")
        for i in range(12)
    ]
    assert parts(lines, 0)[1:] == ("info", None, "Retry policy: backoff")
    assert parts(lines, 1)[3] == "worker 1 started"


def test_hostile_lines_cost_bounded_time_and_leave_the_header_found(tmp_path: Path) -> None:
    good = [f"2024-05-01T10:00:{i % 60:02d}Z|INFO|web|request {i} served" for i in range(150)]
    hostile = ["[" * 50_000, "|" * 50_000, "\x00\xff" * 20_000, "a=" * 30_000, '"' + "x" * 60_000]
    log = tmp_path / "mixed.log"
    log.write_text("\n".join(good[:100] + hostile * 10 + good[100:]) + "\n", encoding="utf-8", errors="replace")
    started = time.perf_counter()
    name, entries = read_entries(log, REF)
    got = list(entries)
    assert time.perf_counter() - started < 5.0
    assert name == "inferred"
    assert got[0].message == "request 0 served" and got[0].level == "info" and got[0].source == "web"
    assert got[-1].message == "request 149 served"
    assert all(len(entry.message) <= 4_000 for entry in got)


def test_a_colon_far_into_the_message_is_not_taken_for_a_component() -> None:
    # the header ends at the epoch time; "Disk Quota Warning:" is the message's own wording
    lines = [
        f"{70000 + i} worker-{i % 5} {1714557600 + i} "
        + (f"Disk Quota Warning: user u{i} is at 9{i}% of quota" if i % 2 else f"job {i} finished")
        for i in range(10)
    ]
    assert parts(lines, 1) == (
        datetime(2024, 5, 1, 10, 0, 1),
        None,
        "worker-1",
        "Disk Quota Warning: user u1 is at 91% of quota",
    )
    assert parts(lines, 0)[3] == "job 0 finished"
