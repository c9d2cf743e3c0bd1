"""The package metadata builds without setuptools deprecation banners (``make run`` showed the
licence one twice, from the editable install of its first step)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # setuptools reads the project in a subprocess
def test_the_editable_install_metadata_builds_without_a_deprecation_banner(tmp_path: Path) -> None:
    build = (
        "import setuptools.build_meta as backend; "
        f"backend.get_requires_for_build_editable(); backend.prepare_metadata_for_build_editable({str(tmp_path)!r})"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "default", "-c", build],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "DeprecationWarning" not in output, output[-3000:]
    metadata = next(tmp_path.glob("*.dist-info/METADATA")).read_text()
    assert "License-Expression: MIT" in metadata
