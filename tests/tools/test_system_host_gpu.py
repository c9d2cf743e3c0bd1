"""Host readings (real psutil), their verdicts, and GPUs: real nvidia-smi output from fixtures,
through a real subprocess standing in for nvidia-smi, and a machine without a driver."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from caelum_mcp.tools.system.checks import Thresholds, judge, worst
from caelum_mcp.tools.system.gpu import gpu_checks, parse_nvidia_smi_csv, read_gpus
from caelum_mcp.tools.system.host import host_checks, read_host

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nvidia_smi"


def test_real_host_reading_and_checks() -> None:
    reading = read_host(0.05)
    assert reading.cpus >= 1 and 0 <= reading.cpu_pct <= 100 and 0 < reading.memory_pct < 100
    assert any(d.mount == "/" for d in reading.disks)
    checks = {c.name: c for c in host_checks(reading, Thresholds())}
    assert {"cpu", "memory", "swap", "disk /", "network", "temperature"} <= set(checks)
    assert checks["disk /"].figures["used_pct"] == next(d.used_pct for d in reading.disks if d.mount == "/")
    if reading.sensors is None:  # this machine: no sensors is n/a with a reason, never an error
        assert checks["temperature"].verdict == "n/a" and checks["temperature"].reasons


def test_thresholds_turn_readings_into_verdicts_with_reasons() -> None:
    reading = read_host(0.05)
    strict = Thresholds(memory_pct=(0.0, 0.0), disk_pct=(0.0, 100.0), cpu_pct=(100.0, 100.0))
    checks = {c.name: c for c in host_checks(reading, strict)}
    assert checks["memory"].verdict == "CRIT" and "memory used" in checks["memory"].reasons[0]
    assert checks["disk /"].verdict == "WARN" and "WARN at 0%" in checks["disk /"].reasons[0]
    assert judge(None, (1, 2)) == "n/a" and judge(1.5, (1, 2)) == "WARN" and judge(2, (1, 2)) == "CRIT"
    assert worst(["OK", "n/a", "WARN"]) == "WARN" and worst(["n/a"]) == "n/a"
    with pytest.raises(ValueError, match="above the critical level"):
        Thresholds(disk_pct=(95, 85))


@pytest.mark.parametrize(
    ("fixture", "name", "memory_pct", "utilization", "temperature"),
    [
        ("h200_load.csv", "NVIDIA H200", 22.5, 100.0, 52.0),
        ("h100_mig_idle.csv", "NVIDIA H100 80GB HBM3", 0.1, None, 42.0),  # MIG: utilisation [N/A]
        ("rtx2080super_windows_load.csv", "NVIDIA GeForce RTX 2080 SUPER", 16.7, 7.0, 44.0),
        ("l40s_idle.csv", "NVIDIA L40S", 0.0, 100.0, 63.0),
    ],
)
def test_real_nvidia_smi_output_parses(
    fixture: str, name: str, memory_pct: float, utilization: float | None, temperature: float
) -> None:
    (gpu,) = parse_nvidia_smi_csv((FIXTURES / fixture).read_text())
    assert (gpu.index, gpu.name, gpu.memory_pct, gpu.utilization_pct, gpu.temperature_c) == (
        0, name, memory_pct, utilization, temperature,
    )  # fmt: skip
    assert gpu.power_w is not None and gpu.power_limit_w is not None


def test_hot_or_full_gpus_are_judged() -> None:
    # two GPUs: the recorded row twice, the second with index 1 (its "index" column found by name)
    header, row = (FIXTURES / "h200_load.csv").read_text().splitlines()[:2]
    cells = row.split(", ")
    cells[[h.strip() for h in header.split(",")].index("index")] = "1"
    two = parse_nvidia_smi_csv(f"{header}\n{row}\n{', '.join(cells)}\n")
    assert [g.index for g in two] == [0, 1]
    from caelum_mcp.tools.system.gpu import GpuReport

    checks = gpu_checks(GpuReport(source="nvidia-smi", gpus=two), Thresholds(gpu_temperature_c=(50, 90)))
    assert [c.name for c in checks] == ["gpu 0", "gpu 1"]
    assert all(c.verdict == "WARN" and "GPU temperature 52°C" in c.reasons[0] for c in checks)


def _fake_nvidia_smi(tmp_path: Path, fixture: str, *, exit_code: int = 0) -> Path:
    """A real executable that answers like nvidia-smi with a recorded output."""
    program = tmp_path / "nvidia-smi"
    program.write_text(
        f"#!{sys.executable}\nimport sys\n"
        f"sys.stdout.write(open({str(FIXTURES / fixture)!r}).read())\nsys.exit({exit_code})\n"
    )
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return program


async def test_nvidia_smi_is_run_when_nvml_is_not_there(tmp_path: Path) -> None:
    program = _fake_nvidia_smi(tmp_path, "h200_load.csv")
    report = await read_gpus(nvidia_smi=str(program), use_nvml=False)
    assert report.source == "nvidia-smi" and report.gpus[0].name == "NVIDIA H200"
    (check,) = gpu_checks(report, Thresholds())
    assert check.verdict == "OK" and check.figures["memory_pct"] == 22.5


async def test_nvidia_smi_never_sees_the_servers_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-api03-" + "k" * 40)
    monkeypatch.setenv("CAELUM_CLAUDE__API_KEY", "sk-ant-api03-" + "c" * 40)
    program = _fake_nvidia_smi(tmp_path, "h200_load.csv")
    # the fake fails like a broken driver when it is given either secret
    text = program.read_text().replace(
        "import sys\n",
        "import os, sys\nif {'ANTHROPIC_API_KEY', 'CAELUM_CLAUDE__API_KEY'} & set(os.environ): sys.exit(7)\n",
    )
    program.write_text(text)
    report = await read_gpus(nvidia_smi=str(program), use_nvml=False)
    assert report.source == "nvidia-smi", report.note


async def test_a_failing_nvidia_smi_or_none_at_all_is_n_a(tmp_path: Path) -> None:
    failing = _fake_nvidia_smi(tmp_path, "h200_load.csv", exit_code=9)
    report = await read_gpus(nvidia_smi=str(failing), use_nvml=False)
    assert report.source == "none" and "nvidia-smi failed" in (report.note or "")
    missing = await read_gpus(nvidia_smi=str(tmp_path / "absent" / "nvidia-smi"), use_nvml=False)
    (check,) = gpu_checks(missing, Thresholds())
    assert check.verdict == "n/a" and "no NVIDIA GPU driver" in check.reasons[0]


@pytest.mark.skipif(not os.path.exists("/dev/nvidiactl"), reason="no NVIDIA GPU on this machine")
async def test_the_real_gpu_through_nvml() -> None:
    report = await read_gpus()
    assert report.source in ("nvml", "nvidia-smi") and report.gpus
    gpu = report.gpus[0]
    assert gpu.memory_total_mib and gpu.memory_total_mib > 1000 and gpu.name
    checks = gpu_checks(report, Thresholds())
    assert all(c.verdict in ("OK", "WARN", "CRIT") for c in checks)
