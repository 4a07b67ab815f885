"""cgroup limits and usage: fixture trees for v1, v2 and hybrid layouts, then this machine's real cgroups."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from perftop.collectors.cgroup import (
    CgroupMount,
    CgroupReader,
    SharedCgroups,
    cgroup_info,
    discover_mounts,
    find_mounts,
    parse_mountinfo,
    parse_proc_cgroup,
    read_cgroup,
)
from perftop.collectors.model import CgroupInfo
from tests.helpers import wait_for

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cgroup"
FIXTURE_PID = 4242
MiB = 1024 * 1024


def fixture(case: str) -> CgroupInfo | None:
    root = FIXTURES / case
    return read_cgroup(FIXTURE_PID, procfs=str(root / "proc"), sysfs=str(root / "sys" / "fs" / "cgroup"))


EXPECTED = {
    "v2_unlimited": CgroupInfo(
        version=2,
        path="/system.slice/app.service",
        memory_limit_bytes=None,
        memory_used_bytes=104857600,
        pids_limit=None,
        pids_current=12,
        cpu_limit_cores=None,
        cpu_throttled_count=0,
        cpu_throttled_s=0.0,
        oom_kills=0,
    ),
    # Limits on the leaf are looser than on its parent: the parent's apply (smallest wins).
    "v2_limited": CgroupInfo(
        version=2,
        path="/kubepods.slice/pod1.slice/app.scope",
        memory_limit_bytes=512 * MiB,
        memory_used_bytes=268435456,
        pids_limit=100,
        pids_current=37,
        cpu_limit_cores=1.5,
        cpu_throttled_count=0,
        cpu_throttled_s=0.0,
        oom_kills=0,
    ),
    "v2_throttled": CgroupInfo(
        version=2,
        path="/system.slice/batch.service",
        memory_limit_bytes=None,
        memory_used_bytes=52428800,
        pids_limit=None,
        pids_current=3,
        cpu_limit_cores=0.5,
        cpu_throttled_count=250,
        cpu_throttled_s=12.5,
        oom_kills=0,
    ),
    "v2_oom": CgroupInfo(
        version=2,
        path="/system.slice/leaky.service",
        memory_limit_bytes=256 * MiB,
        memory_used_bytes=268369920,
        pids_limit=None,
        pids_current=4,
        cpu_limit_cores=None,
        cpu_throttled_count=0,
        cpu_throttled_s=0.0,
        oom_kills=2,
    ),
    # Controllers not enabled for the process's cgroup: still v2, every number unknown.
    "v2_no_controllers": CgroupInfo(
        version=2,
        path="/user.slice",
        memory_limit_bytes=None,
        memory_used_bytes=None,
        pids_limit=None,
        pids_current=None,
        cpu_limit_cores=None,
        cpu_throttled_count=None,
        cpu_throttled_s=None,
        oom_kills=None,
    ),
    # Older kernel: memory.oom_control has no oom_kill line, so the count is unknown.
    "v1_unlimited": CgroupInfo(
        version=1,
        path="/docker/abc123",
        memory_limit_bytes=None,
        memory_used_bytes=52428800,
        pids_limit=None,
        pids_current=5,
        cpu_limit_cores=None,
        cpu_throttled_count=0,
        cpu_throttled_s=0.0,
        oom_kills=None,
    ),
    # cpu and cpuacct co-mounted at "cpu,cpuacct" with symlinks, as systemd does; pids limited on the parent.
    "v1_limited": CgroupInfo(
        version=1,
        path="/docker/abc123",
        memory_limit_bytes=512 * MiB,
        memory_used_bytes=209715200,
        pids_limit=100,
        pids_current=17,
        cpu_limit_cores=1.5,
        cpu_throttled_count=0,
        cpu_throttled_s=0.0,
        oom_kills=0,
    ),
    "v1_throttled": CgroupInfo(
        version=1,
        path="/docker/abc123",
        memory_limit_bytes=None,
        memory_used_bytes=52428800,
        pids_limit=None,
        pids_current=5,
        cpu_limit_cores=0.5,
        cpu_throttled_count=300,
        cpu_throttled_s=15.0,
        oom_kills=0,
    ),
    "v1_oom": CgroupInfo(
        version=1,
        path="/docker/abc123",
        memory_limit_bytes=256 * MiB,
        memory_used_bytes=268300000,
        pids_limit=None,
        pids_current=5,
        cpu_limit_cores=None,
        cpu_throttled_count=0,
        cpu_throttled_s=0.0,
        oom_kills=1,
    ),
    # v1 controllers plus a v2 "unified" hierarchy offering only hugetlb (like this machine): read from v1.
    "hybrid": CgroupInfo(
        version=1,
        path="/docker/abc123",
        memory_limit_bytes=512 * MiB,
        memory_used_bytes=104857600,
        pids_limit=100,
        pids_current=7,
        cpu_limit_cores=1.5,
        cpu_throttled_count=0,
        cpu_throttled_s=0.0,
        oom_kills=0,
    ),
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_fixture_tree(case: str) -> None:
    assert fixture(case) == EXPECTED[case]


def test_fixture_cases_all_present() -> None:
    assert sorted(p.name for p in FIXTURES.iterdir()) == sorted(EXPECTED)


def test_missing_process_gives_none() -> None:
    root = FIXTURES / "v2_limited"
    assert read_cgroup(999, procfs=str(root / "proc"), sysfs=str(root / "sys" / "fs" / "cgroup")) is None


def test_no_cgroup_filesystem_gives_none(tmp_path: Path) -> None:
    (tmp_path / "proc" / "7").mkdir(parents=True)
    (tmp_path / "proc" / "7" / "cgroup").write_text("0::/\n")
    assert read_cgroup(7, procfs=str(tmp_path / "proc"), sysfs=str(tmp_path / "nothing")) is None


def test_parse_proc_cgroup() -> None:
    lines = parse_proc_cgroup("12:pids:/a\n4:cpu,cpuacct:/a/b\n1:name=systemd:/\n0::/x/y\ngarbage\n")
    assert [(ln.hierarchy, sorted(ln.controllers), ln.path) for ln in lines] == [
        (12, ["pids"], "/a"),
        (4, ["cpu", "cpuacct"], "/a/b"),
        (1, ["name=systemd"], "/"),
        (0, [], "/x/y"),
    ]


MOUNTINFO = """\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
52 40 0:40 /docker/abc /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw
"""


def test_parse_mountinfo() -> None:
    assert parse_mountinfo(MOUNTINFO) == [
        CgroupMount(1, frozenset({"rw", "cpu", "cpuacct"}), "/sys/fs/cgroup/cpu,cpuacct"),
        CgroupMount(1, frozenset({"rw", "memory"}), "/sys/fs/cgroup/memory"),
        CgroupMount(2, frozenset(), "/sys/fs/cgroup/unified"),
        CgroupMount(2, frozenset(), "/mnt/my cgroups", "/docker/abc"),
    ]


def test_discover_mounts_hybrid_layout() -> None:
    mounts = discover_mounts(str(FIXTURES / "hybrid" / "sys" / "fs" / "cgroup"))
    by_name = {os.path.basename(m.mountpoint): m for m in mounts}
    assert by_name["unified"].version == 2
    assert by_name["memory"] == CgroupMount(1, frozenset({"memory"}), by_name["memory"].mountpoint)
    assert by_name["pids"].version == 1


def test_mountinfo_is_preferred_to_the_layout(tmp_path: Path) -> None:
    """Only what mountinfo says is mounted is read: here just the memory hierarchy of the fixture."""
    sysfs = FIXTURES / "v1_limited" / "sys" / "fs" / "cgroup"
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "mountinfo").write_text(
        f"35 31 0:32 / {sysfs}/memory rw,relatime - cgroup cgroup rw,memory\n"
    )
    (tmp_path / str(FIXTURE_PID)).mkdir()
    (tmp_path / str(FIXTURE_PID) / "cgroup").write_bytes(
        (FIXTURES / "v1_limited" / "proc" / str(FIXTURE_PID) / "cgroup").read_bytes()
    )
    assert find_mounts(str(tmp_path), str(sysfs)) == [
        CgroupMount(1, frozenset({"rw", "memory"}), f"{sysfs}/memory")
    ]
    info = read_cgroup(FIXTURE_PID, procfs=str(tmp_path), sysfs=str(sysfs))
    assert info is not None
    assert (info.version, info.memory_limit_bytes, info.pids_limit, info.cpu_limit_cores) == (
        1,
        512 * MiB,
        None,
        None,
    )


def test_mount_root_inside_a_container(tmp_path: Path) -> None:
    """A mount showing cgroup /docker/abc at its mount point: the process's path is taken relative to that."""
    leaf = tmp_path / "cg" / "app"
    leaf.mkdir(parents=True)
    (tmp_path / "cg" / "cgroup.controllers").write_text("memory pids\n")
    (tmp_path / "cg" / "memory.max").write_text("1048576\n")
    (leaf / "memory.max").write_text("max\n")
    (leaf / "memory.current").write_text("4096\n")
    mounts = [CgroupMount(2, frozenset(), str(tmp_path / "cg"), "/docker/abc")]
    info = cgroup_info("0::/docker/abc/app\n", mounts)
    assert info is not None
    assert (info.version, info.path, info.memory_limit_bytes, info.memory_used_bytes) == (
        2,
        "/docker/abc/app",
        1048576,
        4096,
    )
    # A process outside what the mount shows (another cgroup namespace) cannot be read there.
    assert cgroup_info("0::/elsewhere\n", mounts) is None


