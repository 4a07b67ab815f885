"""SystemCollector: rates from real traffic between two samples, PSI parsing, counters that go backwards."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from perftop.collectors.system import SystemCollector, counter_deltas, read_pressure
from tests.helpers import wait_for

MB = 1_000_000


def _push_through_loopback(total: int) -> int:
    """Send `total` bytes over a TCP connection on 127.0.0.1; return how many the other end received."""
    received = 0
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def drain() -> None:
            nonlocal received
            conn, _ = listener.accept()
            with conn:
                while chunk := conn.recv(1 << 20):
                    received += len(chunk)

        reader = threading.Thread(target=drain)
        reader.start()
        with socket.create_connection(listener.getsockname()) as client:
            block = b"x" * (1 << 20)
            sent = 0
            while sent < total:
                client.sendall(block)
                sent += len(block)
        reader.join(timeout=60)
        assert not reader.is_alive()
    return received


def test_net_rates_reflect_loopback_traffic() -> None:
    collector = SystemCollector()
    received = _push_through_loopback(20 * MB)
    assert received >= 20 * MB
    sample = collector.sample()
    assert sample.interval_s > 0
    # Every byte crossed `lo` once as sent and once as received (plus TCP/IP headers).
    assert sample.net_io.sent_bytes_per_s * sample.interval_s >= 20 * MB
    assert sample.net_io.recv_bytes_per_s * sample.interval_s >= 20 * MB


def _block_device_of(path: Path) -> str | None:
    """The whole-disk name (as in /proc/diskstats) holding `path`, or None (tmpfs, overlay...)."""
    dev = os.stat(path).st_dev
    sys_dev = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
    if not os.path.exists(sys_dev):
        return None
    real = os.path.realpath(sys_dev)
    if os.path.exists(os.path.join(real, "partition")):
        real = os.path.dirname(real)
    name = os.path.basename(real)
    return name if os.path.isdir(f"/sys/block/{name}") else None


def test_disk_rates_reflect_a_written_and_reread_file(tmp_path: Path) -> None:
    device = _block_device_of(tmp_path)
    if device is None or device not in (psutil.disk_io_counters(perdisk=True) or {}):
        pytest.skip(f"{tmp_path} is not on a block device with I/O statistics (tmpfs or overlay)")
    collector = SystemCollector()
    path = tmp_path / "blob"
    data = os.urandom(1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(20):
            os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    written = collector.sample()
    assert written.disk_io.write_bytes_per_s * written.interval_s >= 20 * (1 << 20)
    assert written.disk_io.write_ops_per_s > 0

    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages leave the cache: reads hit the disk
        while os.read(fd, 1 << 20):
            pass
    finally:
        os.close(fd)
    read = collector.sample()
    if read.disk_io.read_ops_per_s == 0:
        pytest.skip("the page cache kept the file despite POSIX_FADV_DONTNEED; read rates not checked")
    assert read.disk_io.read_bytes_per_s * read.interval_s >= 10 * (1 << 20)


def test_cpu_memory_load_shape() -> None:
    collector = SystemCollector()
    sample = collector.sample()
    assert len(sample.per_cpu_percent) == psutil.cpu_count()
    for value in (sample.cpu_percent, *sample.per_cpu_percent):
        assert 0.0 <= value <= 100.0
    assert len(sample.load_avg) == 3 and all(v >= 0 for v in sample.load_avg)
    assert sample.memory.total_bytes == psutil.virtual_memory().total
    assert 0 < sample.memory.used_bytes <= sample.memory.total_bytes
    assert 0 < sample.memory.available_bytes <= sample.memory.total_bytes
    assert sample.swap.used_bytes <= sample.swap.total_bytes
    for rate in (
        sample.disk_io.read_bytes_per_s,
        sample.disk_io.write_bytes_per_s,
        sample.disk_io.read_ops_per_s,
        sample.disk_io.write_ops_per_s,
        sample.net_io.sent_bytes_per_s,
        sample.net_io.recv_bytes_per_s,
    ):
        assert rate >= 0
    assert abs(sample.taken_at - time.time()) < 60
    as_json = sample.to_json()
    assert set(as_json) == {
        "cpu_percent",
        "per_cpu_percent",
        "load_avg",
        "memory",
        "swap",
        "disk_io",
        "net_io",
        "pressure",
    }


def test_cpu_percent_sees_a_busy_process() -> None:
    collector = SystemCollector()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        threshold = 100.0 / (psutil.cpu_count() or 1) * 0.5  # half of one core, as a share of the whole host

        def busy_seen() -> bool:
            sample = collector.sample()
            return sample.cpu_percent >= threshold and max(sample.per_cpu_percent) >= 50.0

        wait_for(busy_seen, 20, "CPU use to show in the total and on one core", interval=0.05)
    finally:
        busy.kill()
        busy.wait()


def test_each_collector_keeps_its_own_cpu_baseline() -> None:
    """psutil.cpu_percent() or another collector sampling in between must not reset our measuring window."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        threshold = 100.0 / (psutil.cpu_count() or 1) * 0.5
        other = SystemCollector()
        wait_for(lambda: other.sample().cpu_percent >= threshold, 20, "the busy child to show", interval=0.05)
        ours = SystemCollector()
        opened = time.monotonic()
        # Keep the window open for half a second of busy CPU while others sample.
        wait_for(
            lambda: other.sample() is not None and time.monotonic() - opened >= 0.5,
            10,
            "the window",
            interval=0.05,
        )
        psutil.cpu_percent()
        other.sample()
        sample = ours.sample()
        assert sample.interval_s >= 0.5
        assert sample.cpu_percent >= threshold
    finally:
        busy.kill()
        busy.wait()


