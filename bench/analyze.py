"""What ``analyze_and_improve_code(task="analyze")`` costs next to running the analysers by hand.

Two paths analyse the same copy of a real code base:

- ``by hand``: ruff, bandit, radon cc, radon mi and vulture (plus lizard when the tree has files in
  the languages lizard covers) run one after another as subprocesses, with exactly the arguments and
  file lists the internal tools pass (``caelum_mcp.tools.code``), through the same
  ``run_command`` (argument list, timeout, output cap). Their output is not parsed on the clock;
- ``caelum``: the real tool through the real MCP server in-process (``mcp.Client(create_server(...))``),
  ``llm_review=False``: the analysers concurrently, plus what caelum adds (file listing and content
  fingerprint, the secrets scan, project structure, the dependency check without audit, parsing,
  the result cache and the MCP round trip).

``cold`` is the first call with an empty cache directory (a fresh server and data directory each
time), ``warm`` the second call on the unchanged tree. Also measured on the same server: a call
after touching one file (mtime only: the cache key is the content, so it stays warm) and after
editing one file (the key covers the whole file set, so every analyser runs again).

Targets (the issue's): cold within 1.2x of by hand; warm at least 10x faster than cold. Paths are
interleaved round by round, the order alternating, so drift on a shared machine lands on both.
Then, as information only, the same cold and warm calls with the LLM review asked for and only
the embedded llama.cpp model up (the review needs a larger model, so the line shows it skipped).

The tree is a copy (in a temporary directory) of the smallest installed package with at least
50,000 Python lines, or ``--tree PATH``; the benchmark never writes into site-packages or the tree.

    .venv/bin/python bench/analyze.py                     # 3 rounds, then the LLM variant
    .venv/bin/python bench/analyze.py --tree ~/src/proj --repeat 5 --no-llm
    .venv/bin/python bench/analyze.py --quick --repeat 1 --no-llm   # a small tree (smoke test)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import sys
import sysconfig
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
from mcp import Client

from caelum_mcp.embedded.server import embedded_status
from caelum_mcp.engine.cache import fingerprint
from caelum_mcp.engine.config import ClaudeConfig, Config
from caelum_mcp.serving.server import create_server
from caelum_mcp.supervisors.development.analyze import ANALYSER_VERSIONS, STAGES
from caelum_mcp.tools.code.analysers import ANALYSER_MAX_OUTPUT_BYTES, ANALYSER_TIMEOUT_S, analyser_installed
from caelum_mcp.tools.code.files import list_project_files, select_files
from caelum_mcp.tools.code.languages import LIZARD_SUFFIXES
from caelum_mcp.tools.code.lint import RUFF_SUFFIXES
from caelum_mcp.tools.code.security import _bandit_config_args
from caelum_mcp.tools.process import run_command

DEFAULT_MIN_LINES = 50_000
QUICK_MIN_LINES = 2_000
COLD_TARGET = 1.2  # cold may take at most this times by hand
WARM_TARGET = 10.0  # warm must be at least this many times faster than cold
EDIT_MARK = "\n# edited by bench/analyze.py\n"

T = TypeVar("T")


# the tree ---------------------------------------------------------------------------------------


def python_size(root: Path) -> tuple[int, int]:
    """(Python files, lines in them) under ``root``, caches left out."""
    files = lines = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if name.endswith(".py"):
                try:
                    with open(os.path.join(dirpath, name), "rb") as fh:
                        lines += fh.read().count(b"\n")
                except OSError:
                    continue
                files += 1
    return files, lines


def pick_package(min_lines: int) -> tuple[Path, int, int]:
    """The installed package with the fewest Python lines that still has ``min_lines``: large enough
    to be a real code base, no larger than needed, so a run stays minutes on a small machine."""
    seen: set[Path] = set()
    best: tuple[int, str, Path, int] | None = None
    for key in ("purelib", "platlib"):
        site = Path(sysconfig.get_paths()[key])
        if site in seen or not site.is_dir():
            continue
        seen.add(site)
        for entry in sorted(site.iterdir()):
            if not (entry / "__init__.py").is_file() or entry.is_symlink():
                continue
            files, lines = python_size(entry)
            if lines >= min_lines and (best is None or (lines, entry.name) < best[:2]):
                best = (lines, entry.name, entry, files)
    if best is None:
        raise SystemExit(f"no installed package has {min_lines} Python lines; pass --tree PATH")
    return best[2], best[3], best[0]


def copy_tree(source: Path, dest: Path) -> Path:
    """A private copy: nothing is written into the original, and no .gitignore or cache of its
    surroundings changes which files the analysers see."""
    shutil.copytree(source, dest, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git", ".venv"))
    return dest


# the by-hand path --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    name: str
    module: str
    args: tuple[str, ...]
    ok_codes: tuple[int, ...]


async def by_hand_steps(root: Path) -> list[Step]:
    """The analysers' commands as ``caelum_mcp.tools.code`` builds them: same flags, same file lists."""
    ruff_files = await select_files(root, None, RUFF_SUFFIXES)
    py_files = [f for f in await select_files(root, None, ("",)) if f.endswith(".py")]  # security.py
    complexity_files = await select_files(root, None, (".py", *LIZARD_SUFFIXES))
    radon_files = [f for f in complexity_files if f.endswith(".py")]
    lizard_files = [f for f in complexity_files if not f.endswith(".py")]
    vulture_files = await select_files(root, None, (".py", ".pyi"))
    steps = [
        Step(
            "ruff",
            "ruff",
            ("check", "--output-format", "json", "--no-cache", "--exit-zero", "--force-exclude", "--", *ruff_files),
            (0,),
        ),
        Step("bandit", "bandit", ("-f", "json", "-q", *_bandit_config_args(root), "--", *py_files), (0, 1)),
        Step("radon cc", "radon", ("cc", "-j", "-s", "--", *radon_files), (0,)),
        Step("radon mi", "radon", ("mi", "-j", "-s", "--", *radon_files), (0,)),
        Step("vulture", "vulture", ("--min-confidence", "60", "--", *vulture_files), (0, 1, 3)),
    ]
    if lizard_files:
        steps.append(Step("lizard", "lizard", ("--csv", "--", *lizard_files), (0, 1)))
    missing = [s.module for s in steps if not analyser_installed(s.module)]
    if missing:
        raise SystemExit(f"not installed in this interpreter: {', '.join(sorted(set(missing)))}")
    return steps