# --- this machine's real cgroups ---------------------------------------------------------------------


def _own_memory_dir() -> tuple[int, str] | None:
    """Our memory cgroup's directory, found independently of the code under test (standard mounts only)."""
    with open("/proc/self/cgroup") as f:
        lines = [ln.strip().split(":", 2) for ln in f if ln.strip()]
    for _hid, ctrls, path in lines:
        if "memory" in ctrls.split(","):
            d = f"/sys/fs/cgroup/memory{path}"
            return (1, d) if os.path.isdir(d) else None
    for hid, _ctrls, path in lines:
        if hid == "0" and os.path.exists(f"/sys/fs/cgroup{path}/memory.current"):
            return 2, f"/sys/fs/cgroup{path}"
    return None


def test_real_cgroup_of_this_process() -> None:
    info = read_cgroup(os.getpid())
    if not os.path.exists("/sys/fs/cgroup"):
        assert info is None
        pytest.skip("no cgroup filesystem on this machine")
    assert info is not None
    own = _own_memory_dir()
    if own is None:
        pytest.skip("no memory controller readable for this process at /sys/fs/cgroup")
    version, directory = own
    assert info.version == version
    assert info.memory_used_bytes is not None and info.memory_used_bytes > 0
    if info.memory_limit_bytes is not None:
        assert info.memory_limit_bytes > 0
    usage_file = "memory.usage_in_bytes" if version == 1 else "memory.current"
    with open(os.path.join(directory, usage_file)) as f:
        direct = int(f.read())
    # Both readings are of our own, live cgroup: they agree within what a test process allocates in between.
    assert abs(info.memory_used_bytes - direct) < 64 * MiB
    assert directory.endswith(info.path.rstrip("/"))
    for value in (info.pids_current, info.cpu_throttled_count, info.oom_kills):
        assert value is None or value >= 0


