"""The log robustness set: the development logs re-written with headers nobody tuned the reader for.

Each system's structured CSV (``X_2k.log_structured.csv``: the message in ``Content``, the true
event in ``EventId``) is written out again, one line per row, under other line headers: fields
reordered, separated by ``|``, ``,``, ``;`` or tabs, ``key=value`` pairs, and other timestamp
forms (ISO 8601 with ``T`` and ``Z`` or an offset, epoch seconds and milliseconds,
``dd/MMM/yyyy:HH:mm:ss``, ``dd.MM.yyyy``, ``yyyyMMdd-HH:mm:ss:SSS``). The level, component, pid
and host come from the CSV's own columns where it has them (so they stay tied to their events as
in the original), else from the line number. Everything is deterministic: the same input gives
the same files, so a figure can be repeated.

The output folder is laid out like loghub-2k (``<System>-<layout>/<System>-<layout>_2k.log`` and
its ``_structured.csv``), so ``bench/logs.py --data OUT`` scores it with the same grouping
accuracy; ``bench/logs.py --robustness`` writes it to a temporary folder and does both.

    .venv/bin/python bench/log_reformat.py OUT [--data DIR] [--layouts pipe-iso csv-epoch ...]
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "loghub-2k"
_START = datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC)
_LEVEL_WORDS = {"trace", "debug", "info", "notice", "warn", "warning", "error", "fatal", "critical", "severe"}
_HOSTS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf")
_THREADS = ("main", "IPC Server handler", "pool worker", "scheduler", "Timer for app")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class Row:
    """One line to write: its header values and message."""

    when: datetime
    level: str
    component: str
    pid: str
    host: str
    thread: str
    content: str


def _ms(when: datetime) -> str:
    return f"{when.microsecond // 1000:03d}"


LAYOUTS: dict[str, Callable[[Row], str]] = {
    # ISO 8601 with T and Z, fields separated by | with no space (the first word of the message
    # is glued to the header when it is not cut off)
    "pipe-iso": lambda r: (
        f"{r.when:%Y-%m-%dT%H:%M:%S}.{_ms(r.when)}Z|{r.level.upper()}|{r.host}|{r.component}|{r.pid}|{r.content}"
    ),
    # epoch seconds, comma separated like a CSV without quoting
    "csv-epoch": lambda r: f"{int(r.when.timestamp())},{r.level.lower()},{r.thread},{r.component},{r.content}",
    # the access log's time in brackets, a bracketed level, a host, component[pid]:
    "bracket-access": lambda r: (
        f"[{r.when.day:02d}/{_MONTHS[r.when.month - 1]}/{r.when.year}:{r.when:%H:%M:%S} +0000] "
        f"[{r.level.lower()}] {r.host} {r.component}[{r.pid}]: {r.content}"
    ),
    # fields reordered: the level first, then a time with an offset, the host and the component
    "level-first": lambda r: (
        f"{r.level.upper():<5} {r.when:%Y-%m-%dT%H:%M:%S}+01:00 {r.host} {r.component}: {r.content}"
    ),
    # epoch milliseconds and tabs
    "tab-epoch-ms": lambda r: (
        f"{int(r.when.timestamp() * 1000)}\t{r.host}\t{r.level.upper()}\t{r.component}\t{r.content}"
    ),
    # logfmt-style key=value pairs with the message last
    "key-value": lambda r: (
        f"ts={r.when:%Y-%m-%dT%H:%M:%S}Z level={r.level.lower()} host={r.host} pid={r.pid} "
        f'component={r.component} msg="' + r.content.replace('"', "'") + '"'
    ),
    # a day-first date, semicolons
    "semicolon-dmy": lambda r: f"{r.when:%d.%m.%Y %H:%M:%S};{r.level.upper()};{r.host};{r.component};{r.content}",
    # a compact time, | without a level, the pid after the component
    "pipe-compact": lambda r: f"{r.when:%Y%m%d-%H:%M:%S}:{_ms(r.when)}|{r.component}|{r.pid}|{r.content}",
    # a space-separated Java layout whose thread name holds spaces
    "java-thread": lambda r: (
        f"{r.when:%Y-%m-%d %H:%M:%S},{_ms(r.when)} {r.level.upper()} [{r.thread}] {r.component}: {r.content}"
    ),
}


def _column(rows: list[dict[str, str]], names: tuple[str, ...]) -> str | None:
    for name in names:
        if rows and name in rows[0]:
            return name
    return None


def read_rows(structured: Path) -> tuple[list[Row], list[str], list[str]]:
    """The rows to re-write, the true event ids and the contents, from a structured CSV."""
    with structured.open(encoding="utf-8", newline="") as f:
        table = list(csv.DictReader(f))
    level_column = _column(table, ("Level",))
    # Loghub names some host columns "Level" (Linux): a level column must hold level words
    if level_column and sum(r[level_column].lower() in _LEVEL_WORDS for r in table) < 0.9 * len(table):
        level_column = None
    component_column = _column(table, ("Component", "Program", "Process"))
    pid_column = _column(table, ("Pid", "PID", "Id"))
    host_column = _column(table, ("Node", "User", "Location"))
    rows = []
    for i, record in enumerate(table):
        when = _START + timedelta(seconds=i * 1.37 + (i * 7919 % 1000) / 1000)
        component = (record[component_column] if component_column else "") or "app"
        rows.append(
            Row(
                when=when,
                level=record[level_column] if level_column else "info",
                component=component.replace(" ", "_").replace("|", "/").replace(",", ";"),
                pid=(record[pid_column] if pid_column else "") or str(1000 + i * 7919 % 5000),
                # words with no digit that vary independently of the event: masking cannot hide them
                host=((record[host_column] if host_column else "") or _HOSTS[(i * 5 + i // 3) % len(_HOSTS)]).replace(
                    " ", "_"
                ),
                thread=_THREADS[(i * 3 + i // 7) % len(_THREADS)],
                content=record["Content"].replace("\n", " "),
            )
        )
    return rows, [r["EventId"] for r in table], [r["Content"] for r in table]


def write_set(data: Path, out: Path, layouts: list[str] | None = None) -> list[Path]:
    """Write the robustness set for every system under ``data`` into ``out``; the system folders."""
    chosen = layouts or list(LAYOUTS)
    unknown = set(chosen) - set(LAYOUTS)
    if unknown:
        raise SystemExit(f"unknown layout(s) {sorted(unknown)}: choose from {', '.join(LAYOUTS)}")
    written = []
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        for structured in sorted(folder.glob("*_2k.log_structured.csv")):
            rows, truth, contents = read_rows(structured)
            system = structured.name.removesuffix("_2k.log_structured.csv")
            for layout in chosen:
                name = f"{system}-{layout}"
                target = out / name
                target.mkdir(parents=True, exist_ok=True)
                render = LAYOUTS[layout]
                (target / f"{name}_2k.log").write_text("".join(render(r) + "\n" for r in rows), encoding="utf-8")
                with (target / f"{name}_2k.log_structured.csv").open("w", encoding="utf-8", newline="") as f:
                    writer = csv.writer(f)
                    writer.writerow(["LineId", "Content", "EventId"])
                    writer.writerows((i + 1, c, e) for i, (c, e) in enumerate(zip(contents, truth, strict=True)))
                written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write the set into (created)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the development systems (loghub-2k layout)")
    parser.add_argument("--layouts", nargs="+", choices=sorted(LAYOUTS), default=None)
    args = parser.parse_args()
    folders = write_set(args.data, args.out, args.layouts)
    print(f"wrote {len(folders)} system folders under {args.out}")


if __name__ == "__main__":
    main()
