"""The cgroup limits and usage of a process: memory, pids, CPU quota and throttling, OOM kills.

Works on cgroup v2 (unified), cgroup v1 and hybrid hosts (v1 controllers plus a v2 hierarchy with few or no
controllers). A controller bound to a v1 hierarchy is read there; any other is read from the v2 hierarchy
when that hierarchy offers it. Limits set on an ancestor cgroup constrain its descendants too, so each limit
is the smallest found walking from the process's cgroup up to the root of its hierarchy.

Mount points come from `/proc/self/mountinfo` (our own mount namespace: that is where we open the files).
When `sysfs` is not the standard root, or mountinfo shows no cgroup mount, the hierarchies are found from
the directory layout under `sysfs`, which is what lets the tests point this module at fixture trees.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from perftop.collectors.aged import Aged
from perftop.collectors.files import read_bytes
from perftop.collectors.model import CgroupInfo

DEFAULT_SYSFS = "/sys/fs/cgroup"

UNLIMITED_THRESHOLD = 2**62
"""cgroup v1 writes "no limit" as a huge page-aligned number (9223372036854771712); treat these as None."""


@dataclass(frozen=True)
class CgroupMount:
    """One mounted cgroup hierarchy, as seen from our mount namespace."""

    version: int
    controllers: frozenset[str]
    """v1: the controllers bound to this hierarchy (mount options, which may include others). v2: empty."""
    mountpoint: str
    root: str = "/"
    """The cgroup shown at `mountpoint` (not `/` inside some containers)."""


@dataclass(frozen=True)
class CgroupLine:
    """One line of /proc/PID/cgroup: `hierarchy-id:controller,list:/path`."""

    hierarchy: int
    controllers: frozenset[str]
    path: str


@dataclass(frozen=True)
class _Located:
    """A controller's directory for the process, and the directories up to its hierarchy's root."""

    version: int
    path: str
    dirs: tuple[str, ...]

    @property
    def leaf(self) -> str:
        return self.dirs[0]


def parse_proc_cgroup(text: str) -> list[CgroupLine]:
    """The lines of a /proc/PID/cgroup file. The v2 line is `0::/path` (no controllers)."""
    lines: list[CgroupLine] = []
    for raw in text.splitlines():
        parts = raw.split(":", 2)
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        controllers = frozenset(c for c in parts[1].split(",") if c)
        lines.append(CgroupLine(int(parts[0]), controllers, parts[2]))
    return lines


def parse_mountinfo(text: str) -> list[CgroupMount]:
    """The cgroup and cgroup2 mounts listed in a /proc/PID/mountinfo file."""
    mounts: list[CgroupMount] = []
    for raw in text.splitlines():
        left, sep, right = raw.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        fstype = tail[0]
        root, mountpoint = _unescape(fields[3]), _unescape(fields[4])
        if fstype == "cgroup2":
            mounts.append(CgroupMount(2, frozenset(), mountpoint, root))
        elif fstype == "cgroup":
            mounts.append(CgroupMount(1, frozenset(tail[2].split(",")), mountpoint, root))
    return mounts


def discover_mounts(sysfs: str) -> list[CgroupMount]:
    """The hierarchies found from the directory layout of a /sys/fs/cgroup-like tree.

    `sysfs` itself is a v2 hierarchy when it holds `cgroup.controllers`; otherwise each subdirectory is one:
    v2 when it holds `cgroup.controllers` (the hybrid `unified`), else v1 with the controllers its name lists
    (`memory`, `cpu,cpuacct`).
    """
    if os.path.exists(os.path.join(sysfs, "cgroup.controllers")):
        return [CgroupMount(2, frozenset(), sysfs)]
    try:
        names = sorted(os.listdir(sysfs))
    except OSError:
        return []
    mounts: list[CgroupMount] = []
    for name in names:
        path = os.path.join(sysfs, name)
        if not os.path.isdir(path):
            continue
        if os.path.exists(os.path.join(path, "cgroup.controllers")):
            mounts.append(CgroupMount(2, frozenset(), path))
        else:
            mounts.append(CgroupMount(1, frozenset(name.split(",")), path))
    return mounts


def find_mounts(procfs: str = "/proc", sysfs: str = DEFAULT_SYSFS) -> list[CgroupMount]:
    """The cgroup hierarchies to read: from our mountinfo, else from the layout under `sysfs`.

    With a non-standard `sysfs`, only mounts under it are kept, so a fixture tree is never mixed with the
    host's real hierarchies.
    """
    try:
        with open(os.path.join(procfs, "self", "mountinfo"), encoding="utf-8", errors="replace") as f:
            mounts = parse_mountinfo(f.read())
    except OSError:
        mounts = []
    if sysfs != DEFAULT_SYSFS:
        prefix = sysfs.rstrip("/") + "/"
        mounts = [m for m in mounts if m.mountpoint == sysfs or m.mountpoint.startswith(prefix)]
    return mounts or discover_mounts(sysfs)


def read_cgroup(pid: int, procfs: str = "/proc", sysfs: str = DEFAULT_SYSFS) -> CgroupInfo | None:
    """The cgroup limits and usage of `pid`, or None where it has no readable cgroup information."""
    text = _read_proc_cgroup(pid, procfs)
    return None if text is None else cgroup_info(text, find_mounts(procfs, sysfs))


def _read_proc_cgroup(pid: int, procfs: str) -> str | None:
    try:
        with open(os.path.join(procfs, str(pid), "cgroup"), encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


class SharedCgroups(Aged["_Layout", CgroupInfo]):
    """The figures of each cgroup, read at most once every `max_age_s` for all the readers that share
    this: an exporter samples every agent's process at once, mostly of one cgroup, whose files it then
    reads once a collection, not once per process."""

    def __init__(self, max_age_s: float = 1.0) -> None:
        super().__init__(_info, max_age_s)


class CgroupReader:
    """`read_cgroup` of one process, for a caller that reads it every tick (the process pane).

    Where the process's cgroup directories are (our mountinfo parsed, each controller located, the
    cgroup.controllers of the v2 root read) is worked out again only when its /proc/PID/cgroup changes or
    `relocate_s` seconds have passed, instead of on every read; limits and usage are read every time, or
    through `shared`, if given, which other readers may have read them for just before.
    """

    def __init__(
        self,
        pid: int,
        procfs: str = "/proc",
        sysfs: str = DEFAULT_SYSFS,
        relocate_s: float = 10.0,
        shared: SharedCgroups | None = None,
    ) -> None:
        self.pid = pid
        self._procfs = procfs
        self._sysfs = sysfs
        self._relocate_s = relocate_s
        self._shared = shared
        self._text: str | None = None
        self._layout: _Layout | None = None
        self._due = 0.0

    def read(self) -> CgroupInfo | None:
        text = _read_proc_cgroup(self.pid, self._procfs)
        if text is None:
            return None
        now = time.monotonic()
        if text != self._text or now >= self._due:
            self._layout = _layout(text, find_mounts(self._procfs, self._sysfs))
            self._text, self._due = text, now + self._relocate_s
        if self._layout is None:
            return None
        return _info(self._layout) if self._shared is None else self._shared.get(self._layout)


@dataclass(frozen=True)
class _Layout:
    """Where each controller of one process is: what `cgroup_info` reads its values from."""

    version: int
    path: str
    memory: _Located | None
    cpu: _Located | None
    pids: _Located | None


def cgroup_info(proc_cgroup_text: str, mounts: Sequence[CgroupMount]) -> CgroupInfo | None:
    """The cgroup limits and usage given a /proc/PID/cgroup text and the hierarchies mounted."""
    layout = _layout(proc_cgroup_text, mounts)
    return None if layout is None else _info(layout)


def _layout(proc_cgroup_text: str, mounts: Sequence[CgroupMount]) -> _Layout | None:
    """Where the controllers of a /proc/PID/cgroup text are; None where none is readable."""
    lines = parse_proc_cgroup(proc_cgroup_text)
    memory = _locate("memory", lines, mounts)
    cpu = _locate("cpu", lines, mounts)
    pids = _locate("pids", lines, mounts)
    found = [loc for loc in (memory, cpu, pids) if loc is not None]
    if memory is not None:
        version, path = memory.version, memory.path
    elif found:
        version = 2 if all(loc.version == 2 for loc in found) else 1
        path = found[0].path
    elif (unified := _locate(None, lines, mounts)) is not None:
        version, path = 2, unified.path
    else:
        return None
    return _Layout(version, path, memory, cpu, pids)


def _info(layout: _Layout) -> CgroupInfo:
    """The limits and usage read from the directories of `layout`."""
    version, path, memory, cpu, pids = layout.version, layout.path, layout.memory, layout.cpu, layout.pids
    mem_limit = mem_used = oom_kills = None
    if memory is not None:
        if memory.version == 2:
            mem_limit = _smallest_limit(memory.dirs, "memory.max")
            mem_used = _read_int(memory.leaf, "memory.current")
            oom_kills = _read_keyed(memory.leaf, "memory.events").get("oom_kill")
        else:
            mem_limit = _smallest_limit(memory.dirs, "memory.limit_in_bytes")
            mem_used = _read_int(memory.leaf, "memory.usage_in_bytes")
            oom_kills = _read_keyed(memory.leaf, "memory.oom_control").get("oom_kill")

    pids_limit = pids_current = None
    if pids is not None:
        pids_limit = _smallest_limit(pids.dirs, "pids.max")
        pids_current = _read_int(pids.leaf, "pids.current")

    cpu_cores: float | None = None
    throttled_count: int | None = None
    throttled_s: float | None = None
    if cpu is not None:
        stat = _read_keyed(cpu.leaf, "cpu.stat")
        throttled_count = stat.get("nr_throttled")
        if cpu.version == 2:
            cpu_cores = _smallest_cores(_cpu_max_v2(d) for d in cpu.dirs)
            usec = stat.get("throttled_usec")
            throttled_s = None if usec is None else usec / 1e6
        else:
            cpu_cores = _smallest_cores(_cpu_max_v1(d) for d in cpu.dirs)
            nsec = stat.get("throttled_time")
            throttled_s = None if nsec is None else nsec / 1e9

    return CgroupInfo(
        version=version,
        path=path,
        memory_limit_bytes=mem_limit,
        memory_used_bytes=mem_used,
        pids_limit=pids_limit,
        pids_current=pids_current,
        cpu_limit_cores=cpu_cores,
        cpu_throttled_count=throttled_count,
        cpu_throttled_s=throttled_s,
        oom_kills=oom_kills,
    )


def _locate(
    controller: str | None, lines: Sequence[CgroupLine], mounts: Sequence[CgroupMount]
) -> _Located | None:
    """Where `controller` (None: the v2 hierarchy itself) is for this process, if anywhere readable."""
    if controller is not None:
        for line in lines:
            if controller not in line.controllers:
                continue
            for mount in mounts:
                if mount.version == 1 and controller in mount.controllers:
                    located = _directories(1, line.path, mount)
                    if located is not None:
                        return located
    for line in lines:
        if line.hierarchy != 0 or line.controllers:
            continue
        for mount in mounts:
            if mount.version != 2:
                continue
            if controller is not None and controller not in _v2_controllers(mount.mountpoint):
                continue
            located = _directories(2, line.path, mount)
            if located is not None:
                return located
    return None


def _directories(version: int, path: str, mount: CgroupMount) -> _Located | None:
    """The cgroup directory of `path` under `mount`, with its ancestors up to the mount point."""
    root = mount.root.rstrip("/")
    if root and path != root and not path.startswith(root + "/"):
        return None  # outside what this mount shows (another cgroup namespace)
    relative = path[len(root) :].strip("/")
    parts = [p for p in relative.split("/") if p]
    if ".." in parts:
        return None
    leaf = os.path.join(mount.mountpoint, *parts)
    if not os.path.isdir(leaf):
        return None
    dirs = [os.path.join(mount.mountpoint, *parts[:i]) for i in range(len(parts), -1, -1)]
    return _Located(version, path, tuple(dirs))


def _v2_controllers(mountpoint: str) -> set[str]:
    text = _read_text(mountpoint, "cgroup.controllers")
    return set() if text is None else set(text.split())


def _read_text(directory: str, name: str) -> str | None:
    """A cgroup file's text (a reading of a process's cgroup is about ten of them)."""
    try:
        return read_bytes(os.path.join(directory, name)).decode("ascii", errors="replace")
    except OSError:
        return None


def _read_int(directory: str, name: str) -> int | None:
    text = _read_text(directory, name)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _read_keyed(directory: str, name: str) -> dict[str, int]:
    """A flat-keyed file (`key value` per line), as cpu.stat, memory.events and memory.oom_control are."""
    text = _read_text(directory, name)
    values: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                values[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return values


def _as_limit(text: str | None) -> int | None:
    """A limit value, or None for "max", negative (v1 "-1") or v1's huge "no limit" numbers."""
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    if value < 0 or value >= UNLIMITED_THRESHOLD:
        return None
    return value


