"""This machine's CPU, load, memory, swap, disks, network and temperatures, read with psutil.

:func:`read_host` samples CPU use and network rates over ``sample_s`` (blocking: call it in a
worker thread); :func:`host_checks` judges a reading against :class:`~.checks.Thresholds`.
Disks are the mounted local file systems (pseudo and read-only image file systems such as
``squashfs`` are left out; the root is always in), at most :data:`MAX_DISKS`. Temperatures are
read where the platform has sensors (Linux, FreeBSD); elsewhere that check is n/a.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import psutil
from pydantic import BaseModel

from .checks import Check, Pair, Thresholds, judge, reason, worst

MAX_DISKS = 8
_IP = (socket.AF_INET, socket.AF_INET6)
_SKIP_FS = frozenset(
    {"squashfs", "tmpfs", "devtmpfs", "proc", "sysfs", "cgroup", "cgroup2", "autofs", "devpts", "mqueue", "tracefs",
     "debugfs", "securityfs", "pstore", "bpf", "fusectl", "configfs", "hugetlbfs", "ramfs", "nsfs", "efivarfs",
     "binfmt_misc", "rpc_pipefs", "iso9660", "udf"}
)  # fmt: skip


class DiskReading(BaseModel):
    mount: str
    fstype: str
    used_pct: float
    free_gb: float
    inodes_pct: float | None = None


class SensorReading(BaseModel):
    label: str
    celsius: float
    high: float | None = None
    critical: float | None = None


class HostReading(BaseModel):
    cpus: int
    cpu_pct: float
    load1: float | None
    memory_pct: float
    memory_available_gb: float
    swap_pct: float
    swap_total_gb: float
    disks: list[DiskReading]
    net_sent_kbps: float
    net_recv_kbps: float
    net_errors: int
    net_drops: int
    interfaces_down: list[str]
    sensors: list[SensorReading] | None = None  # None: the platform has no temperature sensors
    boot_time: float


def _disks() -> list[DiskReading]:
    seen: set[str] = set()
    disks: list[DiskReading] = []
    partitions = sorted(psutil.disk_partitions(all=False), key=lambda p: (p.mountpoint != "/", p.mountpoint))
    for part in partitions:
        if part.mountpoint != "/" and (part.fstype in _SKIP_FS or part.device in seen or "ro" in part.opts.split(",")):
            continue
        try:
            usage = psutil.disk_usage(part.mountpoint)
        except OSError:
            continue
        seen.add(part.device)
        disks.append(
            DiskReading(
                mount=part.mountpoint,
                fstype=part.fstype,
                used_pct=round(usage.percent, 1),
                free_gb=round(usage.free / 1e9, 1),
                inodes_pct=_inodes_pct(part.mountpoint),
            )
        )
        if len(disks) >= MAX_DISKS:
            break
    if not disks:
        usage = psutil.disk_usage("/")
        disks.append(DiskReading(mount="/", fstype="?", used_pct=usage.percent, free_gb=round(usage.free / 1e9, 1)))
    return disks


def _inodes_pct(mount: str) -> float | None:
    statvfs = getattr(os, "statvfs", None)
    if statvfs is None:
        return None
    try:
        st = statvfs(mount)
    except OSError:
        return None
    if not st.f_files:
        return None
    return round(100 * float(st.f_files - st.f_ffree) / float(st.f_files), 1)


def _sensors() -> list[SensorReading] | None:
    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:
        return None
    try:
        found = read()
    except (OSError, RuntimeError):
        return None
    if not found:
        return None
    readings = []
    for chip, entries in found.items():
        for entry in entries:
            if entry.current is None or entry.current <= 0:
                continue
            readings.append(
                SensorReading(
                    label=f"{chip} {entry.label}".strip(),
                    celsius=round(entry.current, 1),
                    high=entry.high or None,
                    critical=entry.critical or None,
                )
            )
    return readings or None


def _busy_pct(before: Any, after: Any) -> float:
    """CPU busy share between two ``psutil.cpu_times()`` (computed here rather than with
    ``cpu_percent``, whose process-wide state concurrent callers would disturb)."""
    idle = (after.idle - before.idle) + (getattr(after, "iowait", 0.0) - getattr(before, "iowait", 0.0))
    total = sum(after) - sum(before)
    return 0.0 if total <= 0 else max(0.0, min(100.0, 100 * (1 - idle / total)))


def read_host(sample_s: float = 0.2) -> HostReading:
    """A reading of this machine; blocks for ``sample_s`` to measure CPU use and network rates."""
    cpu_before = psutil.cpu_times()
    net_before = psutil.net_io_counters()
    started = time.monotonic()
    disks = _disks()  # read while the CPU sample runs
    sensors = _sensors()
    left = sample_s - (time.monotonic() - started)
    if left > 0:
        time.sleep(left)
    cpu_pct = _busy_pct(cpu_before, psutil.cpu_times())
    net_after = psutil.net_io_counters()
    elapsed = max(time.monotonic() - started, 1e-3)
    memory = psutil.virtual_memory()
    swap = psutil.swap_memory()
    try:
        load1: float | None = os.getloadavg()[0]
    except (AttributeError, OSError):
        load1 = None
    # Down interfaces matter only when they carry an address (ifb, dummy and unplugged ports do not).
    addressed = {name for name, addrs in psutil.net_if_addrs().items() if any(a.family in _IP for a in addrs)}
    down = [name for name, stats in psutil.net_if_stats().items() if not stats.isup and name in addressed]
    return HostReading(
        cpus=psutil.cpu_count() or 1,
        cpu_pct=round(cpu_pct, 1),
        load1=None if load1 is None else round(load1, 2),
        memory_pct=round(memory.percent, 1),
        memory_available_gb=round(memory.available / 1e9, 2),
        swap_pct=round(swap.percent, 1),
        swap_total_gb=round(swap.total / 1e9, 2),
        disks=disks,
        net_sent_kbps=round((net_after.bytes_sent - net_before.bytes_sent) / elapsed / 1000, 1),
        net_recv_kbps=round((net_after.bytes_recv - net_before.bytes_recv) / elapsed / 1000, 1),
        net_errors=net_after.errin + net_after.errout,
        net_drops=net_after.dropin + net_after.dropout,
        interfaces_down=sorted(down)[:8],
        sensors=sensors,
        boot_time=psutil.boot_time(),
    )


def _threshold_check(name: str, label: str, value: float, limits: Pair, unit: str, figures: dict[str, Any]) -> Check:
    """A host check of one reading against its ``[warn, crit]`` limits, with the reason when over."""
    verdict = judge(value, limits)
    reasons = [reason(label, value, limits, unit)] if verdict != "OK" else []
    return Check(name=name, kind="host", verdict=verdict, reasons=reasons, figures=figures)


def host_checks(reading: HostReading, limits: Thresholds) -> list[Check]:
    """The host's checks: cpu, load, memory, swap, each disk, network, temperature."""
    checks = [
        _threshold_check(
            "cpu", "CPU busy", reading.cpu_pct, limits.cpu_pct, "%", {"used_pct": reading.cpu_pct, "cpus": reading.cpus}
        )
    ]
    if reading.load1 is not None:
        per_cpu = round(reading.load1 / reading.cpus, 2)
        figures: dict[str, Any] = {"load1": reading.load1, "per_cpu": per_cpu}
        checks.append(_threshold_check("load", "load per CPU", per_cpu, limits.load_per_cpu, "", figures))
    figures = {"used_pct": reading.memory_pct, "available_gb": reading.memory_available_gb}
    checks.append(_threshold_check("memory", "memory used", reading.memory_pct, limits.memory_pct, "%", figures))
    if reading.swap_total_gb > 0:
        figures = {"used_pct": reading.swap_pct}
        checks.append(_threshold_check("swap", "swap used", reading.swap_pct, limits.swap_pct, "%", figures))
    else:
        checks.append(Check(name="swap", kind="host", verdict="n/a", reasons=["no swap configured"]))
    for disk in reading.disks:
        space = judge(disk.used_pct, limits.disk_pct)
        inodes = judge(disk.inodes_pct, limits.inodes_pct)
        reasons = []
        if space in ("WARN", "CRIT"):
            reasons.append(reason("space used", disk.used_pct, limits.disk_pct, "%"))
        if inodes in ("WARN", "CRIT") and disk.inodes_pct is not None:
            reasons.append(reason("inodes used", disk.inodes_pct, limits.inodes_pct, "%"))
        checks.append(
            Check(
                name=f"disk {disk.mount}",
                kind="host",
                verdict=worst([space, inodes]),
                reasons=reasons,
                figures={"used_pct": disk.used_pct, "free_gb": disk.free_gb, "inodes_pct": disk.inodes_pct},
            )
        )
    checks.append(
        Check(
            name="network",
            kind="host",
            verdict="WARN" if reading.interfaces_down else "OK",
            reasons=[f"interfaces down: {', '.join(reading.interfaces_down)}"] if reading.interfaces_down else [],
            figures={
                "sent_kbps": reading.net_sent_kbps,
                "recv_kbps": reading.net_recv_kbps,
                "errors": reading.net_errors,
                "drops": reading.net_drops,
            },
        )
    )
    checks.append(_temperature_check(reading.sensors, limits))
    return checks


def _temperature_check(sensors: list[SensorReading] | None, limits: Thresholds) -> Check:
    if not sensors:
        return Check(name="temperature", kind="host", verdict="n/a", reasons=["no temperature sensors readable here"])
    verdicts = []
    reasons = []
    for sensor in sensors:
        warn = min(limits.temperature_c[0], sensor.high) if sensor.high else limits.temperature_c[0]
        crit = min(limits.temperature_c[1], sensor.critical) if sensor.critical else limits.temperature_c[1]
        bounds = (min(warn, crit), crit)
        verdict = judge(sensor.celsius, bounds)
        verdicts.append(verdict)
        if verdict != "OK":
            reasons.append(reason(sensor.label, sensor.celsius, bounds, "°C"))
    hottest = max(sensors, key=lambda s: s.celsius)
    return Check(
        name="temperature",
        kind="host",
        verdict=worst(verdicts),
        reasons=reasons[:4],
        figures={"max_c": hottest.celsius, "sensor": hottest.label, "sensors": len(sensors)},
    )
