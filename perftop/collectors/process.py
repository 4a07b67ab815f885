"""Metrics of one process (any process, Python or not): CPU, memory, threads, fds, connections, limits.

A `psutil.Process` object is kept between samples, so `cpu_percent` is measured over the time since the
previous sample without blocking. Counting connections costs milliseconds, so it is done only every
`connections_every_s` seconds and the sample says when it was last done. Resource limits come from
`prlimit` (through psutil), falling back to the world-readable /proc/PID/limits when that is refused, and
each is paired with the usage the kernel checks it against where that is measurable.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import re
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import psutil

from perftop.collectors.aged import Aged
from perftop.collectors.cgroup import CgroupReader, SharedCgroups
from perftop.collectors.errors import AccessDeniedError, NoSuchProcessError
from perftop.collectors.files import read_bytes
from perftop.collectors.model import Limit, ListenBacklog, ProcessSample

_T = TypeVar("_T")

NPROC_RECOUNT_S = 2.0
"""How often to recount the tasks of a user across the system (for `nproc`): it reads every /proc/PID."""


@dataclass(frozen=True)
class _LimitSpec:
    name: str
    resource: int
    unit: str
    proc_limits_label: str
    """The row name in /proc/PID/limits."""


def _limit_specs() -> tuple[_LimitSpec, ...]:
    """Every rlimit psutil exposes here, nofile/nproc/as/data/stack/rss/memlock/core first, then the rest."""
    table = [
        ("nofile", "RLIMIT_NOFILE", "", "Max open files"),
        ("nproc", "RLIMIT_NPROC", "", "Max processes"),
        ("as", "RLIMIT_AS", "bytes", "Max address space"),
        ("data", "RLIMIT_DATA", "bytes", "Max data size"),
        ("stack", "RLIMIT_STACK", "bytes", "Max stack size"),
        ("rss", "RLIMIT_RSS", "bytes", "Max resident set"),
        ("memlock", "RLIMIT_MEMLOCK", "bytes", "Max locked memory"),
        ("core", "RLIMIT_CORE", "bytes", "Max core file size"),
        ("cpu", "RLIMIT_CPU", "s", "Max cpu time"),
        ("fsize", "RLIMIT_FSIZE", "bytes", "Max file size"),
        ("locks", "RLIMIT_LOCKS", "", "Max file locks"),
        ("msgqueue", "RLIMIT_MSGQUEUE", "bytes", "Max msgqueue size"),
        ("nice", "RLIMIT_NICE", "", "Max nice priority"),
        ("rtprio", "RLIMIT_RTPRIO", "", "Max realtime priority"),
        ("rttime", "RLIMIT_RTTIME", "µs", "Max realtime timeout"),
        ("sigpending", "RLIMIT_SIGPENDING", "", "Max pending signals"),
    ]
    specs = []
    for name, constant, unit, label in table:
        resource = getattr(psutil, constant, None)
        if isinstance(resource, int):
            specs.append(_LimitSpec(name, resource, unit, label))
    return tuple(specs)


LIMIT_SPECS = _limit_specs()

_PROC_LIMITS_ROW = re.compile(r"^(Max [a-z ]+?)\s{2,}(\S+)\s+(\S+)")


def _open_process(pid: int) -> psutil.Process:
    """A live, non-zombie `psutil.Process` for `pid`, or NoSuchProcessError."""
    if pid <= 0:
        raise NoSuchProcessError(pid)
    try:
        proc = psutil.Process(pid)
        status = proc.status()
    except psutil.ZombieProcess:
        raise _zombie(pid) from None
    except psutil.NoSuchProcess:
        raise NoSuchProcessError(pid) from None
    except psutil.AccessDenied:
        raise _denied(pid) from None
    if status == psutil.STATUS_ZOMBIE:
        raise _zombie(pid)
    return proc


def _check_readable(proc: psutil.Process) -> None:
    """AccessDeniedError unless we may read the process's fds (the ptrace read check most data needs)."""
    try:
        proc.num_fds()
    except psutil.AccessDenied:
        raise _denied(proc.pid) from None
    except psutil.NoSuchProcess:
        raise _exited(proc.pid) from None


def check_pid(pid: int) -> None:
    """Raise NoSuchProcessError or AccessDeniedError (with a message fit for the user) unless `pid` can be
    monitored by this user."""
    _check_readable(_open_process(pid))


