"""perftop's own frozen data types, returned by the collectors and read by the TUI and the JSON export.

psutil's OS-dependent named tuples never leave `perftop.collectors`: each collector converts them into
these types. Units are in the field names, as in the JSON of the CLI contract, ../shared/CLI.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MemoryInfo:
    """Host memory, from `psutil.virtual_memory()`."""

    total_bytes: int
    used_bytes: int
    available_bytes: int
    percent: float


@dataclass(frozen=True)
class SwapInfo:
    """Host swap, from `psutil.swap_memory()`."""

    total_bytes: int
    used_bytes: int
    percent: float


@dataclass(frozen=True)
class DiskIO:
    """Host disk I/O as rates over the last sampling interval."""

    read_bytes_per_s: float
    write_bytes_per_s: float
    read_ops_per_s: float
    write_ops_per_s: float


@dataclass(frozen=True)
class NetIO:
    """Host network I/O as rates over the last sampling interval."""

    sent_bytes_per_s: float
    recv_bytes_per_s: float


@dataclass(frozen=True)
class Pressure:
    """One Linux PSI file (/proc/pressure/X): share of time stalled, averaged over 10 s, 60 s, 300 s."""

    some_avg10: float
    some_avg60: float
    some_avg300: float
    full_avg10: float | None
    full_avg60: float | None
    full_avg300: float | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Pressure:
        """The Pressure `to_json` wrote, or the parsed lines of a PSI file: `some` (required) and `full`
        (None or absent where the kernel does not report it), each with avg10, avg60 and avg300. The one
        constructor the system collector and the recording reader share."""
        some, full = data["some"], data.get("full")
        return cls(
            some_avg10=some["avg10"],
            some_avg60=some["avg60"],
            some_avg300=some["avg300"],
            full_avg10=None if full is None else full["avg10"],
            full_avg60=None if full is None else full["avg60"],
            full_avg300=None if full is None else full["avg300"],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "some": {"avg10": self.some_avg10, "avg60": self.some_avg60, "avg300": self.some_avg300},
            "full": None
            if self.full_avg10 is None
            else {"avg10": self.full_avg10, "avg60": self.full_avg60, "avg300": self.full_avg300},
        }


@dataclass(frozen=True)
class SystemSample:
    """One sample of the host, rates measured over `interval_s`."""

    taken_at: float
    interval_s: float
    cpu_percent: float
    per_cpu_percent: tuple[float, ...]
    load_avg: tuple[float, float, float]
    memory: MemoryInfo
    swap: SwapInfo
    disk_io: DiskIO
    net_io: NetIO
    pressure: dict[str, Pressure] | None
    """PSI by resource (`cpu`, `memory`, `io`), or None where the kernel has none."""

    def to_json(self) -> dict[str, Any]:
        """The `system` object of `perftop snapshot --json`."""
        return {
            "cpu_percent": self.cpu_percent,
            "per_cpu_percent": list(self.per_cpu_percent),
            "load_avg": list(self.load_avg),
            "memory": _fields(self.memory),
            "swap": _fields(self.swap),
            "disk_io": _fields(self.disk_io),
            "net_io": _fields(self.net_io),
            "pressure": None
            if self.pressure is None
            else {name: p.to_json() for name, p in self.pressure.items()},
        }


@dataclass(frozen=True)
class Limit:
    """One resource limit against its usage. None for soft/hard means unlimited; None used: not measured."""

    name: str
    soft: int | None
    hard: int | None
    used: int | None
    unit: str = ""
    """`bytes`, `s` (cpu), `µs` (rttime), or empty for a plain count."""

    @property
    def ratio(self) -> float | None:
        """Usage as a share of the soft limit, or None where either is unknown or unlimited."""
        if self.soft is None or self.used is None or self.soft <= 0:
            return None
        return self.used / self.soft

    def to_json(self) -> dict[str, Any]:
        return {"soft": self.soft, "hard": self.hard, "used": self.used}


@dataclass(frozen=True)
class CgroupInfo:
    """The cgroup limits and usage of a process. None fields mean unlimited or unknown."""

    version: int
    path: str
    memory_limit_bytes: int | None
    memory_used_bytes: int | None
    pids_limit: int | None
    pids_current: int | None
    cpu_limit_cores: float | None
    cpu_throttled_count: int | None
    cpu_throttled_s: float | None
    oom_kills: int | None

    def to_json(self) -> dict[str, Any]:
        return _fields(self)


@dataclass(frozen=True)
class ListenBacklog:
    """A listening TCP socket's accept queue: connections the kernel accepted that the app has not yet
    taken (`queued`), against the listen() backlog (`max`). A full queue is where requests wait unseen."""

    address: str
    queued: int
    max: int | None
    """None where the kernel's sock_diag interface cannot be read."""

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "queued": self.queued, "max": self.max}