def work_done(outputs: dict[str, str]) -> dict[str, int]:
    """What the by-hand run found, in caelum's terms, so both paths can be shown to do the same work.

    Every JSON report must parse: an analyser that crashed (exit 1, a traceback, no report) would
    otherwise look like a fast, clean run.
    """
    reports: dict[str, Any] = {}
    for name in ("ruff", "bandit", "radon cc", "radon mi"):
        try:
            reports[name] = json.loads(outputs[name])
        except json.JSONDecodeError as exc:
            raise RuntimeError(f"{name} by hand printed no JSON report: {outputs[name][:300]!r}") from exc
    return {
        "ruff": len(reports["ruff"]),
        "bandit": len(reports["bandit"].get("results", [])),
        "vulture": sum(1 for line in outputs["vulture"].splitlines() if "% confidence" in line),
    }


async def run_by_hand(root: Path, steps: list[Step]) -> tuple[dict[str, float], dict[str, str]]:
    """Each step's wall seconds, run one after another; each step's stdout (for the work check)."""
    seconds: dict[str, float] = {}
    outputs: dict[str, str] = {}
    for step in steps:
        started = time.perf_counter()
        result = await run_command(
            [sys.executable, "-P", "-m", step.module, *step.args],  # as tools/code/analysers.py starts them
            cwd=root,
            timeout_s=ANALYSER_TIMEOUT_S,
            max_output_bytes=ANALYSER_MAX_OUTPUT_BYTES,
        )
        seconds[step.name] = time.perf_counter() - started
        if result.timed_out or result.truncated or result.returncode not in step.ok_codes:
            raise RuntimeError(
                f"{step.name} by hand failed (exit {result.returncode}, timed out {result.timed_out}, "
                f"truncated {result.truncated}): {result.stderr[-500:]}"
            )
        outputs[step.name] = result.stdout
    return seconds, outputs