def _exited(pid: int) -> NoSuchProcessError:
    return NoSuchProcessError(pid, f"process {pid} has exited")


def _zombie(pid: int) -> NoSuchProcessError:
    return NoSuchProcessError(pid, f"process {pid} has exited (a zombie its parent has not reaped yet)")


def _owner(pid: int) -> tuple[int | None, str]:
    """The real uid of `pid` and its user name (the uid as text when the name is unknown)."""
    try:
        uid = psutil.Process(pid).uids().real
    except psutil.Error:
        return None, "another user"
    return uid, _user_name(uid)


@functools.lru_cache(maxsize=256)
def _user_name(uid: int) -> str:
    """The account name of `uid` (the uid as text when it has none); cached, as NSS lookups may be slow."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _denied(pid: int) -> AccessDeniedError:
    uid, owner = _owner(pid)
    needs = f"needs CAP_SYS_PTRACE to read /proc/{pid}/fd"
    if uid is not None and uid == os.geteuid():
        return AccessDeniedError(
            pid,
            f"cannot read PID {pid}: it runs as {owner} like perftop but is protected (setuid or not "
            f"dumpable): run perftop as root ({needs})",
        )
    return AccessDeniedError(
        pid, f"cannot read PID {pid} (owned by {owner}): run perftop as that user or as root ({needs})"
    )


def _or_none(read: Callable[[], _T]) -> _T | None:
    """`read()`, or None when the OS refuses it (the process itself still exists)."""
    try:
        return read()
    except psutil.AccessDenied:
        return None


def _read_status(procfs: str, pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict of raw values (`VmData` -> `1234 kB`)."""
    values: dict[str, str] = {}
    try:
        with open(os.path.join(procfs, str(pid), "status"), encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep:
                    values[key] = value.strip()
    except OSError:
        pass
    return values


def _kib_to_bytes(value: str | None) -> int | None:
    """`1234 kB` -> 1263616."""
    if not value:
        return None
    try:
        return int(value.split()[0]) * 1024
    except ValueError:
        return None


def _sigq_used(value: str | None) -> int | None:
    """`SigQ: 3/95571` -> 3 (signals queued for the real uid, which RLIMIT_SIGPENDING caps)."""
    if not value:
        return None
    try:
        return int(value.split("/")[0])
    except ValueError:
        return None


def count_user_tasks(uid: int, procfs: str = "/proc") -> int:
    """Threads whose process has real uid `uid`, across the system: what the kernel checks RLIMIT_NPROC
    against. Counted from /proc/PID/status (Uid, Threads), which every user may read; read with bare
    os.read and bytes.find, as this visits every process."""
    total = 0
    try:
        names = os.listdir(procfs)
    except OSError:
        return 0
    for name in names:
        if not name.isdigit():
            continue
        try:
            data = read_bytes(f"{procfs}/{name}/status")
            at = data.index(b"\nUid:") + 5
            if int(data[at : data.index(b"\n", at)].split()[0]) != uid:
                continue
            at = data.index(b"\nThreads:", at) + 9
            total += int(data[at : data.index(b"\n", at)])
        except (OSError, ValueError):
            continue
    return total


_SOCKET_TABLES = {"tcp": 9, "tcp6": 9, "udp": 9, "udp6": 9, "unix": 6}
"""The tables of psutil's `net_connections(kind="all")`, with the column of each that holds the inode."""

_TABLE_OF_PROTOCOL = {b"TCP": "tcp", b"TCPv6": "tcp6", b"UDP": "udp", b"UDPv6": "udp6"}
"""Socket protocol names (the `system.sockprotoname` attribute of a socket fd) to the table listing them."""


def _socket_table(fd_path: str) -> str | None:
    """The /proc/net table that can list the socket at `fd_path`: "" for none (netlink, packet...), None
    where the kernel does not say (then every table is read)."""
    try:
        proto = os.getxattr(fd_path, "system.sockprotoname").rstrip(b"\0")
    except OSError:
        return None
    if proto.startswith(b"UNIX"):
        return "unix"
    return _TABLE_OF_PROTOCOL.get(proto, "")


def count_connections(pid: int, procfs: str = "/proc") -> int:
    """What `len(psutil.Process(pid).net_connections(kind="all"))` counts, at a fraction of its cost.

    Like psutil, it matches the socket inodes of `pid`'s fds against the inode column of
    /proc/net/{tcp,tcp6,udp,udp6,unix}, counting an inet socket once and a unix socket once per fd. But it
    decodes no address, and reads only the tables that can hold one of those sockets (each socket fd names
    its protocol): reading /proc/net/tcp or tcp6 walks the kernel's whole connection hash table, ~4 ms on a
    host with 262,144 buckets, even when it lists nothing. Raises PermissionError where the fds of `pid` may
    not be read, FileNotFoundError once it has exited.
    """
    return _scan_sockets(pid, procfs)[0]


def _socket_inodes(pid: int, procfs: str) -> tuple[dict[bytes, int], set[str]]:
    """The socket inodes of `pid`'s fds (with how many fds hold each) and the tables that can list them."""
    fd_dir = f"{procfs}/{pid}/fd"
    inodes: dict[bytes, int] = {}
    tables: set[str] = set()
    for fd in os.listdir(fd_dir):
        path = f"{fd_dir}/{fd}"
        try:
            target = os.readlink(path)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inode = target[8:-1].encode()
            if inode not in inodes:
                table = _socket_table(path)
                tables.update(_SOCKET_TABLES if table is None else (table,) if table else ())
            inodes[inode] = inodes.get(inode, 0) + 1
    return inodes, tables


def _matched_rows(
    pid: int, procfs: str, tcp_only: bool = False
) -> Iterator[tuple[str, bytes, list[bytes], int]]:
    """The /proc/net rows of `pid`'s sockets: (table, line, fields up to the inode, how many times the
    socket counts: 1 for an inet socket, its number of fds for a unix one)."""
    inodes, tables = _socket_inodes(pid, procfs)
    if tcp_only:
        tables &= {"tcp", "tcp6"}
    for table in tables:
        column = _SOCKET_TABLES[table]
        try:
            with open(f"{procfs}/net/{table}", "rb") as f:
                lines = f.read().split(b"\n")
        except OSError:  # no IPv6 here
            continue
        per_fd = table == "unix"
        for line in lines[1:]:
            fields = line.split(None, column + 1)
            if len(fields) > column and (n := inodes.get(fields[column])):
                yield table, line, fields, n if per_fd else 1


def connection_inodes(pid: int, procfs: str = "/proc") -> dict[bytes, int]:
    """The sockets `count_connections` counts, by inode: how many times each counts (1 for an inet
    socket, its number of fds for a unix one). Processes sharing a socket (forked workers and their
    listening socket) report the same inode, so a tree's distinct sockets are the union of these keys."""
    return {fields[_SOCKET_TABLES[table]]: n for table, _, fields, n in _matched_rows(pid, procfs)}


def _scan_sockets(pid: int, procfs: str, tcp_only: bool = False) -> tuple[int, tuple[ListenBacklog, ...]]:
    """The connection count of `pid` and the accept backlog of its listening TCP sockets, in one pass
    (`tcp_only`: the TCP tables alone, when only the backlog is wanted)."""
    count = 0
    listening: list[list[bytes]] = []
    for table, line, fields, n in _matched_rows(pid, procfs, tcp_only):
        count += n
        if table in ("tcp", "tcp6") and fields[3] == _TCP_LISTEN:
            listening.append(line.split())
    if not listening:
        return count, ()
    limits = listen_limits()
    return count, tuple(sorted((_backlog(f, limits) for f in listening), key=lambda b: b.address))


_TCP_LISTEN = b"0A"
"""The `st` column of a listening socket in /proc/net/tcp{,6}."""
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_NLMSG_DONE, _NLMSG_ERROR = 3, 2
_TCP_LISTEN_STATE = 10


def _address(field: bytes) -> str:
    """`0100007F:1F90` (/proc/net/tcp's little-endian words) as `127.0.0.1:8080`, `[::1]:8080` for IPv6."""
    host, _, port = field.partition(b":")
    raw = bytes.fromhex(host.decode())
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return f"{socket.inet_ntop(socket.AF_INET, words)}:{int(port, 16)}"
    return f"[{socket.inet_ntop(socket.AF_INET6, words)}]:{int(port, 16)}"


def _backlog(fields: list[bytes], limits: dict[int, int]) -> ListenBacklog:
    """A listening socket's row of /proc/net/tcp: the accept queue's length is in rx_queue there; its
    maximum (the listen() backlog, capped by somaxconn) only in sock_diag (`limits`, by inode)."""
    rx = fields[4].partition(b":")[2]
    inode = int(fields[9]) if len(fields) > 9 and fields[9].isdigit() else 0
    return ListenBacklog(address=_address(fields[1]), queued=int(rx, 16), max=limits.get(inode))


def listen_limits() -> dict[int, int]:
    """The listen() backlog of every listening TCP socket of this network namespace, by inode, from the
    kernel's sock_diag netlink interface (what `ss -lt` shows as Send-Q); {} where it is not available."""
    limits: dict[int, int] = {}
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(2.0)
            for family in (socket.AF_INET, socket.AF_INET6):
                request = struct.pack("=BBBBI48x", family, socket.IPPROTO_TCP, 0, 0, 1 << _TCP_LISTEN_STATE)
                header = struct.pack(
                    "=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP, 1, 0
                )
                nl.send(header + request)
                _read_diag(nl, limits)
    except OSError:
        return limits
    return limits


def _read_diag(nl: socket.socket, limits: dict[int, int]) -> None:
    """Read one sock_diag dump's answers (inet_diag_msg: wqueue is a listener's maximum backlog)."""
    while True:
        data = nl.recv(65536)
        offset = 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            if kind in (_NLMSG_DONE, _NLMSG_ERROR) or length < 16:
                return
            if length >= 16 + 72:
                wqueue, _uid, inode = struct.unpack_from("=III", data, offset + 16 + 60)
                limits[inode] = wqueue
            offset += (length + 3) & ~3


def listen_backlog(pid: int, procfs: str = "/proc") -> tuple[ListenBacklog, ...]:
    """The accept backlog (queued connections and maximum) of each listening TCP socket `pid` holds."""
    return _scan_sockets(pid, procfs)[1]


def _parse_proc_limits(text: str) -> dict[str, tuple[int | None, int | None]]:
    """/proc/PID/limits rows by label: (soft, hard), None for unlimited."""
    rows: dict[str, tuple[int | None, int | None]] = {}
    for line in text.splitlines():
        match = _PROC_LIMITS_ROW.match(line)
        if match:
            rows[match.group(1)] = (_limit_value(match.group(2)), _limit_value(match.group(3)))
    return rows


def _limit_value(raw: str | int) -> int | None:
    """An rlimit value, None for unlimited (RLIM_INFINITY, shown as -1 or `unlimited`)."""
    if isinstance(raw, str):
        if raw == "unlimited":
            return None
        try:
            raw = int(raw)
        except ValueError:
            return None
    if raw < 0 or raw == psutil.RLIM_INFINITY or raw >= 2**63 - 1:
        return None
    return raw


class UserTasks(Aged[int, int]):
    """The threads of each real uid across the system (`count_user_tasks`), each counted again at most
    every `every_s`. Collectors that share one (an exporter samples every agent's process, mostly of one
    user) make one walk of /proc a round between them, not one each."""

    def __init__(self, procfs: str = "/proc", every_s: float = NPROC_RECOUNT_S) -> None:
        super().__init__(lambda uid: count_user_tasks(uid, procfs), every_s)


class SharedReads:
    """What the collectors of many processes sampled together (an exporter's agents) read once between
    them: the threads of each user (`nproc`) and the figures of each cgroup."""

    def __init__(self, procfs: str = "/proc", cgroup_max_age_s: float = 1.0) -> None:
        self.user_tasks = UserTasks(procfs)
        self.cgroups = SharedCgroups(cgroup_max_age_s)


class ProcessCollector:
    """Samples one process. Construction checks that it exists and can be read."""

    def __init__(
        self,
        pid: int,
        connections_every_s: float = 5.0,
        procfs: str = "/proc",
        shared: SharedReads | None = None,
    ) -> None:
        """`shared`: reads to share with other collectors; by default, a count of the user's threads of
        its own, and its cgroup's files read at every sample."""
        self.pid = pid
        self._procfs = procfs
        self._connections_every_s = connections_every_s
        self._proc = _open_process(pid)
        _check_readable(self._proc)
        self._num_connections: int | None = None
        self._listen_backlog: tuple[ListenBacklog, ...] = ()
        self._connections_at: float | None = None
        self._connections_due = 0.0
        self._user_tasks = UserTasks(procfs) if shared is None else shared.user_tasks
        self._cgroup = CgroupReader(pid, procfs, shared=None if shared is None else shared.cgroups)
        with contextlib.suppress(psutil.Error):
            self._proc.cpu_percent(None)

    def sample(self) -> ProcessSample:
        """One sample now. Raises NoSuchProcessError once the process has exited or become a zombie."""
        try:
            return self._sample()
        except psutil.NoSuchProcess:  # includes ZombieProcess
            raise _exited(self.pid) from None
        except psutil.AccessDenied:
            raise _denied(self.pid) from None

    def _sample(self) -> ProcessSample:
        proc = self._proc
        if not proc.is_running():
            raise _exited(self.pid)
        now = time.monotonic()
        with proc.oneshot():
            status = proc.status()
            if status == psutil.STATUS_ZOMBIE:
                raise _zombie(self.pid)
            name = proc.name()
            cmdline = tuple(proc.cmdline())
            uid = proc.uids().real
            create_time = proc.create_time()
            cpu_percent = proc.cpu_percent(None)
            cpu_times = proc.cpu_times()
            mem = proc.memory_info()
            num_threads = proc.num_threads()
            num_fds = _or_none(proc.num_fds)
        if now >= self._connections_due:
            self._num_connections, self._listen_backlog = self._scan_sockets(tcp_only=False)
            self._connections_at = time.time()
            self._connections_due = now + self._connections_every_s
        elif self._listen_backlog:  # a listening process: its accept queue changes by the second
            self._listen_backlog = self._scan_sockets(tcp_only=True)[1]

        proc_status = _read_status(self._procfs, self.pid)
        used: dict[str, int | None] = {
            "nofile": num_fds,
            "nproc": self._user_tasks.get(uid),
            "as": mem.vms,
            "data": _kib_to_bytes(proc_status.get("VmData")),
            "stack": _kib_to_bytes(proc_status.get("VmStk")),
            "memlock": _kib_to_bytes(proc_status.get("VmLck")),
            "rss": mem.rss,
            "sigpending": _sigq_used(proc_status.get("SigQ")),
            "cpu": int(cpu_times.user + cpu_times.system),
        }
        limits = self._limits(used)
        if not proc.is_running():
            raise _exited(self.pid)  # the PID was reused while we read it
        return ProcessSample(
            pid=self.pid,
            name=name,
            cmdline=cmdline,
            status=status,
            username=_user_name(uid),
            create_time=create_time,
            cpu_percent=cpu_percent,
            rss_bytes=mem.rss,
            vms_bytes=mem.vms,
            num_threads=num_threads,
            num_fds=num_fds,
            num_connections=self._num_connections,
            connections_sampled_at=self._connections_at,
            listen_backlog=self._listen_backlog,
            limits=limits,
            cgroup=self._cgroup.read(),
            taken_at=time.time(),
        )

    def _scan_sockets(self, tcp_only: bool) -> tuple[int | None, tuple[ListenBacklog, ...]]:
        """The connection count (None where the OS refuses it) and the listening sockets' backlogs."""
        try:
            return _scan_sockets(self.pid, self._procfs, tcp_only)
        except FileNotFoundError:
            raise _exited(self.pid) from None
        except PermissionError:
            return None, ()

    def _limits(self, used: dict[str, int | None]) -> tuple[Limit, ...]:
        """Every limit with its usage; from prlimit, or /proc/PID/limits where prlimit is refused."""
        limits: list[Limit] = []
        fallback: dict[str, tuple[int | None, int | None]] | None = None
        for spec in LIMIT_SPECS:
            soft: int | None
            hard: int | None
            try:
                raw_soft, raw_hard = self._proc.rlimit(spec.resource)
                soft, hard = _limit_value(raw_soft), _limit_value(raw_hard)
            except (psutil.AccessDenied, PermissionError):
                if fallback is None:
                    fallback = self._read_proc_limits()
                if spec.proc_limits_label not in fallback:
                    continue
                soft, hard = fallback[spec.proc_limits_label]
            limits.append(Limit(spec.name, soft, hard, used.get(spec.name), spec.unit))
        return tuple(limits)

    def _read_proc_limits(self) -> dict[str, tuple[int | None, int | None]]:
        try:
            with open(os.path.join(self._procfs, str(self.pid), "limits"), encoding="ascii") as f:
                return _parse_proc_limits(f.read())
        except OSError:
            return {}
