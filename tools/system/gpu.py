"""NVIDIA GPUs: memory, utilisation, temperature and power, through NVML or ``nvidia-smi``.

:func:`read_gpus` asks NVML first (``nvidia-ml-py``, the driver's own library: a few ms), then
``nvidia-smi --query-gpu ... --format=csv`` (its columns are read by header name, so the full
output of any driver version parses too: :func:`parse_nvidia_smi_csv`). A machine without an
NVIDIA driver gets a report with ``source="none"`` and the reason — never an error — and
:func:`gpu_checks` turns that into one ``n/a`` check. Values a GPU does not report (``[N/A]``,
``[Not Supported]``: utilisation on a MIG-partitioned GPU, power on some boards) are None.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
from typing import Any, Literal

import anyio
from pydantic import BaseModel

from caelum_mcp.tools.process import run_command

from .checks import Check, Thresholds, judge, reason, worst

NVIDIA_SMI_QUERY = "index,name,uuid,memory.total,memory.used,utilization.gpu,temperature.gpu,power.draw,power.limit"
_UNIT = re.compile(r"\s*\[[^\]]*\]$")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


class GpuReading(BaseModel):
    index: int
    name: str
    memory_total_mib: float | None = None
    memory_used_mib: float | None = None
    utilization_pct: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None

    @property
    def memory_pct(self) -> float | None:
        if not self.memory_total_mib or self.memory_used_mib is None:
            return None
        return round(100 * self.memory_used_mib / self.memory_total_mib, 1)


class GpuReport(BaseModel):
    source: Literal["nvml", "nvidia-smi", "none"]
    gpus: list[GpuReading]
    note: str | None = None


def _number(text: str | None) -> float | None:
    """``"143771 MiB"`` → 143771.0; ``"[N/A]"``, ``"N/A"``, ``"[Not Supported]"`` → None."""
    if text is None:
        return None
    match = _NUMBER.search(text.strip())
    return float(match.group(0)) if match and not text.strip().startswith(("[", "N/A")) else None


def parse_nvidia_smi_csv(text: str) -> list[GpuReading]:
    """GPUs from ``nvidia-smi --query-gpu=... --format=csv`` output (with its header line).

    Columns are found by name (units such as ``[MiB]`` stripped), so any field order and any extra
    fields are fine; ``power.draw.instant`` stands in for ``power.draw`` when that is missing.
    """
    rows = [row for row in csv.reader(io.StringIO(text), skipinitialspace=True) if row]
    if not rows:
        return []
    header = [_UNIT.sub("", h.strip()) for h in rows[0]]
    at = {name: i for i, name in enumerate(header)}

    def cell(row: list[str], *names: str) -> str | None:
        for name in names:
            i = at.get(name)
            if i is not None and i < len(row):
                return row[i].strip()
        return None

    gpus = []
    for position, row in enumerate(rows[1:]):
        index = _number(cell(row, "index"))
        gpus.append(
            GpuReading(
                index=int(index) if index is not None else position,
                name=cell(row, "name") or "GPU",
                memory_total_mib=_number(cell(row, "memory.total")),
                memory_used_mib=_number(cell(row, "memory.used")),
                utilization_pct=_number(cell(row, "utilization.gpu")),
                temperature_c=_number(cell(row, "temperature.gpu")),
                power_w=_number(cell(row, "power.draw", "power.draw.instant", "power.draw.average")),
                power_limit_w=_number(cell(row, "power.limit", "enforced.power.limit")),
            )
        )
    return gpus


def _read_nvml() -> list[GpuReading]:
    """Blocking: NVML's readings (raises ``pynvml.NVMLError`` when there is no driver)."""
    import pynvml  # the driver's library is loaded on first use

    pynvml.nvmlInit()
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            gpus.append(_nvml_reading(pynvml, index))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _nvml_reading(pynvml: Any, index: int) -> GpuReading:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    name = pynvml.nvmlDeviceGetName(handle)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    return GpuReading(
        index=index,
        name=name.decode() if isinstance(name, bytes) else str(name),
        memory_total_mib=round(memory.total / 2**20, 1),
        memory_used_mib=round(memory.used / 2**20, 1),
        utilization_pct=_nvml(lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)),
        temperature_c=_nvml(lambda: float(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))),
        power_w=_nvml(lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000),
        power_limit_w=_nvml(lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000),
    )


