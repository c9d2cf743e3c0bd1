"""The header reader's compiled shapes (one regular expression per shape of a line's first fields)
read every line as the field-by-field splitter does: the same fields where a shape matches, the
same parts (time, level, source, message) from the reader, on the sample layouts and on lines
made to sit at the edges of the field forms (times that are almost times, words with colons,
brackets, quotes, key=value pairs, empty fields, digits of other scripts, long lines)."""

from __future__ import annotations

import random
from datetime import datetime

import pytest

from caelum_mcp.tools.logs import header
from caelum_mcp.tools.logs.header import HeaderReader, compiled_shape, field_forms, infer_header, split_fields

REF = datetime(2024, 6, 1)
HOSTS = ("alpha", "bravo", "charlie", "delta")
LEVELS = ("INFO", "WARN", "ERROR", "DEBUG", "FATAL", "TRACE")

SAMPLE_LAYOUTS: dict[str, list[str]] = {
    "syslog": [
        f"Jun {1 + i % 9:2d} 0{i % 10}:1{i % 6}:2{i % 10} combo "
        f"{('sshd', 'su(pam_unix)', 'kernel')[i % 3]}[{2000 + i}]: "
        + ("session opened for user root" if i % 2 else f"Accepted password for u{i} from 10.0.{i}.1 port 22")
        for i in range(40)
    ],
    "log4j": [
        f"2015-10-18 18:01:{i % 60:02d},{i * 7 % 1000:03d} {LEVELS[i % 4]} [main] org.apache.hadoop.Mapper{i % 3}: "
        + ("done" if i % 5 == 0 else f"task {i}: {10 + i}.251.1.{i}:50010 closed")
        for i in range(40)
    ],
    "hdfs": [
        f"0811{10 + i % 9} 2036{i % 60:02d} {100 + i * 37} {LEVELS[i % 2]} dfs.DataNode$PacketResponder: "
        f"Received block blk_{i * 7919} of size {i * 1000} from /10.251.{i}.{i % 7}"
        for i in range(40)
    ],
    "zookeeper": [
        f"2015-07-29 17:41:{i % 60:02d},{i:03d} - {LEVELS[i % 3]:5} [QuorumPeer[myid={i % 3}]/0:0:0:0:0:0:0:0:2181:"
        f"Follower@{i}] - " + ("FOLLOWING - LEADER ELECTION TOOK - 42" if i % 4 == 0 else f"Got user-level id {i}")
        for i in range(40)
    ],
    "apache": [
        f"[Sun Dec 04 04:{i % 60:02d}:44 2005] [{('notice', 'error')[i % 2]}] "
        + (
            f"jk2_init() Found child {6725 + i} in scoreboard slot 10"
            if i % 3
            else "[client 127.0.0.1] Directory index"
        )
        for i in range(40)
    ],
    "proxifier": [
        f"[10.30 16:{i % 60:02d}:06] {('chrome.exe', 'QQ.exe', 'Skype.exe')[i % 3]} - "
        f"proxy.cse.cuhk.edu.hk:5070 {('open through', 'close, 451 bytes sent', 'error : Could not')[i % 3]}"
        for i in range(40)
    ],
    "iso-keys": [
        f"ts=2024-05-01T10:00:{i % 60:02d}Z level={LEVELS[i % 3].lower()} host={HOSTS[i % 4]} "
        f'msg="request {i} took {i * 3}ms"'
        for i in range(40)
    ],
    "epoch-tabs": [f"{1714557600 + i}\t{HOSTS[i % 4]}\t{LEVELS[i % 2]}\tscheduler\tjob {i} done" for i in range(40)],
    "spaced": [
        f"17/06/09 20:10:{i % 60:02d} {LEVELS[i % 2]} storage.BlockManager:  Found block rdd_{i} locally, x={i}"
        for i in range(40)
    ],
}

