"""The host's process list: one row per readable process, with CPU measured between calls.

This runs every tick over every process, so it reads /proc itself instead of through psutil, whose
`Process` objects, oneshot caches and wrappers cost ~0.2-0.4 ms per process here (~30 ms a tick for 100
processes): each call reads /proc/PID/stat (name, state, CPU times, threads, RSS, start time) and
/proc/PID/status (real uid), ~30 µs per process in all. What seldom changes is cached per process identity,
i.e. (pid, start time), so a PID reused by a new process never inherits the old one's data: the command line
(re-read when the command name changes, as on exec, and every `cmdline_max_age_s` for programs that rewrite
it, like setproctitle), and the user name per uid. CPU is computed as `psutil.Process.cpu_percent` does it:
the growth of utime+stime over the wall time since the previous call, in percent of one core.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import threading
import time
from collections import deque
from dataclasses import dataclass

import psutil

from perftop.collectors.files import read_bytes
from perftop.collectors.model import ProcessRow

CMDLINE_MAX_AGE_S = 5.0
"""How long a process's command line is reused before it is read again (it is also re-read on exec)."""

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_NAME_MAX = 15
"""The kernel truncates command names (comm) to this many characters."""


@dataclass(slots=True)
class _Known:
    """What was last read of one process."""

    start: int
    """Start time in clock ticks since boot: with the PID, the process's identity."""
    ticks: int
    """utime + stime, in clock ticks."""
    at: float
    """time.monotonic() when `ticks` was read."""
    comm: str
    name: str
    cmdline: str
    cmdline_due: float


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot), None if the process is gone."""
    try:
        data = read_bytes(f"/proc/{pid}/stat")
        return int(data[data.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


_children_files: bool | None = None
"""Whether this kernel has /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN); None until first asked."""


def descendant_pids(pid: int) -> list[int] | None:
    """The PIDs below `pid`, children first, from the kernel's /proc/PID/task/TID/children lists: this
    reads the tasks of `pid` and of its descendants only, where psutil's `children(recursive=True)` reads
    /proc/PID/stat of every process on the host (twice a tick when attached: the tree and the agents).
    [] where `pid` is gone; None where the kernel has no such lists (then ask psutil)."""
    global _children_files
    if _children_files is None:
        _children_files = os.path.exists(f"/proc/self/task/{threading.get_native_id()}/children")
    if not _children_files:
        return None
    found: list[int] = []
    seen = {pid}
    todo = deque([pid])
    while todo:
        for child in _children(todo.popleft()):
            if child not in seen:
                seen.add(child)
                found.append(child)
                todo.append(child)
    return found


def _children(pid: int) -> list[int]:
    """The children of every thread of `pid` (a child belongs to the thread that forked it)."""
    base = f"/proc/{pid}/task"
    try:
        tids = os.listdir(base)
    except OSError:
        return []
    out: list[int] = []
    for tid in tids:
        with contextlib.suppress(OSError, ValueError):
            out.extend(int(c) for c in read_bytes(f"{base}/{tid}/children").split())
    return out


def descendants_of(proc: psutil.Process) -> list[psutil.Process]:
    """What `proc.children(recursive=True)` returns (raising psutil.NoSuchProcess where `proc` is gone or
    its PID was reused), found with `descendant_pids`."""
    pids = descendant_pids(proc.pid)
    if pids is None:
        return proc.children(recursive=True)
    if not proc.is_running():
        raise psutil.NoSuchProcess(proc.pid)
    out: list[psutil.Process] = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            out.append(psutil.Process(pid))
    return out


def split_cmdline(data: bytes) -> list[str]:
    """/proc/PID/cmdline as arguments, as psutil splits it: NUL-separated, or space-separated where the
    program rewrote it (setproctitle) without NULs."""
    text = data.decode(errors="replace")
    if not text:
        return []
    sep = "\x00" if text.endswith("\x00") else " "
    if text.endswith(sep):
        text = text[:-1]
    args = text.split(sep)
    if sep == "\x00" and len(args) == 1 and " " in text:
        args = text.split(" ")
    return args


class ProcessLister:
    """Lists processes; vanished, unreadable and zombie processes are skipped silently."""

    def __init__(self, cmdline_max_age_s: float = CMDLINE_MAX_AGE_S) -> None:
        self._cmdline_max_age_s = cmdline_max_age_s
        self._known: dict[int, _Known] = {}
        self._procs: dict[int, tuple[int, psutil.Process]] = {}
        self._users: dict[int, str] = {}

    def sample(self) -> list[ProcessRow]:
        """A row per process that exists and can be read now, in PID order."""
        rows: list[ProcessRow] = []
        known: dict[int, _Known] = {}
        try:
            pids = sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
        except OSError:
            pids = []
        for pid in pids:
            base = f"/proc/{pid}/"
            try:
                stat = read_bytes(base + "stat")
                status = read_bytes(base + "status")
                at = time.monotonic()
                rparen = stat.rindex(b")")
                fields = stat[rparen + 2 :].split()
                state = fields[0]
                ticks = int(fields[11]) + int(fields[12])
                num_threads = int(fields[17])
                start = int(fields[19])
                rss = int(fields[21]) * _PAGE_SIZE
                uid_at = status.index(b"\nUid:") + 5
                uid = int(status[uid_at : status.index(b"\n", uid_at)].split()[0])
                comm = stat[stat.index(b"(") + 1 : rparen].decode(errors="replace")
                if state in (b"Z", b"X"):
                    continue  # a zombie: psutil refuses its command line, and it uses nothing
                entry = self._known.get(pid)
                cpu = 0.0
                if entry is None or entry.start != start:
                    entry = _Known(start, ticks, at, comm, comm, "", 0.0)
                    self._read_cmdline(base, entry, at)
                else:
                    if at > entry.at:
                        cpu = round(max(0.0, (ticks - entry.ticks) / _CLK_TCK / (at - entry.at) * 100), 1)
                    entry.ticks, entry.at = ticks, at
                    if comm != entry.comm or at >= entry.cmdline_due:
                        entry.comm = comm
                        self._read_cmdline(base, entry, at)
            except (OSError, ValueError, IndexError):  # gone, hidden, or exiting while read
                continue
            known[pid] = entry
            rows.append(
                ProcessRow(
                    pid=pid,
                    name=entry.name,
                    cmdline=entry.cmdline,
                    username=self._user_name(uid),
                    cpu_percent=cpu,
                    rss_bytes=rss,
                    num_threads=num_threads,
                )
            )
        self._known = known
        self._procs = {
            pid: kept
            for pid, kept in self._procs.items()
            if (entry := known.get(pid)) is not None and entry.start == kept[0]
        }
        return rows

    def _read_cmdline(self, base: str, entry: _Known, now: float) -> None:
        """Refresh the command line of `entry`, and its name, which psutil lengthens from the command line
        where the kernel truncated it."""
        args = split_cmdline(read_bytes(base + "cmdline"))
        name = entry.comm
        if len(name) >= _NAME_MAX and args:
            extended = os.path.basename(args[0])
            if extended.startswith(name):
                name = extended
        entry.name = name
        entry.cmdline = " ".join(" ".join(args).split()) if args else f"[{name}]"
        entry.cmdline_due = now + self._cmdline_max_age_s

    def process(self, pid: int) -> psutil.Process | None:
        """A `psutil.Process` for `pid` if the last `sample()` listed it; the same object on every call while
        that process lives, so its own CPU baseline carries over. Made on request: listing makes none."""
        entry = self._known.get(pid)
        if entry is None:
            return None
        kept = self._procs.get(pid)
        if kept is not None and kept[0] == entry.start:
            return kept[1]
        try:
            proc = psutil.Process(pid)
        except psutil.Error:
            return None
        if _start_time(pid) != entry.start:
            return None  # the PID was reused since the sample
        self._procs[pid] = (entry.start, proc)
        return proc

    def _user_name(self, uid: int) -> str:
        name = self._users.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            self._users[uid] = name
        return name