def test_counter_deltas_never_negative() -> None:
    before = {"sda": (100, 200, 10, 20), "sdb": (5, 5, 1, 1), "gone": (999, 999, 99, 99)}
    after = {"sda": (150, 260, 15, 26), "sdb": (1, 2, 0, 1), "new": (7, 7, 7, 7)}
    # sda grew; sdb was reset (counts nothing); "gone" vanished and "new" appeared (no baseline).
    assert counter_deltas(before, after) == (50, 60, 5, 6)
    # Backwards: sda went down (counts nothing), only sdb grew.
    assert counter_deltas(after, before) == (4, 3, 1, 0)
    assert counter_deltas({}, after) == ()
    # A 32-bit counter that wrapped: no negative contribution.
    assert counter_deltas({"lo": (2**32 - 10, 5)}, {"lo": (3, 10)}) == (0, 5)


def test_read_pressure_on_this_kernel() -> None:
    pressure = read_pressure()
    if not os.path.isdir("/proc/pressure"):
        assert pressure is None
        pytest.skip("this kernel has no PSI")
    assert pressure is not None
    assert set(pressure) <= {"cpu", "memory", "io"}
    for p in pressure.values():
        for value in (p.some_avg10, p.some_avg60, p.some_avg300):
            assert 0.0 <= value <= 100.0
    if "memory" in pressure:
        assert pressure["memory"].full_avg10 is not None


def test_read_pressure_formats(tmp_path: Path) -> None:
    (tmp_path / "pressure").mkdir()
    # An older kernel: no "full" line for cpu.
    (tmp_path / "pressure" / "cpu").write_text("some avg10=1.50 avg60=0.75 avg300=0.25 total=12345\n")
    (tmp_path / "pressure" / "io").write_text(
        "some avg10=0.00 avg60=0.10 avg300=0.20 total=1\nfull avg10=3.00 avg60=2.00 avg300=1.00 total=2\n"
    )
    pressure = read_pressure(str(tmp_path))
    assert pressure is not None
    assert set(pressure) == {"cpu", "io"}  # memory is absent: left out
    cpu = pressure["cpu"]
    assert (cpu.some_avg10, cpu.some_avg60, cpu.some_avg300) == (1.5, 0.75, 0.25)
    assert cpu.full_avg10 is None and cpu.to_json()["full"] is None
    assert pressure["io"].to_json()["full"] == {"avg10": 3.0, "avg60": 2.0, "avg300": 1.0}
    assert read_pressure(str(tmp_path / "nowhere")) is None
    sample_dir = tmp_path / "other"
    (sample_dir / "pressure").mkdir(parents=True)
    (sample_dir / "pressure" / "cpu").write_text("garbage\n")
    assert read_pressure(str(sample_dir)) is None


def test_pressure_is_read_from_the_given_procfs(tmp_path: Path) -> None:
    (tmp_path / "pressure").mkdir()
    (tmp_path / "pressure" / "memory").write_text(
        "some avg10=9.00 avg60=8.00 avg300=7.00 total=1\nfull avg10=6.00 avg60=5.00 avg300=4.00 total=1\n"
    )
    sample = SystemCollector(procfs=str(tmp_path)).sample()
    assert sample.pressure is not None and set(sample.pressure) == {"memory"}
    assert sample.pressure["memory"].full_avg300 == 4.0