def _smallest_limit(dirs: Sequence[str], name: str) -> int | None:
    limits = [v for v in (_as_limit(_read_text(d, name)) for d in dirs) if v is not None]
    return min(limits) if limits else None


def _cpu_max_v2(directory: str) -> float | None:
    """Cores allowed by a v2 `cpu.max` ("quota period", or "max period" for none)."""
    parts = (_read_text(directory, "cpu.max") or "").split()
    if len(parts) != 2:
        return None
    quota, period = _as_limit(parts[0]), _as_limit(parts[1])
    if quota is None or not period:
        return None
    return quota / period


def _cpu_max_v1(directory: str) -> float | None:
    """Cores allowed by v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` (quota -1: none)."""
    quota = _as_limit(_read_text(directory, "cpu.cfs_quota_us"))
    period = _as_limit(_read_text(directory, "cpu.cfs_period_us"))
    if quota is None or not period:
        return None
    return quota / period


def _smallest_cores(values: Iterable[float | None]) -> float | None:
    cores = [v for v in values if v is not None]
    return min(cores) if cores else None


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (`\\040`)."""
    if "\\" not in field:
        return field
    out: list[str] = []
    i = 0
    while i < len(field):
        chunk = field[i + 1 : i + 4]
        if field[i] == "\\" and len(chunk) == 3 and all(c in "01234567" for c in chunk):
            out.append(chr(int(chunk, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)
