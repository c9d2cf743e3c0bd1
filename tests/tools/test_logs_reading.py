"""Reading logs: every supported format detected from real-shaped lines, continuation lines folded,
plain, .gz and rotated files streamed in order, journald exports, and the since/until filter."""

from __future__ import annotations

import gzip
import json
import struct
from datetime import datetime
from pathlib import Path

import pytest

from caelum_mcp.tools.logs.diagnosis import collect_logs
from caelum_mcp.tools.logs.formats import canonical_level, detect_format
from caelum_mcp.tools.logs.reading import log_files, read_entries

REF = datetime(2024, 6, 1)

# (format expected, lines, (time, level, source, message) of the first line)
SAMPLES = {
    "syslog": (
        [
            "Jun 14 15:16:01 combo sshd(pam_unix)[19939]: authentication failure; logname= uid=0 rhost=218.188.2.4",
            "Jun 14 15:16:02 combo sshd(pam_unix)[19937]: check pass; user unknown",
            "Jul  1 09:00:55 calvisitor-10-105-160-95 kernel[0]: ARPT: 620651.021206: wl0: wl_update_tcpkeep_seq",
        ],
        (datetime(2023, 6, 14, 15, 16, 1), None, "sshd(pam_unix)", "authentication failure; logname= uid=0 rhost=218.188.2.4"),  # noqa: E501
    ),
    "syslog-rfc5424": (
        ['<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3"] An app event'],  # noqa: E501
        (datetime(2003, 10, 11, 22, 14, 15, 3000), "info", "evntslog", "An app event"),
    ),
    "access-log": (
        [
            '127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326',
            '127.0.0.2 - - [10/Oct/2000:13:55:37 -0700] "POST /api/orders HTTP/1.1" 502 173 "-" "curl/8.0"',
        ],
        (datetime(2000, 10, 10, 20, 55, 36), "info", None, "GET /apache_pb.gif HTTP/1.0 200"),
    ),
    "apache-error": (
        [
            "[Sun Dec 04 04:47:44 2005] [notice] workerEnv.init() ok /etc/httpd/conf/workers2.properties",
            "[Wed Oct 11 14:32:52.123456 2000] [core:error] [pid 35708:tid 4328636416] [client 72.15.99.187] File does "
            "not exist: /usr/local/apache2/htdocs/favicon.ico",
        ],
        (datetime(2005, 12, 4, 4, 47, 44), "info", None, "workerEnv.init() ok /etc/httpd/conf/workers2.properties"),
    ),
    "nginx-error": (
        [
            '2024/05/01 10:00:01 [error] 1234#1234: *5 connect() failed (111: Connection refused) while connecting to '
            'upstream, client: 127.0.0.1, server: api, request: "GET / HTTP/1.1"'
        ],
        (datetime(2024, 5, 1, 10, 0, 1), "error", None, "connect() failed (111: Connection refused) while connecting"),
    ),
    "python-logging": (
        [
            "2024-05-01 10:00:00,123 - app.db - ERROR - query failed after 3 retries",
            "Traceback (most recent call last):",
            '  File "/srv/app/db.py", line 10, in run',
            "psycopg.OperationalError: connection refused",
            "2024-05-01 10:00:01,000 - app.web - INFO - request done",
        ],
        (datetime(2024, 5, 1, 10, 0, 0, 123000), "error", "app.db", "query failed after 3 retries"),
    ),
    "java": (
        [
            "2015-10-18 18:01:47,978 INFO [main] org.apache.hadoop.mapreduce.v2.app.MRAppMaster: Created MRAppMaster",
            "2015-10-18 18:01:48,963 ERROR [main] org.apache.hadoop.ipc.Client: Retrying connect to server",
            "java.net.ConnectException: Connection refused",
            "\tat sun.nio.ch.SocketChannelImpl.checkConnect(Native Method)",
            "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block blk_38865 terminating",
        ],
        (datetime(2015, 10, 18, 18, 1, 47, 978000), "info", "org.apache.hadoop.mapreduce.v2.app.MRAppMaster", "Created MRAppMaster"),  # noqa: E501
    ),
    "logcat": (
        ["03-17 16:13:38.811  1702  2395 D WindowManager: printFreezingDisplayLogsopening app wtoken = AppWindowToken"],
        (datetime(2024, 3, 17, 16, 13, 38, 811000), "debug", "WindowManager", "printFreezingDisplayLogsopening app wtoken = AppWindowToken"),  # noqa: E501
    ),
    "generic": (
        [
            "[10.30 16:49:06] chrome.exe - proxy.cse.cuhk.edu.hk:5070 open through proxy proxy.cse.cuhk.edu.hk:5070 HTTPS",  # noqa: E501
            "[10.30 16:49:07] chrome.exe *64 - proxy.cse.cuhk.edu.hk:5070 close, 403 bytes sent, lifetime <1 sec>",
        ],
        (datetime(2023, 10, 30, 16, 49, 6), None, "chrome.exe", "proxy.cse.cuhk.edu.hk:5070 open through proxy proxy.cse.cuhk.edu.hk:5070 HTTPS"),  # noqa: E501
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_format_is_detected_and_parsed(name: str) -> None:
    lines, (when, level, source, message) = SAMPLES[name]
    fmt = detect_format(lines, REF)
    assert fmt.name == name
    parsed = fmt.parse(lines[0])
    assert parsed is not None
    assert (parsed.time, parsed.level, parsed.source) == (when, level, source)
    assert parsed.message.startswith(message)


def test_access_log_level_comes_from_the_status() -> None:
    lines = SAMPLES["access-log"][0]
    fmt = detect_format(lines, REF)
    parsed = fmt.parse(lines[1])
    assert parsed is not None and parsed.level == "error" and parsed.message == "POST /api/orders HTTP/1.1 502"


def test_json_lines_and_journalctl_json() -> None:
    lines = [
        json.dumps({"time": "2024-05-01T10:00:00Z", "level": "warn", "logger": "api", "msg": "slow query", "ms": 900}),
        json.dumps({"__REALTIME_TIMESTAMP": "1714557600000000", "PRIORITY": "3", "SYSLOG_IDENTIFIER": "sshd",
                    "MESSAGE": "error: kex_exchange_identification: Connection closed"}),
    ]  # fmt: skip
    fmt = detect_format(lines, REF)
    assert fmt.name == "json"
    first, second = fmt.parse(lines[0]), fmt.parse(lines[1])
    assert first is not None and second is not None
    assert (first.time, first.level, first.source, first.message) == (
        datetime(2024, 5, 1, 10),
        "warning",
        "api",
        "slow query",
    )
    assert (second.time, second.level, second.source) == (datetime(2024, 5, 1, 10), "error", "sshd")


def test_levels_are_canonical() -> None:
    assert [canonical_level(w) for w in ("WARN", "err", "E", "3", "notice", "FATAL", "bogus")] == [
        "warning", "error", "error", "error", "info", "critical", None,
    ]  # fmt: skip


def _write(path: Path, lines: list[str], *, gz: bool = False) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_continuation_lines_fold_into_their_entry_and_keep_the_last_as_detail(tmp_path: Path) -> None:
    log = _write(tmp_path / "app.log", SAMPLES["python-logging"][0])
    name, entries = read_entries(log)
    got = list(entries)
    assert name == "python-logging"
    assert [(e.line, e.extra_lines) for e in got] == [(1, 3), (5, 0)]
    assert got[0].detail == "psycopg.OperationalError: connection refused"


def test_rotated_and_gzipped_files_are_read_oldest_first(tmp_path: Path) -> None:
    def line(hour: int) -> str:
        return f"2024-05-01 {hour:02d}:00:00,000 - app - INFO - tick {hour}"

    _write(tmp_path / "app.log", [line(5)])
    _write(tmp_path / "app.log.1", [line(4)])
    _write(tmp_path / "app.log.2.gz", [line(3)], gz=True)
    _write(tmp_path / "app.log.10.gz", [line(1)], gz=True)
    # a log uses one scheme; mixed, numbered rotations (highest first) come before dated ones
    _write(tmp_path / "app.log-20240430.gz", [line(2)], gz=True)
    _write(tmp_path / "other.log", [line(9)])
    files = log_files(tmp_path, ["app.log"])
    assert [f.name for f in files] == ["app.log.10.gz", "app.log.2.gz", "app.log.1", "app.log-20240430.gz", "app.log"]
    collected = collect_logs([(f, f.name) for f in files])
    assert collected.entries == 5
    assert {s.file: s.format for s in collected.files}["app.log.2.gz"] == "python-logging"
    # a folder gives its files; a glob its matches
    assert {f.name for f in log_files(tmp_path, ["."])} >= {"app.log", "other.log", "app.log.2.gz"}
    assert [f.name for f in log_files(tmp_path, ["*.log"])] == ["app.log", "other.log"]


def test_gzip_is_recognised_by_content_not_name(tmp_path: Path) -> None:
    log = _write(tmp_path / "service.log", SAMPLES["java"][0], gz=True)
    name, entries = read_entries(log)
    assert name == "java" and len(list(entries)) == 3


def test_journald_export_with_a_binary_field(tmp_path: Path) -> None:
    binary = b"bad \x00 bytes\nsecond line"
    blob = (
        b"__CURSOR=s=1\n__REALTIME_TIMESTAMP=1714557600000000\nPRIORITY=3\nSYSLOG_IDENTIFIER=nginx\n"
        b"MESSAGE=upstream timed out\n\n"
        b"__CURSOR=s=2\n__REALTIME_TIMESTAMP=1714557660000000\nPRIORITY=6\nSYSLOG_IDENTIFIER=app\nMESSAGE\n"
        + struct.pack("<Q", len(binary)) + binary + b"\n\n"
    )  # fmt: skip
    path = tmp_path / "journal.export"
    path.write_bytes(blob)
    name, entries = read_entries(path)
    got = list(entries)
    assert name == "journald-export"
    assert [(e.time, e.level, e.source) for e in got] == [
        (datetime(2024, 5, 1, 10, 0), "error", "nginx"),
        (datetime(2024, 5, 1, 10, 1), "info", "app"),
    ]
    assert got[0].message == "upstream timed out" and got[1].message.startswith("bad ")


def test_since_and_until_keep_only_entries_inside(tmp_path: Path) -> None:
    lines = [f"2024-05-01 10:{m:02d}:00,000 - app - ERROR - failure {m}" for m in range(10)]
    log = _write(tmp_path / "app.log", lines)
    collected = collect_logs([(log, "app.log")], since=datetime(2024, 5, 1, 10, 3), until=datetime(2024, 5, 1, 10, 6))
    assert collected.entries == 4 and collected.filtered_out == 6
    assert list(collected.entry_line) == [4, 5, 6, 7]


def test_the_entry_cap_stops_reading_and_says_so(tmp_path: Path) -> None:
    log = _write(tmp_path / "big.log", [f"2024-05-01 10:00:{s % 60:02d},000 - a - INFO - n {s}" for s in range(3000)])
    collected = collect_logs([(log, "big.log")], max_entries=1000)
    assert collected.entries == 1000 and collected.truncated and collected.notes


def test_an_unreadable_file_is_reported_not_raised(tmp_path: Path) -> None:
    collected = collect_logs([(tmp_path / "missing.log", "missing.log")])
    assert collected.files[0].format == "unreadable" and collected.files[0].error