# the caelum path ---------------------------------------------------------------------------------


def server_config(root: Path, data_dir: Path, *, embedded: bool) -> Config:
    """Only the tree is readable; no Claude (a benchmark spends no money); the embedded model on or off.

    Built directly rather than with ``load_config`` so no caelum.toml or CAELUM_* variable of the
    machine running the benchmark changes what is measured.
    """
    return Config(
        data_dir=data_dir,
        embedded="on" if embedded else "off",
        allowed_roots=(root,),
        implicit_ollama=False,
        claude=ClaudeConfig(enabled=False),
    )


async def analyze(client: Client, root: Path, *, llm: bool) -> tuple[float, dict[str, Any]]:
    """One ``analyze`` call through MCP: wall seconds and the structured result."""
    args = {"project": str(root), "task": "analyze", "llm_review": llm, "allow_claude": False}
    started = time.perf_counter()
    result = await client.call_tool("analyze_and_improve_code", args)
    elapsed = time.perf_counter() - started
    if result.is_error or not isinstance(result.structured_content, dict):
        raise RuntimeError(f"analyze_and_improve_code failed: {result.content}")
    return elapsed, result.structured_content


@dataclass(frozen=True)
class Cpu:
    """CPU seconds used while a path ran: by this process (caelum's own work) and by its children."""

    own: float
    children: float


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


async def timed_cpu(fn: Callable[[], Awaitable[T]]) -> tuple[T, Cpu]:
    """``fn()``'s value and the CPU it cost (children count once they have exited and been waited for)."""
    own, children = _cpu_seconds(resource.RUSAGE_SELF), _cpu_seconds(resource.RUSAGE_CHILDREN)
    value = await fn()
    return value, Cpu(
        own=_cpu_seconds(resource.RUSAGE_SELF) - own,
        children=_cpu_seconds(resource.RUSAGE_CHILDREN) - children,
    )


@dataclass
class Samples:
    """Every figure of every round."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[Cpu]] = field(default_factory=dict)
    steps: dict[str, list[float]] = field(default_factory=dict)
    stages: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    stage_cached: dict[str, set[bool]] = field(default_factory=dict)
    listing: list[float] = field(default_factory=list)

    def add(self, path: str, seconds: float, cpu: Cpu | None = None) -> None:
        self.wall.setdefault(path, []).append(seconds)
        if cpu is not None:
            self.cpu.setdefault(path, []).append(cpu)

    def add_stages(self, path: str, out: dict[str, Any]) -> None:
        per = self.stages.setdefault(path, {})
        for stage in out["stages"]:
            per.setdefault(stage["name"], []).append(float(stage["seconds"]))
            self.stage_cached.setdefault(path, set()).add(bool(stage["cached"]))


@contextmanager
def edited(path: Path) -> Iterator[None]:
    """``path`` with one comment line appended, restored afterwards whatever happens."""
    original = path.read_bytes()
    path.write_bytes(original + EDIT_MARK.encode())
    try:
        yield
    finally:
        path.write_bytes(original)


async def caelum_round(root: Path, data_dir: Path, edit_file: Path, samples: Samples) -> dict[str, Any]:
    """Cold, warm, touched and edited calls on one fresh server and cache; the cold result."""
    server, _ = create_server(server_config(root, data_dir, embedded=False))
    async with Client(server) as client:
        (seconds, cold), cpu = await timed_cpu(lambda: analyze(client, root, llm=False))
        if any(s["cached"] for s in cold["stages"]):
            raise RuntimeError(f"a cold call hit the cache: {cold['stages']}")
        samples.add("caelum cold", seconds, cpu)
        samples.add_stages("cold", cold)

        (seconds, warm), cpu = await timed_cpu(lambda: analyze(client, root, llm=False))
        if not all(s["cached"] for s in warm["stages"]) or warm["findings_total"] != cold["findings_total"]:
            raise RuntimeError(f"a warm call did not reuse the cold results: {warm['stages']}")
        samples.add("caelum warm", seconds, cpu)
        samples.add_stages("warm", warm)

        os.utime(edit_file)  # same content, new mtime: the content-keyed cache still answers
        (seconds, touched), cpu = await timed_cpu(lambda: analyze(client, root, llm=False))
        samples.add("caelum, 1 file touched", seconds, cpu)
        samples.add_stages("touched", touched)

        with edited(edit_file):
            (seconds, after_edit), cpu = await timed_cpu(lambda: analyze(client, root, llm=False))
        samples.add("caelum, 1 file edited", seconds, cpu)
        samples.add_stages("edited", after_edit)
    return cold


async def time_listing(root: Path) -> float:
    """One file listing plus content fingerprint, as each caelum call starts with."""
    started = time.perf_counter()
    listing = await list_project_files(root)
    await fingerprint(root, listing.files)
    return time.perf_counter() - started


def warm_up_tree(tree: Path, scratch: Path) -> Path:
    """A few of the tree's files in a folder of their own, for an untimed first call."""
    small = scratch / "warm-up"
    small.mkdir()
    for i, path in enumerate(sorted(tree.rglob("*.py"))[:5]):
        shutil.copyfile(path, small / f"m{i}.py")
    return small


