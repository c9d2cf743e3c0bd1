"""Ranking, timeline and bursts on a generated incident: steady background traffic, then a database
outage in which two signatures burst together."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from caelum_mcp.tools.logs import analysis
from caelum_mcp.tools.logs.diagnosis import analyse, collect_logs, mine, signature_at

START = datetime(2024, 5, 1, 9, 0)


def incident_log(path: Path) -> Path:
    lines = []
    for i in range(720):  # two hours, one request every 10 s
        when = START + timedelta(seconds=10 * i)
        lines.append(
            f"{when:%Y-%m-%d %H:%M:%S},000 INFO [http-{i % 4}] com.shop.Api: GET /orders/{i} 200 in {i % 50} ms"
        )
        if datetime(2024, 5, 1, 10, 30) <= when < datetime(2024, 5, 1, 10, 36):
            lines.append(
                f"{when:%Y-%m-%d %H:%M:%S},500 ERROR [http-{i % 4}] com.shop.Db: query timed out after 5000 ms"
            )
            lines.append(
                f"{when:%Y-%m-%d %H:%M:%S},600 WARN [http-{i % 4}] com.shop.Pool: connection pool exhausted (32/32)"
            )
            lines.append("java.sql.SQLTransientConnectionException: timeout")
            lines.append("\tat com.zaxxer.hikari.pool.HikariPool.createTimeoutException(HikariPool.java:696)")
    lines.append(
        f"{START + timedelta(minutes=61):%Y-%m-%d %H:%M:%S},000 FATAL [main] com.shop.Boot: disk /data is read-only"
    )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_an_incident_ranks_its_errors_first_and_groups_what_bursts_together(tmp_path: Path) -> None:
    log = incident_log(tmp_path / "shop.log")
    collected = collect_logs([(log, "shop.log")])
    mt, templates = mine(collected)
    report, names = analyse(collected, mt, templates, max_signatures=10)
    assert report.entries == 720 + 36 + 36 + 1
    by_template = {s.template: s for s in report.signatures}
    timeout = by_template["query timed out after <*>"]
    pool = by_template["connection pool exhausted (<*>/<*>)"]
    fatal = by_template["disk <*> is read-only"]
    assert [s.id for s in report.signatures[:3]] == sorted([timeout.id, pool.id, fatal.id], key=lambda i: int(i[1:]))
    assert report.signatures[3].level == "info"
    assert fatal.level == "critical" and timeout.level == "error" and pool.level == "warning"
    assert timeout.count == 36 and timeout.first_seen == datetime(2024, 5, 1, 10, 30, 0, 500000)
    assert timeout.bursts == 1 and "burst" in timeout.why
    assert timeout.sources == ["com.shop.Db"]
    assert pool.examples[0].detail and "HikariPool" in pool.examples[0].detail  # the end of its stack trace
    # the two burst together, in one window around 10:30
    group = next(g for g in report.together if {timeout.id, pool.id} <= set(g.signatures))
    window = group.windows[0]
    assert window.start <= datetime(2024, 5, 1, 10, 30) < window.end and window.counts[timeout.id] >= 30
    # the timeline: round intervals, every entry counted, the top signatures' series
    timeline = report.timeline
    assert timeline is not None and timeline.interval_s in (300, 600)
    assert sum(timeline.total) == report.entries
    series = {s.signature: s.counts for s in timeline.series}
    assert sum(series[timeout.id]) == 36 and len(series[timeout.id]) == len(timeline.total)
    # every example line maps back to its own signature; a line of a trace belongs to its entry
    first = timeout.examples[0]
    assert signature_at(collected, mt, names, first.file, first.line) == timeout.id
    assert signature_at(collected, mt, names, first.file, first.line + 1) == pool.id
    assert signature_at(collected, mt, names, first.file, first.line + 3) == pool.id  # its trace's "\tat" line
    assert signature_at(collected, mt, names, "shop.log", 10**6) != timeout.id
    assert signature_at(collected, mt, names, "other.log", first.line) is None


def test_focus_lifts_matching_signatures(tmp_path: Path) -> None:
    log = incident_log(tmp_path / "shop.log")
    collected = collect_logs([(log, "shop.log")])
    mt, templates = mine(collected)
    plain, _ = analyse(collected, mt, templates)
    focused, _ = analyse(collected, mt, templates, focus="connection pool")
    assert plain.signatures[0].template != "connection pool exhausted (<*>/<*>)"
    assert focused.signatures[0].template == "connection pool exhausted (<*>/<*>)"
    assert "focus" in focused.signatures[0].why


def test_nice_intervals_and_bursts() -> None:
    assert analysis.nice_interval(3600, 24) == 300
    assert analysis.nice_interval(59, 60) == 1
    assert analysis.nice_interval(40 * 86400, 24) == 172800
    even = analysis.Counter({b: 2 for b in range(50)})
    assert analysis.bursts(even, 100, 50, 0) == [] and analysis.burstiness(even, 100, 50) == 0.0
    spike = analysis.Counter({**{b: 1 for b in range(50)}, 20: 30, 21: 25})
    found = analysis.bursts(spike, sum(spike.values()), 50, 7)
    assert [(b.first_bucket, b.last_bucket, b.peak) for b in found] == [(20, 21, 30)]
    assert analysis.burstiness(spike, sum(spike.values()), 50) > 0.4
    other = analysis.Burst(signature=8, first_bucket=22, last_bucket=22, peak=5, count=5)
    groups = analysis.bursts_together([*found, other, analysis.Burst(9, 40, 40, 4, 4)])
    assert [[b.signature for b in g] for g in groups] == [[7, 8]]


def test_logs_without_times_still_rank(tmp_path: Path) -> None:
    log = tmp_path / "plain.txt"
    log.write_text("starting up\nERROR: cannot open config\nserving\nserving\n")
    collected = collect_logs([(log, "plain.txt")])
    report, _ = analyse(collected, *mine(collected))
    assert report.timeline is None and report.signatures[0].level == "error"


def test_each_message_keeps_its_first_and_latest_example_and_at_most_five_sources(tmp_path: Path) -> None:
    lines = [f"2024-05-01 09:00:0{i},000 INFO [t] app.Src{i}: job {i} done" for i in range(7)]
    lines.insert(3, "2024-05-01 09:00:03,500 ERROR [t] app.Db: disk full")
    (tmp_path / "a.log").write_text("\n".join(lines) + "\n")
    (tmp_path / "b.log").write_text("2024-05-01 09:01:00,000 INFO [t] app.Src1: job 99 done\n")
    collected = collect_logs([(tmp_path / "a.log", "a.log"), (tmp_path / "b.log", "b.log")])
    job = collected.masked.index("job <*> done")
    assert collected.weights[job] == 8
    assert [(e.file, e.line, e.text) for e in collected.examples[job]] == [
        (0, 1, "job 0 done"),
        (1, 1, "job 99 done"),  # the latest, from the second file
    ]
    disk = collected.masked.index("disk full")
    assert [(e.file, e.line) for e in collected.examples[disk]] == [(0, 4)]
    assert dict(collected.sources[job]) == {"app.Src0": 1, "app.Src1": 2, "app.Src2": 1, "app.Src3": 1, "app.Src4": 1}
    assert collected.files[0].first == datetime(2024, 5, 1, 9) and collected.files[0].last == datetime(
        2024, 5, 1, 9, 0, 6
    )
    assert collected.files[1].first == collected.files[1].last == datetime(2024, 5, 1, 9, 1)
