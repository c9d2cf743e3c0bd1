"""Do two log readers parse the same? Every entry (line, time, level, source, message, folded lines)
of every development log and of every re-written log (bench/log_reformat.py) is compared.

Two comparisons, each over the same files:

- the header reader's compiled shapes against its field-by-field splitter alone (the same code,
  ``header.MAX_SHAPES = 0``): the fast path must change no parse result;
- with ``--reference DIR``, the reader of another checkout (``git worktree add /tmp/ref <commit>``)
  against this one: a change meant for speed only must leave every entry as it was; and the whole
  product path (``collect_logs`` and ``mine``: every distinct masked message, its count, examples
  and sources, each entry's file, line, time, level and message, the template of each message
  and the templates), and the miner over the CSVs' ``Content`` column, so that no grouping moves.

    .venv/bin/python bench/log_equivalence.py [--data DIR] [--reference /tmp/ref]

Exit status 1 when any file differs (the first differences are printed).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import astuple
from datetime import datetime
from pathlib import Path
from typing import Any

from caelum_mcp.tools.logs import diagnosis as current_diagnosis
from caelum_mcp.tools.logs import header
from caelum_mcp.tools.logs import mining as current_mining
from caelum_mcp.tools.logs import reading as current_reading

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "loghub-2k"
# a fixed reference date: year-less times must not depend on the files' modification times
REFERENCE = datetime(2021, 6, 1, 12, 0, 0)
SHOWN = 3  # differences printed per file

Entries = tuple[str, list[tuple[Any, ...]]]
Reader = Callable[[Path], Entries]


def read_with(reading: Any) -> Reader:
    """A reader that gives a file's format name and its entries as tuples, with ``reading`` (a
    ``tools.logs.reading`` module)."""

    def read(path: Path) -> Entries:
        name, entries = reading.read_entries(path, REFERENCE)
        return name, [astuple(entry) for entry in entries]

    return read


def load_reference(root: Path, module: str = "reading") -> Any:
    """``tools.logs.<module>`` of the checkout at ``root``, imported apart from this one's."""
    tools = root / "tools"
    if not (tools / "logs" / "reading.py").is_file():
        raise SystemExit(f"{root} has no tools/logs/reading.py: give the root of a checkout (git worktree add)")
    if "_reference_tools" not in sys.modules:
        package = types.ModuleType("_reference_tools")
        package.__path__ = [str(tools)]
        sys.modules["_reference_tools"] = package
    return importlib.import_module(f"_reference_tools.logs.{module}")


def collect_with(diagnosis: Any) -> Reader:
    """A reader that gives what the product path keeps of a file (``collect_logs`` then ``mine``,
    with ``diagnosis``, a ``tools.logs.diagnosis`` module): the file's summary, then per distinct
    masked message its text, count, examples, sources and template, then each entry, then the
    templates."""

    def read(path: Path) -> Entries:
        collected = diagnosis.collect_logs([(path, path.name)])
        message_templates, templates = diagnosis.mine(collected)
        summary = collected.files[0]
        rows: list[tuple[Any, ...]] = [(summary.format, summary.entries, summary.first, summary.last, summary.error)]
        for uid, text in enumerate(collected.masked):
            examples = tuple((e.file, e.line, e.text, e.detail) for e in collected.examples[uid])
            sources = tuple(sorted(collected.sources[uid].items()))
            rows.append((text, collected.weights[uid], examples, sources, message_templates[uid]))
        rows += zip(
            collected.entry_file,
            collected.entry_line,
            [repr(t) for t in collected.entry_time],  # nan != nan
            collected.entry_level,
            collected.entry_message,
            strict=True,
        )
        rows.append(tuple(templates))
        return summary.format, rows

    return read


def mine_content_with(mining: Any) -> Reader:
    """A reader that gives the miner's labels and templates over a Loghub CSV's ``Content``
    column, with ``mining`` (a ``tools.logs.mining`` module): the masking + mining figure's path."""

    def read(path: Path) -> Entries:
        with path.open(encoding="utf-8", newline="") as f:
            content = [row["Content"] for row in csv.DictReader(f)]
        mined = mining.mine_templates(content)
        return "content", [tuple(mined.labels), tuple(mined.templates), tuple(mined.counts)]

    return read


@contextmanager
def splitter_only() -> Iterator[None]:
    """The header reader without compiled shapes while inside."""
    saved = header.MAX_SHAPES
    header.MAX_SHAPES = 0
    try:
        yield
    finally:
        header.MAX_SHAPES = saved


def log_files(data: Path, rewritten: Path) -> list[Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from log_reformat import write_set

    write_set(data, rewritten)
    return sorted(data.glob("*/*_2k.log")) + sorted(rewritten.glob("*/*_2k.log"))


def differences(expected: Entries, got: Entries) -> list[str]:
    """What differs between two readings of one file (empty: nothing)."""
    found = []
    if expected[0] != got[0]:
        found.append(f"format {expected[0]!r} != {got[0]!r}")
    if len(expected[1]) != len(got[1]):
        found.append(f"{len(expected[1])} entries != {len(got[1])}")
    for before, after in zip(expected[1], got[1], strict=False):
        if before != after:
            found.append(f"entry {before} != {after}")
            if len(found) >= SHOWN:
                break
    return found


def compare(files: list[Path], expected: Reader, got: Reader, label: str) -> int:
    """Prints the files whose readings differ; the count of those."""
    differing = entries = 0
    for path in files:
        before, after = expected(path), got(path)
        entries += len(before[1])
        found = differences(before, after)
        if found:
            differing += 1
            print(f"  DIFFERS {path.parent.name}/{path.name}:")
            for line in found[:SHOWN]:
                print(f"    {line[:400]}")
    verdict = "identical" if differing == 0 else f"{differing} files DIFFER"
    print(f"{label}: {len(files)} files, {entries} entries: {verdict}")
    return differing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the development systems (loghub-2k layout)")
    parser.add_argument("--reference", type=Path, default=None, help="root of another checkout to compare with")
    args = parser.parse_args()
    current = read_with(current_reading)

    def splitter(path: Path) -> Entries:
        with splitter_only():
            return current(path)

    with tempfile.TemporaryDirectory() as tmp:
        files = log_files(args.data, Path(tmp))
        differing = compare(files, splitter, current, "compiled shapes vs the field splitter")
        if args.reference is not None:
            root = args.reference.resolve()
            reference = read_with(load_reference(root))
            differing += compare(files, reference, current, f"entries: this checkout vs {args.reference}")
            reference_path = collect_with(load_reference(root, "diagnosis"))
            current_path = collect_with(current_diagnosis)
            label = f"collect_logs + mine (masked messages, entries, templates): this checkout vs {args.reference}"
            differing += compare(files, reference_path, current_path, label)
            tables = sorted(args.data.glob("*/*_2k.log_structured.csv"))
            reference_mining = mine_content_with(load_reference(root, "mining"))
            label = f"the miner over the CSVs' Content: this checkout vs {args.reference}"
            differing += compare(tables, reference_mining, mine_content_with(current_mining), label)
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