async def warm_up(small: Path, data_dir: Path) -> None:
    """An untimed call: lazy imports done, the analysers' code in the page cache before round one."""
    server, _ = create_server(server_config(small, data_dir, embedded=False))
    async with Client(server) as client:
        await analyze(client, small, llm=False)


async def llm_variant(root: Path, data_dir: Path, timeout_s: float) -> list[str]:
    """Cold and warm with the LLM review asked for, only the embedded model up: information only.

    Each call is cut off after ``timeout_s``: on a busy 2-core machine the small model can take
    minutes, and the figures above must not wait on it.
    """
    ok, detail = embedded_status()
    if not ok:
        return [f"skipped: {detail}"]
    server, _ = create_server(server_config(root, data_dir, embedded=True))
    lines: list[str] = []
    async with Client(server) as client:
        for label in ("cold", "warm"):
            started = time.perf_counter()
            with anyio.move_on_after(timeout_s) as scope:
                seconds, out = await analyze(client, root, llm=True)
            if scope.cancelled_caught:
                lines.append(
                    f"  {label:<5} did not finish within {timeout_s:g} s (--llm-timeout); cancelled"
                    + ("" if label == "warm" else "; warm not run, the model may still be busy with it")
                )
                break
            seconds = time.perf_counter() - started
            cached = sum(s["cached"] for s in out["stages"])
            step = out.get("llm") or {}
            ex = step.get("execution")
            if ex:
                tokens_in = ex["input_tokens"] + ex["cache_read_tokens"]
                llm = (
                    f"LLM {ex['latency_ms'] / 1000:.3f} s on {ex['host']} / {ex['model']} ({ex['path']}, "
                    f"{tokens_in} in + {ex['output_tokens']} out tokens, confidence {ex['confidence']:.2f})"
                )
            else:
                llm = f"no LLM answer ({step.get('status', 'not asked')})"
            note = f"; note: {step['note']}" if step.get("note") else ""
            lines.append(
                f"  {label:<5} {seconds:>9.3f} s total, {cached}/{len(out['stages'])} stages cached; {llm}{note}"
            )
    return lines


# report -----------------------------------------------------------------------------------------


def fmt_steps(steps: dict[str, list[float]]) -> str:
    return ", ".join(f"{name} {statistics.median(values):.3f}" for name, values in steps.items())


def print_table(samples: Samples) -> None:
    print(f"  {'path':<24} {'runs':>4} {'median s':>9} {'min s':>9} {'own CPU s':>10} {'child CPU s':>12}")
    for name, values in samples.wall.items():
        cpus = samples.cpu.get(name, [])
        own = f"{statistics.median(c.own for c in cpus):>10.2f}" if cpus else f"{'':>10}"
        kids = f"{statistics.median(c.children for c in cpus):>12.2f}" if cpus else f"{'':>12}"
        print(f"  {name:<24} {len(values):>4} {statistics.median(values):>9.3f} {min(values):>9.3f} {own} {kids}")