# pieces that sit where the field forms meet: a time or almost one, a word that a colon ends,
# brackets, quotes, key=value pairs, separators of every kind, digits of other scripts
_PIECES = (
    "2024-05-01T10:00:00Z",
    "2015-10-18 18:01:47,978",
    "081109 203615",
    "081109",
    "20240501-10:00:00:123",
    "17/06/09 20:10:40",
    "10/Oct/2000:13:55:36 +0000",
    "Jun 14 15:16:01",
    "Sun Dec 04 04:47:44 2005",
    "10.30 17:02:17",
    "18.10.2015 12:00:01",
    "12:30",
    "1:05",
    "1714557600",
    "1714557600123",
    "1714557600.5",
    "06-14 15:16:01",
    "2015-",
    "2015/",
    "2015.10",
    "127.0.0.1:50010",
    "1.2.3",
    "12/",
    "12-",
    "3",
    "42",
    "143",
    "2552",
    "65535",
    "123456",
    "1234567",
    "12345678",
    "123456789",
    "١٢٣",
    "٣:٤٥",
    "Monitor",
    "Mon",
    "Jun",
    "May",
    "Maybe",
    "DEBUG",
    "INFO",
    "warn",
    "E",
    "[INFO]",
    "[main]",
    "[pid 12]",
    "<kern.warn>",
    "(x)",
    "[",
    "]",
    '"',
    '"quoted text"',
    '"INFO"',
    "level=error",
    "ts=1714557600",
    "msg=hello",
    'k="a b"',
    "a=",
    "=",
    "x.y-z=1",
    "dfs.DataNode$PacketResponder:",
    "sshd[123]:",
    "word:",
    ":",
    "::",
    "a::",
    "-",
    "--",
    "|",
    ",",
    ";",
    "*64",
    "blk_-7724713468912166542",
    "org.apache.Foo",
    "a" * 205,
    "b" * 198 + ":",
)
_SEPARATORS = (" ", " ", " ", "  ", "\t", " | ", "|", ", ", ",", "; ", " - ", ": ", ":", "", " \x0c", "   ")


def _edge_lines(count: int, seed: int) -> list[str]:
    chooser = random.Random(seed)
    lines = []
    for _ in range(count):
        parts = [chooser.choice(_PIECES) + chooser.choice(_SEPARATORS) for _ in range(chooser.randint(1, 9))]
        lines.append(chooser.choice(("", "", " ", "\t")) + "".join(parts).rstrip("\n"))
    return lines


def _shape_of(line: str, limit: int) -> tuple[tuple[str, ...], tuple[str, ...], bool] | None:
    fields = split_fields(line, limit)
    forms = field_forms(line, fields)
    if not forms:
        return None
    return forms, tuple(f.separator for f in fields), len(fields) < limit


@pytest.mark.slow  # compiles some 300 shapes
def test_a_compiled_shape_reads_any_line_it_matches_as_the_splitter_does() -> None:
    samples = [line for layout in SAMPLE_LAYOUTS.values() for line in layout[:6]]
    lines = samples + _edge_lines(100, seed=7)
    limit = 6
    learnt_from: dict[tuple[tuple[str, ...], tuple[str, ...], bool], str] = {}
    for line in lines:
        key = _shape_of(line, limit)
        if key is None:
            continue
        forms, separators, _ = key
        learnt_from.setdefault(key, line)
        # shorter shapes too, as the reader keeps them: the line may go on after their fields
        for count in range(2, len(forms)) if line in samples else ():
            learnt_from.setdefault((forms[:count], separators[:count], False), line)
    shapes = {key: compiled_shape(*key) for key in learnt_from}
    elsewhere = 0
    for line in lines:
        expected = split_fields(line, limit)
        for key, shape in shapes.items():
            fields = shape.fields(line) if len(line) <= header.HEAD_CHARS else None
            if fields is None:
                continue
            assert fields == expected[: len(fields)], (line, key)
            if shape.complete:
                assert fields == expected, (line, key)
            elsewhere += learnt_from[key] != line
    # shapes read lines they were not learnt on; the sample lines are read by their own shapes
    # (an edge line may be left to the splitter by a guard stricter than the splitter's)
    assert elsewhere > len(lines)
    for line in samples:
        key = _shape_of(line, limit)
        assert key is not None and shapes[key].fields(line) == split_fields(line, limit), line