def _nvml(read: Any) -> float | None:
    """One optional NVML reading: None where the GPU does not support it (MIG, some boards)."""
    import pynvml

    try:
        return round(float(read()), 1)
    except pynvml.NVMLError:
        return None


async def read_gpus(*, timeout_s: float = 3.0, nvidia_smi: str = "nvidia-smi", use_nvml: bool = True) -> GpuReport:
    """The GPUs of this machine: NVML, else ``nvidia-smi``, else a report saying there are none.
    ``nvidia_smi`` is the program's name or path; ``use_nvml=False`` goes straight to it."""
    try:
        if not use_nvml:
            raise ImportError("NVML not asked for")
        with anyio.fail_after(timeout_s):
            gpus = await anyio.to_thread.run_sync(_read_nvml, abandon_on_cancel=True)
        return GpuReport(source="nvml", gpus=gpus)
    except ImportError as exc:
        nvml_note = str(exc) if not use_nvml else "nvidia-ml-py is not installed"
    except TimeoutError:
        nvml_note = f"NVML did not answer within {timeout_s:g} s"
    except Exception as exc:  # pynvml.NVMLError and its many subclasses: no driver, no device
        nvml_note = f"NVML: {exc}"
    program = shutil.which(nvidia_smi)
    if program is None:
        return GpuReport(source="none", gpus=[], note=f"no NVIDIA GPU driver found ({nvml_note}; no nvidia-smi)")
    try:
        result = await run_command(
            [program, f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv"],
            cwd="/",
            timeout_s=timeout_s,
            max_output_bytes=256 * 1024,
            env={"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C"},  # never the server's secrets
        )
    except OSError as exc:
        return GpuReport(source="none", gpus=[], note=f"nvidia-smi could not start: {exc}")
    if result.timed_out or result.returncode != 0:
        why = "timed out" if result.timed_out else (result.stdout + result.stderr).strip()[:200]
        return GpuReport(source="none", gpus=[], note=f"nvidia-smi failed: {why}")
    return GpuReport(source="nvidia-smi", gpus=parse_nvidia_smi_csv(result.stdout))


def gpu_checks(report: GpuReport, limits: Thresholds) -> list[Check]:
    """One check per GPU (memory and temperature judged), or one n/a check when there are none."""
    if not report.gpus:
        return [Check(name="gpu", kind="gpu", verdict="n/a", reasons=[report.note or "no GPU found"])]
    checks = []
    for gpu in report.gpus:
        memory = judge(gpu.memory_pct, limits.gpu_memory_pct)
        heat = judge(gpu.temperature_c, limits.gpu_temperature_c)
        reasons = []
        if memory in ("WARN", "CRIT") and gpu.memory_pct is not None:
            reasons.append(reason("GPU memory used", gpu.memory_pct, limits.gpu_memory_pct, "%"))
        if heat in ("WARN", "CRIT") and gpu.temperature_c is not None:
            reasons.append(reason("GPU temperature", gpu.temperature_c, limits.gpu_temperature_c, "°C"))
        verdict = worst([v for v in (memory, heat) if v != "n/a"] or ["OK"])
        checks.append(
            Check(
                name=f"gpu {gpu.index}",
                kind="gpu",
                verdict=verdict,
                reasons=reasons,
                figures={
                    "name": gpu.name,
                    "memory_pct": gpu.memory_pct,
                    "memory_used_mib": gpu.memory_used_mib,
                    "utilization_pct": gpu.utilization_pct,
                    "temperature_c": gpu.temperature_c,
                    "power_w": gpu.power_w,
                    "source": report.source,
                },
            )
        )
    return checks