def print_stages(samples: Samples) -> None:
    kinds = [k for k in ("cold", "warm", "touched", "edited") if k in samples.stages]
    print("stages of the caelum call, median s (concurrent, so they overlap; cached: " + _cached_note(samples) + ")")
    print("  " + f"{'stage':<14}" + "".join(f"{k:>10}" for k in kinds))
    for stage in STAGES["analyze"]:
        row = "".join(f"{statistics.median(samples.stages[k].get(stage, [0.0])):>10.3f}" for k in kinds)
        print(f"  {stage:<14}{row}")


def _cached_note(samples: Samples) -> str:
    def say(kind: str) -> str:
        seen = samples.stage_cached.get(kind, set())
        return "all" if seen == {True} else "none" if seen == {False} else "some"

    return ", ".join(f"{k} {say(k)}" for k in samples.stage_cached)


def verdicts(samples: Samples) -> list[tuple[str, bool]]:
    hand = statistics.median(samples.wall["by hand"])
    cold = statistics.median(samples.wall["caelum cold"])
    warm = statistics.median(samples.wall["caelum warm"])
    # Judged on the printed (rounded) figures, so a reader can check each verdict from the line itself.
    slower = round(cold / hand, 2)
    faster = round(cold / warm, 1)
    ok_cold, ok_warm = slower <= COLD_TARGET, faster >= WARM_TARGET
    return [
        (
            f"cold vs by hand: median {cold:.3f} s / {hand:.3f} s = {slower:.2f}x "
            f"(target <= {COLD_TARGET}x): {'PASS' if ok_cold else 'FAIL'}",
            ok_cold,
        ),
        (
            f"warm vs cold: median {warm:.3f} s vs {cold:.3f} s = {faster:.1f}x faster "
            f"(target >= {WARM_TARGET:g}x): {'PASS' if ok_warm else 'FAIL'}",
            ok_warm,
        ),
    ]


@dataclass(frozen=True)
class Setup:
    """The tree to analyse and where it came from; prepared before the event loop starts."""

    source: Path
    chosen: str
    tree: Path
    py_files: int
    py_lines: int
    scratch: Path
    warm_up: Path


def prepare(args: argparse.Namespace, scratch: Path) -> Setup:
    if args.tree:
        source = Path(args.tree).expanduser().resolve()
        if not source.is_dir():
            raise SystemExit(f"--tree {source} is not a directory")
        py_files, py_lines = python_size(source)
        chosen = "given with --tree"
    else:
        floor = QUICK_MIN_LINES if args.quick else DEFAULT_MIN_LINES
        source, py_files, py_lines = pick_package(floor)
        chosen = f"the installed package with the fewest Python lines >= {floor}"
    tree = copy_tree(source, scratch / source.name)
    return Setup(source, chosen, tree, py_files, py_lines, scratch, warm_up_tree(tree, scratch))


async def hand_round(tree: Path, steps: list[Step], samples: Samples) -> dict[str, int]:
    """One by-hand run; what it found (counted after the clock stopped)."""
    (seconds, outputs), cpu = await timed_cpu(lambda: run_by_hand(tree, steps))
    samples.add("by hand", sum(seconds.values()), cpu)
    for name, value in seconds.items():
        samples.steps.setdefault(name, []).append(value)
    return work_done(outputs)