@dataclass(frozen=True)
class ProcessSample:
    """One sample of one process (any process, Python or not)."""

    pid: int
    name: str
    cmdline: tuple[str, ...]
    status: str
    username: str
    create_time: float
    cpu_percent: float
    rss_bytes: int
    vms_bytes: int
    num_threads: int
    num_fds: int | None
    num_connections: int | None
    connections_sampled_at: float | None
    """When `num_connections` was last read: it is expensive, so it is sampled less often."""
    limits: tuple[Limit, ...]
    cgroup: CgroupInfo | None
    taken_at: float
    listen_backlog: tuple[ListenBacklog, ...] = ()
    """The accept backlog of each listening TCP socket (Linux); read with the connections."""
    tree: ProcessTree | None = None
    """The PID with its descendants (a pre-fork master and its workers), where it has any."""

    def limit(self, name: str) -> Limit | None:
        """The limit called `name` (e.g. `nofile`), or None."""
        for lim in self.limits:
            if lim.name == name:
                return lim
        return None

    def to_json(self) -> dict[str, Any]:
        """The `process` object of `perftop snapshot --json`."""
        return {
            "pid": self.pid,
            "name": self.name,
            "cmdline": list(self.cmdline),
            "status": self.status,
            "username": self.username,
            "create_time": self.create_time,
            "cpu_percent": self.cpu_percent,
            "rss_bytes": self.rss_bytes,
            "vms_bytes": self.vms_bytes,
            "num_threads": self.num_threads,
            "num_fds": self.num_fds,
            "num_connections": self.num_connections,
            "listen_backlog": [b.to_json() for b in self.listen_backlog],
            "limits": {lim.name: lim.to_json() for lim in self.limits},
            "cgroup": None if self.cgroup is None else self.cgroup.to_json(),
            "tree": None if self.tree is None else self.tree.to_json(),
        }


@dataclass(frozen=True)
class WorkerRow:
    """One descendant of the attached PID (a gunicorn, Celery or multiprocessing worker), as last seen.

    A worker that has exited keeps its last values, marked `gone`, until the view is reset."""

    pid: int
    ppid: int
    name: str
    started_at: float
    cpu_percent: float
    rss_bytes: int
    num_threads: int
    has_agent: bool
    requests: int | None
    """Requests it timed (its `http ...` timings) over the agent view's window; None without an agent."""
    requests_per_s: float | None
    p99_ms: float | None
    gone: bool = False
    gone_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return _fields(self)


@dataclass(frozen=True)
class ProcessTree:
    """Totals of a PID and all its descendants, beside the PID's own figures, and one row per descendant.

    Limits stay per process (rlimits) and per cgroup, so the tree has none."""

    pids: tuple[int, ...]
    """The PID first, then its live descendants."""
    cpu_percent: float
    rss_bytes: int
    pss_bytes: int | None
    """Proportional set size (shared pages split between the processes sharing them): what the tree really
    holds in memory, as forked workers share most pages. None where a smaps_rollup was unreadable."""
    num_threads: int
    num_fds: int | None
    num_connections: int | None
    """Distinct sockets of the tree (one listening socket shared by every worker counts once)."""
    workers: tuple[WorkerRow, ...]
    departed: int
    """Workers that exited since the view was reset (recycled, reloaded, killed)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "pids": list(self.pids),
            "cpu_percent": self.cpu_percent,
            "rss_bytes": self.rss_bytes,
            "pss_bytes": self.pss_bytes,
            "num_threads": self.num_threads,
            "num_fds": self.num_fds,
            "num_connections": self.num_connections,
            "departed": self.departed,
            "workers": [w.to_json() for w in self.workers],
        }


@dataclass(frozen=True)
class ProcessRow:
    """One line of the process list."""

    pid: int
    name: str
    cmdline: str
    username: str
    cpu_percent: float
    rss_bytes: int
    num_threads: int


def _fields(obj: object) -> dict[str, Any]:
    """A dataclass's fields as a plain dict (shallow: these types hold only scalars)."""
    return dict(vars(obj))
