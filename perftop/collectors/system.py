"""Host-wide metrics: CPU, load, memory, swap, disk and network I/O rates, Linux pressure stall information.

Every rate is a difference of kernel counters between two samples divided by the time between them. The
counters are diffed per device (per disk, per network interface) and each difference is clamped at zero, so
a counter that wraps or resets, or a device that vanishes or appears, never gives a negative or absurd rate.
CPU usage is computed from this collector's own `psutil.cpu_times()` baseline rather than
`psutil.cpu_percent()`, whose baseline is global to the process and would be reset by any other caller.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import psutil

from perftop.collectors.model import DiskIO, MemoryInfo, NetIO, Pressure, SwapInfo, SystemSample

PRESSURE_RESOURCES = ("cpu", "memory", "io")

_CpuTimes = tuple[float, float]
"""(busy seconds, total seconds) of one CPU or of all of them."""


def counter_deltas(
    previous: Mapping[str, Sequence[int]], current: Mapping[str, Sequence[int]]
) -> tuple[int, ...]:
    """Sum, field by field, the growth of each device's counters between two readings.

    Devices present in only one of the readings contribute nothing, and a counter that went down (wrapped
    or reset) contributes zero, so the result is never negative.
    """
    totals: list[int] = []
    for name, now in current.items():
        before = previous.get(name)
        if before is None:
            continue
        if not totals:
            totals = [0] * len(now)
        for i, (a, b) in enumerate(zip(before, now, strict=False)):
            if b > a:
                totals[i] += b - a
    return tuple(totals)


def read_pressure(procfs: str = "/proc") -> dict[str, Pressure] | None:
    """Linux PSI from `procfs/pressure/{cpu,memory,io}`, or None where the kernel provides none.

    A resource whose file is missing or unreadable (PSI compiled in but disabled) is left out. Older kernels
    have no `full` line for cpu; its `full_*` fields are then None.
    """
    result: dict[str, Pressure] = {}
    for resource in PRESSURE_RESOURCES:
        try:
            with open(os.path.join(procfs, "pressure", resource), encoding="ascii") as f:
                text = f.read()
        except OSError:
            continue
        parsed = _parse_pressure(text)
        if parsed is not None:
            result[resource] = parsed
    return result or None


def _parse_pressure(text: str) -> Pressure | None:
    """One PSI file's `some` and `full` lines (`some avg10=0.12 avg60=0.05 avg300=0.01 total=123`)."""
    lines: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        values: dict[str, float] = {}
        for item in rest.split():
            key, _, value = item.partition("=")
            try:
                values[key] = float(value)
            except ValueError:
                continue
        if {"avg10", "avg60", "avg300"} <= values.keys():
            lines[kind] = values
    if "some" not in lines:
        return None
    return Pressure.from_json(lines)


def _cpu_times(times: Any) -> _CpuTimes:
    """(busy, total) seconds from one psutil `scputimes`, counted as psutil's own cpu_percent does."""
    total = sum(times)
    # On Linux guest time is already included in user time.
    total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


def _cpu_percent(before: _CpuTimes, after: _CpuTimes) -> float:
    """Busy share of the time between two readings, in percent, kept within 0..100."""
    total = after[1] - before[1]
    if total <= 0:
        return 0.0
    busy = after[0] - before[0]
    return min(100.0, max(0.0, 100.0 * busy / total))


def _disk_counters() -> dict[str, tuple[int, int, int, int]]:
    """Per whole disk (partitions left out, they would be counted twice): bytes and ops read and written."""
    try:
        raw = psutil.disk_io_counters(perdisk=True) or {}
    except (OSError, RuntimeError):  # no /proc/diskstats (some containers)
        return {}
    try:
        whole = set(os.listdir("/sys/block"))
    except OSError:
        whole = set(raw)
    return {
        name: (c.read_bytes, c.write_bytes, c.read_count, c.write_count)
        for name, c in raw.items()
        if name in whole
    }


def _net_counters() -> dict[str, tuple[int, int]]:
    """Per network interface: bytes sent and received."""
    try:
        raw = psutil.net_io_counters(pernic=True) or {}
    except (OSError, RuntimeError):
        return {}
    return {name: (c.bytes_sent, c.bytes_recv) for name, c in raw.items()}


class SystemCollector:
    """Samples the host. Each `sample()` reports rates over the time since the previous one.

    The constructor only takes baseline counters (a few /proc reads) so the first `sample()` already has an
    interval to measure over.
    """

    def __init__(self, procfs: str = "/proc") -> None:
        self._procfs = procfs
        self._at = time.monotonic()
        self._cpu = _cpu_times(psutil.cpu_times())
        self._per_cpu = [_cpu_times(t) for t in psutil.cpu_times(percpu=True)]
        self._disk = _disk_counters()
        self._net = _net_counters()

    def sample(self) -> SystemSample:
        """Read every counter now and return rates since the previous call (or since construction)."""
        now = time.monotonic()
        cpu = _cpu_times(psutil.cpu_times())
        per_cpu = [_cpu_times(t) for t in psutil.cpu_times(percpu=True)]
        disk = _disk_counters()
        net = _net_counters()
        mem = psutil.virtual_memory()
        swap = psutil.swap_memory()
        load = psutil.getloadavg()

        interval = now - self._at
        per_s = 1.0 / interval if interval > 0 else 0.0
        d_disk = counter_deltas(self._disk, disk) or (0, 0, 0, 0)
        d_net = counter_deltas(self._net, net) or (0, 0)
        cpu_percent = _cpu_percent(self._cpu, cpu)
        per_cpu_percent = tuple(
            _cpu_percent(before, after) for before, after in zip(self._per_cpu, per_cpu, strict=False)
        )
        if len(per_cpu) != len(self._per_cpu):
            # A CPU went on- or offline: no baseline to compare against for this interval.
            per_cpu_percent = tuple(0.0 for _ in per_cpu)

        self._at, self._cpu, self._per_cpu, self._disk, self._net = now, cpu, per_cpu, disk, net
        return SystemSample(
            taken_at=time.time(),
            interval_s=interval,
            cpu_percent=cpu_percent,
            per_cpu_percent=per_cpu_percent,
            load_avg=(load[0], load[1], load[2]),
            memory=MemoryInfo(
                total_bytes=mem.total, used_bytes=mem.used, available_bytes=mem.available, percent=mem.percent
            ),
            swap=SwapInfo(total_bytes=swap.total, used_bytes=swap.used, percent=swap.percent),
            disk_io=DiskIO(
                read_bytes_per_s=d_disk[0] * per_s,
                write_bytes_per_s=d_disk[1] * per_s,
                read_ops_per_s=d_disk[2] * per_s,
                write_ops_per_s=d_disk[3] * per_s,
            ),
            net_io=NetIO(sent_bytes_per_s=d_net[0] * per_s, recv_bytes_per_s=d_net[1] * per_s),
            pressure=read_pressure(self._procfs),
        )
