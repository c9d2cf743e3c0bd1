"""Users install with ``pip install .``: the wheel must hold every module, and each must import from it.

The tracked files are copied to a temporary folder (so an untracked file cannot help), the wheel is
built there without network (setuptools and wheel come with the dev extras), installed into a
target folder, and every module of the source tree is imported from that folder in a fresh
interpreter that does not see the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> its package in the installed tree (pyproject's package-dir)
PACKAGES = {"caelum_mcp": "caelum_mcp", "supervisors": "caelum_mcp.supervisors", "tools": "caelum_mcp.tools"}

pytestmark = pytest.mark.slow


def tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know the tracked files")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [name for name in out.decode().split("\0") if name]


def expected_modules() -> set[str]:
    modules = set()
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            modules.add(".".join([package, *parts]))
    return modules


def test_the_wheel_holds_and_imports_every_module(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for name in tracked_files():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("caelum_mcp-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    in_wheel = {n[: -len(".py")].replace("/", ".").removesuffix(".__init__") for n in names if n.endswith(".py")}
    wanted = expected_modules()
    assert wanted <= in_wheel, f"missing from the wheel: {sorted(wanted - in_wheel)}"
    assert not any(n.startswith(("supervisors/", "tools/")) for n in names), "no top-level tools/supervisors"
    # package data: the dashboard's page, script and styles (served from the package, no CDN)
    static = {
        f"caelum_mcp/serving/dashboard/static/{p.name}"
        for p in (ROOT / "caelum_mcp/serving/dashboard/static").iterdir()
    }
    assert {"caelum_mcp/serving/dashboard/static/index.html", "caelum_mcp/serving/dashboard/static/app.js"} <= static
    assert static <= set(names), f"missing from the wheel: {sorted(static - set(names))}"
    assert "caelum_mcp/engine/calibration/calibration_default.json" in names  # the shipped calibration table

    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    probe = (
        "import importlib, json, sys\n"
        "mods = json.loads(sys.argv[1])\n"
        "files = {m: importlib.import_module(m).__file__ for m in mods}\n"
        "import importlib.resources as res\n"
        "assert res.files('caelum_mcp.serving.dashboard').joinpath('static', 'index.html').is_file()\n"
        "from caelum_mcp.engine.calibration import CalibrationTable\n"
        "assert CalibrationTable.load().problems == []\n"
        "print(json.dumps(files))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run(
        # __main__ runs the command line when imported; the wheel check above covers it
        [sys.executable, "-P", "-c", probe, json.dumps(sorted(m for m in wanted if not m.endswith("__main__")))],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    files = json.loads(run.stdout)
    outside = {m: f for m, f in files.items() if not str(f).startswith(str(target))}
    assert not outside, f"imported from outside the installed wheel: {outside}"
