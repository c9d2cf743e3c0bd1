"""The built-in ``pre-commit`` workflow against the same steps run one after another, and against
``pre-commit run --all-files`` with an equivalent ``.pre-commit-config.yaml``.

The project is a copy of a real repository (default: the installed ``radon`` package with its own
test suite, ~5,700 lines; ``--project PATH`` for another), made a git repository with one changed
file, so that every step has work: lint (ruff + radon), security (bandit + secrets), tests
(pytest), then the review of the change. Every run gets a fresh copy and a fresh data folder (the
analysers' cache starts empty). No model runs (the review's and the summary's LLM steps are
skipped at once): this measures the engine, not a model.

1. ``run_workflow("pre-commit")`` through the real MCP server (in-process client): the wall time,
   each step's time, the longest branch of the graph (the slowest of lint / security / tests, plus
   the review), and the engine's overhead: wall minus longest branch, per step.
2. The same four tool calls, one after another, through the same kind of session.
3. ``pre-commit run --all-files`` (pre-commit from PyPI), with local ``system`` hooks running the
   same analysers and pytest (pre-commit has no diff review; it runs its hooks one at a time).

Targets: wall <= longest branch + 5 % + 0.2 s; engine overhead <= 50 ms a step.

Run: ``.venv/bin/python bench/workflow.py [--project PATH] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

from caelum_mcp.engine.config import Config, load_config
from caelum_mcp.serving.server import create_server
from caelum_mcp.supervisors.workflow import BUILTIN_WORKFLOWS
from caelum_mcp.supervisors.workflow.definitions import topological_order
from caelum_mcp.tools.workflow.templates import render

BIN = Path(sys.executable).parent
OVERHEAD_TARGET_MS = 50.0
# The same analysers and tests as the workflow's steps, as pre-commit "system" hooks (no diff review).
HOOKS = {
    "ruff": "{bin}/ruff check --no-cache .",
    "radon cc": "{bin}/radon cc -s -j .",
    "radon mi": "{bin}/radon mi -j .",
    "bandit": "{bin}/bandit -r -q -f json .",
    "pytest": "{python} -m pytest -q",
}


def pre_commit_config() -> str:
    hooks = [
        f"  - {{id: {name.replace(' ', '-')}, name: {name}, entry: {entry.format(bin=BIN, python=sys.executable)}, "
        "language: system, pass_filenames: false, always_run: true}"
        for name, entry in HOOKS.items()
    ]
    return "repos:\n- repo: local\n  hooks:\n" + "\n".join(hooks) + "\n"


def default_source() -> Path:
    spec = importlib.util.find_spec("radon")
    if spec is None or spec.origin is None:
        raise SystemExit("radon is not installed; pass --project PATH")
    return Path(spec.origin).parent


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@local", *args], cwd=cwd, check=True,
                   capture_output=True)  # fmt: skip


def make_copy(source: Path, dest: Path) -> Path:
    """A git repository holding ``source`` (as a package folder when it is one), one file changed."""
    dest.mkdir(parents=True)
    if (source / "__init__.py").exists():
        shutil.copytree(source, dest / source.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        shutil.copytree(source, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git"))
    git(dest, "init", "-q")
    git(dest, "add", ".")
    git(dest, "commit", "-qm", "base")
    changed = next(p for p in sorted(dest.rglob("*.py")) if p.stat().st_size > 200 and "test" not in p.name)
    changed.write_text(changed.read_text() + "\n\ndef _bench_added(value):\n    return eval(value)\n")
    return dest


def config(root: Path, data: Path) -> Config:
    overrides = {"data_dir": str(data), "embedded": "off", "implicit_ollama": False, "allowed_roots": [str(root)]}
    return load_config(None, environ={}, overrides=overrides)


async def run_workflow(project: Path, data: Path) -> dict[str, Any]:
    server, _ = create_server(config(project.parent, data))
    async with Client(server) as client:
        started = time.perf_counter()
        res = await client.call_tool("run_workflow", {"workflow": "pre-commit", "project": str(project)})
        wall = time.perf_counter() - started
    if res.is_error or res.structured_content is None:
        raise SystemExit(f"run_workflow failed: {res.content}")
    out = res.structured_content
    steps = {s["id"]: s["seconds"] or 0.0 for s in out["steps"]}
    branch = max(steps["lint"], steps["security"], steps["tests"]) + steps["review"]
    return {"wall": wall, "steps": steps, "branch": branch, "statuses": {s["id"]: s["status"] for s in out["steps"]}}


async def run_sequential(project: Path, data: Path) -> dict[str, Any]:
    spec = BUILTIN_WORKFLOWS["pre-commit"]
    context = {"project": str(project), "inputs": spec.input_values(None), "steps": {}}
    server, _ = create_server(config(project.parent, data))
    times: dict[str, float] = {}
    async with Client(server) as client:
        started = time.perf_counter()
        for step_id in topological_order(spec.steps):
            step = spec.steps[step_id]
            began = time.perf_counter()
            res = await client.call_tool(step.tool or "", render(step.args, context))
            times[step_id] = time.perf_counter() - began
            if res.is_error:
                raise SystemExit(f"{step.tool} failed: {res.content}")
        wall = time.perf_counter() - started
    return {"wall": wall, "steps": times}


def run_pre_commit(project: Path, home: Path) -> dict[str, Any]:
    (project / ".pre-commit-config.yaml").write_text(pre_commit_config())
    git(project, "add", ".pre-commit-config.yaml")
    env = {**os.environ, "PRE_COMMIT_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    started = time.perf_counter()
    proc = subprocess.run([str(BIN / "pre-commit"), "run", "--all-files"], cwd=project, env=env, capture_output=True,
                          text=True, check=False)  # fmt: skip
    wall = time.perf_counter() - started
    hooks = [line for line in proc.stdout.splitlines() if line.rstrip().endswith(("Passed", "Failed", "Skipped"))]
    if not hooks:
        raise SystemExit(f"pre-commit did not run its hooks:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return {"wall": wall, "hooks": hooks}


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="pre-commit workflow vs sequential vs pre-commit")
    parser.add_argument("--project", type=Path, default=None, help="a repository to copy (default: radon)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-pre-commit", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    source = (args.project or default_source()).resolve()
    have_pre_commit = (BIN / "pre-commit").exists() and not args.skip_pre_commit
    lines = sum(len(p.read_text(errors="replace").splitlines()) for p in source.rglob("*.py"))
    print(f"machine: {os.cpu_count()} CPU cores; project: a copy of {source} ({lines} Python lines), one file changed")
    results: dict[str, list[dict[str, Any]]] = {"workflow": [], "sequential": [], "pre-commit": []}
    with tempfile.TemporaryDirectory(prefix="caelum-bench-wf-") as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "pre-commit-home"
        if have_pre_commit:
            run_pre_commit(make_copy(source, tmp / "warm" / "repo"), home)  # pre-commit's first-run setup
        for i in range(args.rounds):
            order = ["workflow", "sequential", "pre-commit"] if i % 2 == 0 else ["pre-commit", "sequential", "workflow"]
            for what in order:
                base = tmp / f"{what}-{i}"
                project = make_copy(source, base / "repo")
                if what == "workflow":
                    results[what].append(await run_workflow(project, base / "data"))
                elif what == "sequential":
                    results[what].append(await run_sequential(project, base / "data"))
                elif have_pre_commit:
                    results[what].append(run_pre_commit(project, home))
            print(f"  round {i + 1}: " + ", ".join(f"{k} {v[-1]['wall']:.2f} s" for k, v in results.items() if v))
    report(results, args.rounds)
    return 0


def median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def report(results: dict[str, list[dict[str, Any]]], rounds: int) -> None:
    wf, seq = results["workflow"], results["sequential"]
    wall, branch = median(wf, "wall"), median(wf, "branch")
    steps = {k: statistics.median(r["steps"][k] for r in wf) for k in wf[0]["steps"]}
    seq_steps = {k: statistics.median(r["steps"][k] for r in seq) for k in seq[0]["steps"]}
    overhead_ms = statistics.median((r["wall"] - r["branch"]) * 1000 / len(r["steps"]) for r in wf)
    limit = branch * 1.05 + 0.2
    print(f"\nmedians of {rounds} rounds (each run on a fresh copy with an empty cache):")
    print(
        f"  pre-commit workflow (run_workflow)  {wall:7.2f} s   steps: "
        + ", ".join(f"{k} {v:.2f}" for k, v in steps.items())
    )
    print(f"    statuses: {wf[0]['statuses']}")
    print(f"    longest branch (slowest of lint/security/tests + review): {branch:.2f} s")
    print(f"    wall <= longest branch + 5 % + 0.2 s ({limit:.2f} s): {'PASS' if wall <= limit else 'FAIL'}")
    print(f"    engine overhead: {overhead_ms:.1f} ms a step (target <= {OVERHEAD_TARGET_MS:.0f} ms): "
          f"{'PASS' if overhead_ms <= OVERHEAD_TARGET_MS else 'FAIL'}")  # fmt: skip
    seq_wall = median(seq, "wall")
    print(f"  same steps one after another         {seq_wall:7.2f} s   steps: "
          + ", ".join(f"{k} {v:.2f}" for k, v in seq_steps.items()))  # fmt: skip
    print(f"    workflow / sequential: {wall / seq_wall:.2f}")
    if results["pre-commit"]:
        pc = median(results["pre-commit"], "wall")
        print(f"  pre-commit run --all-files ({len(results['pre-commit'][0]['hooks'])} hooks)  {pc:7.2f} s")
        print(f"    workflow / pre-commit: {wall / pc:.2f}")
        for hook in results["pre-commit"][0]["hooks"]:
            print(f"      {hook.strip()}")


if __name__ == "__main__":
    raise SystemExit(anyio.run(main))