async def run(args: argparse.Namespace, setup: Setup) -> int:
    print('caelum-mcp analyze benchmark: analyze_and_improve_code(task="analyze") vs the analysers run by hand')
    print(
        f"machine: {os.cpu_count()} CPU cores, {platform.machine()}, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}; load average at start {os.getloadavg()[0]:.2f}"
    )
    print("analysers: " + ", ".join(f"{k} {v}" for k, v in ANALYSER_VERSIONS.items() if k != "caelum-mcp"))
    tree = setup.tree
    listing = await list_project_files(tree)
    print(
        f"tree: {tree} (a copy of {setup.source}, {setup.chosen}): {len(listing.files)} files "
        f"(listed by {listing.source}), {setup.py_files} Python files, {setup.py_lines} Python lines"
    )
    steps = await by_hand_steps(tree)
    edit_file = tree / next(f for f in listing.files if f.endswith(".py"))
    print(f"by hand: {' -> '.join(s.name for s in steps)}, one after another, with caelum's arguments and files")
    print(
        "caelum adds: file listing + fingerprint, secrets scan of every text file, project structure, "
        "dependency check (no audit), parsing, result cache, MCP round trip"
    )
    print(
        f"all figures measured side by side in this one run; {args.repeat} round(s), by hand and caelum "
        "interleaved, which goes first alternating each round; a fresh server and cache for each cold call"
    )
    await warm_up(setup.warm_up, setup.scratch / "data-warm-up")

    samples = Samples()
    samples.wall["by hand"] = []  # first row of the table
    hand_work: dict[str, int] = {}
    cold_out: dict[str, Any] = {}
    for turn in range(args.repeat):
        data_dir = setup.scratch / f"data-{turn}"
        if turn % 2 == 0:
            hand_work = await hand_round(tree, steps, samples)
            cold_out = await caelum_round(tree, data_dir, edit_file, samples)
        else:
            cold_out = await caelum_round(tree, data_dir, edit_file, samples)
            hand_work = await hand_round(tree, steps, samples)
        samples.listing.append(await time_listing(tree))

    print("\n== figures, llm_review=False (the analysers alone) ==")
    print_table(samples)
    print(f"by hand, median s per step: {fmt_steps(samples.steps)}")
    print_stages(samples)
    print(
        f"one file listing + content fingerprint: {statistics.median(samples.listing):.3f} s median "
        "(a cold call lists the project 6 times: the call, structure, lint, security, complexity, dead code)"
    )
    by_tool = cold_out.get("counts_by_tool", {})
    same = all(by_tool.get(tool, 0) == n for tool, n in hand_work.items())
    print(
        "same work: "
        + ", ".join(f"{tool} {n} by hand = {by_tool.get(tool, 0)} in caelum" for tool, n in hand_work.items())
        + ("" if same else "  (DIFFERENT: the comparison is not like for like)")
    )
    problems = [
        f"{e['tool']}: {e['message']}" + (f" ({e['file']})" if e.get("file") else "") for e in cold_out["errors"]
    ]
    print(
        f"analyser errors in caelum's cold result: {len(problems)}{': ' if problems else ''}{'; '.join(problems[:5])}"
    )

    if not args.no_llm:
        print("\n== LLM review asked for, only the embedded model up (info only) ==")
        for line in await llm_variant(tree, setup.scratch / "data-llm", args.llm_timeout):
            print(line)

    results = verdicts(samples)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")
    for line, _ in results:
        print(line)
    return 1 if args.check and not all(ok for _, ok in results) else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", help="analyse a copy of this folder instead of an installed package")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of by hand + caelum (default 3)")
    parser.add_argument("--no-llm", action="store_true", help="skip the LLM-review variant")
    parser.add_argument("--quick", action="store_true", help=f"a small package (>= {QUICK_MIN_LINES} lines)")
    parser.add_argument(
        "--llm-timeout", type=float, default=180.0, help="seconds each LLM-review call may take (default 180)"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target fails")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.llm_timeout <= 0:
        parser.error("--llm-timeout must be positive")
    if args.tree and args.quick:
        parser.error("--tree and --quick both choose the tree; give one")
    # Before MCPServer's own basicConfig (INFO, every HTTP request to the model) can take effect.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # No Ollama answers at the default address here, which the pool rightly warns about on every
    # server start; that noise would bury the figures.
    logging.getLogger("caelum_mcp.engine.pool").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="caelum-bench-") as tmp:
        setup = prepare(args, Path(tmp).resolve())
        code = anyio.run(run, args, setup)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