V1_ROOT = "/sys/fs/cgroup"


def _v1_writable() -> str | None:
    """Why real v1 cgroups cannot be created here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root to create cgroups"
    with open("/proc/self/mountinfo") as f:
        mounts = parse_mountinfo(f.read())
    for ctrl in ("memory", "cpu", "pids"):
        if not any(
            m.version == 1 and ctrl in m.controllers and m.mountpoint == f"{V1_ROOT}/{ctrl}" for m in mounts
        ):
            return (
                f"no cgroup v1 {ctrl} hierarchy at {V1_ROOT}/{ctrl} (this machine is covered by the fixtures)"
            )
    return None


@pytest.fixture
def v1_cgroup() -> Iterator[Callable[[dict[str, dict[str, str]]], str]]:
    """Creates real v1 cgroups (memory, cpu, pids) named alike; removes them, and kills what is in them."""
    reason = _v1_writable()
    if reason:
        pytest.skip(reason)
    name = f"perftop-test-{os.getpid()}-{time.monotonic_ns()}"
    created: list[str] = []

    def make(settings: dict[str, dict[str, str]]) -> str:
        for ctrl in ("memory", "cpu", "pids"):
            d = f"{V1_ROOT}/{ctrl}/{name}"
            os.mkdir(d)
            created.append(d)
            for fname, value in settings.get(ctrl, {}).items():
                with open(os.path.join(d, fname), "w") as f:
                    f.write(value)
        return name

    try:
        yield make
    finally:
        for d in created:
            try:
                with open(os.path.join(d, "cgroup.procs")) as f:
                    pids = [int(p) for p in f.read().split()]
            except OSError:
                pids = []
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        deadline = time.monotonic() + 10
        for d in reversed(created):
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)


def _join(name: str, pid: int) -> None:
    for ctrl in ("memory", "cpu", "pids"):
        with open(f"{V1_ROOT}/{ctrl}/{name}/cgroup.procs", "w") as f:
            f.write(str(pid))


def _spawn(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL)


def test_real_v1_limits(v1_cgroup: Callable[[dict[str, dict[str, str]]], str]) -> None:
    name = v1_cgroup(
        {
            "memory": {"memory.limit_in_bytes": str(512 * MiB)},
            "cpu": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "150000"},
            "pids": {"pids.max": "100"},
        }
    )
    child = _spawn("import time; time.sleep(60)")
    try:
        _join(name, child.pid)
        info = read_cgroup(child.pid)
        assert info is not None
        assert (info.version, info.path) == (1, f"/{name}")
        assert info.memory_limit_bytes == 512 * MiB
        assert info.memory_used_bytes is not None and info.memory_used_bytes >= 0
        assert info.pids_limit == 100
        assert info.pids_current == 1
        assert info.cpu_limit_cores == 1.5
        assert info.oom_kills == 0
    finally:
        child.kill()
        child.wait()


def test_real_v1_throttling(v1_cgroup: Callable[[dict[str, dict[str, str]]], str]) -> None:
    name = v1_cgroup({"cpu": {"cpu.cfs_period_us": "10000", "cpu.cfs_quota_us": "1000"}})
    child = _spawn("while True: pass")
    try:
        _join(name, child.pid)

        def throttled() -> bool:
            info = read_cgroup(child.pid)
            return info is not None and (info.cpu_throttled_count or 0) > 0

        wait_for(throttled, 20, "the busy child to be throttled", interval=0.05)
        info = read_cgroup(child.pid)
        assert info is not None
        assert info.cpu_limit_cores == pytest.approx(0.1)
        assert info.cpu_throttled_s is not None and info.cpu_throttled_s > 0
    finally:
        child.kill()
        child.wait()


def test_real_v1_oom_kill(v1_cgroup: Callable[[dict[str, dict[str, str]]], str]) -> None:
    name = v1_cgroup({"memory": {"memory.limit_in_bytes": str(64 * MiB)}})
    witness = _spawn("import time; time.sleep(60)")
    hog: subprocess.Popen[bytes] | None = None
    try:
        _join(name, witness.pid)
        before = read_cgroup(witness.pid)
        assert before is not None and before.oom_kills == 0
        # Started inside the cgroup by writing its own pid to it, then allocates four times the limit.
        hog = _spawn(
            "import os\n"
            f"for c in ('memory', 'cpu', 'pids'):\n"
            f"    open(f'{V1_ROOT}/{{c}}/{name}/cgroup.procs', 'w').write(str(os.getpid()))\n"
            f"blocks = [bytearray({256 * MiB // 64}) for _ in range(64)]\n"
        )
        assert hog.wait(timeout=60) == -9
        after = read_cgroup(witness.pid)
        assert after is not None
        assert after.oom_kills == 1
        assert after.memory_limit_bytes == 64 * MiB
    finally:
        for proc in (witness, hog):
            if proc is not None:
                proc.kill()
                proc.wait()


def test_readers_sharing_figures_read_a_cgroup_once_per_age(tmp_path: Path) -> None:
    """Two processes of one cgroup, read through one SharedCgroups: the second reading takes the first's
    figures while they are young, a reader of its own reads the files again, and so does a share whose
    figures are old at once."""
    shutil.copytree(FIXTURES / "v2_limited", tmp_path, dirs_exist_ok=True)
    procfs, sysfs = str(tmp_path / "proc"), str(tmp_path / "sys" / "fs" / "cgroup")
    shutil.copytree(tmp_path / "proc" / str(FIXTURE_PID), tmp_path / "proc" / "4243")
    held, fresh = SharedCgroups(max_age_s=3600.0), SharedCgroups(max_age_s=0.0)
    first = CgroupReader(FIXTURE_PID, procfs, sysfs, shared=held)
    second = CgroupReader(4243, procfs, sysfs, shared=held)
    info = first.read()
    assert info == EXPECTED["v2_limited"]
    leaf = tmp_path / "sys" / "fs" / "cgroup" / "kubepods.slice" / "pod1.slice" / "app.scope"
    (leaf / "memory.current").write_text("1048576\n")
    assert second.read() == info
    assert first.read() == info
    changed = replace(info, memory_used_bytes=1048576)
    assert CgroupReader(4243, procfs, sysfs).read() == changed
    assert CgroupReader(4243, procfs, sysfs, shared=fresh).read() == changed