def _read_all(lines: list[str], compiled: bool) -> tuple[list[object], int]:
    layout = infer_header(lines)
    assert layout is not None
    reader = HeaderReader(layout, REF, compiled=compiled)
    results = [reader.read(line) for line in lines + lines]  # the second pass: shapes are learnt
    return results, len(reader._shapes)


def test_the_reader_gives_the_same_parts_with_and_without_compiled_shapes_on_the_sample_layouts() -> None:
    for name, lines in SAMPLE_LAYOUTS.items():
        compiled, shapes = _read_all(lines, compiled=True)
        plain, none = _read_all(lines, compiled=False)
        assert compiled == plain, name
        assert none == 0
        layout = infer_header(lines)
        assert layout is not None
        assert shapes > 0 or layout.delimiter, f"{name}: no shape was compiled, so nothing was compared"


def test_the_reader_gives_the_same_parts_on_edge_lines_under_each_sample_layout() -> None:
    edge = _edge_lines(120, seed=11)
    for name, lines in SAMPLE_LAYOUTS.items():
        layout = infer_header(lines)
        assert layout is not None
        fast, plain = HeaderReader(layout, REF), HeaderReader(layout, REF, compiled=False)
        mixed = [line for pair in zip(lines + lines, edge + edge, strict=False) for line in pair]
        assert [fast.read(line) for line in mixed] == [plain.read(line) for line in mixed], name


def test_lines_past_the_head_and_delimited_layouts_are_read_by_the_splitter() -> None:
    long_lines = [f"2024-05-01 10:00:{i:02d} INFO app: " + "x" * 600 for i in range(10)]
    results, shapes = _read_all(long_lines, compiled=True)
    assert shapes == 0 and results == _read_all(long_lines, compiled=False)[0]
    piped = [f"2024-05-01T10:00:{i:02d}Z|INFO|{HOSTS[i % 4]}|IPC Server handler {i}|done {i}" for i in range(20)]
    results, shapes = _read_all(piped, compiled=True)
    assert shapes == 0 and results == _read_all(piped, compiled=False)[0]


def test_a_shape_learnt_on_a_plain_word_never_reads_a_time_or_other_form_in_its_place() -> None:
    # each guard of a word (no time, bracket, quote or key=value starts there) is put to every
    # edge piece: the shape either does not match or cuts the line as the splitter does
    # the shape ends one field past the piece, so a piece of two fields is put to it as well
    templates = (
        ("{} rest of it", 2),
        ("host {} rest of it", 3),
        ("[main] {}: the message", 3),
        ("2024-05-01 10:00:00 {} 7 done", 3),
    )
    plain = ("word", "Alpha", "x1", "3", "12", "143", "2552", "65535", "1234567", "127.0.0.1", "task:", "1:", "a:b:")
    checked = 0
    for template, limit in templates:
        for word in plain:
            learnt = template.format(word)
            key = _shape_of(learnt, limit)
            assert key is not None
            shape = compiled_shape(*key)
            assert shape.fields(learnt) == split_fields(learnt, limit), learnt
            for piece in _PIECES + tuple(p + s for p in _PIECES[:40] for s in (":", " 12:30:00", "/Oct/2000:1")):
                line = template.format(piece)
                fields = shape.fields(line) if len(line) <= header.HEAD_CHARS else None
                if fields is not None:
                    assert fields == split_fields(line, limit)[: len(fields)], (learnt, line)
                    checked += 1
    assert checked > 100
